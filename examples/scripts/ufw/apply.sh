#!/bin/sh
# EntryGuard apply script (ufw): allow CIDR on the protected ports.
#
# eg-agent runs it as `apply.sh CIDR DESCRIPTION` (as an argument list, never through a
# shell) and also sets EG_CIDR, EG_DESCRIPTION, EG_ACTION, EG_RESOURCE. Exit 0 on
# success; anything else is reported as a failed command (see `eg admin commands --failed`).
#
# Settings (environment, e.g. Environment= lines in eg-agent.service):
#   EG_UFW_PORTS   ports to open, comma-separated, or "all"   (default: 22)
#   EG_UFW_PROTO   tcp or udp                                 (default: tcp)
#
# ufw adds the rule after the existing ones: if an earlier rule denies the same port,
# move that deny below (ufw evaluates rules in order). Re-adding a rule is a no-op.
set -eu

cidr=${1:?usage: apply.sh CIDR DESCRIPTION}
desc=${2:-}
case $cidr in
  '' | *[!0-9A-Fa-f:./]* | */*/*) echo "invalid CIDR: $cidr" >&2; exit 2 ;;
esac
ports=${EG_UFW_PORTS:-22}
proto=${EG_UFW_PROTO:-tcp}

if [ "$ports" = all ]; then
  ufw allow from "$cidr" comment entryguard
else
  for port in $(echo "$ports" | tr ',' ' '); do
    ufw allow from "$cidr" to any port "$port" proto "$proto" comment entryguard
  done
fi
echo "ufw: allowed $cidr (ports: $ports) for: $desc"
