#!/bin/sh
# EntryGuard revoke script (ufw): delete the rules apply.sh added for CIDR, then delete
# CIDR's conntrack entries so its established connections die too
# (../lib/flush-conntrack.sh, which needs the `conntrack` tool).
#
# eg-agent runs it as `revoke.sh CIDR DESCRIPTION`; settings as in apply.sh, plus:
#   EG_CONNTRACK_FLUSH  set to 0 to skip the conntrack flush   (default: 1)
set -eu

cidr=${1:?usage: revoke.sh CIDR DESCRIPTION}
desc=${2:-}
case $cidr in
  '' | *[!0-9A-Fa-f:./]* | */*/*) echo "invalid CIDR: $cidr" >&2; exit 2 ;;
esac
ports=${EG_UFW_PORTS:-22}
proto=${EG_UFW_PROTO:-tcp}

# Deleting a rule that does not exist is not an error for ufw ("Could not delete
# non-existent rule", exit 0), so revoking twice is harmless.
if [ "$ports" = all ]; then
  ufw delete allow from "$cidr"
else
  for port in $(echo "$ports" | tr ',' ' '); do
    ufw delete allow from "$cidr" to any port "$port" proto "$proto"
  done
fi
echo "ufw: revoked $cidr (ports: $ports) for: $desc"

if [ "${EG_CONNTRACK_FLUSH:-1}" != 0 ]; then
  "$(dirname "$0")/../lib/flush-conntrack.sh" "$cidr"
fi
