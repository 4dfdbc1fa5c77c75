#!/usr/bin/env bash
# Run the image built by scripts/build-image.sh to a passing /healthz and one payment.
#
#   scripts/run-image-check.sh            # IMAGE=localhost/payment-gateway:latest
#
# With buildah only (no docker/podman), `buildah run --isolation chroot` shares the caller's
# network namespace, so the whole check runs inside a private one (unshare --net): the
# container listens on 0.0.0.0:8080 exactly as its CMD says, without touching the host's
# port 8080. It starts the image's ENTRYPOINT + CMD as the image's USER with a host
# directory bind-mounted on the /var/lib/gateway volume, then checks
#   - the process runs as the non-root user "gateway",
#   - GET /healthz answers 200, and the image's own HEALTHCHECK command exits 0,
#   - POST /v1/payments with the demo key (gw_sk_demo_acme) and tok_visa -> "authorized",
#   - the SQLite database was written to the data volume.
# Needs root (buildah vfs storage, unshare). Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/payment-gateway:latest}
PORT=8080
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
export BUILDAH_ISOLATION=chroot

if [ -z "${_GATEWAY_CHECK_NETNS:-}" ]; then
  exec unshare --net -- env _GATEWAY_CHECK_NETNS=1 "$0" "$@"
fi
ip link set lo up

log() { printf '%s run-image-check: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAILED: $*"; [ -f "${logfile:-/nonexistent}" ] && tail -n 40 "$logfile" >&2; exit 1; }

"${BUILDAH[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1 \
  || fail "image $IMAGE not found; build it with scripts/build-image.sh"

# The image's configuration, as a runtime would read it.
cfg=$("${BUILDAH[@]}" inspect --type image "$IMAGE" \
  | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["Docker"]["config"]))')
readarray -t entrypoint < <(python3 -c 'import json,sys; [print(a) for a in json.loads(sys.argv[1])["Entrypoint"]]' "$cfg")
readarray -t cmd < <(python3 -c 'import json,sys; [print(a) for a in json.loads(sys.argv[1])["Cmd"] or []]' "$cfg")
readarray -t health < <(python3 -c 'import json,sys; [print(a) for a in json.loads(sys.argv[1])["Healthcheck"]["Test"]]' "$cfg")
user=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["User"])' "$cfg")
log "image $IMAGE: user=$user entrypoint=${entrypoint[*]} cmd=${cmd[*]}"
[ "${health[0]}" = CMD ] || fail "unexpected HEALTHCHECK form: ${health[*]}"

work=$(mktemp -d /var/tmp/gateway-image-check.XXXXXX)
mkdir -p "$work/data"
chown 10001:10001 "$work/data"
logfile="$work/gateway.log"
ctr="" probe="" server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  [ -n "$ctr" ] && "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
  [ -n "$probe" ] && "${BUILDAH[@]}" rm "$probe" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

ctr=$("${BUILDAH[@]}" from --pull=never --name "gateway-check-$$" "$IMAGE")
probe=$("${BUILDAH[@]}" from --pull=never --name "gateway-probe-$$" "$IMAGE")

log "starting: ${entrypoint[*]} ${cmd[*]} (data volume -> $work/data)"
setsid "${BUILDAH[@]}" run --isolation chroot -v "$work/data:/var/lib/gateway" "$ctr" -- \
  "${entrypoint[@]}" "${cmd[@]}" >"$logfile" 2>&1 &
server_pid=$!

t0=$(date +%s)
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
  kill -0 "$server_pid" 2>/dev/null || fail "the gateway exited before /healthz answered"
  [ $(( $(date +%s) - t0 )) -lt 90 ] || fail "/healthz did not answer within 90 s"
  sleep 0.5
done
log "GET /healthz -> $(curl -s -w ' (HTTP %{http_code})' "http://127.0.0.1:$PORT/healthz") after $(( $(date +%s) - t0 ))s"

uid_line=$("${BUILDAH[@]}" run --isolation chroot "$probe" -- id)
log "container user: $uid_line"
case "$uid_line" in uid=0*) fail "the container runs as root";; esac
# The server process itself (under buildah run, which runs as root): its uid must be the
# image's user. Its command line is the venv's python running /opt/gateway/bin/gateway.
gw_pids=$(pgrep -f "^/opt/gateway/bin/python3? /opt/gateway/bin/gateway serve" || true)
[ -n "$gw_pids" ] || fail "no /opt/gateway/bin/gateway process found"
for p in $gw_pids; do
  u=$(ps -o uid= -p "$p" | tr -d ' ')
  log "server process $p runs as uid $u"
  [ "$u" != 0 ] || fail "gateway process $p runs as root"
done

"${BUILDAH[@]}" run --isolation chroot "$probe" -- "${health[@]:1}" \
  || fail "the image's HEALTHCHECK command failed"
log "HEALTHCHECK command (${health[*]:1:2} ...) -> exit 0"

resp=$(curl -s -w '\n%{http_code}' "http://127.0.0.1:$PORT/v1/payments" \
  -H 'Authorization: Bearer gw_sk_demo_acme' \
  -H "Idempotency-Key: image-check-$$" \
  -H 'Content-Type: application/json' \
  -d '{"amount": 1250, "currency": "EUR", "capture": "manual",
       "payment_method": {"type": "card", "token": "tok_visa"}, "reference": "image-check"}')
code=${resp##*$'\n'}
body=${resp%$'\n'*}
summary=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get("id"), d.get("status"), d.get("provider"), d.get("amount"), d.get("currency"))' "$body" 2>/dev/null || echo "$body")
log "POST /v1/payments -> HTTP $code: $summary"
[ "$code" = 201 ] || fail "payment answered HTTP $code: $body"
case "$summary" in *" authorized "*) ;; *) fail "payment not authorized: $body";; esac

pay_id=${summary%% *}
got=$(curl -s -w ' (HTTP %{http_code})' "http://127.0.0.1:$PORT/v1/payments/$pay_id" \
  -H 'Authorization: Bearer gw_sk_demo_acme')
log "GET /v1/payments/$pay_id -> $(python3 -c 'import json,sys; s=sys.argv[1]; d=json.loads(s.rsplit(" (",1)[0]); print(d["status"])' "$got") (HTTP ${got##*HTTP }"

db="$work/data/gateway.db"
[ -s "$db" ] || fail "no SQLite database on the data volume ($db)"
log "data volume: $(stat -c '%n %s bytes, owner uid %u' "$db")"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^gateway_payments_total' >&2 || true

log "PASSED: $IMAGE serves /healthz and took a payment ($pay_id)"
