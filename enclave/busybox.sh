#!/bin/sh
# The image's /bin/sh: busybox built from Debian's source package (the two
# files enclave/inputs.lock pins by SHA-256, kind `src`: the upstream tarball
# and Debian's patches), configured by enclave/busybox.config to hold only the
# applets enclave/busybox.applets lists, linked statically against musl.
# Debian's busybox-static would bring every applet (wget, nc, httpd, ...) to
# the enclave, each one reachable as `busybox <applet>` and from its shell.
#
# Built once per set of inputs (source pins, config, applet list, this script,
# compiler) into the cache; later calls only check and print the path. The
# build is reproducible: no timestamp (KCONFIG_NOTIMESTAMP, a fixed build tag),
# no path of the build directory in the binary, and the same bytes whatever
# the umask, zone, locale or directory (src/enclave-image/tests/busybox.rs).
#
# Prints the path of the static binary; logs go to stderr.
#
# Environment:
#   CACHE          download cache (default ~/.cache/nautilus/inputs)
#   BUSYBOX_CACHE  built binaries (default ~/.cache/nautilus/busybox)
#   BUSYBOX_CC     a C compiler that links static musl binaries (the
#                  Containerfile's StageX `cc`); default: the pinned gcc of
#                  enclave/musl-cc.sh, as `make image` uses for the server
set -eu
# shellcheck disable=SC3040
(set -o pipefail) 2>/dev/null && set -o pipefail
export LC_ALL=C TZ=UTC
umask 022

die() { echo "busybox: $*" >&2; exit 1; }
log() { echo "busybox: $*" >&2; }

ENCLAVE="$(cd "$(dirname "$0")" && pwd -P)"
BASE="${NAUTILUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nautilus}"
CACHE="${CACHE:-$BASE/inputs}"
BUILDS="${BUSYBOX_CACHE:-$BASE/busybox}"
CONFIG="$ENCLAVE/busybox.config"
APPLETS="$ENCLAVE/busybox.applets"
mkdir -p "$CACHE" "$BUILDS"

for tool in make patch bzip2 xz curl sha256sum; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool is missing: building busybox needs make, patch, bzip2, xz, curl and sha256sum (Debian/Ubuntu: apt-get install make patch bzip2 xz-utils curl coreutils)"
done

sha256() { sha256sum "$1" | cut -c1-64; }

# fetch_src sha256:HEX POOLPATH sha1:HEX: the cached file, else the first
# source whose bytes match the pin (deb.debian.org's pool, then the file by
# its SHA-1 on snapshot.debian.org, content-addressed: it never moves).
fetch_src() {
    pin="${1#sha256:}" pool="$2" sha1="${3#sha1:}"
    file="$CACHE/$(basename "$pool")"
    [ -f "$file" ] && [ "$(sha256 "$file")" = "$pin" ] && return 0
    rm -f "$file"
    for url in "https://deb.debian.org/debian/$pool" "https://snapshot.debian.org/file/$sha1"; do
        log "downloading $url"
        if curl -fsSL --retry 3 --connect-timeout 20 -o "$file.part" "$url" &&
            [ "$(sha256 "$file.part")" = "$pin" ]; then
            mv "$file.part" "$file"
            return 0
        fi
        rm -f "$file.part"
    done
    die "could not download $(basename "$pool") matching sha256:$pin (network needed the first time)"
}

ORIG="" PATCHES="" VERSION="" PINS=""
while read -r kind name version pin source sha1; do
    [ "$kind" = src ] && [ "$name" = busybox ] || continue
    [ -n "$sha1" ] || die "inputs.lock: src busybox $source has no sha1: column"
    fetch_src "$pin" "$source" "$sha1"
    case "$file" in
        *.orig.tar.*) ORIG="$file" ;;
        *.debian.tar.*) PATCHES="$file" ;;
        *) die "inputs.lock: src busybox $source is neither an .orig nor a .debian tarball" ;;
    esac
    VERSION="$version"
    PINS="$PINS $pin"
done < "$ENCLAVE/inputs.lock"
[ -n "$ORIG" ] && [ -n "$PATCHES" ] || die "inputs.lock must pin busybox's .orig.tar and .debian.tar (kind src)"

# The compiler: the pinned gcc (its own assembler and, through -B, its own
# linker; ar, strip, ... from the same binutils), or the one BUSYBOX_CC names
# with the binutils on PATH.
# BINUTILS is the prefix of ar, nm, objcopy, objdump and strip.
if [ -n "${BUSYBOX_CC:-}" ]; then
    CC="$BUSYBOX_CC" BINUTILS="" LD_DIR=""
    COMPILER="$("$CC" --version 2>&1 | head -n1)" || die "BUSYBOX_CC=$CC does not run"
