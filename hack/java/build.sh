#!/usr/bin/env bash
# Build the real Koupleless base and biz jars used by vkprovider's e2e tests (idempotent): tests/e2e/java
# (mvn package) unless every output jar is newer than every source/pom. Every artifact comes from Maven Central
# (koupleless 2.1.6, sofa-ark 3.1.7 + 3.1.4 web layer; see docs/protocol.md §0).
# Output: tests/e2e/java/target-jars/{base.jar,biz1-0.0.1-ark-biz.jar,biz1-0.0.2-ark-biz.jar,broken-0.0.1-ark-biz.jar}
# Env: FORCE=1 rebuild; MVN (mvn);
#      VKP_M2_REPO: the Maven local repository, our own (default ~/.cache/vkprovider/m2), never ~/.m2/repository,
#      so that nothing installed there by hand can leak in: it starts empty and is filled from Central only, then
#      reused between runs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
J=$ROOT/tests/e2e/java
OUT=$J/target-jars
MVN=${MVN:-mvn}
REPO=${VKP_M2_REPO:-$HOME/.cache/vkprovider/m2}
JARS="base.jar biz1-0.0.1-ark-biz.jar biz1-0.0.2-ark-biz.jar broken-0.0.1-ark-biz.jar"
t0=$(date +%s)

command -v "$MVN" >/dev/null || { echo "java-build: Maven ($MVN) not found; install Maven 3.8+ and JDK 17" >&2; exit 1; }
mkdir -p "$REPO"

up_to_date() {
  [ "${FORCE:-0}" = 1 ] && return 1
  local oldest=""
  for j in $JARS; do
    [ -f "$OUT/$j" ] || return 1
    if [ -z "$oldest" ] || [ "$OUT/$j" -ot "$oldest" ]; then oldest=$OUT/$j; fi
  done
  # any pom or source newer than the oldest jar?
  [ -z "$(find "$J" -path "$OUT" -prune -o -path '*/target' -prune -o -type f \
          \( -name pom.xml -o -path '*/src/*' \) -newer "$oldest" -print -quit)" ]
}

if up_to_date; then
  echo "e2e jars up to date in $OUT (FORCE=1 to rebuild)"
else
  # the build's own output is kept for when it fails (pipefail would lose Maven's exit status behind a filter)
  log=$(mktemp /tmp/vkp-java-build-XXXXXX.log)
  if ! (cd "$J" && "$MVN" -B -ntp package -Dmaven.repo.local="$REPO" >"$log" 2>&1); then
    grep -E '^\[(ERROR|WARNING)\]' "$log" | head -60 >&2
    echo "java-build: mvn package failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  for j in $JARS; do [ -f "$OUT/$j" ] || { echo "missing $OUT/$j" >&2; exit 1; }; touch "$OUT/$j"; done
  # the ark packager leaves its own logs next to the jars
  rm -rf "$OUT/sofa-ark"
fi
ls -l $(for j in $JARS; do echo "$OUT/$j"; done) | awk '{print $5, $9}'
echo "java-build done in $(( $(date +%s) - t0 ))s"
