#!/usr/bin/env bash
# Quick start: the main job of woa, on one machine with a Docker engine and no internet.
#
#   scripts/demo.sh [up]     build everything, start a reference WOS and woa as two containers,
#                            deploy a sample web app through Git, then change it
#   scripts/demo.sh up --source margo
#                            the same through the Margo Workload Management API (rc.3): a
#                            reference WFM instead of the WOS, the app published in manifests
#   scripts/demo.sh down     stop and remove everything the demo started, either variant (built
#                            images are kept)
#
# Needs: a Docker engine, Docker Compose (`docker compose` v2 or `docker-compose` 1.29), a Rust
# toolchain (cargo, rustc), git and curl; `--source margo` also needs openssl. Runs as a user who
# may use the Docker engine; `--source margo` uses sudo once when not run as root (see
# provision_svid).
#
# Environment (defaults in brackets):
#   WOA_DEMO_PROJECT [woa-demo]        compose project, and woa-deploy's instance name
#   WOA_DEMO_DIR [/tmp/<project>]      the demo's files: WOS or WFM data, configuration,
#                                      woa-deploy state
#   WOA_DEMO_APP_PORT [8080]           host port (127.0.0.1) the sample app answers on
#   WOA_DEMO_WOS_PORT [8443]           port of the reference WOS
#   WOA_DEMO_WFM_PORT [8444]           port of the reference WFM's API (--source margo)
#   WOA_DEMO_PACKAGE_PORT [8445]       port of the package host (--source margo)
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
WFM_PORT=${WOA_DEMO_WFM_PORT:-8444}
PACKAGE_PORT=${WOA_DEMO_PACKAGE_PORT:-8445}
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
usage() { die "usage: scripts/demo.sh [up [--source git|margo] | down]"; }

ACTION=up
# Where woa-sync takes the desired state from: the WOS's Git repository, or a WFM's Margo API.
SOURCE=git
while [ $# -gt 0 ]; do
  case $1 in
    up | down) ACTION=$1 ;;
    --source)
      [ $# -ge 2 ] || usage
      SOURCE=$2
      shift
      ;;
    --source=*) SOURCE=${1#--source=} ;;
    *) usage ;;
  esac
  shift
done
case $SOURCE in
  git) ORCHESTRATOR=WOS ;;
  margo) ORCHESTRATOR=WFM ;;
  *) die "--source $SOURCE: the desired state comes from git (the default) or margo" ;;
esac

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
# The Margo variant's additions to compose.yaml (start_wfm writes them); present only in its runs.
MARGO_COMPOSE="$DIR/compose.margo.yaml"
compose() {
  local files=(-f "$ROOT/compose.yaml")
  if [ -f "$MARGO_COMPOSE" ]; then files+=(-f "$MARGO_COMPOSE"); fi
  # Everything the stack needs to know about this demo, as compose.yaml's variables.
  WOA_CONFIG_DIR="$DIR/config" WOA_DEPLOY_STATE_DIR="$DIR/deploy" WOA_INSTANCE="$PROJECT" \
    WOA_DEMO_MARGO_DIR="$DIR/margo" "${COMPOSE[@]}" "${files[@]}" -p "$PROJECT" "$@"
}

# The processes the demo runs on this machine, beside the containers: NAME (the file names of
# their pid and log in DIR) and what they are.
HOST_SERVICES=("wos:reference WOS" "wfm:reference WFM" "package-host:package host")

