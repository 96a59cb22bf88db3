#!/bin/sh
# EntryGuard apply script (nginx allowlist): add `allow CIDR;` to the allowlist and
# reload nginx. See allowlist.sh for the settings and the include to put in nginx.conf.
# eg-agent runs it as `apply.sh CIDR DESCRIPTION`.
exec "$(dirname "$0")/allowlist.sh" add "$@"
