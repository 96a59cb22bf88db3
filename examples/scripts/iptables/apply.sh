#!/bin/sh
# EntryGuard apply script (iptables): accept traffic from CIDR on the protected ports.
#
# eg-agent runs it as `apply.sh CIDR DESCRIPTION` (as an argument list, never through a
# shell) and also sets EG_CIDR, EG_DESCRIPTION, EG_ACTION, EG_RESOURCE. Exit 0 on
# success; anything else is reported as a failed command (see `eg admin commands --failed`).
#
# Settings (environment, e.g. Environment= lines in eg-agent.service):
#   EG_IPTABLES_PORTS   TCP ports to open, comma-separated, or "all"   (default: 22)
#   EG_IPTABLES_CHAIN   chain the ACCEPT rule goes into (position 1)   (default: INPUT)
#
# Idempotent: applying a CIDR that is already allowed changes nothing.
set -eu

cidr=${1:?usage: apply.sh CIDR DESCRIPTION}
desc=${2:-}
case $cidr in
  '' | *[!0-9A-Fa-f:./]* | */*/*) echo "invalid CIDR: $cidr" >&2; exit 2 ;;
esac
case $cidr in
  *:*) ipt=ip6tables ;;
  *) ipt=iptables ;;
esac
chain=${EG_IPTABLES_CHAIN:-INPUT}
ports=${EG_IPTABLES_PORTS:-22}

# The rule, identical in apply.sh and revoke.sh so that revoke finds exactly it.
if [ "$ports" = all ]; then
  set -- -s "$cidr"
else
  set -- -s "$cidr" -p tcp -m multiport --dports "$ports"
fi
set -- "$@" -m comment --comment entryguard -j ACCEPT

if "$ipt" -w -C "$chain" "$@" 2>/dev/null; then
  echo "$ipt: $cidr is already allowed in $chain (ports: $ports)"
  exit 0
fi
"$ipt" -w -I "$chain" 1 "$@"
echo "$ipt: allowed $cidr in $chain (ports: $ports) for: $desc"