# serve NAME WORKDIR COMMAND...: starts COMMAND in WORKDIR on this machine, detached from the
# terminal (it outlives the script, until `down`), its output in DIR/NAME.log and its pid in
# DIR/NAME.pid.
serve() {
  local name=$1 workdir=$2
  shift 2
  (cd "$workdir" && exec nohup "$@") </dev/null >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

# Stops and removes what a previous `up` of this project left, of either variant; quiet when
# there is nothing.
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

if [ "$ACTION" = down ]; then
  printf 'Removing the demo %s (containers, networks, volumes, the WOS or WFM, %s)\n' "$PROJECT" "$DIR"
  down
  printf 'Removed. The images are kept: docker images "woa-*"\n'
  exit 0
fi
if [ "$SOURCE" = margo ]; then
  command -v openssl >/dev/null 2>&1 ||
    die "--source margo needs openssl (the package host and its certificate; Debian: apt-get install openssl)"
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

if [ "$SOURCE" = margo ]; then
  printf '%swoa quick start, Margo variant%s: a reference WFM (the fleet manager) on this\n' "$B" "$R"
  printf 'machine, and the device agent as two containers (woa-deploy, woa-sync), using %s.\n' "${COMPOSE[*]}"
else
  printf '%swoa quick start%s: a reference WOS (the orchestrator) on this machine, and the device\n' "$B" "$R"
  printf 'agent as two containers (woa-deploy, woa-sync), using %s.\n' "${COMPOSE[*]}"
fi
if [ -f "$DIR/.woa-demo" ]; then
  say "removing the previous run in $DIR"
  down >/dev/null 2>&1 || true
elif [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
  die "$DIR is not empty and not the demo's: set WOA_DEMO_DIR to another directory"
fi
mkdir -p "$DIR/config" "$DIR/deploy"
touch "$DIR/.woa-demo"

step "Build: woa-deploy and woa-sync images, the reference $ORCHESTRATOR, a sample web app image"
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

# Containers reach the host as host.docker.internal (compose.yaml maps it to the engine's
# bridge gateway); what runs on this machine for them listens on that address only.
GATEWAY=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)
GATEWAY=${GATEWAY:-172.17.0.1}
# The sample app, the same in both variants: its compose package (a parameter sets MESSAGE) and
# the ApplicationDeployment of it, under this id.
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
# What a variant adds to the services' configuration (start_wos or start_wfm sets it): TOML
# appended to deploy.toml, put before sync.toml (its top-level keys) and appended to it.
DEPLOY_TOML='' SYNC_TOML_TOP='' SYNC_TOML=''

# The Git variant: the reference WOS, which enrolls the device and keeps its repository.
start_wos() {
  step "Start the reference WOS (woa-testkit wos) on this machine"
  # The WOS's certificate carries the name the containers use.
  WOS_URL="https://host.docker.internal:$WOS_PORT"
  TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  serve wos . "$TESTKIT" wos --listen "$GATEWAY:$WOS_PORT" --data "$DIR/wos" --token "$TOKEN" \
    --san host.docker.internal --public-url "$WOS_URL"
  wait_for "the WOS" grep -q '^listening on' "$DIR/wos.log"
  say "It serves the WOS API (enrollment, status) and one Git repository per device, over HTTPS:"
  show "$WOS_URL (listening on $GATEWAY:$WOS_PORT; log $DIR/wos.log)"
}
# From this machine, the same name and certificate, pointed at the gateway address.
wos() { curl -fsS --cacert "$DIR/wos/server-ca.pem" --resolve "host.docker.internal:$WOS_PORT:$GATEWAY" "$WOS_URL$1"; }

# The Margo variant: the reference WFM, and a package host for the app's compose package.
# The API's path prefix: any base URL may carry one (README's example has this one).
WFM_PREFIX=/v1alpha2/margo
WFM_URL="https://host.docker.internal:$WFM_PORT$WFM_PREFIX"
PACKAGE_URL="https://host.docker.internal:$PACKAGE_PORT/web/compose.yaml"
start_wfm() {
  step "Start the reference WFM (woa-testkit wfm) and a package host on this machine"
  # Its admin API has no authentication, so it stays on loopback (a free port, which it prints).
  serve wfm . "$TESTKIT" wfm --dir "$DIR/wfm" --listen "$GATEWAY:$WFM_PORT" \
    --admin-listen 127.0.0.1:0 --prefix "$WFM_PREFIX"
  wait_for "the WFM" grep -q '^admin on http://' "$DIR/wfm.log"
  WFM_ADMIN=$(sed -n 's/^admin on //p' "$DIR/wfm.log")
  say "It serves the Margo Workload Management API (rc.3) over mutual TLS. Device and WFM know"
  say "each other by SPIFFE IDs: its certificate names no host, any name that routes to it does."
  show "$WFM_URL (listening on $GATEWAY:$WFM_PORT; log $DIR/wfm.log)"
  say "Its admin API (the fleet operator's side: no authentication, loopback only):"
  show "$WFM_ADMIN"
  start_package_host
  # compose.yaml maps host.docker.internal for woa-sync only, which reaches the WFM by it;
  # woa-deploy needs it too, for the package host. woa-sync also gets the SVID that
  # provision_svid puts in DIR/margo.
  cat >"$MARGO_COMPOSE" <<'EOF'
# scripts/demo.sh --source margo: additions to compose.yaml.
services:
  woa-deploy:
    extra_hosts: ["host.docker.internal:host-gateway"]
  woa-sync:
    volumes:
      - ${WOA_DEMO_MARGO_DIR}:/etc/woa/margo:ro
EOF
  DEPLOY_TOML=$'\n[packages]\n# The package host\'s CA, which the demo made.\nca = ["/etc/woa/config/package-ca.pem"]\n'
  SYNC_TOML_TOP=$'# The desired state from the reference WFM, through the Margo API (not from Git).\nsource = "margo"\n\n'
  printf -v SYNC_TOML '\n[margo]\nurl = "%s"\nsvid = "%s"\nsvid_key = "%s"\ntrust_bundle = "%s"\n' \
    "$WFM_URL" /etc/woa/margo/svid.pem /etc/woa/margo/svid-key.pem /etc/woa/margo/trust-bundle.pem
}
wfm() { curl -fsS --max-time 5 "$WFM_ADMIN$1"; }

# The Margo API carries deployment documents only (Git carries their packages beside them): a
# compose package is named by an https:// URL or as an OCI artifact. An OCI registry would
# have to be on woa-deploy's own loopback (it reaches no other registry over plain HTTP, and
# trusts only the system's CAs over HTTPS), so the package has an HTTPS URL: openssl's test
# web server, serving a directory that holds the package only, with a certificate from a CA
# made for the demo, which woa-deploy trusts as packages.ca.
start_package_host() {
  local dir="$DIR/package-host"
  mkdir -p "$dir/www/web"
  ossl() { openssl "$@" 2>>"$dir/openssl.log" || die "openssl $1 failed: $(cat "$dir/openssl.log")"; }
  ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=woa demo package CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem"
  ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=host.docker.internal" \
    -keyout "$dir/server.key" -out "$dir/server.csr"
  printf 'subjectAltName = DNS:host.docker.internal\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n' \
    >"$dir/server.ext"
  ossl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -extfile "$dir/server.ext" -out "$dir/server.pem"
  cp "$dir/ca.pem" "$DIR/config/package-ca.pem"
  app_package >"$dir/www/web/compose.yaml"
  # -WWW serves the files under its working directory, nothing above it.
  serve package-host "$dir/www" openssl s_server -quiet -WWW -accept "$GATEWAY:$PACKAGE_PORT" \
    -cert ../server.pem -key ../server.key
  wait_for "the package host" curl -fsS --max-time 2 --cacert "$dir/ca.pem" \
    --resolve "host.docker.internal:$PACKAGE_PORT:$GATEWAY" "$PACKAGE_URL"
  say "The Margo API carries deployment documents, not their packages: the app's compose package"
  say "is on a small HTTPS server (openssl s_server), with a CA of the demo's that woa-deploy trusts:"
  show "$PACKAGE_URL (listening on $GATEWAY:$PACKAGE_PORT; log $DIR/package-host.log)"
}

if [ "$SOURCE" = margo ]; then start_wfm; else start_wos; fi

step "Create the local PKI and start woa-deploy (compose: the 'pki' one-shot, then 'woa-deploy')"
say "woa-deploy gets the Docker socket and its state directory; its gRPC port stays on the"
say "private compose network. woa-sync will reach it as https://woa-deploy:7411 over mutual TLS."
{ cat "$ROOT/config/deploy.toml"; printf '%s' "$DEPLOY_TOML"; } >"$DIR/config/deploy.toml"
# The demo polls every 2 s so that changes show quickly (the default is 60 s).
{
  printf '%s' "$SYNC_TOML_TOP"
  cat "$ROOT/config/sync.toml"
  printf '\n[poll]\ninterval = "2s"\njitter = "0s"\n'
  printf '%s' "$SYNC_TOML"
} >"$DIR/config/sync.toml"
compose up -d woa-deploy 2>&1 | sed 's/^/   /'
deploy_healthy() {
  [ "$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps -q woa-deploy)")" = healthy ]
}
wait_for "woa-deploy to be healthy (woa-deploy health, every 15 s)" deploy_healthy

# The Git variant: the device makes its key and the WOS grants it a repository.
enroll() {
  step "Enroll the device with the WOS (woa-sync enroll, as a one-shot container)"
  say "The device makes its key, the WOS signs its certificate and grants it a repository."
  mkdir -p "$DIR/enroll"
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
}

# The Margo variant: rc.3 leaves the device's identity to be provisioned out of band; here it
# is the SVID the WFM issued for it.
provision_svid() {
  step "Give the device its identity: the X.509-SVID the WFM issued (no enrollment in rc.3)"
  say "The WFM made the device's SVID and key and the trust bundle in $DIR/wfm; woa-sync gets"
  say "copies, read-only, at /etc/woa/margo. It knows the WFM by the SPIFFE ID its SVID implies."
  local dir="$DIR/margo"
  mkdir -p "$dir"
  chmod 0755 "$dir"
  install -m 0644 "$DIR/wfm/client.pem" "$dir/svid.pem"
  install -m 0644 "$DIR/wfm/ca.pem" "$dir/trust-bundle.pem"
  install -m 0600 "$DIR/wfm/client.key" "$dir/svid-key.pem"
  # The key stays 0600, and woa-sync runs as uid 65532: the key must be that user's, which
  # only root can make it (sudo when the demo runs as another user).
  if [ "$(id -u)" = 0 ]; then
    chown 65532:65532 "$dir/svid-key.pem"
  else
    say "sudo chown 65532:65532 $dir/svid-key.pem (the user woa-sync runs as)"
    sudo chown 65532:65532 "$dir/svid-key.pem" ||
      die "could not give $dir/svid-key.pem to uid 65532 (woa-sync's user): run as root, or with sudo"
  fi
  show "$(openssl x509 -in "$dir/svid.pem" -noout -ext subjectAltName | sed -n 's/^ *URI:/device /p')"
}

if [ "$SOURCE" = margo ]; then provision_svid; else enroll; fi

step "Start woa-sync (compose up -d)"
if [ "$SOURCE" = margo ]; then
  say "It polls the WFM's manifest, hands each new version to woa-deploy, and posts status."
else
  say "It polls the device repository, hands each new commit to woa-deploy, and posts status."
fi
compose up -d 2>&1 | sed 's/^/   /'

# git_publish VERSION: the WOS's side: commits the sample app at VERSION to the device
# repository; REVISION is the commit.
git_publish() {
  local version=$1 work="$DIR/work"
  local git=(git -c user.name="demo WOS" -c user.email=wos@demo.invalid -c commit.gpgsign=false)
  rm -rf "$work"
  "${git[@]}" clone --quiet "$DIR/wos/repos/$CLIENT.git" "$work" 2>/dev/null
  mkdir -p "$work/deployments" "$work/apps/web"
  app_package >"$work/apps/web/compose.yaml"
  app_deployment "$version" apps/web/compose.yaml >"$work/deployments/web.yaml"
  REVISION=$(cd "$work" && "${git[@]}" add -A && "${git[@]}" commit --quiet -m "demo-web: version $version" &&
    "${git[@]}" push --quiet origin HEAD:refs/heads/main && git rev-parse HEAD)
  show "committed deployments/web.yaml + apps/web/compose.yaml as $REVISION"
}
# git_status_is STATE: the WOS's last status of the app is STATE at REVISION.
git_status_is() {
  local status
  status=$(wos "/admin/devices/$CLIENT/deployments/$ID") || return 1
  case $status in *"\"revision\":\"$REVISION\""*) ;; *) return 1 ;; esac
  case $status in *"\"status\":{\"state\":\"$1\""*) return 0 ;; *) return 1 ;; esac
}
git_recorded() {
  wait_for "the WOS to record 'installed' at $REVISION" git_status_is installed
  say "The status woa-sync posted, as the WOS recorded it:"
  show "$(wos "/admin/devices/$CLIENT/deployments/$ID")"
}

