#!/bin/sh
# The full reproducibility check (slow, not part of `make test`): clones the
# current commit twice, into two different directories, and runs a complete
# `make image` in each (its own cargo target directory, so the static binaries
# are compiled from scratch twice), under different umasks, time zones and
# wall-clock times; then compares the two EIFs byte for byte.
#
#   KERNEL=<bzImage> enclave/check-reproducible.sh
#
# `make test` runs the fast variant (one set of binaries, assembled twice from
# two copies): src/enclave-image/tests/image.rs.
set -eu
: "${KERNEL:?set KERNEL=<path to a kernel image>}"
src="$(git rev-parse --show-toplevel)"
commit="$(git -C "$src" rev-parse HEAD)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

build() { # DIR UMASK TZ
    git clone -q "$src" "$1"
    git -C "$1" checkout -q "$commit"
    (cd "$1" && umask "$2" && TZ="$3" make --no-print-directory image KERNEL="$KERNEL" OUT="$1/out")
}
build "$tmp/one" 022 UTC
sleep 2
mkdir -p "$tmp/somewhere/else"
build "$tmp/somewhere/else/two" 077 Pacific/Auckland
if cmp "$tmp/one/out/nitro.eif" "$tmp/somewhere/else/two/out/nitro.eif"; then
    echo "reproducible: both builds of $commit are byte-identical"
    cat "$tmp/one/out/nitro.pcrs"
else
    echo "NOT reproducible: the two builds of $commit differ" >&2
    exit 1
fi
