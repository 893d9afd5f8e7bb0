#!/usr/bin/env bash
# Where a run's CPU goes (`make profile-cpu`, POOL=1 for the warm pool): the
# release server (root) under `perf record`, N paced requests of the trivial
# task, and N bare clean-environment `node index.js` runs under the same
# sampling, one after each request. Prints CPU milliseconds per run, by who spends it and where:
#
#   who     server  the server's own threads (HTTP, building the box with
#                   clone(2) and its namespaces, collect, sign, send)
#           box     the box's processes before and besides node: the PID 1
#                   reaper (mounts, seccomp, its kill/reap and exit, which
#                   tears the namespaces down) and node's process before
#                   its execve
#           node    every thread of node, from its execve to its exit
#   where   user code by binary (node, libc, …), or the kernel by the
#           system call that entered it (page faults and the rest apart)
#
# Only the samples between two moments when the pool is full (POOL=1) or the
# server is idle count: as many box lives as runs. Sampling, not tracing:
# nothing is slowed but by the sampling itself (the same for bare node).
#
# Usage: [POOL=1] profile-cpu.sh [SERVER_BIN] [REQUESTS]   (make profile-cpu)
set -euo pipefail

server=${1:-target/release/nautilus-server}
requests=${2:-40}
freq=${FREQ:-4999}
port=3918
pool=0
if [ -n "${POOL:-}" ] && [ "${POOL}" != 0 ]; then pool=1; fi
[ "$(id -u)" = 0 ] || { echo "profile-cpu.sh: needs root (the box is root mode)" >&2; exit 2; }
command -v perf >/dev/null || { echo "profile-cpu.sh: needs perf (apt-get install linux-perf)" >&2; exit 2; }
[ -x "$server" ] || { echo "profile-cpu.sh: $server not found (cargo build --release --bin nautilus-server)" >&2; exit 2; }

work=$(mktemp -d)
perf_pid=
stop() {
    if [ -n "$perf_pid" ]; then
        # The server is perf's only child: a graceful stop ends perf too.
        pkill -TERM -P "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf_pid=
    fi
}
trap 'stop; rm -rf "$work"' EXIT
mkdir -p "$work/tasks/trivial"
printf '{"name":"trivial","version":"1.0.0","main":"index.js"}\n' >"$work/tasks/trivial/package.json"
printf "console.log('ok');\n" >"$work/tasks/trivial/index.js"
chmod -R go-w "$work"
mono() { python3 -c 'import time; print(time.clock_gettime(time.CLOCK_MONOTONIC))'; }
ask() {
    curl -sf -o /dev/null -H 'content-type: application/json' \
        -d '{"payload":{"task_path":"trivial"}}' "127.0.0.1:$port/process_data"
}
ready() { curl -sf "127.0.0.1:$port/metrics" | sed -n 's/^nautilus_warm_boxes_ready //p'; }

pool_args=(--warm-pool 0)
[ "$pool" = 0 ] || pool_args=()
perf record -q -F "$freq" -g -k CLOCK_MONOTONIC -o "$work/server.data" -- \
    "$server" --attestation dev --listen "tcp://127.0.0.1:$port" "${pool_args[@]}" \
    --tasks-dir "$work/tasks" --node "$(command -v node)" >"$work/server.log" 2>&1 &
perf_pid=$!
for _ in $(seq 100); do
    curl -sf "127.0.0.1:$port/health_check" >/dev/null && break
    sleep 0.1
done
# Settle: a few runs (Node's caches), then the pool full again.
settle() {
    local want=0 n
    [ "$pool" = 0 ] || want=$(nproc)
    for _ in $(seq 50); do
        n=$(ready || echo 0)
        [ "${n:-0}" -ge "$want" ] && { sleep 0.5; return; }
        sleep 0.1
    done
}
for _ in 1 2 3; do ask; done
settle
# Interleaved: a request, then a bare run (under its own perf), and so on,
# so that both see the same machine.
from=$(mono)
for i in $(seq "$requests"); do
    ask
    sleep 0.25
    (cd "$work/tasks/trivial" && perf record -q -F "$freq" -g -o "$work/bare.$i.data" -- \
        env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp node index.js >/dev/null)
    sleep 0.25
done
settle
to=$(mono)
server_pid=$(pgrep -P "$perf_pid")
stop

fields=pid,tid,comm,time,ip,sym,dso
perf script -i "$work/server.data" -F "$fields" >"$work/server.txt" 2>/dev/null
for i in $(seq "$requests"); do
    perf script -i "$work/bare.$i.data" -F "$fields" 2>/dev/null
