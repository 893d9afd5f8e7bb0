#!/bin/sh
# Prints a safe enclave memory size in MiB for an EIF and a slot count:
#
#   enclave/memory.sh TOOL EIF SLOTS [SLOT_MIB]
#
# (TOOL is the enclave-image binary.) The rule, docs/image.md ("Sizing"):
#   the EIF itself (the loader copies kernel and ramdisks into enclave memory;
#     the compressed ramdisks are freed only after they are unpacked)
# + the unpacked ramdisks (the root file system lives in RAM)
# + 256 MiB for the kernel, the init, the server and /tmp, /run
# + SLOTS x SLOT_MIB (each slot's cgroup memory limit, its warm node included;
#   the server runs one slot per vCPU, SLOT_MIB defaults to its 512 MiB)
# rounded up to a multiple of 256 MiB.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 TOOL EIF SLOTS [SLOT_MIB]" >&2; exit 2; }
tool="$1" eif="$2" slots="$3" slot_mib="${4:-512}"
[ -f "$eif" ] || { echo "memory.sh: $eif does not exist: build it first (make image)" >&2; exit 1; }
case "$slots$slot_mib" in *[!0-9]*|'') echo "memory.sh: SLOTS and SLOT_MIB must be numbers" >&2; exit 2 ;; esac
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$tool" extract "$eif" --out-dir "$work/sections" >/dev/null
unpacked=0
for ramdisk in "$work"/sections/ramdisk-*; do
    unpacked=$(( unpacked + $(gzip -dc < "$ramdisk" | wc -c) ))
done
total=$(( $(mib "$(wc -c < "$eif")") + $(mib "$unpacked") + 256 + slots * slot_mib ))
echo $(( (total + 255) / 256 * 256 ))
