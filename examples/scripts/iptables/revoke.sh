#!/bin/sh
# EntryGuard revoke script (iptables): remove the ACCEPT rule apply.sh added for CIDR,
# then delete CIDR's conntrack entries so its established connections die too
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

removed=0
while "$ipt" -w -C "$chain" "$@" 2>/dev/null; do
  "$ipt" -w -D "$chain" "$@"
  removed=$((removed + 1))
done
echo "$ipt: removed $removed rule(s) for $cidr from $chain (for: $desc)"

if [ "${EG_CONNTRACK_FLUSH:-1}" != 0 ]; then
  "$(dirname "$0")/../lib/flush-conntrack.sh" "$cidr"
fi