done >"$work/bare.txt"
# KEEP=DIR keeps the samples as text (server.txt, bare.txt), with the window.
if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$work/server.txt" "$work/bare.txt" "$KEEP/"
    echo "$server_pid $from $to $requests $freq" >"$KEEP/window"
fi
python3 - "$work/server.txt" "$work/bare.txt" "$server_pid" "$from" "$to" "$requests" "$freq" "$pool" <<'EOF'
import collections, re, sys
server_txt, bare_txt, server_pid, t0, t1, n, freq, pool = sys.argv[1:]
t0, t1, n, freq = float(t0), float(t1), int(n), float(freq)
head = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+(\d+\.\d+):")

def samples(path):
    """(pid, comm, time, frames) per sample; frames leaf first as (sym, dso)."""
    cur = None
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = head.match(line)
        if m:
            if cur:
                yield cur
            cur = (m[2], m[1], float(m[4]), [])
        elif line.strip() and cur:
            parts = line.strip().split(None, 1)
            rest = parts[1] if len(parts) > 1 else ""
            dm = re.match(r"(.*) \((.*)\)$", rest)
            cur[3].append((dm[1], dm[2]) if dm else (rest, ""))
    if cur:
        yield cur

def where(frames):
    if not frames:
        return "?"
    sym, dso = frames[0]
    if "kernel" not in dso:
        name = dso.rsplit("/", 1)[-1] or "?"
        return "user: " + re.sub(r"\.so[.\d]*$", "", name)
    syms = [s for s, _ in frames]
    if any("page_fault" in s for s in syms):
        return "kernel: page faults"
    for i, s in enumerate(syms):
        if s.startswith("do_syscall_64") and i > 0:
            call = syms[i - 1]
            call = re.sub(r"^(__x64_sys_|__do_sys_|__se_sys_|ksys_)", "", call)
            return "kernel: " + call
    if any("ret_from_fork" in s for s in syms):
        return "kernel: new process/thread start"
    if any(s.startswith(("asm_sysvec", "asm_common_interrupt", "irq_exit")) for s in syms):
        return "kernel: interrupts"
    if any("exit_to_user_mode" in s for s in syms):
        return "kernel: return to user (signals, scheduling)"
    return "kernel: other"

def table(path, is_server):
    per = collections.Counter()
    who_total = collections.Counter()
    node_pids = set()
    rows = list(samples(path))
    for pid, comm, t, frames in rows:
        if comm == "node":
            node_pids.add(pid)
    for pid, comm, t, frames in rows:
        if is_server and not (t0 <= t <= t1):
            continue
        if not is_server and comm != "node":
            continue  # sh, env, sleep: the loop's, not node's
        if is_server and pid == server_pid:
            who = "server"
        elif comm == "node":
            who = "node"
        else:
            who = "box"
        per[(who, where(frames))] += 1
        who_total[who] += 1
    ms = lambda c: c * 1000.0 / freq / n
    return per, who_total, ms

label = "warm pool" if pool == "1" else "cold"
per, total, ms = table(server_txt, True)
bper, btotal, _ = table(bare_txt, False)
print(f"CPU ms per run, {label} server vs bare node, {n} paced runs each, sampled at {freq:.0f} Hz")
print(f"  total: server {ms(total['server']):.1f} + box {ms(total['box']):.1f} + node {ms(total['node']):.1f} "
      f"= {ms(sum(total.values())):.1f}   bare node {ms(sum(btotal.values())):.1f}")
print(f"  {'who':6} {'where':44} {'server':>7} {'bare':>7}")
keys = set(per) | {k for k in bper}
small = collections.Counter()
for k in sorted(keys, key=lambda k: -(per.get(k, 0) + bper.get(k, 0))):
    a, b = ms(per.get(k, 0)), ms(bper.get(k, 0))
    if a < 0.1 and b < 0.1:
        small[(k[0], "server")] += per.get(k, 0)
        small[(k[0], "bare")] += bper.get(k, 0)
        continue
    print(f"  {k[0]:6} {k[1][:44]:44} {a:7.2f} {b:7.2f}")
for who in ("server", "box", "node"):
    a, b = ms(small[(who, "server")]), ms(small[(who, "bare")])
    if a or b:
        print(f"  {who:6} {'(the rest, each under 0.1 ms)':44} {a:7.2f} {b:7.2f}")
EOF
