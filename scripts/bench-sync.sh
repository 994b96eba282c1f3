#!/usr/bin/env bash
# Benchmarks of woa-sync, printed as a table. Not a test: figures go to BENCHMARKS.md.
#   1. a no-change poll: HTTP requests, bytes and CPU time, side by side with `git fetch` by
#      the git CLI against the same repository on the same server
#   2. time from `git push` (git CLI, over HTTPS) to the app running and to `installed` at the WOS
#   3. RSS of woa-sync: after start, after 600 no-change polls, after 600 failed polls (WOS down)
#   4. one status push to the status branch (status.report = "git"): requests, bytes and time
#   5. a no-change poll through the Margo Workload Management API (source = "margo") against the
#      reference WFM (`woa-testkit wfm`): requests, bytes and CPU time
# Needs: a Docker engine, git, python3, rustc, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/woa-target}"
cargo build -q --release -p woa-deploy -p woa-sync -p woa-tests --bin woa-deploy --bin woa-sync --bin woa-testkit
BIN="$CARGO_TARGET_DIR/release"
WORK=$(mktemp -d)
RUN="bench$$"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  docker ps -aq --filter "label=org.margo.woa.agent=$RUN" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=org.margo.woa.agent=$RUN" | xargs -r docker network rm >/dev/null
  docker rmi "woa-bench:$RUN" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
# The shell of these machines points git at the system CA bundle; the WOS has its own CA.
unset GIT_SSL_CAINFO GIT_SSL_CAPATH SSL_CERT_FILE CURL_CA_BUNDLE

rustc -O -C target-feature=+crt-static tests/testapp/main.rs -o "$WORK/testapp"
printf 'FROM scratch\nCOPY testapp /testapp\nENTRYPOINT ["/testapp"]\n' > "$WORK/Dockerfile"
docker build -q -t "woa-bench:$RUN" "$WORK" >/dev/null

# The reference WOS.
WOS_PORT=$(free_port)
"$BIN/woa-testkit" wos --listen "127.0.0.1:$WOS_PORT" --data "$WORK/wos" --token bench >"$WORK/wos.log" 2>&1 & WOS=$!; PIDS+=($WOS)
WOS_URL="https://localhost:$WOS_PORT"
for _ in $(seq 100); do curl -fs --cacert "$WORK/wos/server-ca.pem" "$WOS_URL/admin/devices" >/dev/null 2>&1 && break; sleep 0.1; done
admin() { curl -fs --cacert "$WORK/wos/server-ca.pem" "$@"; }
requests() { # the git requests logged since the last clear: count, bytes in, bytes out
  admin "$WOS_URL/admin/requests" | python3 -c '
import json, sys
r = [x for x in json.load(sys.stdin) if x["path"].startswith("/git/")]
print(len(r), sum(x["bytesIn"] for x in r), sum(x["bytesOut"] for x in r))'
}
clear_requests() { admin -X DELETE "$WOS_URL/admin/requests" >/dev/null; }

# The deployment service.
"$BIN/woa-deploy" certs init --dir "$WORK/pki" >/dev/null
DEPLOY_PORT=$(free_port)
cat > "$WORK/deploy.toml" <<EOF
listen = "127.0.0.1:$DEPLOY_PORT"
state_dir = "$WORK/deploy"
instance = "$RUN"
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/deploy.pem"
key = "$WORK/pki/deploy-key.pem"
EOF
"$BIN/woa-deploy" serve --config "$WORK/deploy.toml" >"$WORK/deploy.log" 2>&1 & PIDS+=($!)

