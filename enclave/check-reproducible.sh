#!/bin/sh
# The full reproducibility check: clones the committed HEAD twice, into two
# directories at different depths, and runs a complete `make image` in each:
# each clone compiles the static musl binaries itself (its own cargo target
# directory inside the clone, nothing shared but cargo's download registry and
# the hash-checked input cache), under a different umask, time zone, locale
# and wall-clock time: the builds run minutes apart, and the second one's
# assembly (build-image.sh: node, npm, tar, the image tool) runs under
# libfaketime, years ahead. Not its compile: rustc hangs under libfaketime
# (wolfcw/libfaketime#130, jemalloc), and the minutes between the two compiles
# already show any time that reaches a binary.
# Then compares the two out/nitro.eif and out/nitro.pcrs byte for byte.
#
#   enclave/check-reproducible.sh [WORK]
#
# Clones go to WORK/one and WORK/deeper/still/two and are left there for the
# caller (the test in src/enclave-image/tests/reproducible.rs, which `make
# repro-test`, part of `make test`, runs); without WORK, to a temporary
# directory removed at the end. Uncommitted changes are not part of the check.
set -eu
command -v faketime >/dev/null || {
    echo "check-reproducible: faketime is missing (apt-get install faketime); it moves the second assembly's wall-clock time" >&2
    exit 1
}
src="$(git rev-parse --show-toplevel)"
commit="$(git -C "$src" rev-parse HEAD)"
if [ $# -ge 1 ]; then
    work="$1"
    rm -rf "$work/one" "$work/deeper"
    mkdir -p "$work"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi
work="$(cd "$work" && pwd)"

# build DIR UMASK TZ LOCALE [WRAPPER]: a fresh clone of the commit at DIR,
# built with nothing of the caller's build settings; WRAPPER runs the assembly.
build() {
    dir="$1" mask="$2" zone="$3" locale="$4" wrapper="${5:-}"
    mkdir -p "$(dirname "$dir")"
    git clone -q --no-hardlinks "$src" "$dir"
    git -C "$dir" checkout -q --detach "$commit"
    echo "check-reproducible: building $commit in $dir (umask $mask, TZ=$zone, LC_ALL=$locale${wrapper:+, assembly under $wrapper})" >&2
    (
        cd "$dir"
        umask "$mask"
        unset CARGO_TARGET_DIR ENCLAVE_TARGET_DIR OUT RUSTFLAGS CARGO_BUILD_RUSTFLAGS \
            CARGO_ENCODED_RUSTFLAGS SOURCE_DATE_EPOCH
        TZ="$zone" LC_ALL="$locale" LANG="$locale" \
            make --no-print-directory image ASSEMBLE_WRAPPER="$wrapper"
    )
    echo "check-reproducible: $dir built at $(date -u +%FT%TZ) (real time)" >&2
}

build "$work/one" 022 UTC C
# Years ahead, and the clock keeps running from there.
build "$work/deeper/still/two" 077 Pacific/Auckland C.UTF-8 "faketime -f +1234d"

one="$work/one/out" two="$work/deeper/still/two/out"
if cmp "$one/nitro.eif" "$two/nitro.eif" && cmp "$one/nitro.pcrs" "$two/nitro.pcrs"; then
    echo "check-reproducible: both builds of $commit are byte-identical ($(wc -c < "$one/nitro.eif") bytes):"
    cat "$one/nitro.pcrs"
else
    echo "check-reproducible: NOT reproducible: the two builds of $commit differ" >&2
    for out in "$one" "$two"; do
        echo "== $out" >&2
        cat "$out/nitro.pcrs" >&2
        sha256sum "$out/boot.cpio.gz" "$out/app.cpio.gz" >&2
    done
    bins=target/enclave/x86_64-unknown-linux-musl/release
    for bin in nautilus-init nautilus-server enclave-image; do
        cmp -s "$work/one/$bins/$bin" "$work/deeper/still/two/$bins/$bin" \
            || echo "check-reproducible: the two compiled $bin differ" >&2
    done
    exit 1
fi
