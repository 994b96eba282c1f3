#!/usr/bin/env bash
# Quick start: the main job of woa, on one machine with a Docker engine and no internet.
#
#   scripts/demo.sh          build everything, start a reference WOS and woa as two containers,
#                            deploy a sample web app through Git, then change it
#   scripts/demo.sh down     stop and remove everything the demo started (built images are kept)
#
# Needs: a Docker engine, Docker Compose (`docker compose` v2 or `docker-compose` 1.29), a Rust
# toolchain (cargo, rustc), git and curl. Runs as a user who may use the Docker engine.
#
# Environment (defaults in brackets):
#   WOA_DEMO_PROJECT [woa-demo]        compose project, and woa-deploy's instance name
#   WOA_DEMO_DIR [/tmp/<project>]      the demo's files: WOS data, configuration, woa-deploy state
#   WOA_DEMO_APP_PORT [8080]           host port (127.0.0.1) the sample app answers on
#   WOA_DEMO_WOS_PORT [8443]           port of the reference WOS
#   WOA_DEMO_TIMEOUT [180]             seconds one step may take before the demo gives up
#   WOA_TESTKIT                        a woa-testkit binary to use instead of building one
#   CARGO_TARGET_DIR [./target]        where cargo builds
#   WOA_IMAGE_PROFILE [release]        the cargo profile of the binaries
#   WOA_COMPOSE [docker compose]       the Compose CLI (`docker-compose` for 1.29); by default v2
#                                      when installed, else docker-compose
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PROJECT=${WOA_DEMO_PROJECT:-woa-demo}
DIR=${WOA_DEMO_DIR:-${TMPDIR:-/tmp}/$PROJECT}
APP_PORT=${WOA_DEMO_APP_PORT:-8080}
WOS_PORT=${WOA_DEMO_WOS_PORT:-8443}
PROFILE=${WOA_IMAGE_PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
APP_IMAGE=woa-demo-web:1
# How long one step may take before the demo gives up.
STEP_TIMEOUT=${WOA_DEMO_TIMEOUT:-180}

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[0m'; else B='' G='' R=''; fi
STEP=0
step() { STEP=$((STEP + 1)); printf '\n%s== %d. %s%s\n' "$B" "$STEP" "$1" "$R"; }
say() { printf '   %s\n' "$@"; }
show() { printf '   %s%s%s\n' "$G" "$*" "$R"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# The Compose CLI: WOA_COMPOSE when set (`docker compose` or `docker-compose`), else v2 when
# there, else docker-compose 1.29 (Debian's package).
if [ -n "${WOA_COMPOSE:-}" ]; then
  read -r -a COMPOSE <<<"$WOA_COMPOSE"
  "${COMPOSE[@]}" version >/dev/null 2>&1 || die "WOA_COMPOSE=$WOA_COMPOSE does not run"
elif docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  die "needs Docker Compose: the 'docker compose' plugin or docker-compose (Debian: apt-get install docker-compose)"
fi
compose() {
  # Everything the stack needs to know about this demo, as compose.yaml's variables.
  WOA_CONFIG_DIR="$DIR/config" WOA_DEPLOY_STATE_DIR="$DIR/deploy" WOA_INSTANCE="$PROJECT" \
    "${COMPOSE[@]}" -f "$ROOT/compose.yaml" -p "$PROJECT" "$@"
}

# The processes the demo runs on this machine, beside the containers: NAME (the file names of
# their pid and log in DIR) and what they are.
HOST_SERVICES=("wos:reference WOS")

# serve NAME WORKDIR COMMAND...: starts COMMAND in WORKDIR on this machine, detached from the
# terminal (it outlives the script, until `down`), its output in DIR/NAME.log and its pid in
# DIR/NAME.pid.
serve() {
  local name=$1 workdir=$2
  shift 2
  (cd "$workdir" && exec nohup "$@") </dev/null >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

# Stops and removes what a previous `up` of this project left; quiet when there is nothing.
down() {
  if [ -f "$DIR/images.env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/images.env"
    export WOA_DEPLOY_IMAGE WOA_SYNC_IMAGE
  fi
  compose down --volumes --remove-orphans --timeout 10 2>&1 | sed 's/^/   /' || true
  # The apps woa-deploy started are the engine's, not the compose project's: they outlive
  # woa-deploy by design. Its instance label finds them.
  local label="label=org.margo.woa.agent=$PROJECT"
  docker ps -aq --filter "$label" | xargs -r docker rm -f >/dev/null
  docker network ls -q --filter "$label" | xargs -r docker network rm >/dev/null
  docker volume ls -q --filter "$label" | xargs -r docker volume rm >/dev/null
  local service
  for service in "${HOST_SERVICES[@]}"; do
    if [ -f "$DIR/${service%%:*}.pid" ]; then
      kill "$(cat "$DIR/${service%%:*}.pid")" 2>/dev/null || true
    fi
  done
  # Only a directory this script made (it holds the marker) is removed.
  if [ -f "$DIR/.woa-demo" ]; then
    # woa-deploy's state belongs to root (it ran as root); a user in the docker group may need
    # sudo for it.
    rm -rf "$DIR" 2>/dev/null || say "could not remove $DIR entirely (files of root): sudo rm -rf $DIR"
  fi
}

if [ "${1:-up}" = down ]; then
  printf 'Removing the demo %s (containers, networks, volumes, the WOS, %s)\n' "$PROJECT" "$DIR"
  down
  printf 'Removed. The images are kept: docker images "woa-*"\n'
  exit 0
elif [ "${1:-up}" != up ]; then
  die "usage: scripts/demo.sh [up|down]"
fi

on_exit() {
  local status=$? service log
  [ "$status" -eq 0 ] && return 0
  printf '\ndemo: step %d failed. What the services said:\n' "$STEP" >&2
  compose logs --tail 30 2>&1 | sed 's/^/   /' >&2 || true
  for service in "${HOST_SERVICES[@]}"; do
    log="$DIR/${service%%:*}.log"
    if [ -f "$log" ]; then
      printf '   --- %s (%s) ---\n' "${service#*:}" "$log" >&2
      tail -n 20 "$log" | sed 's/^/   /' >&2
    fi
  done
  printf 'Clean up with: scripts/demo.sh down\n' >&2
}
trap on_exit EXIT

# wait_for WHAT COMMAND...: runs COMMAND every second until it succeeds, printing a dot each
# time, for at most STEP_TIMEOUT seconds.
wait_for() {
  local what=$1 start=$SECONDS
  shift
  printf '   waiting for %s ' "$what"
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$STEP_TIMEOUT" ]; then
      printf '\n'
      die "gave up waiting for $what after ${STEP_TIMEOUT}s (WOA_DEMO_TIMEOUT)"
    fi
    printf '.'
    sleep 1
  done
  printf ' %ds\n' $((SECONDS - start))
}

printf '%swoa quick start%s: a reference WOS (the orchestrator) on this machine, and the device\n' "$B" "$R"
printf 'agent as two containers (woa-deploy, woa-sync), using %s.\n' "${COMPOSE[*]}"
if [ -f "$DIR/.woa-demo" ]; then
  say "removing the previous run in $DIR"
  down >/dev/null 2>&1 || true
elif [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
  die "$DIR is not empty and not the demo's: set WOA_DEMO_DIR to another directory"
fi
mkdir -p "$DIR/enroll" "$DIR/config" "$DIR/deploy"
touch "$DIR/.woa-demo"

step "Build: woa-deploy and woa-sync images, the reference WOS, a sample web app image"
say "Everything is built here: no registry is needed. cargo shows its progress; a first build"
say "takes a few minutes on a small machine, later ones seconds."
if [ -n "${WOA_TESTKIT:-}" ]; then
  TESTKIT=$WOA_TESTKIT
else
  "${CARGO:-cargo}" build --locked --profile "$PROFILE" -p woa-tests --bin woa-testkit
  TESTKIT="$TARGET_DIR/$PROFILE/woa-testkit"
fi
IMAGES=$(CARGO_TARGET_DIR="$TARGET_DIR" scripts/images.sh)
WOA_DEPLOY_IMAGE=$(printf '%s\n' "$IMAGES" | sed -n 's/^WOA_DEPLOY_IMAGE=//p')
WOA_SYNC_IMAGE=$(printf '%s\n' "$IMAGES" | sed -n 's/^WOA_SYNC_IMAGE=//p')
if [ -z "$WOA_DEPLOY_IMAGE" ] || [ -z "$WOA_SYNC_IMAGE" ]; then
  die "scripts/images.sh named no images: $IMAGES"
fi
export WOA_DEPLOY_IMAGE WOA_SYNC_IMAGE
printf 'WOA_DEPLOY_IMAGE=%s\nWOA_SYNC_IMAGE=%s\n' "$WOA_DEPLOY_IMAGE" "$WOA_SYNC_IMAGE" >"$DIR/images.env"
# The sample app: tests/testapp (a tiny static web server) in an image FROM scratch.
APP_SOURCE_HASH=$(sha256sum tests/testapp/main.rs | cut -c1-16)
if [ "$(docker image inspect --format '{{index .Config.Labels "org.woa.demo.source"}}' "$APP_IMAGE" 2>/dev/null)" != "$APP_SOURCE_HASH" ]; then
  mkdir -p "$DIR/app-image"
  rustc --edition 2021 -O -C target-feature=+crt-static tests/testapp/main.rs -o "$DIR/app-image/testapp"
  printf 'FROM scratch\nCOPY testapp /testapp\nLABEL org.woa.demo.source=%s\nENTRYPOINT ["/testapp"]\n' \
    "$APP_SOURCE_HASH" >"$DIR/app-image/Dockerfile"
  DOCKER_BUILDKIT=0 docker build --quiet --tag "$APP_IMAGE" "$DIR/app-image" >"$DIR/app-image/build.log" 2>&1 ||
    { cat "$DIR/app-image/build.log" >&2; exit 1; }
  rm -rf "$DIR/app-image"
fi
show "images: $WOA_DEPLOY_IMAGE, $WOA_SYNC_IMAGE, $APP_IMAGE"

step "Start the reference WOS (woa-testkit wos) on this machine"
# Containers reach the host as host.docker.internal (compose.yaml maps it to the engine's
# bridge gateway); the WOS listens on that address only, and its certificate carries the name.
GATEWAY=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)
GATEWAY=${GATEWAY:-172.17.0.1}
WOS_URL="https://host.docker.internal:$WOS_PORT"
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
serve wos . "$TESTKIT" wos --listen "$GATEWAY:$WOS_PORT" --data "$DIR/wos" --token "$TOKEN" \
  --san host.docker.internal --public-url "$WOS_URL"
wait_for "the WOS" grep -q '^listening on' "$DIR/wos.log"
# From this machine, the same name and certificate, pointed at the gateway address.
wos() { curl -fsS --cacert "$DIR/wos/server-ca.pem" --resolve "host.docker.internal:$WOS_PORT:$GATEWAY" "$WOS_URL$1"; }
say "It serves the WOS API (enrollment, status) and one Git repository per device, over HTTPS:"
show "$WOS_URL (listening on $GATEWAY:$WOS_PORT; log $DIR/wos.log)"

step "Create the local PKI and start woa-deploy (compose: the 'pki' one-shot, then 'woa-deploy')"
say "woa-deploy gets the Docker socket and its state directory; its gRPC port stays on the"
say "private compose network. woa-sync will reach it as https://woa-deploy:7411 over mutual TLS."
cp "$ROOT/config/deploy.toml" "$DIR/config/deploy.toml"
# The demo polls every 2 s so that changes show quickly (the default is 60 s).
{ cat "$ROOT/config/sync.toml"; printf '\n[poll]\ninterval = "2s"\njitter = "0s"\n'; } >"$DIR/config/sync.toml"
compose up -d woa-deploy 2>&1 | sed 's/^/   /'
deploy_healthy() {
  [ "$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps -q woa-deploy)")" = healthy ]
}
wait_for "woa-deploy to be healthy (woa-deploy health, every 15 s)" deploy_healthy

step "Enroll the device with the WOS (woa-sync enroll, as a one-shot container)"
say "The device makes its key, the WOS signs its certificate and grants it a repository."
cp "$DIR/wos/server-ca.pem" "$DIR/enroll/wos-ca.pem"
printf '%s\n' "$TOKEN" >"$DIR/enroll/token"
# woa-sync runs as uid 65532: it must be able to read what is mounted for it.
chmod 0755 "$DIR/enroll"
chmod 0644 "$DIR/enroll/token" "$DIR/enroll/wos-ca.pem"
ENROLLED=$(compose run -T --rm -v "$DIR/enroll:/run/woa/enroll:ro" woa-sync \
  enroll --wos "$WOS_URL" --token-file /run/woa/enroll/token --ca /run/woa/enroll/wos-ca.pem \
  2> >(sed 's/^/   /' >&2))
printf '%s\n' "$ENROLLED" | sed 's/^/   /'
CLIENT=$(printf '%s\n' "$ENROLLED" | sed -n 's/^enrolled as client \([^ ]*\) .*/\1/p')
[ -n "$CLIENT" ] || die "enrollment printed no client id"
show "client id $CLIENT"

step "Start woa-sync (compose up -d)"
say "It polls the device repository, hands each new commit to woa-deploy, and posts status."
compose up -d 2>&1 | sed 's/^/   /'

# The sample app: its compose package (a parameter sets MESSAGE) and the ApplicationDeployment
# of it, under this id.
ID=$(cat /proc/sys/kernel/random/uuid)
app_package() {
  cat <<EOF
services:
  web:
    image: $APP_IMAGE
    command: ["serve", "8080"]
    environment:
      MESSAGE: \${MESSAGE}
    ports:
      - "127.0.0.1:$APP_PORT:8080"
    restart: unless-stopped
EOF
}
# app_deployment VERSION PACKAGE_LOCATION: the document, its MESSAGE saying VERSION.
app_deployment() {
  cat <<EOF
apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  name: demo-web
  annotations:
    id: $ID
    applicationId: demo-web
spec:
  deploymentProfile:
    type: compose
    components:
      - name: web
        properties:
          packageLocation: $2
  parameters:
    message:
      value: "Hello from woa, version $1"
      targets:
        - pointer: MESSAGE
          components: [web]
EOF
}
# commit VERSION: the WOS's side: commits the sample app at VERSION to the device repository.
commit() {
  local version=$1 work="$DIR/work"
  local git=(git -c user.name="demo WOS" -c user.email=wos@demo.invalid -c commit.gpgsign=false)
  rm -rf "$work"
  "${git[@]}" clone --quiet "$DIR/wos/repos/$CLIENT.git" "$work" 2>/dev/null
  mkdir -p "$work/deployments" "$work/apps/web"
  app_package >"$work/apps/web/compose.yaml"
  app_deployment "$version" apps/web/compose.yaml >"$work/deployments/web.yaml"
  (cd "$work" && "${git[@]}" add -A && "${git[@]}" commit --quiet -m "demo-web: version $version" &&
    "${git[@]}" push --quiet origin HEAD:refs/heads/main && git rev-parse HEAD)
}
answers() { [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$APP_PORT/")" = "$1" ]; }
# status_is REVISION STATE: the WOS's last status of the app is STATE at REVISION.
status_is() {
  local status
  status=$(wos "/admin/devices/$CLIENT/deployments/$ID") || return 1
  case $status in *"\"revision\":\"$1\""*) ;; *) return 1 ;; esac
  case $status in *"\"status\":{\"state\":\"$2\""*) return 0 ;; *) return 1 ;; esac
}
# release VERSION: commit, then wait for the app and for the WOS to record `installed`.
release() {
  local version=$1 revision
  revision=$(commit "$version")
  show "committed deployments/web.yaml + apps/web/compose.yaml as $revision"
  wait_for "the app to answer version $version on http://127.0.0.1:$APP_PORT" \
    answers "Hello from woa, version $version"
  show "curl http://127.0.0.1:$APP_PORT/  ->  $(curl -fsS "http://127.0.0.1:$APP_PORT/")"
  wait_for "the WOS to record 'installed' at $revision" status_is "$revision" installed
  say "The status woa-sync posted, as the WOS recorded it:"
  show "$(wos "/admin/devices/$CLIENT/deployments/$ID")"
}

step "The WOS commits a sample app to the device repository"
say "An ApplicationDeployment (compose profile) of $APP_IMAGE with a parameter MESSAGE."
release 1

step "The WOS commits a change: the app's MESSAGE parameter"
say "woa-sync picks up the new commit, woa-deploy replaces the app's container."
release 2

step "Done"
compose ps 2>&1 | sed 's/^/   /'
say "The app and both services keep running. Restarting either container keeps the app"
say "running and loses no state: try docker restart \$(docker ps -qf name=$PROJECT.woa-deploy)"
say "Everything the demo made is in $DIR."
printf '\nClean up with: %sscripts/demo.sh down%s\n' "$B" "$R"
