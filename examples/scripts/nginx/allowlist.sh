#!/bin/sh
# allowlist.sh add|remove CIDR [DESCRIPTION]: edit an nginx allowlist and reload nginx.
# apply.sh and revoke.sh call it; eg-agent runs those.
#
# The allowlist is a file of `allow CIDR;` lines that a server or location block
# includes before `deny all;`, e.g.
#
#     location / {
#         include /etc/nginx/entryguard/allowlist.conf;
#         deny all;
#         ...
#     }
#
# Settings (environment, e.g. Environment= lines in eg-agent.service):
#   EG_NGINX_ALLOWLIST  the included file          (default: /etc/nginx/entryguard/allowlist.conf)
#   EG_NGINX_TEST       checks the configuration   (default: nginx -t -q)
#   EG_NGINX_RELOAD     reloads nginx              (default: nginx -s reload; with systemd
#                                                   you may prefer: systemctl reload nginx)
# EG_NGINX_TEST and EG_NGINX_RELOAD are command lines split on spaces (no quoting).
#
# A change that nginx -t rejects, or that fails to reload, is rolled back, so the file
# never holds what nginx is not running and a retry starts from a clean state.
set -eu

action=${1:?usage: allowlist.sh add|remove CIDR [DESCRIPTION]}
cidr=${2:?usage: allowlist.sh add|remove CIDR [DESCRIPTION]}
desc=${3:-}
# Only address characters: the CIDR is written into nginx's configuration.
case $cidr in
  '' | *[!0-9A-Fa-f:./]* | */*/*) echo "invalid CIDR: $cidr" >&2; exit 2 ;;
esac
list=${EG_NGINX_ALLOWLIST:-/etc/nginx/entryguard/allowlist.conf}
test_cmd=${EG_NGINX_TEST:-nginx -t -q}
reload_cmd=${EG_NGINX_RELOAD:-nginx -s reload}
line="allow $cidr;"

mkdir -p "$(dirname "$list")"
[ -e "$list" ] || : >"$list"
present=no
grep -qxF "$line" "$list" && present=yes
case $action:$present in
  add:yes) echo "nginx: $cidr is already allowed in $list"; exit 0 ;;
  remove:no) echo "nginx: $cidr is not in $list"; exit 0 ;;
  add:no | remove:yes) ;;
  *) echo "unknown action: $action (expected add or remove)" >&2; exit 2 ;;
esac

prev=$(mktemp "$list.prev.XXXXXX")
next=$(mktemp "$list.next.XXXXXX")
trap 'rm -f "$prev" "$next"' EXIT
cp -p "$list" "$prev"
cp -p "$list" "$next"  # keeps the file's mode and owner on the new version
grep -vxF "$line" "$list" >"$next" || true
[ "$action" = add ] && printf '%s\n' "$line" >>"$next"
mv -f "$next" "$list"

rollback() {
  mv -f "$prev" "$list"
  echo "nginx: $1; $list is back as it was" >&2
  exit 1
}
set -f  # the command lines are split on spaces, never globbed
$test_cmd || rollback "the configuration test failed ($test_cmd)"
$reload_cmd || rollback "reload failed ($reload_cmd)"
case $action in
  add) echo "nginx: allowed $cidr in $list and reloaded (for: $desc)" ;;
  remove) echo "nginx: removed $cidr from $list and reloaded (for: $desc)" ;;
esac
