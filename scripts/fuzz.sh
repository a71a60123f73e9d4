#!/usr/bin/env bash
# Property-based fuzzing of the three parsers of untrusted input (tests/tests/properties.rs): the
# containerd config editor, the unpacker, the settings parser. Each group runs for MINUTES with a new
# seed every round of CASES cases; a failure prints proptest's minimal failing input and stops.
#   scripts/fuzz.sh [--minutes 10] [--cases 20000] [--only config_editor|unpacker|settings_parser]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10 cases=20000 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift ;;
    --cases) cases=$2; shift ;;
    --only) only=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
cargo build --release --quiet -p kwasm-tests --tests
bin=$(cargo test --release --quiet -p kwasm-tests --test properties --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "properties" and m.get("executable"):
        print(m["executable"])')
for group in config_editor unpacker settings_parser; do
  [ -n "$only" ] && [ "$only" != "$group" ] && continue
  end=$(( $(date +%s) + minutes * 60 )) rounds=0
  while :; do
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    if ! PROPTEST_CASES=$cases PROPTEST_RNG_SEED=$seed "$bin" --quiet "$group" >"/tmp/kw-fuzz-$group.log" 2>&1; then
      cat "/tmp/kw-fuzz-$group.log"
      echo "$group: FAILED in round $((rounds + 1)) (PROPTEST_RNG_SEED=$seed)"
      exit 1
    fi
    rounds=$((rounds + 1))
    [ "$(date +%s)" -lt "$end" ] || break
  done
  tests=$(sed -n 's/.*ok\. \([0-9]*\) passed.*/\1/p' "/tmp/kw-fuzz-$group.log")
  echo "$group: $rounds rounds x $cases cases x $tests properties in $minutes min, no failure"
done
