#!/usr/bin/env bash
# Where a cold run's time goes: the release server (root, pool off) under
# strace, tracing only the few syscalls that mark a phase (--seccomp-bpf, so
# nothing else stops), for N paced requests of the trivial task. Prints the
# median of each phase in milliseconds:
#
#   request   accept → the box's clone    (HTTP, queue, slot, pipes)
#   box       clone → node's execve       (namespaces, mounts, /dev, seccomp)
#   node      execve → node's exit_group  (Node.js start, the task, exit)
#   reaper    node's exit_group → the reaper's report (it kills and reaps
#             the rest of the box first)
#   reply     the report → the response's write (collect, sign, send; the
#             reaper's exit and the namespaces' teardown are off this path)
#
# strace adds its own cost to every traced call (and follows node's threads),
# so the same N bare clean-environment `node index.js` runs are traced the
# same way, side by side: read `node` against `bare node`.
#
# With POOL=1, the warm path instead (the pool on, a box ready for each
# paced request), phase by phase:
#
#   request   accept → the hand-over's write to the box's control pipe
#   wake      hand-over → node opens the task's entry (read, parse, runMain)
#   task      entry opened → the task's first write (compile, run)
#   exit      first write → node's exit_group (end of the loop, 'exit')
#   reaper    node's exit_group → the reaper's report
#   reply     the report → the response's write (slot cgroup checks,
#             sign, send)
#
# Usage: [POOL=1] profile-cold.sh [SERVER_BIN] [REQUESTS]   (make profile)
set -euo pipefail

server=${1:-target/release/nautilus-server}
requests=${2:-20}
port=3917
traced=accept4,clone,clone3,execve,exit_group,write,writev,sendto,sendmsg
pool=0
if [ -n "${POOL:-}" ] && [ "${POOL}" != 0 ]; then
    traced=$traced,openat
    pool=1
fi
[ "$(id -u)" = 0 ] || { echo "profile-cold.sh: needs root (the box is root mode)" >&2; exit 2; }
command -v strace >/dev/null || { echo "profile-cold.sh: needs strace" >&2; exit 2; }
[ -x "$server" ] || { echo "profile-cold.sh: $server not found (cargo build --release --bin nautilus-server)" >&2; exit 2; }

work=$(mktemp -d)
pid=
# strace detaches on SIGTERM and leaves the server running: stop the server.
stop() {
    if [ -n "$pid" ]; then pkill -TERM -P "$pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
}
trap 'stop; rm -rf "$work"' EXIT
mkdir -p "$work/tasks/trivial"
printf '{"name":"trivial","version":"1.0.0","main":"index.js"}\n' >"$work/tasks/trivial/package.json"
printf "console.log('ok');\n" >"$work/tasks/trivial/index.js"
chmod -R go-w "$work"

# The pool's default (a warm box per slot), or none.
pool_env=(NAUTILUS_WARM_POOL=0)
[ "$pool" = 0 ] || pool_env=(-u NAUTILUS_WARM_POOL)
env "${pool_env[@]}" strace -f --seccomp-bpf -ttt -qq -s 128 -o "$work/trace" \
    -e trace="$traced" \
    "$server" --attestation dev --listen "tcp://127.0.0.1:$port" \
    --tasks-dir "$work/tasks" --node "$(command -v node)" >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    curl -sf "127.0.0.1:$port/health_check" >/dev/null && break
    sleep 0.1
done
for _ in $(seq "$requests"); do
    curl -sf -o /dev/null -H 'content-type: application/json' \
        -d '{"payload":{"task_path":"trivial"}}' "127.0.0.1:$port/process_data"
    sleep 0.25
done
stop
[ "$pool" = 1 ] || for i in $(seq "$requests"); do
    (cd "$work/tasks/trivial" && strace -f --seccomp-bpf -ttt -qq -o "$work/bare.$i" \
        -e trace="$traced" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp \
        node index.js >/dev/null)
    sleep 0.25
