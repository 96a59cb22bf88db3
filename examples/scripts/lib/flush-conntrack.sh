#!/bin/sh
# flush-conntrack.sh CIDR: delete the conntrack entries of connections from CIDR, so a
# revoked address loses its established connections too (firewalls usually accept
# ESTABLISHED,RELATED traffic before any other rule, so removing the address's rule
# alone would let an open SSH session live on). Used by iptables/ and ufw/revoke.sh.
#
# Needs the `conntrack` tool (Debian/Ubuntu: apt-get install conntrack); without it this
# fails (exit 3) so that the missing flush shows as a failed command.
set -eu

cidr=${1:?usage: flush-conntrack.sh CIDR}
case $cidr in
  '' | *[!0-9A-Fa-f:./]* | */*/*) echo "invalid CIDR: $cidr" >&2; exit 2 ;;
esac
if ! command -v conntrack >/dev/null 2>&1; then
  echo "conntrack is not installed: established connections from $cidr were not cut (apt-get install conntrack)" >&2
  exit 3
fi
case $cidr in
  *:*) family=ipv6 bits=128 ;;
  *) family=ipv4 bits=32 ;;
esac
addr=${cidr%/*}
prefix=$bits
case $cidr in */*) prefix=${cidr#*/} ;; esac

# The source mask for `conntrack --mask-src`, written out in full.
mask() {
  if [ "$family" = ipv4 ]; then
    m=$(( 0xffffffff ^ ((1 << (32 - $1)) - 1) ))
    echo "$(( (m >> 24) & 255 )).$(( (m >> 16) & 255 )).$(( (m >> 8) & 255 )).$(( m & 255 ))"
  else
    i=0 out=
    while [ "$i" -lt 8 ]; do
      b=$(( $1 - 16 * i ))
      [ "$b" -lt 0 ] && b=0
      [ "$b" -gt 16 ] && b=16
      out="$out${out:+:}$(printf %x $(( 0xffff ^ ((1 << (16 - b)) - 1) )))"
      i=$((i + 1))
    done
    echo "$out"
  fi
}

if [ "$prefix" = "$bits" ]; then
  set -- -D -f "$family" -s "$addr"
else
  set -- -D -f "$family" -s "$addr" --mask-src "$(mask "$prefix")"
fi
# conntrack exits 1 when nothing matched: that is success here.
if out=$(conntrack "$@" 2>&1); then
  echo "$out"
else
  case $out in
    *" 0 flow entries"*) echo "conntrack: no connections from $cidr" ;;
    *) echo "$out" >&2; exit 4 ;;
  esac
fi
