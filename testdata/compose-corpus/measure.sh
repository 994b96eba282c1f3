#!/usr/bin/env bash
# Re-measures EXPECTED.tsv: runs both Compose implementations on every corpus
# file, from the file's own directory, in a clean environment so that shell
# variables cannot leak into interpolation. Prints the TSV on stdout.
#   usage: bash measure.sh > EXPECTED.tsv
set -u
cd "$(dirname "$0")"
V2=${COMPOSE_V2:-docker compose}
V1=${COMPOSE_V1:-docker-compose}
printf 'name\tfile\tcompose_v2\tcompose_1_29\tbuild\n'
for dir in */; do
  dir=${dir%/}
  file=""
  for cand in compose.yaml docker-compose.yml; do
    if [ -f "$dir/$cand" ]; then file=$cand; break; fi
  done
  [ -n "$file" ] || continue
  if (cd "$dir" && env -i PATH="$PATH" HOME="$HOME" $V2 -f "$file" config -q >/dev/null 2>&1); then v2=accept; else v2=reject; fi
  if (cd "$dir" && env -i PATH="$PATH" HOME="$HOME" $V1 -f "$file" config -q >/dev/null 2>&1); then v1=accept; else v1=reject; fi
  if grep -Eq '^[[:space:]]+build:' "$dir/$file"; then build=yes; else build=no; fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$dir" "$file" "$v2" "$v1" "$build"
done
