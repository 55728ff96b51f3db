#!/usr/bin/env bash
# The long variants of the reliability proofs (issue 7; see RELIABILITY.md): the same
# tests `cargo test --workspace` runs in their fast form (tests/it/reliability/), with
# bigger sizes, one after the other, and a summary at the end.
#
#   scripts/reliability.sh                      # 100000 events, 50 kills, 60 s outage, 60 s of writers
#   scripts/reliability.sh --kills 200 --seed 42 --only crash
#
# Exit status: 0 when every test passed, 1 otherwise. The full output is kept in a log
# file whose name is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: scripts/reliability.sh [options]
  --events N          events feedctl replay mirrors while being killed   (default 100000)
  --kills K           SIGKILLs per crash test                           (default 50)
  --orders N          orders the billing service bills while being killed (default 5000)
  --outage-secs S     how long the origin is down behind the cache-proxy (default 60)
  --duration S        how long 16 writers hammer two catalog replicas    (default 60)
  --seed X            repeat the random choices of an earlier run
  --only LIST         comma-separated subset of: crash,outage,concurrency (default all)
  --skip-known-bugs   leave out the tests marked #[ignore = "bug: ..."] (run by default)
  -h, --help          this text
EOF
}

events=100000 kills=50 orders=5000 outage=60 duration=60 seed="" only="crash,outage,concurrency"
include_ignored=(--include-ignored)
number() { [[ "$2" =~ ^[0-9]+$ ]] || { echo "reliability.sh: $1 needs a whole number, got '$2'" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --events) number "$1" "${2-}"; events=$2; shift 2 ;;
    --kills) number "$1" "${2-}"; kills=$2; shift 2 ;;
    --orders) number "$1" "${2-}"; orders=$2; shift 2 ;;
    --outage-secs) number "$1" "${2-}"; outage=$2; shift 2 ;;
    --duration) number "$1" "${2-}"; duration=$2; shift 2 ;;
    --seed) number "$1" "${2-}"; seed=$2; shift 2 ;;
    --only) only=${2-}; shift 2 ;;
    --skip-known-bugs) include_ignored=(); shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "reliability.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

filters=()
IFS=',' read -r -a parts <<<"$only"
for part in "${parts[@]}"; do
  case "$part" in
    crash|outage|concurrency) filters+=("reliability::$part::") ;;
    *) echo "reliability.sh: --only takes crash, outage, concurrency; got '$part'" >&2; exit 2 ;;
  esac
done
[ ${#filters[@]} -gt 0 ] || { echo "reliability.sh: --only selects nothing" >&2; exit 2; }

export RELIABILITY_EVENTS=$events RELIABILITY_KILLS=$kills RELIABILITY_ORDERS=$orders
export RELIABILITY_OUTAGE_SECS=$outage RELIABILITY_DURATION_SECS=$duration
if [ -n "$seed" ]; then export RELIABILITY_SEED=$seed; fi

log="${TMPDIR:-/tmp}/reliability-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "reliability: events=$events kills=$kills orders=$orders outage=${outage}s duration=${duration}s seed=${seed:-random} only=$only"
echo "reliability: full output in $log"
start=$(date +%s)
# `--workspace --test it` builds exactly what `cargo test --workspace` builds (no
# second feature set to compile); only the root package's `it` has these tests.
status=0
cargo test --workspace --test it -- "${filters[@]}" "${include_ignored[@]}" --nocapture --test-threads=1 \
  >"$log" 2>&1 || status=$?
secs=$(( $(date +%s) - start ))

echo
echo "== summary ($secs s) =="
grep -E '^RELIABILITY' "$log" || true
echo
# With --nocapture a test's verdict comes after its output, on a line of its own.
awk '
  /^test reliability::/ { name = $2; if ($0 ~ / \.\.\. ignored/) { print "ignored  " name; name = "" } }
  name && ($0 ~ /^ok$/ || $0 ~ / \.\.\. ok$/)         { print "ok       " name; name = "" }
  name && ($0 ~ /^FAILED$/ || $0 ~ / \.\.\. FAILED$/) { print "FAILED   " name; name = "" }
' "$log"
grep -oE '[a-z/]+: seed [0-9]+' "$log" | sed 's/^/  /' || true
if [ $status -ne 0 ]; then
  echo
  echo "== failures =="
  grep -E -A1 "panicked at" "$log" | grep -v -E '^(--|stack backtrace)' || true
  grep -E '^error(\[|:)' "$log" | head -5 || true
  echo "reliability: FAILED (see $log)"
  exit 1
fi
echo "reliability: all passed"
