#!/usr/bin/env bash
# Benchmarks of woa-deploy, side by side with Compose v2 (`docker compose`) and docker-compose
# 1.29 in one run, printed as a table. Not a test: figures go to BENCHMARKS.md.
#   1. apply of a 10-service app until all run, and its removal (services ignore SIGTERM, so a
#      stop waits out the 10 s grace period), warm image cache, RUNS runs each; cold once
#   2. apply of app B issued while app A is being removed, and while A waits (5 min) for a
#      health check that never passes: until B runs, against B's apply alone
#   3. a no-change resync of 50 deployments: engine calls (counted by a proxy on the engine
#      socket) and CPU time per resync; RSS after start and with 50 deployments
# Needs: a Docker engine, both Composes, docker-registry, grpcurl, python3, rustc, bc.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/woa-target}"
RUNS=${RUNS:-3}
cargo build -q --release -p woa-deploy
BIN="$CARGO_TARGET_DIR/release/woa-deploy"
WORK=$(mktemp -d)
RUN="bench$$"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  docker ps -aq --filter "label=org.margo.woa.agent=$RUN" | xargs -r docker rm -f >/dev/null
  docker ps -aq --filter "label=com.docker.compose.project=$RUN" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=org.margo.woa.agent=$RUN" | xargs -r docker network rm >/dev/null
  docker network rm "${RUN}_default" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# A FROM scratch image of the test program, pushed to a local registry so "cold" means a pull.
rustc -O -C target-feature=+crt-static tests/testapp/main.rs -o "$WORK/testapp"
printf 'FROM scratch\nCOPY testapp /testapp\nENTRYPOINT ["/testapp"]\n' > "$WORK/Dockerfile"
docker build -q -t "woa-bench:$RUN" "$WORK" >/dev/null
REG_PORT=$(free_port)
cat > "$WORK/registry.yml" <<YML
version: 0.1
storage: { filesystem: { rootdirectory: $WORK/registry } }
http: { addr: 127.0.0.1:$REG_PORT }
YML
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && break; sleep 0.1; done
IMAGE="127.0.0.1:$REG_PORT/woa-bench:$RUN"
docker tag "woa-bench:$RUN" "$IMAGE" && docker push -q "$IMAGE" >/dev/null
docker rmi "woa-bench:$RUN" >/dev/null

# A proxy on the engine socket that counts the HTTP requests passing through it.
cat > "$WORK/count.py" <<'PY'
import asyncio, re, sys
listen, target, counter = sys.argv[1:4]
count = 0
REQ = re.compile(rb"(?:^|\r\n)(?:GET|POST|PUT|DELETE|HEAD) /")
async def pipe(r, w, counting):
    global count
    try:
        while data := await r.read(65536):
            if counting:
                count += len(REQ.findall(data))
                open(counter, "w").write(str(count))
            w.write(data); await w.drain()
    finally:
        w.close()
async def serve(cr, cw):
    sr, sw = await asyncio.open_unix_connection(target)
    await asyncio.gather(pipe(cr, sw, True), pipe(sr, cw, False), return_exceptions=True)
async def main():
    server = await asyncio.start_unix_server(serve, listen)
    await server.serve_forever()
asyncio.run(main())
PY
python3 "$WORK/count.py" "$WORK/engine.sock" /var/run/docker.sock "$WORK/calls" & PIDS+=($!)
for _ in $(seq 50); do [ -S "$WORK/engine.sock" ] && break; sleep 0.1; done
calls() { cat "$WORK/calls" 2>/dev/null || echo 0; }

