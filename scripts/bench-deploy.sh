#!/usr/bin/env bash
# Benchmarks of woa-deploy, printed as a table. Not a test: figures go to BENCHMARKS.md.
#   1. idle RSS after start, and after 100 reconcile passes with one app deployed
#   2. time to apply a 10-service compose app, cold and warm image cache, side by side with
#      `docker-compose up -d` on the same compose file (ratio)
#   3. CPU time of one no-change reconcile pass with 50 deployments
# Needs: a Docker engine, docker-compose, docker-registry, grpcurl, python3, rustc.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/woa-target}"
cargo build -q --release -p woa-deploy
BIN="$CARGO_TARGET_DIR/release/woa-deploy"
WORK=$(mktemp -d)
RUN="bench$$"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  docker ps -aq --filter "label=org.margo.woa.agent=$RUN" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "label=org.margo.woa.agent=$RUN" | xargs -r docker network rm >/dev/null
  docker-compose -p "$RUN" -f "$WORK/compose.yaml" down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# A FROM scratch image of the test program, pushed to a local registry so "cold" means a pull.
rustc -O -C target-feature=+crt-static tests/testapp/main.rs -o "$WORK/testapp"
printf 'FROM scratch\nCOPY testapp /testapp\nENTRYPOINT ["/testapp"]\n' > "$WORK/Dockerfile"
docker build -q -t "woa-bench:$RUN" "$WORK" >/dev/null
REG_PORT=$(free_port)
cat > "$WORK/registry.yml" <<EOF
version: 0.1
storage: { filesystem: { rootdirectory: $WORK/registry } }
http: { addr: 127.0.0.1:$REG_PORT }
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && break; sleep 0.1; done
IMAGE="127.0.0.1:$REG_PORT/woa-bench:$RUN"
docker tag "woa-bench:$RUN" "$IMAGE" && docker push -q "$IMAGE" >/dev/null
docker rmi "woa-bench:$RUN" >/dev/null

