#!/usr/bin/env bash
# bench/push/run-cmd.sh -- the push harness's `cmd` scenario (uptime on N
# hosts) for canopy (tool `ours`, through bench/push/ours.sh) and the other
# tools, in one run, then the median table with canopy's ratios.
#
#   bench/push/run-cmd.sh                          # N in 10 50 100, 3 valid runs a cell
#   NS="10" REPS=1 bench/push/run-cmd.sh           # quick check
#
# Knobs: NS ("10 50 100"), REPS (3 valid runs a cell), RETRIES (6: extra
# runs for a cell whose run failed or was not valid), TOOLS ("ours pdsh pssh
# clush ansible ansible-cp"), OUT (bench/push/results/cmd-<stamp>.jsonl; an
# existing file is appended to and its valid runs count, so an interrupted
# run resumes), HARNESS (../shared/bench/push), QUIET (0.25: before each run,
# wait up to QUIET_MAX = 180 s until the machine's CPU is below this busy
# fraction over 2 s, so that other jobs' bursts are not measured),
# FOREIGN_MAX (1.0 s, see below), CANOPY_MAIN (default: a private build made
# by snapshot.sh, removed at the end).
#
# It calls the harness's bench.sh for every run (the harness's run-matrix.sh
# writes into the harness's own results/ directory, which is read-only here).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
HARNESS=$(cd "${HARNESS:-$PROJECT/../shared/bench/push}" && pwd)
NS=${NS:-"10 50 100"}
REPS=${REPS:-3}
RETRIES=${RETRIES:-6}
TOOLS=${TOOLS:-"ours pdsh pssh clush ansible ansible-cp"}
QUIET=${QUIET:-0.25}
QUIET_MAX=${QUIET_MAX:-180}
FOREIGN_MAX=${FOREIGN_MAX:-1.0}
# A run counts (for REPS and for stopping retries) when it is ok and its
# foreign CPU is at most max(FOREIGN_MAX, a quarter core over the run): see
# "valid runs" in bench/README.md; the harness's own `disturbed` flag (foreign
# CPU above max(0.5 s, a quarter core)) is kept in every line, and ratios.py
# reports both.
RELAXED_JQ='.ok == true and .seconds != null and (.foreign_cpu_s // 0) <= ([$f, 0.25 * .seconds] | max)'
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$HERE/results"
OUT=${OUT:-$HERE/results/cmd-$STAMP.jsonl}
ERR=${OUT%.jsonl}.stderr

SNAP=
cleanup() {
  set +e
  "$HARNESS/fleet.sh" down >&2
  [[ -n $SNAP ]] && rm -rf "$SNAP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z ${CANOPY_MAIN:-} ]]; then
  SNAP=/tmp/canopy-pushbench-snap.$$
  CANOPY_MAIN=$("$HERE/snapshot.sh" "$SNAP")
fi
export CANOPY_MAIN PUSHBENCH_OURS=$HERE/ours.sh
# same hash as snapshot.sh prints: SHA-256 over dist/src/**/*.js
CODE_HASH=$(cd "$(dirname "$(dirname "$CANOPY_MAIN")")" && find . -name '*.js' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-12)

# What ran, for the record.
jq -n --arg stamp "$STAMP" --arg code_hash "$CODE_HASH" --argjson nproc "$(nproc)" \
  --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" \
  --arg kernel "$(uname -r)" --arg node "$(node --version)" --arg openssh "$(ssh -V 2>&1)" \
  --arg pdsh "$(pdsh -V 2>&1 | head -1)" --arg pssh "$(parallel-ssh --version 2>&1)" \
  --arg clush "$(clush --version 2>&1)" --arg ansible "$(ansible --version 2>/dev/null | head -1)" \
  '$ARGS.named' >"${OUT%.jsonl}.env.json"

busy_fraction() {  # CPU busy fraction over 2 s, from /proc/stat
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat); sleep 2
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%.2f", (busy + idle) ? busy / (busy + idle) : 0 }'
}
wait_quiet() {
  local t0=$SECONDS f
  while :; do
    f=$(busy_fraction)
    awk -v f="$f" -v q="$QUIET" 'BEGIN { exit !(f < q) }' && return 0
    if (( SECONDS - t0 > QUIET_MAX )); then echo "  (machine still busy: $f)" >&2; return 0; fi
  done
}

run_cell() {  # N TOOL: until one valid run, at most 1 + RETRIES runs
  local n=$1 tool=$2 try line
  for try in $(seq 0 "$RETRIES"); do
    wait_quiet
    line=$(timeout -k 20 1200 "$HARNESS/bench.sh" cmd "$tool" "$n" 2>>"$ERR" || true)
    [[ -n $line ]] || line="{\"scenario\": \"cmd\", \"tool\": \"$tool\", \"n\": $n, \"seconds\": null, \"changed_count\": null, \"ok\": false, \"error\": \"bench.sh printed nothing\"}"
    echo "$line" >>"$OUT"
    echo "  $(date +%T) $line" | cut -c1-200 >&2
    if [[ $line == *'"note"'* ]]; then break; fi
    if [[ $(jq --argjson f "$FOREIGN_MAX" "$RELAXED_JQ" <<<"$line" 2>/dev/null) == true ]]; then break; fi
  done
  return 0
}
valid_runs() {  # N TOOL -> valid runs already in $OUT (so that a run can be resumed with OUT=...)
  [[ -s $OUT ]] || { echo 0; return; }
  jq -s --arg t "$2" --argjson n "$1" --argjson f "$FOREIGN_MAX" \
    "[.[] | select(.scenario == \"cmd\" and .tool == \$t and .n == \$n) | select($RELAXED_JQ)] | length" "$OUT"
}

read -r -a tools <<<"$TOOLS"
for n in $NS; do
  "$HARNESS/fleet.sh" up "$n" >&2
  for rep in $(seq 1 "$REPS"); do
    echo "== N=$n rep $rep/$REPS (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    k=$(( (rep - 1) * ${#tools[@]} / REPS ))   # rotate the order each repetition
    for j in $(seq 0 $(( ${#tools[@]} - 1 ))); do
      tool=${tools[$(( (j + k) % ${#tools[@]} ))]}
      (( $(valid_runs "$n" "$tool") >= rep )) && continue
      run_cell "$n" "$tool"
    done
  done
done
echo "results: $OUT (code hash $CODE_HASH)" >&2
/usr/bin/python3 "$HERE/ratios.py" "$OUT"
