#!/usr/bin/env bash
# bench/dist/ours.sh -- canopy's adapter for the shared distribution benchmark
# (../shared/bench/dist, "The ours.sh contract" in its README.md).
#
#   cd ../shared/bench/dist && OURS=/work/main/bench/dist/ours.sh ./bench.sh ours 8 25 128
#
#   ours.sh prepare  (untimed) start a coordinator in the source's namespace
#                    (listening on DIST_SRC_ADDR: its API, its control channel
#                    and, as the distribution source, its peer server), one
#                    join token per host, and one agent per host inside that
#                    host's namespace (--bind and --peer-listen on the host's
#                    address, --root the directory of its destination, data
#                    in DIST_WORKDIR); wait until all are online; then a
#                    warm-up distribution of 2 MiB to every host (JIT, TLS
#                    sessions; its file is removed again); then wait until the
#                    daemons are idle.
#   ours.sh run      (timed) exactly one `canopy dist SRC --dest DIR/{host}/NAME
#                    --targets all --json`, run inside the source's namespace;
#                    exit 0 only if every host installed the file (canopy
#                    checks every chunk's BLAKE3 and the whole file's MD5
#                    before the atomic rename). Then, for the harness's
#                    first/median host times, writes DIST_DONE_DIR/<host> with
#                    the epoch second each host's task ended (from the JSON).
#   ours.sh cleanup  stop every process prepare started (by recorded PID,
#                    TERM then KILL) and remove the state directory.
#
# Environment (besides the harness's DIST_*):
#   CANOPY_MAIN        canopy's CLI (default <project>/dist/src/cli/main.js; run `npm run build`)
#   NODE               node binary (default: node)
#   CANOPY_DIST_ARGS   extra `canopy dist` options (e.g. "--chunk-size 262144 --stripes 4")
#   CANOPY_LOG         daemons' --log-level (default info)
#   CANOPY_NODE_FLAGS  node options for the agents instead of bin/canopy's (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof")
#   CANOPY_KEEP        a directory: cleanup copies the run's JSON and the logs there
#   CANOPY_KILL_RELAY  "HOST@SECONDS": kill -9 that host's agent SECONDS after the
#                      run starts (the fault cell; the killed host is restarted
#                      at once and must still finish: every host's MD5 is checked)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
MAIN=${CANOPY_MAIN:-$PROJECT/dist/src/cli/main.js}
NODE=${NODE:-$(command -v node)}
LOGLEVEL=${CANOPY_LOG:-info}
PHASE=${1:?usage: ours.sh prepare|run|cleanup}
: "${DIST_WORKDIR:?}" "${DIST_HOSTS_FILE:?}" "${DIST_TOPO:?}" "${DIST_SRC_NS:?}" "${DIST_SRC_ADDR:?}"
W=$DIST_WORKDIR/canopy
# The agents' state (identity, journal, chunk store) lives in a tmpfs of its own: the
# harness's tmpfs holds exactly N+1 copies of the file, and every canopy agent keeps
# the verified chunks (its relay cache, what a restarted agent resumes from) beside
# the installed file, like Dragonfly's and Kraken's piece caches.
STORE=/tmp/distbench/canopy-agents
LOGS=${DIST_LOG_DIR:-$W/logs}
PORT=7443
PEER_PORT=7600
export CANOPY_CONFIG=$W/coord/client.json