else
    TREE="$("$ENCLAVE/musl-cc.sh")" || exit 1
    CC="$TREE/cc" BINUTILS="$TREE/usr/bin/x86_64-linux-gnu-" LD_DIR="$TREE/usr/bin/x86_64-linux-gnu-ld"
    export LD_LIBRARY_PATH="$TREE/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    COMPILER="pinned gcc $(basename "$TREE")"
fi

# One directory per set of inputs: a change to any of them builds anew.
key="$( { echo "$PINS"; echo "$COMPILER"; cat "$CONFIG" "$APPLETS" "$0"; } | sha256sum | cut -c1-16)"
OUT="$BUILDS/$key"

# applets: the applet names busybox.applets lists, one a line, sorted.
applets() { sed 's/#.*//' "$APPLETS" | tr -s ' \t' '\n\n' | grep . | LC_ALL=C sort; }

if [ ! -x "$OUT/busybox" ]; then
    log "building busybox $VERSION from source with $COMPILER into $OUT"
    # Kbuild cannot build in a path with spaces: build under TMPDIR, then
    # move only the binary into the cache.
    work="$(mktemp -d "${TMPDIR:-/tmp}/busybox-build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    case "$work" in *[[:space:]]*) die "TMPDIR=$TMPDIR has white space, which busybox's build cannot handle: set TMPDIR to another directory" ;; esac
    mkdir "$work/src" "$work/debian" "$work/tools"
    # Decompressed explicitly: not every tar (busybox's) detects bzip2 or xz.
    untar() {
        case "$1" in
            *.bz2) bzip2 -dc "$1" ;;
            *.xz) xz -dc "$1" ;;
            *) die "$1: neither .bz2 nor .xz" ;;
        esac | tar -xf - -C "$2" --strip-components=1
    }
    untar "$ORIG" "$work/src"
    untar "$PATCHES" "$work/debian"
    # Debian's patches, in its series order (security fixes included).
    sed 's/#.*//' "$work/debian/patches/series" | while read -r patch _; do
        [ -n "$patch" ] || continue
        # (cd, not -d: StageX's busybox patch has no -d.)
        (cd "$work/src" && patch -p1 -N < "$work/debian/patches/$patch") >> "$work/patch.log" 2>&1 \
            || { cat "$work/patch.log" >&2; die "Debian's $patch does not apply (above)"; }
    done
    [ -z "$LD_DIR" ] || ln -s "$LD_DIR" "$work/tools/ld"
    cp "$CONFIG" "$work/src/.config"
    set -- -C "$work/src" -j"$(nproc 2>/dev/null || echo 2)" \
        HOSTCC="$CC -static" CC="$CC${LD_DIR:+ -B$work/tools/}" \
        AR="${BINUTILS}ar" NM="${BINUTILS}nm" STRIP="${BINUTILS}strip" \
        OBJCOPY="${BINUTILS}objcopy" OBJDUMP="${BINUTILS}objdump" \
        KCONFIG_NOTIMESTAMP=1 SOURCE_DATE_EPOCH=0 \
        BB_EXTRA_VERSION="Debian $VERSION, nautilus enclave/busybox.config"
    make -s "$@" silentoldconfig < /dev/null > "$work/build.log" 2>&1 \
        || { cat "$work/build.log" >&2; die "make silentoldconfig failed (above; when it wants to ask about an option, enclave/busybox.config lacks it for busybox $VERSION: regenerate it, docs/image.md, \"busybox\")"; }
    # The committed config must be complete and exact: kconfig rewrote it with
    # every option resolved; any option it added or changed means the file
    # is stale for this source.
    options() { grep -E '^CONFIG_|^# CONFIG_.* is not set$' "$1" | LC_ALL=C sort; }
    options "$CONFIG" > "$work/want"
    options "$work/src/.config" > "$work/got"
    diff -u "$work/want" "$work/got" >&2 \
        || die "enclave/busybox.config is not what kconfig makes of it for busybox $VERSION (diff above): regenerate it (docs/image.md, \"busybox\")"
    make "$@" busybox >> "$work/build.log" 2>&1 \
        || { tail -n 40 "$work/build.log" >&2; die "the busybox build failed (above)"; }
    applets > "$work/want"
    "$work/src/busybox" --list | LC_ALL=C sort > "$work/got"
    diff -u "$work/want" "$work/got" >&2 \
        || die "the built busybox offers other applets than enclave/busybox.applets lists (diff above)"
    staged="$(mktemp -d "$BUILDS/.new-XXXXXX")" && chmod 0755 "$staged"
    cp "$work/src/busybox" "$staged/busybox" && chmod 0755 "$staged/busybox"
    # Another build may have finished the same inputs meanwhile: keep the first.
    mv -T "$staged" "$OUT" 2>/dev/null || rm -rf "$staged"
    rm -rf "$work"
    trap - EXIT
    log "built $OUT/busybox ($(wc -c < "$OUT/busybox") bytes)"
fi
echo "$OUT/busybox"
