#!/bin/sh
# The C compiler of `make image`'s musl build (ring's C and assembly end up in
# nautilus-server): Debian 12's gcc 12 and binutils with musl's headers, taken
# from the .deb files enclave/inputs.lock pins by SHA-256 (kind `cc`), never
# the host's. Fetched as the image's Debian inputs are (apt-get download,
# deb.debian.org's pool, then snapshot.debian.org by SHA-1), checked against
# the pin before every use, unpacked once into the cache.
#
# Prints the directory holding `cc` (gcc with musl's specs), `link-gcc` (the
# same gcc without musl's specs: the linker of rustc, which passes its own musl
# crt objects and libc; the name ends in -gcc so rustc drives it as gcc) and
# `ar`; both drivers run the pinned `as` and `ld`. Logs go to stderr.
#
# Environment:
#   CACHE  download cache (default ~/.cache/nautilus/inputs, as build-image.sh)
set -eu
# shellcheck disable=SC3040
(set -o pipefail) 2>/dev/null && set -o pipefail
export LC_ALL=C
umask 022

die() { echo "musl-cc: $*" >&2; exit 1; }
log() { echo "musl-cc: $*" >&2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd -P)"
BASE="${NAUTILUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nautilus}"
CACHE="${CACHE:-$BASE/inputs}"
LOCK="$ROOT/enclave/inputs.lock"
mkdir -p "$CACHE"

sha256() { sha256sum "$1" | cut -c1-64; }

# fetch_deb NAME VERSION sha256:HEX POOLPATH sha1:HEX: the cached file, else
# the first source whose bytes match the pin.
fetch_deb() {
    name="$1" version="$2" pin="${3#sha256:}" pool="$4" sha1="${5#sha1:}"
    file="$CACHE/$(basename "$pool")"
    [ -f "$file" ] && [ "$(sha256 "$file")" = "$pin" ] && return 0
    rm -f "$file"
    tmp="$(mktemp -d)"
    if command -v apt-get >/dev/null 2>&1 &&
        (cd "$tmp" && apt-get download -q "$name=$version" >/dev/null 2>&1); then
        got="$(ls "$tmp"/*.deb 2>/dev/null | head -n1)"
        [ -n "$got" ] && [ "$(sha256 "$got")" = "$pin" ] && mv "$got" "$file"
    fi
    if [ ! -f "$file" ]; then
        for url in "https://deb.debian.org/debian/$pool" "https://snapshot.debian.org/file/$sha1"; do
            log "downloading $name $version from $url"
            if curl -fsSL --retry 3 --connect-timeout 20 -o "$tmp/deb" "$url" &&
                [ "$(sha256 "$tmp/deb")" = "$pin" ]; then
                mv "$tmp/deb" "$file"
                break
            fi
        done
    fi
    rm -rf "$tmp"
    [ -f "$file" ] || die "could not download $name $version matching sha256:$pin (network needed the first time)"
}

# unpack DEB DIR: the package's files (no maintainer scripts run).
unpack() {
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$1" "$2"
    else
        member="$(cd "$2" && ar t "$1" | grep '^data\.tar')" || die "$1 has no data.tar"
        (cd "$2" && ar x "$1" "$member" && tar -xf "$member" && rm -f "$member")
    fi
}

FILES="" PINS=""
while read -r kind name version pin source sha1; do
    [ "$kind" = cc ] || continue
    [ -n "$sha1" ] || die "inputs.lock: cc $name has no sha1: column (its snapshot.debian.org file id)"
    fetch_deb "$name" "$version" "$pin" "$source" "$sha1"
    FILES="$FILES $file"
    PINS="$PINS $pin"
done < "$LOCK"
[ -n "$FILES" ] || die "inputs.lock pins no cc packages"

# One directory per set of pins: a changed pin never reuses an old tree.
key="$(echo "$PINS" | sha256sum | cut -c1-16)"
TREE="$BASE/musl-cc/$key"
if [ ! -d "$TREE" ]; then
    log "unpacking the pinned C compiler into $TREE"
    mkdir -p "$BASE/musl-cc"
    work="$(mktemp -d "$BASE/musl-cc/.new-XXXXXX")"
    for f in $FILES; do unpack "$f" "$work"; done
    # musl's specs name its headers and libraries under /usr: point them here.
    sed "s#/usr/include/x86_64-linux-musl#$TREE/usr/include/x86_64-linux-musl#g; s#/usr/lib/x86_64-linux-musl#$TREE/usr/lib/x86_64-linux-musl#g" \
        "$work/usr/lib/x86_64-linux-musl/musl-gcc.specs" > "$work/musl-gcc.specs"
    mkdir -p "$work/bin"
    ln -s ../usr/bin/x86_64-linux-gnu-as "$work/bin/as"
    # Another build may have unpacked the same pins meanwhile: keep the first.
    mv -T "$work" "$TREE" 2>/dev/null || rm -rf "$work"
fi

# put NAME: stdin becomes $TREE/NAME (mode 0755) unless it is there. A
# tree unpacked before a tool was added gets it here; a temporary name and a
# rename keep a concurrent build from seeing half a file.
put() {
    if [ ! -e "$TREE/$1" ] && [ ! -L "$TREE/$1" ]; then
        cat > "$TREE/.$(basename "$1").$$"
        chmod 0755 "$TREE/.$(basename "$1").$$"
        mv -f "$TREE/.$(basename "$1").$$" "$TREE/$1"
    else
        cat > /dev/null
    fi
}
# -B names the pinned assembler and linker (gcc looks in -B directories before
# PATH; collect2 too, through COMPILER_PATH); gcc finds cc1 and collect2
# relative to itself; the pinned binutils' own libraries come first.
if [ ! -L "$TREE/bin/ld" ]; then
    ln -s ../usr/bin/x86_64-linux-gnu-ld "$TREE/bin/.ld.$$"
    mv -f "$TREE/bin/.ld.$$" "$TREE/bin/ld"
fi
put cc <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$TREE/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
    exec "$TREE/usr/bin/x86_64-linux-gnu-gcc-12" -B"$TREE/bin/" "\$@" -specs "$TREE/musl-gcc.specs"
WRAP
put link-gcc <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$TREE/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
    exec "$TREE/usr/bin/x86_64-linux-gnu-gcc-12" -B"$TREE/bin/" "\$@"
WRAP
put ar <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$TREE/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
    exec "$TREE/usr/bin/x86_64-linux-gnu-ar" "\$@"
WRAP

# The compiler and the linker driver must run their own cc1, as and ld (and
# collect2, which runs ld), never a host's.
for driver in cc link-gcc; do
    for prog in cc1 as ld collect2; do
        where="$("$TREE/$driver" -print-prog-name=$prog)"
        case "$where" in
            "$TREE"/*) ;;
            *) die "the pinned gcc ($driver) would run $prog from $where, not from $TREE" ;;
        esac
    done
done
probe="$(mktemp -d)"
if ! echo 'int nautilus_probe(void) { return 0; }' > "$probe/p.c" ||
    ! "$TREE/cc" -c "$probe/p.c" -o "$probe/p.o" 2> "$probe/err"; then
    cat "$probe/err" >&2
    rm -rf "$probe"
    die "the pinned gcc 12 does not run here (above); it needs the host's libisl23, libmpc3, libmpfr6, libgmp10, zlib and libzstd (Debian/Ubuntu: apt-get install libisl23 libmpc3 libmpfr6 libgmp10)"
fi
rm -rf "$probe"
echo "$TREE"