# The sync service, enrolled with a token; a 1 s poll, and no heartbeat during the measures.
sync_config() { # POLL_INTERVAL [REPORT]
  cat > "$WORK/sync.toml" <<EOF
state_dir = "$WORK/sync"
[poll]
interval = "$1"
jitter = "0s"
[status]
heartbeat = "1h"
report = "${2:-http}"
[status.git]
debounce = "0s"
[deploy]
endpoint = "https://127.0.0.1:$DEPLOY_PORT"
server_name = "localhost"
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/sync.pem"
key = "$WORK/pki/sync-key.pem"
EOF
}
sync_config 1s
S=("$BIN/woa-sync" --config "$WORK/sync.toml")
"${S[@]}" enroll --wos "$WOS_URL" --token bench --ca "$WORK/wos/server-ca.pem" >/dev/null
CLIENT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["clientId"])' "$WORK/sync/enrollment.json")
PASSWORD=$(cat "$WORK/sync/repository-secret")
start_sync() { RUST_LOG=woa_sync=debug "${S[@]}" run >>"$WORK/sync.log" 2>&1 & SYNC=$!; PIDS+=($SYNC); }
start_sync
sleep 1
RSS_START=$(rss_kib "$SYNC")

# A working clone pushing over HTTPS with the device's credentials, as the WOS would.
G=(git -c "http.sslCAInfo=$WORK/wos/server-ca.pem" -c user.name=bench -c user.email=bench@localhost -c init.defaultBranch=main)
REMOTE="https://$CLIENT:$PASSWORD@localhost:$WOS_PORT/git/$CLIENT.git"
"${G[@]}" init -q "$WORK/repo"
ID=$(python3 -c 'import uuid; print(uuid.uuid4())')
mkdir -p "$WORK/repo/deployments" "$WORK/repo/apps/web"
commit_app() { # MESSAGE
  cat > "$WORK/repo/apps/web/compose.yaml" <<EOF
services:
  web:
    image: woa-bench:$RUN
    command: ["serve", "8080"]
    environment: { MESSAGE: "$1" }
EOF
  cat > "$WORK/repo/deployments/web.yaml" <<EOF
apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata: { name: web, annotations: { id: $ID } }
spec:
  deploymentProfile:
    type: compose
    components: [ { name: web, properties: { packageLocation: apps/web/compose.yaml } } ]
EOF
  (cd "$WORK/repo" && "${G[@]}" add -A && "${G[@]}" commit -qm "web $1")
}
wos_state() { # prints "<revision> <state>" of the app as the WOS has it
  admin "$WOS_URL/admin/devices/$CLIENT" | python3 -c '
import json, sys
s = json.load(sys.stdin).get("deployments", {}).get(sys.argv[1]) or {}
print(s.get("revision", "-"), s.get("status", {}).get("state", "-"))' "$ID"
}
running_message() { # the MESSAGE of the app container that runs, if any
  docker ps -q --filter "label=org.margo.woa.deployment=$ID" | xargs -r docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^MESSAGE=//p'
}

# 2. Push to running and to installed, three times (a poll interval of 1 s bounds the wait).
PUSH_RUN=(); PUSH_INSTALLED=()
for round in 1 2 3; do
  commit_app "v$round"
  REV=$(cd "$WORK/repo" && git rev-parse HEAD)
  t0=$(now)
  (cd "$WORK/repo" && "${G[@]}" push -q "$REMOTE" HEAD:main 2>/dev/null)
  until [ "$(running_message)" = "v$round" ]; do sleep 0.02; done; t1=$(now)
  until [ "$(wos_state)" = "$REV installed" ]; do sleep 0.02; done; t2=$(now)
  PUSH_RUN+=("$(echo "$t1 - $t0" | bc)"); PUSH_INSTALLED+=("$(echo "$t2 - $t0" | bc)")
done

# 1. No-change polls: woa-sync for 20 s, then `git fetch` 20 times in a clone of the same repository.
sleep 2
clear_requests
c0=$(cpu_ticks "$SYNC"); p0=$(grep -c 'no change' "$WORK/sync.log" || true)
sleep 20
c1=$(cpu_ticks "$SYNC"); p1=$(grep -c 'no change' "$WORK/sync.log" || true)
read -r SYNC_REQ SYNC_IN SYNC_OUT < <(requests)
POLLS=$((p1 - p0))
SYNC_CPU_MS=$(echo "scale=2; ($c1 - $c0) * 1000 / $HZ / $POLLS" | bc)
"${G[@]}" clone -q "$REMOTE" "$WORK/clone" 2>/dev/null
clear_requests
GIT_CPU_MS=$(cd "$WORK/clone" && python3 - "${G[@]}" <<'EOF'
import resource, subprocess, sys
git = sys.argv[1:]
for _ in range(20):
    subprocess.run(git + ["fetch", "-q", "origin"], check=True)
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{(u.ru_utime + u.ru_stime) * 1000 / 20:.2f}")
EOF
)
read -r GIT_REQ GIT_IN GIT_OUT < <(requests)

