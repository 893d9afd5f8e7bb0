#!/bin/sh
# Started by the enclave image's /init (PID 1) once the system is up; copied
# into the image as /run.sh. Runs nautilus-server on vsock port 3000 and
# restarts it with backoff whenever it exits. If this script ever exits, the
# init powers the enclave off.
#
# Kernel command line switch (read from /proc/cmdline):
#   nautilus.attestation=dev   dev attestation instead of the NSM (default nsm),
#                              for booting the same image in a VM for tests.
# The cmdline is measured into PCR0 and PCR1, so a host cannot flip this on a
# real enclave without changing the PCRs clients pin.
#
# Dev mode only:
#   - the server writes its throwaway dev root CA to /run/dev-root.pem, and this
#     script prints it to the console between the lines
#     `nautilus-dev-root-begin` and `nautilus-dev-root-end` after every start;
#   - a console line `nautilus-kill-server` makes this script SIGKILL the
#     server (to prove the restart); a real enclave's console takes no input;
#   - a console line `nautilus-poweroff` stops the server with SIGTERM and
#     ends this script, so the init powers the VM off cleanly.

set -u
export PATH=/usr/bin:/bin
export HOME=/root
export RUST_LOG="${RUST_LOG:-info}"

log() { echo "run.sh: $*"; }

mode=nsm
for word in $(cat /proc/cmdline); do
    case "$word" in
        nautilus.attestation=dev) mode=dev ;;
        nautilus.attestation=nsm) mode=nsm ;;
        nautilus.attestation=*) log "ignoring unknown $word (attestation stays $mode)" ;;
    esac
done

DEV_ROOT=/run/dev-root.pem
PID_FILE=/run/nautilus-server.pid
STOP_FILE=/run/nautilus-stop
set -- --listen vsock://3000 --attestation "$mode" --tasks-dir /tasks
# Operators who may set secrets: their public keys are part of the image (so
# measured, and listed in the attested manifest), one hex key per line.
OPERATOR_KEYS=/etc/nautilus-operator-keys
if [ -f "$OPERATOR_KEYS" ]; then
    while read -r key _; do
        case "$key" in
            ''|'#'*) ;;
            *) set -- "$@" --operator-key "$key" ;;
        esac
    done < "$OPERATOR_KEYS"
fi
if [ "$mode" = dev ]; then
    set -- "$@" --dev-root-out "$DEV_ROOT"
    # Dev-only console hook, see above. A background job's stdin would be
    # /dev/null: hand it the console (our stdin) through fd 3.
    exec 3<&0
    (
        while read -r line; do
            if [ "$line" = nautilus-kill-server ] && [ -s "$PID_FILE" ]; then
                log "console asked to kill nautilus-server (pid $(cat "$PID_FILE"))"
                kill -KILL "$(cat "$PID_FILE")"
            fi
            if [ "$line" = nautilus-poweroff ]; then
                log "console asked for a power-off: stopping nautilus-server"
                : > "$STOP_FILE"
                [ -s "$PID_FILE" ] && kill -TERM "$(cat "$PID_FILE")"
            fi
        done
    ) <&3 &
    exec 3<&-
fi
log "attestation mode: $mode"

# Prints the dev root once the server has written it (it does so after
# binding its listener), for at most 60 s.
print_dev_root() {
    i=0
    while [ "$i" -lt 600 ]; do
        if [ -s "$DEV_ROOT" ]; then
            echo nautilus-dev-root-begin
            cat "$DEV_ROOT"
            echo nautilus-dev-root-end
            return
        fi
        # Gone: the server died before binding; the restart prints the next one.
        kill -0 "$1" 2>/dev/null || return
        sleep 0.1
        i=$((i + 1))
    done
}

delay=1
restarts=0
while :; do
    rm -f "$DEV_ROOT"
    started=$(date +%s)
    nautilus-server "$@" &
    pid=$!
    echo "$pid" > "$PID_FILE"
    log "started nautilus-server (pid $pid)"
    if [ "$mode" = dev ]; then
        print_dev_root "$pid" &
    fi
    wait "$pid"
    status=$?
    if [ -e "$STOP_FILE" ]; then
        log "nautilus-server (pid $pid) stopped with status $status; exiting for the power-off"
        exit 0
    fi
    ran=$(( $(date +%s) - started ))
    # A server that ran a while gets a fresh backoff; one that keeps failing
    # at start waits twice as long each time, at most 30 s.
    if [ "$ran" -ge 60 ]; then
        delay=1
    fi
    restarts=$((restarts + 1))
    log "nautilus-server (pid $pid) exited with status $status after ${ran}s; restart #$restarts in ${delay}s"
    sleep "$delay"
    delay=$((delay * 2))
    [ "$delay" -le 30 ] || delay=30
done
