#!/bin/sh
# EntryGuard revoke script (nginx allowlist): remove `allow CIDR;` from the allowlist and
# reload nginx; new requests from CIDR get 403. See allowlist.sh for the settings.
# eg-agent runs it as `revoke.sh CIDR DESCRIPTION`.
exec "$(dirname "$0")/allowlist.sh" remove "$@"