# 3. RSS after 600 no-change polls and after 600 polls against a WOS that is down.
kill "$SYNC"; wait "$SYNC" 2>/dev/null || true
sync_config 100ms
start_sync
sleep 1
p0=$(grep -c 'no change' "$WORK/sync.log" || true)
while [ $(( $(grep -c 'no change' "$WORK/sync.log" || true) - p0 )) -lt 600 ]; do sleep 1; done
RSS_POLLS=$(rss_kib "$SYNC")
kill "$WOS"; wait "$WOS" 2>/dev/null || true
f0=$(grep -c 'cannot reach the repository' "$WORK/sync.log" || true)
while [ $(( $(grep -c 'cannot reach the repository' "$WORK/sync.log" || true) - f0 )) -lt 600 ]; do sleep 1; done
RSS_DOWN=$(rss_kib "$SYNC")

# 4. Status pushes: the first one creates the branch; then each new version makes one push.
kill "$SYNC"; wait "$SYNC" 2>/dev/null || true
"$BIN/woa-testkit" wos --listen "127.0.0.1:$WOS_PORT" --data "$WORK/wos" --token bench >>"$WORK/wos.log" 2>&1 & WOS=$!; PIDS+=($WOS)
for _ in $(seq 100); do curl -fs --cacert "$WORK/wos/server-ca.pem" "$WOS_URL/admin/devices" >/dev/null 2>&1 && break; sleep 0.1; done
sync_config 1s git
start_sync
pushes() { grep -c 'status committed' "$WORK/sync.log" || true; }
until [ "$(pushes)" -ge 1 ]; do sleep 0.2; done
sleep 1
PUSH_MS=(); PUSH_REQ=(); PUSH_OUT=(); PUSH_IN=()
for round in 4 5 6; do
  clear_requests
  n=$(pushes)
  commit_app "v$round"
  (cd "$WORK/repo" && "${G[@]}" push -q "$REMOTE" HEAD:main 2>/dev/null)
  # installing, then installed: wait for the push of the final state, then for quiet.
  REV=$(cd "$WORK/repo" && git rev-parse HEAD)
  until git --git-dir "$WORK/wos/repos/$CLIENT.git" show "woa/status:status/$ID.json" 2>/dev/null | grep -q "$REV" &&
        git --git-dir "$WORK/wos/repos/$CLIENT.git" show "woa/status:status/$ID.json" | grep -q '"installed"'; do sleep 0.1; done
  sleep 1
  read -r req out in < <(admin "$WOS_URL/admin/requests" | python3 -c '
import json, sys
r = [x for x in json.load(sys.stdin) if "receive-pack" in (x["path"] + (x.get("query") or ""))]
print(len(r), sum(x["bytesIn"] for x in r), sum(x["bytesOut"] for x in r))')
  made=$(( $(pushes) - n )); [ "$made" -gt 0 ] || made=1
  PUSH_REQ+=("$(echo "scale=1; $req/$made" | bc)"); PUSH_OUT+=("$(( out / made ))"); PUSH_IN+=("$(( in / made ))")
  PUSH_MS+=("$(grep 'status committed' "$WORK/sync.log" | tail -n "$made" | sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' | tr '\n' ' ')")
done

# 5. No-change polls through the Margo API: woa-sync with source = "margo" for 20 s.
kill "$SYNC"; wait "$SYNC" 2>/dev/null || true
"$BIN/woa-testkit" wfm --dir "$WORK/wfm" >"$WORK/wfm.out" 2>"$WORK/wfm.log" & PIDS+=($!)
until grep -q '^admin on' "$WORK/wfm.out" 2>/dev/null; do sleep 0.1; done
WFM_URL=$(sed -n 's/^listening on //p' "$WORK/wfm.out")
WFM_ADMIN=$(sed -n 's/^admin on //p' "$WORK/wfm.out")
curl -fs -X PUT -H 'content-type: application/json' -d '{}' "$WFM_ADMIN/admin/deployments" >/dev/null
sync_config 1s
sed -i -e "1i source = \"margo\"" -e "s|^state_dir = .*|state_dir = \"$WORK/sync-margo\"|" "$WORK/sync.toml"
printf '[margo]\nurl = "%s"\nsvid = "%s"\nsvid_key = "%s"\ntrust_bundle = "%s"\n' \
  "$WFM_URL" "$WORK/wfm/client.pem" "$WORK/wfm/client.key" "$WORK/wfm/ca.pem" >> "$WORK/sync.toml"
applied() { grep -c 'desired state applied' "$WORK/sync.log" || true; }
a0=$(applied)
start_sync
until [ "$(applied)" -gt "$a0" ]; do sleep 0.2; done
sleep 2
curl -fs -X DELETE "$WFM_ADMIN/admin/requests" >/dev/null
c0=$(cpu_ticks "$SYNC"); p0=$(grep -c 'no change' "$WORK/sync.log" || true)
sleep 20
c1=$(cpu_ticks "$SYNC"); p1=$(grep -c 'no change' "$WORK/sync.log" || true)
read -r API_REQ API_304 API_IN API_OUT < <(curl -fs "$WFM_ADMIN/admin/requests" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(len(r), sum(x["status"] == 304 for x in r), sum(x["bytesIn"] for x in r), sum(x["bytesOut"] for x in r))')
API_POLLS=$((p1 - p0))
API_CPU_MS=$(echo "scale=2; ($c1 - $c0) * 1000 / $HZ / $API_POLLS" | bc)

mib() { echo "scale=1; $1/1024" | bc; }
printf '\n%-52s %s\n' "measure" "value"
printf '%-52s woa-sync %s req, %s B out, %s B in | git fetch %s req, %s B out, %s B in\n' \
  "no-change poll (per poll; HTTP bodies at the server)" \
  "$(echo "scale=1; $SYNC_REQ/$POLLS" | bc)" "$(echo "$SYNC_IN/$POLLS" | bc)" "$(echo "$SYNC_OUT/$POLLS" | bc)" \
  "$(echo "scale=1; $GIT_REQ/20" | bc)" "$(echo "$GIT_IN/20" | bc)" "$(echo "$GIT_OUT/20" | bc)"
printf '%-52s woa-sync %s ms | git fetch %s ms | ratio %.2f\n' "CPU time of a no-change poll" "$SYNC_CPU_MS" "$GIT_CPU_MS" "$(echo "$SYNC_CPU_MS / $GIT_CPU_MS" | bc -l)"
printf '%-52s %s req (%s of %s answered 304), %s B out, %s B in; %s ms CPU\n' \
  "no-change poll through the Margo API (per poll)" "$(echo "scale=1; $API_REQ/$API_POLLS" | bc)" \
  "$API_304" "$API_REQ" "$(echo "$API_IN/$API_POLLS" | bc)" "$(echo "$API_OUT/$API_POLLS" | bc)" "$API_CPU_MS"
printf '%-52s %s s (runs %s)\n' "git push -> new version running (poll every 1 s)" "${PUSH_RUN[*]}" "3"
printf '%-52s %s s\n' "git push -> installed at the WOS" "${PUSH_INSTALLED[*]}"
printf '%-52s %s MiB\n' "woa-sync RSS after start" "$(mib "$RSS_START")"
printf '%-52s %s MiB\n' "woa-sync RSS after 600 no-change polls" "$(mib "$RSS_POLLS")"
printf '%-52s %s MiB\n' "woa-sync RSS after 600 failed polls (WOS down)" "$(mib "$RSS_DOWN")"
printf '%-52s %s req, %s B out, %s B in per push\n' "status push (receive-pack requests, bodies)" "${PUSH_REQ[*]}" "${PUSH_OUT[*]}" "${PUSH_IN[*]}"
printf '%-52s %s ms\n' "status push time (fetch of the advertisement to report)" "${PUSH_MS[*]}"
