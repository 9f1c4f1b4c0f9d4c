#!/usr/bin/env bash
# Runs the criterion benchmarks of benches/ (release build) and ends with a summary: the median
# time per operation of every benchmark this run measured, from criterion's estimates.
#
#   ./scripts/bench.sh                      every bench
#   ./scripts/bench.sh policy segments      some of them (file names in benches/)
#   ./scripts/bench.sh payloads -- apns     criterion's own arguments after --: a name filter,
#                                           --sample-size 20, --measurement-time 2, --quick, ...
#
# Criterion keeps each result in target/criterion/ and compares the next run with it.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(ingest policy ratelimit payloads webpush_encrypt segments)
benches=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) benches+=("$1"); shift ;;
  esac
done
[ ${#benches[@]} -gt 0 ] || benches=("${all[@]}")

results="${CARGO_TARGET_DIR:-target}/criterion"
mkdir -p "$results"
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT

args=()
for b in "${benches[@]}"; do args+=(--bench "$b"); done
cargo bench "${args[@]}" -- "${extra[@]}"

# criterion writes <results>/<benchmark>/new/{benchmark,estimates}.json per benchmark: take the
# ones this run wrote.
human() {
  awk -v ns="$1" 'BEGIN {
    if (ns >= 1e9) printf "%.3f s", ns / 1e9;
    else if (ns >= 1e6) printf "%.3f ms", ns / 1e6;
    else if (ns >= 1e3) printf "%.3f µs", ns / 1e3;
    else printf "%.2f ns", ns }'
}
echo
echo "median time per iteration (this run; machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?'))"
printf '%-52s %14s\n' benchmark median
find "$results" -path '*/new/benchmark.json' -newer "$stamp" | sort | while read -r meta; do
  dir=$(dirname "$meta")
  id=$(sed -nE 's/.*"full_id":"([^"]*)".*/\1/p' "$meta")
  median=$(sed -nE 's/.*"median":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/p' \
    "$dir/estimates.json")
  [ -n "$id" ] && [ -n "$median" ] || continue
  printf '%-52s %14s\n' "$id" "$(human "$median")"
done
