#!/usr/bin/env bash
# Footprint of woa as containers, for BENCHMARKS.md: the size of each image, and the idle
# memory and CPU of each container over five minutes with one small app deployed, from the
# engine's own statistics. Not a test.
#
# It runs the quick start (scripts/demo.sh) under a project name of its own, puts woa-sync back
# on its default configuration (poll every 60 s; the demo polls every 2 s), lets it settle,
# then samples `docker stats --no-stream` every WOA_BENCH_INTERVAL seconds for
# WOA_BENCH_DURATION seconds, and reads each container's cumulative CPU time from the engine's
# stats API at the start and the end. Everything is removed at the end.
#
# `docker stats` reports a container's memory without the page cache; on cgroup v1 that leaves
# out the mapped pages of the binary itself. The resident set of the container's main process
# (VmRSS, /proc/<pid>/status, as `ps` shows it) is sampled alongside, for comparison with
# figures given as RSS.
#
# Needs what the demo needs, and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${WOA_BENCH_DURATION:-300}
INTERVAL=${WOA_BENCH_INTERVAL:-10}
SETTLE=${WOA_BENCH_SETTLE:-60}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
export WOA_DEMO_PROJECT="woa-bench-$$" WOA_DEMO_DIR="$WORK/demo"
WOA_DEMO_APP_PORT=$(free_port)
WOA_DEMO_WOS_PORT=$(free_port)
export WOA_DEMO_APP_PORT WOA_DEMO_WOS_PORT
cleanup() {
  scripts/demo.sh down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== the quick start (log: $WORK/demo.log)"
scripts/demo.sh >"$WORK/demo.log" 2>&1 || { cat "$WORK/demo.log"; exit 1; }
service() { # the container of a compose service of this run
  docker ps -q --filter "label=com.docker.compose.project=$WOA_DEMO_PROJECT" \
    --filter "label=com.docker.compose.service=$1"
}
DEPLOY=$(service woa-deploy)
SYNC=$(service woa-sync)
APP=$(docker ps -q --filter "label=org.margo.woa.agent=$WOA_DEMO_PROJECT")
[ -n "$DEPLOY" ] && [ -n "$SYNC" ] && [ -n "$APP" ] || { echo "the stack is not running" >&2; exit 1; }

echo "== woa-sync on its default configuration (poll every 60 s), then ${SETTLE}s to settle"
cp config/sync.toml "$WOA_DEMO_DIR/config/sync.toml"
docker restart "$SYNC" >/dev/null
sleep "$SETTLE"

cpu_ns() { # cumulative CPU time of a container in ns, from the engine's stats API
  curl -fsS --unix-socket /var/run/docker.sock "http://localhost/containers/$1/stats?stream=false" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["cpu_stats"]["cpu_usage"]["total_usage"])'
}
declare -A NAME=([$DEPLOY]=woa-deploy [$SYNC]=woa-sync [$APP]="app (testapp)")
declare -A CPU0
for id in "$DEPLOY" "$SYNC" "$APP"; do CPU0[$id]=$(cpu_ns "$id"); done
t0=$(date +%s.%N)
echo "== sampling docker stats every ${INTERVAL}s for ${DURATION}s"
: >"$WORK/samples"
: >"$WORK/rss"
end=$((SECONDS + DURATION))
while [ "$SECONDS" -lt "$end" ]; do
  docker stats --no-stream --format '{{.ID}} {{.CPUPerc}} {{.MemUsage}}' "$DEPLOY" "$SYNC" "$APP" >>"$WORK/samples"
  for id in "$DEPLOY" "$SYNC" "$APP"; do
    pid=$(docker inspect --format '{{.State.Pid}}' "$id")
    printf '%s %s\n' "${id:0:12}" "$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")" >>"$WORK/rss"
  done
  sleep "$INTERVAL"
done
t1=$(date +%s.%N)
declare -A CPU1
for id in "$DEPLOY" "$SYNC" "$APP"; do CPU1[$id]=$(cpu_ns "$id"); done

mib() { # "12.3MiB" / "1.2GiB" / "900KiB" / "12MB" -> MiB
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u); f = 0
    if (u == "GiB") f = 1024; else if (u == "MiB") f = 1; else if (u == "KiB") f = 1 / 1024
    else if (u == "B") f = 1 / 1048576; else if (u == "GB") f = 1e9 / 1048576
    else if (u == "MB") f = 1e6 / 1048576; else if (u == "kB") f = 1e3 / 1048576
    printf "%.2f", n * f }'
}

echo
echo "Images:"
for image in $(docker inspect --format '{{.Config.Image}}' "$DEPLOY" "$SYNC"); do
  printf '  %-28s %s MB\n' "$image" "$(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f", $1/1e6}')"
done
echo
printf 'Containers, %ss idle (%d samples of docker stats, one every %ss):\n' "$DURATION" \
  "$(awk -v id="$DEPLOY" '$1 == substr(id, 1, 12) || $1 == id' "$WORK/samples" | wc -l)" "$INTERVAL"
printf '  %-15s %14s %14s %14s %14s %14s %14s %18s\n' container "mem mean MiB" "mem max MiB" \
  "RSS mean MiB" "RSS max MiB" "CPU% mean" "CPU% max" "CPU time / wall"
for id in "$DEPLOY" "$SYNC" "$APP"; do
  short=${id:0:12}
  read -r mem_mean mem_max cpu_mean cpu_max < <(
    while read -r sid cpu mem _; do
      [ "$sid" = "$short" ] || [ "$sid" = "$id" ] || continue
      printf '%s %s\n' "${cpu%\%}" "$(mib "$mem")"
    done <"$WORK/samples" |
      awk '{c += $1; if ($1 > cm) cm = $1; m += $2; if ($2 > mm) mm = $2; n++}
           END {printf "%.2f %.2f %.2f %.2f\n", m/n, mm, c/n, cm}')
  read -r rss_mean rss_max < <(awk -v id="$short" '$1 == id {s += $2; if ($2 > m) m = $2; n++}
    END {printf "%.2f %.2f\n", s/n/1024, m/1024}' "$WORK/rss")
  share=$(python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9 / (float(sys.argv[4]) - float(sys.argv[3])) * 100:.3f}%')" \
    "${CPU0[$id]}" "${CPU1[$id]}" "$t0" "$t1")
  printf '  %-15s %14s %14s %14s %14s %14s %14s %18s\n' "${NAME[$id]}" "$mem_mean" "$mem_max" \
    "$rss_mean" "$rss_max" "$cpu_mean%" "$cpu_max%" "$share"
done