# json_string: stdin as a JSON string (for text without control characters but newlines).
json_string() {
  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | awk 'BEGIN { printf "\"" } { printf "%s\\n", $0 } END { printf "\"" }'
}
# margo_publish VERSION: the WFM's side: the sample app at VERSION becomes the whole desired
# state, a new manifest; REVISION is its manifest version.
margo_publish() {
  local answer
  answer=$(app_deployment "$1" "$PACKAGE_URL" | json_string | sed "s/^/{\"$ID\": /; s/\$/}/" |
    curl -sS -X PUT -H 'Content-Type: application/json' --data-binary @- -w '\n%{http_code}' \
      "$WFM_ADMIN/admin/deployments") || die "PUT $WFM_ADMIN/admin/deployments failed"
  [ "${answer##*$'\n'}" = 200 ] || die "PUT /admin/deployments: the WFM answered ${answer//$'\n'/ }"
  REVISION=$(printf '%s\n' "$answer" | sed -n 's/.*"manifestVersion":\([0-9]*\).*/\1/p')
  [ -n "$REVISION" ] || die "PUT /admin/deployments answered no manifestVersion: $answer"
  show "PUT $WFM_ADMIN/admin/deployments {\"$ID\": <document>}: manifest version $REVISION"
}
# margo_status_is STATE: the last status the WFM received of the app is STATE at REVISION.
margo_status_is() {
  local status
  status=$(wfm /admin/statuses) || return 1
  case $status in *"\"adoptedManifestVersion\":$REVISION"[,\}]*) ;; *) return 1 ;; esac
  case $status in *"\"status\":{\"state\":\"$1\""*) return 0 ;; *) return 1 ;; esac
}
margo_recorded() {
  wait_for "the WFM to receive 'installed' at manifest version $REVISION" margo_status_is installed
  say "The status woa-sync posted, as the WFM received it (GET /admin/statuses):"
  show "$(wfm /admin/statuses)"
}

