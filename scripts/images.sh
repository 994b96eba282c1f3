#!/usr/bin/env bash
# Builds the container images of woa-deploy and woa-sync from this workspace, with no container
# registry at all: cargo builds the binaries (the `release` profile: LTO, stripped; smaller and,
# on two cores, no slower to build than thin LTO, see BENCHMARKS.md), and each image is
# `FROM scratch` plus one binary, the few glibc files it loads, and a handful of /etc files.
# Docker's classic builder never pulls anything for `FROM scratch`.
#
#   scripts/images.sh            build (or find) both images
#
# Prints two shell assignments on stdout, for `eval "$(scripts/images.sh)"`:
#   WOA_DEPLOY_IMAGE=woa-deploy:<content hash>
#   WOA_SYNC_IMAGE=woa-sync:<content hash>
# and tags both `:latest` as well. The tag follows the content, so an image that is already
# there is not built again. Progress and cargo's output go to stderr.
#
# Environment: CARGO_TARGET_DIR (default ./target), WOA_IMAGE_PROFILE (default `release`).
# Needs: cargo, docker, ldd, sha256sum.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${WOA_IMAGE_PROFILE:-release}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$TARGET_DIR/$PROFILE"
# woa-sync runs as this user; woa-deploy's PKI one-shot writes the keys as it too.
WOA_UID=65532

say() { printf '%s\n' "$*" >&2; }

say "==> cargo build --profile $PROFILE -p woa-deploy -p woa-sync"
"${CARGO:-cargo}" build --locked --profile "$PROFILE" -p woa-deploy -p woa-sync \
  --bin woa-deploy --bin woa-sync >&2

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# rootfs DIR BINARY: the binary, the shared objects the dynamic loader maps for it, glibc's
# name-service modules (loaded at run time, so ldd does not list them) and the /etc files glibc
# and rustls read. A dynamic binary because a static glibc one cannot resolve host names.
rootfs() {
  local dir=$1 binary=$2 lib libdir nss
  mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs"
  cp "$binary" "$dir/usr/local/bin/"
  for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  libdir=$(dirname "$(ldd "$binary" | awk '$1 ~ /^libc\.so/ {print $3}')")
  for nss in libnss_files.so.2 libnss_dns.so.2; do
    if [ -e "$libdir/$nss" ]; then cp -L "$libdir/$nss" "$dir$libdir/"; fi
  done
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$dir/etc/nsswitch.conf"
  printf 'root:x:0:0:root:/:/nonexistent\nwoa:x:%s:%s:woa:/nonexistent:/nonexistent\n' \
    "$WOA_UID" "$WOA_UID" >"$dir/etc/passwd"
  printf 'root:x:0:\nwoa:x:%s:\n' "$WOA_UID" >"$dir/etc/group"
  # Public CAs, for a WOS or package host with a publicly trusted certificate.
  for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -f "$bundle" ]; then
      cp -L "$bundle" "$dir/etc/ssl/certs/ca-certificates.crt"
      break
    fi
  done
}

# build NAME DOCKERFILE: builds context $WORK/NAME as NAME:<hash of the context> unless that
# image exists; prints the image name.
build() {
  local name=$1 dockerfile=$2 context="$WORK/$1" hash image
  printf '%s' "$dockerfile" >"$context/Dockerfile"
  hash=$(cd "$context" && find . -print0 | LC_ALL=C sort -z |
    xargs -0 stat -c '%n %a %s' | sha256sum | cut -c1-8)
  hash="$hash$(cd "$context" && find . -type f -print0 | LC_ALL=C sort -z |
    xargs -0 cat | sha256sum | cut -c1-8)"
  image="$name:$hash"
  if docker image inspect "$image" >/dev/null 2>&1; then
    say "==> $image is built already"
  else
    say "==> docker build $image"
    # Quiet unless it fails (newer clients warn about the classic builder on every build).
    if ! DOCKER_BUILDKIT=0 docker build --quiet --tag "$image" "$context" >"$WORK/build.log" 2>&1; then
      cat "$WORK/build.log" >&2
      return 1
    fi
  fi
  docker tag "$image" "$name:latest" >&2
  printf '%s\n' "$image"
}

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

# woa-deploy: root by default (it needs the Docker socket, which is root's or a group's whose
# id differs per host); /etc/woa/pki belongs to the woa user so that the PKI one-shot, running
# as that user, can write a fresh volume mounted there.
mkdir -p "$WORK/woa-deploy/pki" "$WORK/woa-deploy/rootfs/var/lib/woa-deploy"
rootfs "$WORK/woa-deploy/rootfs" "$BIN/woa-deploy"
DEPLOY=$(build woa-deploy "FROM scratch
COPY rootfs/ /
COPY --chown=$WOA_UID:$WOA_UID pki/ /etc/woa/pki/
LABEL org.opencontainers.image.title=woa-deploy org.opencontainers.image.version=$VERSION
EXPOSE 7411
ENTRYPOINT [\"/usr/local/bin/woa-deploy\"]
CMD [\"serve\"]
")

# woa-sync: runs as the woa user; its state dir belongs to it, so a fresh named volume mounted
# there does too.
mkdir -p "$WORK/woa-sync/state"
chmod 0700 "$WORK/woa-sync/state"
rootfs "$WORK/woa-sync/rootfs" "$BIN/woa-sync"
SYNC=$(build woa-sync "FROM scratch
COPY rootfs/ /
COPY --chown=$WOA_UID:$WOA_UID state/ /var/lib/woa-sync/
LABEL org.opencontainers.image.title=woa-sync org.opencontainers.image.version=$VERSION
USER $WOA_UID:$WOA_UID
ENTRYPOINT [\"/usr/local/bin/woa-sync\"]
CMD [\"run\"]
")

for image in "$DEPLOY" "$SYNC"; do
  say "    $image: $(docker image inspect --format '{{.Size}}' "$image" |
    awk '{printf "%.1f MB", $1 / 1000000}')"
done
printf 'WOA_DEPLOY_IMAGE=%s\nWOA_SYNC_IMAGE=%s\n' "$DEPLOY" "$SYNC"