"$BIN" certs init --dir "$WORK/pki" >/dev/null
PORT=$(free_port)
cat > "$WORK/deploy.toml" <<TOML
listen = "127.0.0.1:$PORT"
state_dir = "$WORK/state"
instance = "$RUN"
resync_interval = "1s"
# Applying is what is timed here, not the deliberate settle wait of a new release (10 s by default).
[rollout]
settle = "0s"
# The fifty small apps share one network made outside woa (see below).
[policy]
external_networks = ["$RUN"]
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/deploy.pem"
key = "$WORK/pki/deploy-key.pem"
TOML
G=(grpcurl -cacert "$WORK/pki/ca.pem" -cert "$WORK/pki/operator.pem" -key "$WORK/pki/operator-key.pem")
start_deploy() { # [DOCKER_HOST]
  DOCKER_HOST=${1:-unix:///var/run/docker.sock} RUST_LOG=woa_deploy=debug \
    "$BIN" serve --config "$WORK/deploy.toml" >>"$WORK/deploy.log" 2>&1 & DEPLOY=$!; PIDS+=($DEPLOY)
  for _ in $(seq 100); do "${G[@]}" "127.0.0.1:$PORT" grpc.health.v1.Health/Check >/dev/null 2>&1 && return; sleep 0.1; done
  echo "woa-deploy did not start" >&2; tail -20 "$WORK/deploy.log" >&2; exit 1
}
stop_deploy() { kill "$DEPLOY"; wait "$DEPLOY" 2>/dev/null || true; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
passes() { grep -c "reconcile pass done" "$WORK/deploy.log" || true; }

# apply REVISION SPEC...: one deployment per SPEC "NUMBER:COMPOSE_FILE", id UUID(NUMBER).
apply() {
  python3 - "$@" <<'PY' | "${G[@]}" -d @ "127.0.0.1:$PORT" woa.deploy.v1.DeploymentService/ApplyDesiredState >/dev/null
import base64, json, sys, uuid
rev, specs = sys.argv[1], sys.argv[2:]
b64 = lambda b: base64.b64encode(b).decode()
deps, artifacts = [], {}
for spec in specs:
    n, path = spec.split(":", 1)
    id, loc = str(uuid.UUID(int=int(n))), f"apps/{n}/compose.yaml"
    doc = f"""apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
id: {id}
metadata: {{ annotations: {{ applicationId: bench }} }}
spec:
  deploymentProfile:
    type: compose
    components: [ {{ name: app, properties: {{ packageLocation: {loc} }} }} ]
"""
    deps.append({"path": f"deployments/{n}.yaml", "yaml": b64(doc.encode())})
    artifacts[loc] = b64(open(path, "rb").read())
print(json.dumps({"revision": rev, "deployments": deps, "artifacts": artifacts}))
PY
}
uuid_of() { python3 -c "import uuid,sys; print(uuid.UUID(int=int(sys.argv[1])))" "$1"; }
# state_of NUMBER: the reported state of deployment NUMBER (INSTALLED, REMOVED, ...).
states() {
  "${G[@]}" "127.0.0.1:$PORT" woa.deploy.v1.DeploymentService/GetCurrentState |
    python3 -c 'import json,sys; [print(d["deploymentId"], d.get("state","")[17:]) for d in json.load(sys.stdin).get("deployments",[])]'
}
# wait_state STATE NUMBER...: until every numbered deployment reports STATE.
wait_state() {
  local want=$1; shift
  local ids=(); for n in "$@"; do ids+=("$(uuid_of "$n") $want"); done
  for _ in $(seq 3000); do
    local s; s=$(states)
    local ok=1; for i in "${ids[@]}"; do grep -qx "$i" <<<"$s" || { ok=; break; }; done
    [ -n "$ok" ] && return; sleep 0.05
  done
  echo "not $want in time: $*" >&2; tail -20 "$WORK/deploy.log" >&2; exit 1
}
# Until no container of this instance is left.
wait_gone() { while [ -n "$(docker ps -aq --filter "label=org.margo.woa.agent=$RUN")" ]; do sleep 0.05; done; }
compose_file() { # N FILE [extra service keys] [external network]
  { echo "services:"; for i in $(seq "$1"); do printf '  s%d:\n    image: %s\n    command: ["hang"]\n%s' "$i" "$IMAGE" "${3:-}"; done
    [ -z "${4:-}" ] || printf 'networks:\n  default:\n    external: true\n    name: %s\n' "$4"; } > "$2"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

start_deploy
sleep 1
RSS_START=$(rss_kib "$DEPLOY")
compose_file 10 "$WORK/ten.yaml"
compose_file 1 "$WORK/one.yaml"

# 1. Ten services: cold once, then RUNS warm runs of apply and removal, each tool in turn.
t0=$(now); apply r-cold 1:"$WORK/ten.yaml"; wait_state INSTALLED 1; WOA_COLD=$(since "$t0")
apply r-cold-down; wait_state REMOVED 1; wait_gone
docker rmi "$IMAGE" >/dev/null
t0=$(now); docker compose -p "$RUN" -f "$WORK/ten.yaml" up -d >/dev/null 2>&1; V2_COLD=$(since "$t0")
docker compose -p "$RUN" -f "$WORK/ten.yaml" down >/dev/null 2>&1
docker rmi "$IMAGE" >/dev/null
t0=$(now); docker-compose -p "$RUN" -f "$WORK/ten.yaml" up -d >/dev/null 2>&1; V1_COLD=$(since "$t0")
docker-compose -p "$RUN" -f "$WORK/ten.yaml" down >/dev/null 2>&1
for r in $(seq "$RUNS"); do
  t0=$(now); apply "r-up-$r" 1:"$WORK/ten.yaml"; wait_state INSTALLED 1; since "$t0" >> "$WORK/woa-up"
  t0=$(now); apply "r-down-$r"; wait_gone; since "$t0" >> "$WORK/woa-down"
  wait_state REMOVED 1
  t0=$(now); docker compose -p "$RUN" -f "$WORK/ten.yaml" up -d >/dev/null 2>&1; since "$t0" >> "$WORK/v2-up"
  t0=$(now); docker compose -p "$RUN" -f "$WORK/ten.yaml" down >/dev/null 2>&1; since "$t0" >> "$WORK/v2-down"
  t0=$(now); docker-compose -p "$RUN" -f "$WORK/ten.yaml" up -d >/dev/null 2>&1; since "$t0" >> "$WORK/v1-up"
  t0=$(now); docker-compose -p "$RUN" -f "$WORK/ten.yaml" down >/dev/null 2>&1; since "$t0" >> "$WORK/v1-down"
done

# 2. B alone, B during A's removal, B during A's readiness wait (A = deployment 1, B = 2).
for r in $(seq "$RUNS"); do
  t0=$(now); apply "r-b-$r" 2:"$WORK/one.yaml"; wait_state INSTALLED 2; since "$t0" >> "$WORK/b-alone"
  apply "r-b-down-$r"; wait_state REMOVED 2; wait_gone
  apply "r-a-$r" 1:"$WORK/ten.yaml"; wait_state INSTALLED 1
  t0=$(now); apply "r-a-down-$r" 2:"$WORK/one.yaml"; wait_state INSTALLED 2; since "$t0" >> "$WORK/b-removal"
  wait_state REMOVED 1
  apply "r-b-down2-$r"; wait_state REMOVED 2; wait_gone
done
never='    healthcheck: { test: ["CMD", "/testapp", "probe", "9"], interval: 1s, retries: 1000 }\n'
compose_file 1 "$WORK/stuck.yaml" "$(printf "$never")"
for r in $(seq "$RUNS"); do
  apply "r-stuck-$r" 1:"$WORK/stuck.yaml"; wait_state INSTALLING 1
  t0=$(now); apply "r-stuck-b-$r" 1:"$WORK/stuck.yaml" 2:"$WORK/one.yaml"; wait_state INSTALLED 2; since "$t0" >> "$WORK/b-stuck"
  state_a=$(states | awk -v a="$(uuid_of 1)" '$1 == a {print $2}')
  [ "$state_a" = INSTALLING ] || { echo "A is $state_a, not still waiting" >&2; exit 1; }
  apply "r-stuck-down-$r"; wait_state REMOVED 1 2; wait_gone
done

# 3. Fifty one-service apps sharing an external network (the engine's default address pools
# hold only about 30 bridge networks), woa-deploy restarted behind the counting proxy.
docker network create --label "org.margo.woa.agent=$RUN" "$RUN" >/dev/null
compose_file 1 "$WORK/small.yaml" "" "$RUN"
specs=(); for n in $(seq 101 150); do specs+=("$n:$WORK/small.yaml"); done
apply r-fifty "${specs[@]}"; wait_state INSTALLED $(seq 101 150)
stop_deploy
start_deploy "unix://$WORK/engine.sock"
wait_state INSTALLED $(seq 101 150)
sleep 3
p0=$(passes); c0=$(cpu_ticks "$DEPLOY"); e0=$(calls); sleep 20; p1=$(passes); c1=$(cpu_ticks "$DEPLOY"); e1=$(calls)
HZ=$(getconf CLK_TCK)
CPU_MS=$(echo "scale=2; ($c1 - $c0) * 1000 / $HZ / ($p1 - $p0)" | bc)
CALLS=$(echo "scale=2; ($e1 - $e0) / ($p1 - $p0)" | bc)
RSS_50=$(rss_kib "$DEPLOY")

# Where an apply's time goes: the engine's create and start calls of each container.
TIMES=$(grep "container started" "$WORK/deploy.log" |
  sed -n 's/.*create_ms=\([0-9]*\) start_ms=\([0-9]*\).*/\1 \2/p' |
  awk '{c+=$1; s+=$2; if ($1>mc) mc=$1; if ($2>ms) ms=$2; n++} END {printf "create %d ms mean, %d max; start %d ms mean, %d max (%d containers)", c/n, mc, s/n, ms, n}')
row() { printf '%-52s %8s %8s %8s %8s\n' "$@"; }
ratio() { echo "scale=2; $1 / $2" | bc; }
med() { median < "$WORK/$1"; }
fastest() { printf '%s\n' "$@" | sort -n | head -1; }
printf '\nwarm: median of %s runs; seconds\n' "$RUNS"
row "measure" "woa" "v2" "1.29" "ratio*"
row "apply 10 services, cold image cache" "$WOA_COLD" "$V2_COLD" "$V1_COLD" "$(ratio "$WOA_COLD" "$(fastest "$V2_COLD" "$V1_COLD")")"
row "apply 10 services, warm" "$(med woa-up)" "$(med v2-up)" "$(med v1-up)" "$(ratio "$(med woa-up)" "$(fastest "$(med v2-up)" "$(med v1-up)")")"
row "removal of the 10 services (SIGTERM ignored)" "$(med woa-down)" "$(med v2-down)" "$(med v1-down)" "$(ratio "$(med woa-down)" "$(fastest "$(med v2-down)" "$(med v1-down)")")"
row "apply of B alone (1 service)" "$(med b-alone)" "" "" ""
row "apply of B during A's removal" "$(med b-removal)" "" "" "$(ratio "$(med b-removal)" "$(med b-alone)")"
row "apply of B during A's readiness wait" "$(med b-stuck)" "" "" "$(ratio "$(med b-stuck)" "$(med b-alone)")"
echo "* against the fastest Compose; for B, against B alone"
printf '%-52s %s\n' "no-change resync, 50 deployments: engine calls" "$CALLS ($((p1 - p0)) resyncs)"
printf '%-52s %s ms\n' "no-change resync, 50 deployments: CPU" "$CPU_MS"
printf '%-52s %s\n' "engine calls of the applies" "$TIMES"
printf '%-52s %s MiB\n' "RSS after start" "$(echo "scale=1; $RSS_START/1024" | bc)"
printf '%-52s %s MiB\n' "RSS with 50 deployments" "$(echo "scale=1; $RSS_50/1024" | bc)"
printf 'all raw runs:\n'; for f in woa-up v2-up v1-up woa-down v2-down v1-down b-alone b-removal b-stuck; do printf '  %-10s %s\n' "$f" "$(tr '\n' ' ' < "$WORK/$f")"; done
cp "$WORK/deploy.log" /tmp/bench-deploy.log 2>/dev/null || true