# release VERSION: publishes the app at VERSION as the variant does, then waits for the app to
# answer and for the WOS or WFM to hold its status `installed`.
release() {
  local version=$1
  "${SOURCE}_publish" "$version"
  wait_for "the app to answer version $version on http://127.0.0.1:$APP_PORT" \
    answers "Hello from woa, version $version"
  show "curl http://127.0.0.1:$APP_PORT/  ->  $(curl -fsS "http://127.0.0.1:$APP_PORT/")"
  "${SOURCE}_recorded"
}
answers() { [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$APP_PORT/")" = "$1" ]; }

if [ "$SOURCE" = margo ]; then
  step "The WFM publishes a sample app: its document in a new manifest (PUT /admin/deployments)"
  say "An ApplicationDeployment (compose profile) of $APP_IMAGE with a parameter MESSAGE; its"
  say "package on the package host."
else
  step "The WOS commits a sample app to the device repository"
  say "An ApplicationDeployment (compose profile) of $APP_IMAGE with a parameter MESSAGE."
fi
release 1

if [ "$SOURCE" = margo ]; then
  step "The WFM publishes a change: the app's MESSAGE parameter, in the next manifest"
  say "woa-sync picks up the new manifest, woa-deploy replaces the app's container."
else
  step "The WOS commits a change: the app's MESSAGE parameter"
  say "woa-sync picks up the new commit, woa-deploy replaces the app's container."
fi
release 2

step "Done"
compose ps 2>&1 | sed 's/^/   /'
say "The app and both services keep running. Restarting either container keeps the app"
say "running and loses no state: try docker restart \$(docker ps -qf name=$PROJECT.woa-deploy)"
if [ "$SOURCE" = margo ]; then
  say "What the WFM received from the device: curl $WFM_ADMIN/admin/statuses (or /capabilities)"
fi
say "Everything the demo made is in $DIR."
printf '\nClean up with: %sscripts/demo.sh down%s\n' "$B" "$R"
