#!/bin/sh
# Started by the enclave image's /init (PID 1) once the system is up; copied
# into the image as /run.sh. Runs nautilus-server on vsock port 3000 and
# restarts it with backoff whenever it exits, except when it refuses to start
# (exit status 78, a configuration error: restarting the same image cannot
# help). If this script ever exits, the init ends the enclave.
#
# What it prints goes to the status and log channel (vsock port 3001, read on
# the parent with `nautilus-proxy logs`); lines starting `nautilus-status: `
# say what state the server is in and, when it is not running, why.
#
# The attestation mode comes from the init in NAUTILUS_ATTESTATION, decided
# from the machine (src/enclave-init/src/platform.rs): `nsm` when /dev/nsm
# exists, `dev` only without an NSM in a QEMU test VM, `unavailable`
# otherwise (then the server is not started at all).
#
# Dev mode only:
#   - the server writes its throwaway dev root CA to /run/dev-root.pem, and this
#     script prints it to the console between the lines
#     `nautilus-dev-root-begin` and `nautilus-dev-root-end` after every start;
#   - a console line `nautilus-kill-server` makes this script SIGKILL the
#     server (to prove the restart); a real enclave's console takes no input;
#   - a console line `nautilus-poweroff` stops the server with SIGTERM and
#     ends this script, so the init powers the VM off cleanly;
#   - tasks' egress goes over vsock to the VM's host (CID 2, port 3128), where
#     the boot test runs `nautilus-proxy --egress-listen`; on Nitro the
#     parent is CID 3, the server's default with nsm;
#   - a console line `nautilus-egress-test-ca` followed by the lines of one
#     PEM certificate (up to its END line) makes this script restart the
#     server with `--egress-test-ca` (the boot test's HTTPS server's CA). The
#     server itself refuses that flag with nsm.

set -u
export PATH=/usr/bin:/bin
export HOME=/root
export RUST_LOG="${RUST_LOG:-info}"

log() { echo "run.sh: $*"; }
status() { echo "nautilus-status: $*"; }

# The server's exit status for "refused to start" (EX_CONFIG).
CONFIG_ERROR=78

DEV_ROOT=/run/dev-root.pem
EGRESS_TEST_CA=/run/egress-test-ca.pem
PID_FILE=/run/nautilus-server.pid
STOP_FILE=/run/nautilus-stop

# Keeps the enclave up (so the parent can read why on the channel) until a
# power-off is asked for (dev mode's console hook); never restarts anything.
stay_failed() {
    status "failed: $*"
    while [ ! -e "$STOP_FILE" ]; do sleep 1; done
    exit 0
}

mode="${NAUTILUS_ATTESTATION:-}"

# TLS is terminated in here whatever the attestation: with `nsm` it is the
# server's default anyway; saying it also turns it on in the boot test's VM
# (dev attestation, where the server's default is off), so that test speaks
# https through the proxy exactly as clients of a real enclave do. The parent
# relays only ciphertext either way.
set -- --listen vsock://3000 --attestation "$mode" --tls on --tasks-dir /tasks
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
    set -- "$@" --dev-root-out "$DEV_ROOT" --egress-via vsock://2:3128
    # Dev-only console hook, see above. A background job's stdin would be
    # /dev/null: hand it the console (our stdin) through fd 3.
    exec 3<&0
    (
        while read -r line; do
            if [ "$line" = nautilus-kill-server ] && [ -s "$PID_FILE" ]; then
                log "console asked to kill nautilus-server (pid $(cat "$PID_FILE"))"
                kill -KILL "$(cat "$PID_FILE")"
            fi
            if [ "$line" = nautilus-egress-test-ca ]; then
                : > "$EGRESS_TEST_CA"
                n=0
                while [ "$n" -lt 64 ] && read -r pem; do
                    echo "$pem" >> "$EGRESS_TEST_CA"
                    case "$pem" in -----END*) break ;; esac
                    n=$((n + 1))
                done
                log "console gave an egress test CA: restarting nautilus-server with --egress-test-ca"
                [ -s "$PID_FILE" ] && kill -TERM "$(cat "$PID_FILE")"
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
case "$mode" in
    nsm|dev) ;;
    *) stay_failed "no attestation available (NAUTILUS_ATTESTATION=$mode: no /dev/nsm, see the init's lines above): not starting nautilus-server" ;;
esac

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
    if [ "$mode" = dev ] && [ -s "$EGRESS_TEST_CA" ]; then
        nautilus-server "$@" --egress-test-ca "$EGRESS_TEST_CA" &
    else
        nautilus-server "$@" &
    fi
    pid=$!
    echo "$pid" > "$PID_FILE"
    log "started nautilus-server (pid $pid)"
    status "starting nautilus-server (pid $pid, attestation $mode)"
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
    if [ "$status" -eq "$CONFIG_ERROR" ]; then
        log "nautilus-server (pid $pid) refused to start (exit status $status after ${ran}s)"
        stay_failed "nautilus-server refused to start: configuration error (exit status $status); not restarting (its error is in the lines above)"
    fi
    # A server that ran a while gets a fresh backoff; one that keeps failing
    # at start waits twice as long each time, at most 30 s.
    if [ "$ran" -ge 60 ]; then
        delay=1
    fi
    restarts=$((restarts + 1))
    log "nautilus-server (pid $pid) exited with status $status after ${ran}s; restart #$restarts in ${delay}s"
    status "restarting: nautilus-server exited with status $status after ${ran}s (restart #$restarts in ${delay}s)"
    sleep "$delay"
    delay=$((delay * 2))
    [ "$delay" -le 30 ] || delay=30
done