log() { echo "ours.sh: [${SECONDS}s] $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=../lib/daemons.sh
source "$HERE/../lib/daemons.sh"
OURS_MARKS=("$W/" "$STORE/")
in_src() { ip netns exec "$DIST_SRC_NS" "$@"; }
canopy() { in_src "$NODE" "$MAIN" "$@"; }

cleanup_all() {
  set +e
  stop_pids "$W/agents.pids"
  stop_pids "$W/coord.pid"
  if [[ -n ${CANOPY_KEEP:-} && -d $W ]]; then
    local keep
    keep=$CANOPY_KEEP/$(date +%H%M%S)-n${DIST_N:-x}
    mkdir -p "$keep" && cp -r "$LOGS" "$keep/logs" 2>/dev/null; cp "$W"/*.json "$keep/" 2>/dev/null
  fi
  rm -rf "$W"
  if mountpoint -q "$STORE"; then umount "$STORE" || umount -l "$STORE"; fi
  rmdir "$STORE" 2>/dev/null
}

# The V8 flags bin/canopy starts `canopy agent` with: the benchmark runs the agent as users do.
agent_flags() { sed -n 's/^ *agent) exec node \(.*\) "\$main".*/\1/p' "$PROJECT/bin/canopy"; }

start_agent() {  # NAME ADDR NS DEST [--join TOKEN]
  local name=$1 addr=$2 ns=$3 dest=$4; shift 4
  # shellcheck disable=SC2086
  ip netns exec "$ns" setsid "$NODE" ${CANOPY_NODE_FLAGS:-$(agent_flags)} "$MAIN" agent --data "$STORE/$name" --name "$name" \
    --bind "$addr" --peer-listen "$addr:$PEER_PORT" --root "$(dirname "$dest")" \
    --log-level "$LOGLEVEL" "$@" </dev/null >>"$LOGS/$name.out" 2>>"$LOGS/$name.err" &
  echo "$! $name $addr $ns $dest" >>"$W/agents.pids"
}

prepare() {
  [[ -r $MAIN ]] || die "$MAIN not found: run 'npm run build' in $PROJECT"
  [[ -e $W ]] && cleanup_all
  mkdir -p "$W" "$LOGS" "$STORE"
  getconf CLK_TCK >"$W/clk_tck"
  mountpoint -q "$STORE" && umount "$STORE"
  mount -t tmpfs -o "size=$(( (DIST_N * ${DIST_SIZE_BYTES:-0} / 1048576) + 64 * DIST_N + 256 ))m,mode=0700" canopy-agents "$STORE"
  : >"$W/agents.pids"
  trap 'rc=$?; if (( rc != 0 )); then log "prepare failed (rc=$rc)"; cleanup_all; fi' EXIT
  ip netns exec "$DIST_SRC_NS" setsid "$NODE" "$MAIN" coordinator --data "$W/coord" --listen "$DIST_SRC_ADDR:$PORT" \
    --no-client-config --log-level "$LOGLEVEL" </dev/null >"$LOGS/coord.out" 2>"$LOGS/coord.err" &
  echo $! >"$W/coord.pid"
  local i
  for i in $(seq 300); do
    grep -q 'listening on' "$LOGS/coord.out" 2>/dev/null && [[ -s $CANOPY_CONFIG ]] && break
    # Alive, not ours_pid: right after the fork the child is still the shell (no mark in its command line).
    [[ -e /proc/$(cat "$W/coord.pid") ]] || die "coordinator died: $(tail -5 "$LOGS/coord.err")"
    sleep 0.1
  done
  grep -q 'listening on' "$LOGS/coord.out" || die "coordinator did not start in 30 s"

  local name addr ns dest tok
  while read -r name addr ns dest; do
    [[ $name == "${DIST_SRC_HOST:-src}" || -z $name ]] && continue
    tok=$(canopy token create --name "$name" --ttl 10m 2>>"$LOGS/tokens.err") || die "token for $name failed"
    start_agent "$name" "$addr" "$ns" "$dest" --join "$tok"
  done <"$DIST_HOSTS_FILE"
  [[ $(wc -l <"$W/agents.pids") == "$DIST_N" ]] || die "started $(wc -l <"$W/agents.pids") agents, expected $DIST_N"

  local online=0
  for i in $(seq 240); do
    online=$(canopy agents --json 2>/dev/null | jq '[.agents[] | select(.online and .facts.peer != null)] | length' 2>/dev/null || echo 0)
    (( online >= DIST_N )) && break
    sleep 1
  done
  (( online >= DIST_N )) || die "only $online of $DIST_N agents online (with a peer server) after 240 s"
  log "$online agents online"

  # Warm-up: 2 MiB through the same path (untimed), then its copies are removed.
  local destdir base
  destdir=$(dirname "$(dirname "$(awk 'NR==2{print $4}' "$DIST_HOSTS_FILE")")")
  base=$(basename "$(awk 'NR==2{print $4}' "$DIST_HOSTS_FILE")")
  head -c $((2 * 1024 * 1024)) /dev/urandom >"$W/warmup.bin"
  canopy dist "$W/warmup.bin" --dest "$destdir/{host}/.canopy-warmup" --targets all --json \
    >"$W/warmup.json" 2>>"$LOGS/warmup.err" || die "warm-up distribution failed: $(jq -c .summary "$W/warmup.json" 2>/dev/null)"
  while read -r name addr ns dest; do
    [[ $name == "${DIST_SRC_HOST:-src}" ]] || rm -f "$(dirname "$dest")/.canopy-warmup"
  done <"$DIST_HOSTS_FILE"
  echo "$destdir $base" >"$W/dest"
  log "warm-up: $(jq -c '{wall: .wallSeconds, copies: .sourceCopies}' "$W/warmup.json")"

  # Let the daemons finish starting (JIT, first heartbeats).
  wait_daemons_idle "$W/coord.pid" "$W/agents.pids"
  trap - EXIT
}

kill_relay_later() {  # HOST@SECONDS: kill -9 that agent, then start it again
  local host=${1%@*} after=${1#*@} pid name addr ns dest
  sleep "$after"
  read -r pid name addr ns dest < <(awk -v h="$host" '$2==h' "$W/agents.pids" | tail -1)
  [[ -n ${pid:-} ]] && ours_pid "$pid" || { log "kill: no agent $host"; return; }
  kill -KILL "$pid"
  log "killed $host (pid $pid) at ${after}s"
  start_agent "$name" "$addr" "$ns" "$dest"
}

run() {
  local destdir base rc=0 killer= t0 t1
  read -r destdir base <"$W/dest"
  if [[ -n ${CANOPY_KILL_RELAY:-} ]]; then
    kill_relay_later "$CANOPY_KILL_RELAY" &
    killer=$!
  fi
  # This whole phase is timed: the bookkeeping around `canopy dist` uses shell
  # builtins (no fork per agent) and two jq calls, so it stays in the
  # milliseconds even on a machine the run keeps busy.
  local au as cu cs
  daemons_cpu_read "$W/agents.pids"; au=$CPU_USER as=$CPU_SYS
  daemons_cpu_read "$W/coord.pid"; cu=$CPU_USER cs=$CPU_SYS
  t0=$EPOCHREALTIME
  # shellcheck disable=SC2086
  canopy dist "$DIST_SRC_FILE" --dest "$destdir/{host}/$base" --targets all --json ${CANOPY_DIST_ARGS:-} \
    >"$W/run.json" 2>"$LOGS/run.err" || rc=$?
  t1=$EPOCHREALTIME
  [[ -n $killer ]] && wait "$killer" 2>/dev/null
  local hz=100 bu bs du ds
  daemons_cpu_read "$W/agents.pids"; bu=$CPU_USER bs=$CPU_SYS
  daemons_cpu_read "$W/coord.pid"; du=$CPU_USER ds=$CPU_SYS
  [[ -r $W/clk_tck ]] && read -r hz <"$W/clk_tck"
  # CPU seconds (user / system) the agents and the coordinator spent in the timed window
  # (a killed agent's ticks before its death are lost).
  log "cpu s: agents user $(( (bu - au) / hz )) sys $(( (bs - as) / hz )), coordinator user $(( (du - cu) / hz )) sys $(( (ds - cs) / hz ))"
  log "canopy dist took $(( (${t1/./} - ${t0/./}) / 1000 )) ms (the process, start to exit)"
  local out host t line
  out=$(jq -r '"summary " + ({wall: .wallSeconds, sourceCopies, summary: .summary} | tojson),
    (.results[] | select(.state == "ok") | "\(.host) \(.endedAt / 1000)")' "$W/run.json") || rc=1
  while read -r line; do
    if [[ $line == summary* ]]; then log "${line#summary }"; continue; fi
    [[ -n ${DIST_DONE_DIR:-} && -n $line ]] || continue
    read -r host t <<<"$line"
    # Written here, all renamed below by one process: the harness reads them after this phase.
    printf '%s\n' "$t" >"$DIST_DONE_DIR/$host.tmp"
  done <<<"$out"
  if [[ -n ${DIST_DONE_DIR:-} ]] && compgen -G "$DIST_DONE_DIR/*.tmp" >/dev/null; then
    perl -e 'for (@ARGV) { (my $to = $_) =~ s/\.tmp$//; rename($_, $to) or die "rename $_: $!\n" }' \
      "$DIST_DONE_DIR"/*.tmp || rc=1
  fi
  [[ -s $W/run.json ]] || rc=1
  return "$rc"
}

case $PHASE in
  prepare) prepare ;;
  run) run ;;
  cleanup) cleanup_all ;;
  *) die "unknown phase $PHASE" ;;
esac