"$BIN" certs init --dir "$WORK/pki" >/dev/null
PORT=$(free_port)
cat > "$WORK/deploy.toml" <<EOF
listen = "127.0.0.1:$PORT"
state_dir = "$WORK/state"
instance = "$RUN"
resync_interval = "100ms"
# Applying is what is timed here, not the deliberate settle wait of a new release (10 s by default).
[rollout]
settle = "0s"
[tls]
ca = "$WORK/pki/ca.pem"
cert = "$WORK/pki/deploy.pem"
key = "$WORK/pki/deploy-key.pem"
EOF
G=(grpcurl -cacert "$WORK/pki/ca.pem" -cert "$WORK/pki/operator.pem" -key "$WORK/pki/operator-key.pem")
start_deploy() {
  RUST_LOG=woa_deploy=debug "$BIN" serve --config "$WORK/deploy.toml" >"$WORK/deploy.log" 2>&1 & DEPLOY=$!; PIDS+=($DEPLOY)
  for _ in $(seq 100); do "${G[@]}" "127.0.0.1:$PORT" grpc.health.v1.Health/Check >/dev/null 2>&1 && return; sleep 0.1; done
  echo "woa-deploy did not start" >&2; cat "$WORK/deploy.log" >&2; exit 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
passes() { grep -c "reconcile pass done" "$WORK/deploy.log" || true; }

# apply REVISION N_DEPLOYMENTS COMPOSE_FILE: request with N deployments of one compose file.
apply() {
  python3 - "$1" "$2" "$3" <<'EOF' | "${G[@]}" -d @ "127.0.0.1:$PORT" woa.deploy.v1.DeploymentService/ApplyDesiredState >/dev/null
import base64, sys, uuid
rev, n, compose = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
b64 = lambda b: base64.b64encode(b).decode()
deps = []
for i in range(n):
    id = str(uuid.UUID(int=i + 1))
    doc = f"""apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
id: {id}
metadata: {{ annotations: {{ applicationId: bench }} }}
spec:
  deploymentProfile:
    type: compose
    components: [ {{ name: app, properties: {{ packageLocation: app/compose.yaml }} }} ]
"""
    deps.append({"path": f"deployments/{i}.yaml", "yaml": b64(doc.encode())})
import json
print(json.dumps({"revision": rev, "deployments": deps, "artifacts": {"app/compose.yaml": b64(compose)}}))
EOF
}
installed_count() {
  "${G[@]}" "127.0.0.1:$PORT" woa.deploy.v1.DeploymentService/GetCurrentState |
    python3 -c 'import json,sys; d=json.load(sys.stdin).get("deployments",[]); print(sum(x.get("state")=="DEPLOYMENT_STATE_INSTALLED" for x in d))'
}
wait_installed() {
  for _ in $(seq 600); do [ "$(installed_count)" -ge "$1" ] && return; sleep 0.1; done
  echo "not installed in time" >&2; tail -20 "$WORK/deploy.log" >&2; exit 1
}
compose_file() { # N services [external network]
  { echo "services:"; for i in $(seq "$1"); do printf '  s%d:\n    image: %s\n    command: ["sleep"]\n' "$i" "$IMAGE"; done
    [ -z "${3:-}" ] || printf 'networks:\n  default:\n    external: true\n    name: %s\n' "$3"; } > "$2"
}

start_deploy
sleep 1
RSS_START=$(rss_kib "$DEPLOY")

# 2. Ten services, cold then warm, woa-deploy vs docker-compose.
compose_file 10 "$WORK/compose.yaml"
t0=$(now); apply r-cold 1 "$WORK/compose.yaml"; wait_installed 1; t1=$(now)
WOA_COLD=$(echo "$t1 - $t0" | bc)
apply r-empty 0 "$WORK/compose.yaml"; sleep 2
t0=$(now); apply r-warm 1 "$WORK/compose.yaml"; wait_installed 1; t1=$(now)
WOA_WARM=$(echo "$t1 - $t0" | bc)
apply r-empty2 0 "$WORK/compose.yaml"; sleep 2
docker rmi "$IMAGE" >/dev/null
t0=$(now); docker-compose -p "$RUN" -f "$WORK/compose.yaml" up -d >/dev/null 2>&1; t1=$(now)
DC_COLD=$(echo "$t1 - $t0" | bc)
docker-compose -p "$RUN" -f "$WORK/compose.yaml" down >/dev/null 2>&1
t0=$(now); docker-compose -p "$RUN" -f "$WORK/compose.yaml" up -d >/dev/null 2>&1; t1=$(now)
DC_WARM=$(echo "$t1 - $t0" | bc)
docker-compose -p "$RUN" -f "$WORK/compose.yaml" down >/dev/null 2>&1

# 1. RSS after 100 passes with one small app. The small apps share one external network: the
# engine's default address pools hold only about 30 bridge networks.
docker network create --label "org.margo.woa.agent=$RUN" "$RUN" >/dev/null
compose_file 1 "$WORK/one.yaml" "$RUN"
apply r-one 1 "$WORK/one.yaml"; wait_installed 1
p0=$(passes); while [ $(( $(passes) - p0 )) -lt 100 ]; do sleep 0.2; done
RSS_100=$(rss_kib "$DEPLOY")

# 3. CPU of a no-change pass with 50 deployments.
apply r-fifty 50 "$WORK/one.yaml"; wait_installed 50
sleep 1
p0=$(passes); c0=$(cpu_ticks "$DEPLOY"); sleep 10; p1=$(passes); c1=$(cpu_ticks "$DEPLOY")
HZ=$(getconf CLK_TCK)
CPU_MS=$(echo "scale=2; ($c1 - $c0) * 1000 / $HZ / ($p1 - $p0)" | bc)

printf '\n%-58s %s\n' "measure" "value"
printf '%-58s %s MiB\n' "woa-deploy RSS after start" "$(echo "scale=1; $RSS_START/1024" | bc)"
printf '%-58s %s MiB\n' "woa-deploy RSS after 100 reconcile passes (1 app)" "$(echo "scale=1; $RSS_100/1024" | bc)"
printf '%-58s %6.2f s  docker-compose %6.2f s  ratio %.2f\n' "apply 10 services, cold image cache: woa-deploy" "$WOA_COLD" "$DC_COLD" "$(echo "$WOA_COLD / $DC_COLD" | bc -l)"
printf '%-58s %6.2f s  docker-compose %6.2f s  ratio %.2f\n' "apply 10 services, warm image cache: woa-deploy" "$WOA_WARM" "$DC_WARM" "$(echo "$WOA_WARM / $DC_WARM" | bc -l)"
printf '%-58s %s ms (%s passes)\n' "CPU per no-change reconcile pass, 50 deployments" "$CPU_MS" "$((p1 - p0))"