done
cat "$work"/bare.* >"$work/bare" 2>/dev/null || true

[ -z "${KEEP_TRACE:-}" ] || cp "$work/trace" "$KEEP_TRACE"
python3 - "$work/trace" "$work/bare" "$pool" <<'EOF'
import re, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
ev = []
for l in lines:
    m = re.match(r"(\d+)\s+(\d+\.\d+) (\w+)\((.*)", l)
    if m:
        ev.append((int(m[1]), float(m[2]), m[3], m[4]))
runs, cur = [], None


def ended(cur, pid, t, call, args):
    """The end every run shares: node's exit, the reaper's report, the reply.
    True once the reply is written."""
    if call == "exit_group" and pid == cur.get("node_pid") and "node_exit" not in cur:
        cur["node_exit"] = t
    elif call == "write" and "node_exit" in cur and "report" not in cur and args.startswith('3, "\\2\\0\\0\\0'):
        cur["report"] = t
    elif call in ("write", "writev", "sendto", "sendmsg") and "report" in cur and "HTTP/1.1" in args:
        cur["reply"] = t
        return True
    return False


def show(kind, runs, phases):
    print(f"{len(runs)} {kind} runs traced; median ms per phase (strace adds to each traced call)")
    for name, a, b in phases:
        print(f"  {name:9} {statistics.median((r[b] - r[a]) * 1000 for r in runs):7.2f}")


if sys.argv[3] == "1":
    for pid, t, call, args in ev:
        if call == "accept4" and "= -1" not in args:
            cur = {"accept": t}
        elif cur is None:
            continue
        elif call == "write" and '\\"cwd\\"' in args and "handover" not in cur:
            cur["handover"] = t
        elif call == "openat" and "handover" in cur and "/task/trivial/index.js" in args and "entry" not in cur:
            cur["entry"], cur["node_pid"] = t, pid
        elif call in ("write", "writev") and pid == cur.get("node_pid") and "ok" in args and "first_write" not in cur:
            cur["first_write"] = t
        elif ended(cur, pid, t, call, args):
            if all(k in cur for k in ("handover", "entry", "first_write")):
                runs.append(cur)
            cur = None
    show("warm", runs, [("request", "accept", "handover"), ("wake", "handover", "entry"),
                        ("task", "entry", "first_write"), ("exit", "first_write", "node_exit"),
                        ("reaper", "node_exit", "report"), ("reply", "report", "reply"),
                        ("total", "accept", "reply")])
    sys.exit(0)
for pid, t, call, args in ev:
    if call == "accept4" and "= -1" not in args and (cur is None or "box" not in cur):
        cur = {"accept": t}
    elif cur is None:
        continue
    elif call in ("clone", "clone3") and "CLONE_NEWPID" in args and "box" not in cur:
        cur["box"] = t
    elif call == "execve" and "box" in cur and "exec" not in cur:
        cur["exec"], cur["node_pid"] = t, pid
    elif ended(cur, pid, t, call, args):
        runs.append(cur)
        cur = None
show("cold", runs, [("request", "accept", "box"), ("box", "box", "exec"), ("node", "exec", "node_exit"),
                    ("reaper", "node_exit", "report"), ("reply", "report", "reply"), ("total", "accept", "reply")])
bare, start = [], {}
for l in open(sys.argv[2]).read().splitlines():
    m = re.match(r"(\d+)\s+(\d+\.\d+) (\w+)\((.*)", l)
    if m and m[3] == "execve" and "node" in m[4]:
        start[m[1]] = float(m[2])
    elif m and m[3] == "exit_group" and m[1] in start:
        bare.append((float(m[2]) - start.pop(m[1])) * 1000)
print(f"  {'bare node':9} {statistics.median(bare):7.2f}   (execve → exit_group, same tracing, {len(bare)} runs)")
EOF
