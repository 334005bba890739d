#!/usr/bin/env bash
# bench/push/ours.sh -- canopy's adapter for the shared push benchmark harness
# (../shared/bench/push, "The ours.sh contract" in its README.md).
#
#   PUSHBENCH_OURS=/work/main/bench/push/ours.sh ./bench.sh cmd ours 10
#
# Implemented: scenarios `cmd`, `push-cold`, `push-warm`, `push-one-var` in
# mode `agent` (one coordinator, one canopy agent per simulated host). Mode
# `ssh` exits 2 ("not yet").
#
#   ours.sh prepare SCEN N  (untimed) start a coordinator on 127.0.0.1 (any free
#                           port; for push scenarios with --inventory
#                           $PUSHBENCH_VARS_DIR: the harness's Ansible inventory
#                           directory, hosts.yml + group_vars + host_vars, read
#                           by canopy's own loader), create one join token per host and start one
#                           agent per host, named as the harness names it and
#                           bound to its address (--bind 127.0.1.i), with the
#                           host's $PUSHBENCH_ROOT/<host> as its root; wait until
#                           all N are online; then one warm-up run of `true` on
#                           every host (PUSHBENCH_CANOPY_WARMUP=0 skips it);
#                           then wait until the daemons are idle.
#                           Push scenarios: write a push file from files.tsv
#                           (dest "{root}/{{ inventory_hostname }}/...", mode)
#                           next to a copy of the templates; the warm-up is one
#                           `canopy push --check --limit h001` (JIT; it primes
#                           the MD5 cache of h001's agent only).
#   ours.sh cmd N           (timed) exactly one
#                           `canopy run <hosts> --json -- "$PUSHBENCH_CMD"`,
#                           converted by jq into {"outputs": {host: stdout}}.
#   ours.sh push-* N        (timed) exactly one `canopy push push.yaml
#                           --vars-file $PUSHBENCH_TASK_VARS --json`, converted
#                           into {"changed_count": files whose content was written}.
#   ours.sh cleanup cmd N   (untimed) stop every process prepare started, by
#                           the PIDs it recorded (agents first, then the
#                           coordinator), and remove its state directory.
#
# State: $PUSHBENCH_WORK/canopy (coordinator and agents' data, logs, PIDs).
# The PIDs also go to $PUSHBENCH_WORK/pids (the harness counts their CPU as
# server CPU). Nothing outside $PUSHBENCH_WORK is written except the agents'
# roots $PUSHBENCH_ROOT/<host>, created when missing (the cmd scenario has no
# files there); cleanup removes the ones it created, if they are still empty.
#
# Environment (besides the harness's PUSHBENCH_*):
#   CANOPY_MAIN              canopy's CLI (default: <project>/dist/src/cli/main.js;
#                            run `npm run build` first)
#   NODE                     node binary (default: node)
#   PUSHBENCH_CANOPY_WARMUP  1 (default) or 0: the warm-up run in prepare
#   PUSHBENCH_CANOPY_LOG     agents' and coordinator's --log-level (default info)
#   PUSHBENCH_CANOPY_JOBS    parallel token creations / agent starts (default 4)
#   PUSHBENCH_CANOPY_KEEP    a directory: cleanup copies the timed run's JSON and
#                            the daemons' logs there first (for analysis)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
MAIN=${CANOPY_MAIN:-$PROJECT/dist/src/cli/main.js}
NODE=${NODE:-node}
WARMUP=${PUSHBENCH_CANOPY_WARMUP:-1}
LOGLEVEL=${PUSHBENCH_CANOPY_LOG:-info}
JOBS=${PUSHBENCH_CANOPY_JOBS:-4}

log() { echo "ours.sh: [${SECONDS}s] $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=../lib/daemons.sh
source "$HERE/../lib/daemons.sh"
canopy() { "$NODE" "$MAIN" "$@"; }

[[ $# -ge 2 ]] || die "usage: $0 [prepare|cleanup] SCENARIO N"
PHASE=timed
case $1 in prepare | cleanup) PHASE=$1; shift ;; esac
SCEN=$1 N=$2

case $SCEN in cmd | push-cold | push-warm | push-one-var) ;; *) SCEN=unknown ;; esac
if [[ $SCEN == unknown || ${PUSHBENCH_MODE:-agent} != agent ]]; then
  [[ $PHASE == cleanup ]] && exit 0
  log "not yet: scenario $1, mode ${PUSHBENCH_MODE:-agent} (cmd and push-* in agent mode only)"
  exit 2
fi
: "${PUSHBENCH_WORK:?}" "${PUSHBENCH_HOSTS_ADDR:?}" "${PUSHBENCH_HOSTS:?}" "${PUSHBENCH_ROOT:?}"
W=$PUSHBENCH_WORK/canopy
OURS_MARKS=("$W/")
export CANOPY_CONFIG=$W/coord/client.json

cleanup_all() {
  set +e
  stop_pids "$W/agents.pids"
  stop_pids "$W/coord.pid"
  if [[ -n ${PUSHBENCH_CANOPY_KEEP:-} && -d $W ]]; then
    local keep
    keep=$PUSHBENCH_CANOPY_KEEP/$(date +%H%M%S)-$SCEN-$N
    mkdir -p "$keep" && cp -r "$W/logs" "$keep/" && cp "$W"/*.json "$keep/" 2>/dev/null
  fi
  if [[ -s $W/created-roots ]]; then
    while read -r d; do rmdir "$d" 2>/dev/null; done <"$W/created-roots"
  fi
  rm -rf "$W"
}

online_count() {
  canopy agents --json 2>/dev/null | jq '[.agents[] | select(.online)] | length' 2>/dev/null || echo 0
}

# ---------------------------------------------------------------- phases
prepare() {
  [[ -r $MAIN ]] || die "$MAIN not found: run 'npm run build' in $PROJECT"
  command -v jq >/dev/null || die "jq is needed"
  [[ -e $W ]] && cleanup_all
  mkdir -p "$W/agents" "$W/logs"
  : >"$W/agents.pids"
  trap 'rc=$?; if (( rc != 0 )); then log "prepare failed (rc=$rc), cleaning up"; cleanup_all; fi' EXIT

  local -a inv=()
  if [[ $SCEN == push-* ]]; then
    inv=(--inventory "$PUSHBENCH_VARS_DIR")
    write_push_file
  fi
  # Coordinator: any free port on 127.0.0.1, own session, PID recorded.
  setsid "$NODE" "$MAIN" coordinator --data "$W/coord" --listen 127.0.0.1:0 --no-client-config "${inv[@]}" \
    --log-level "$LOGLEVEL" </dev/null >"$W/logs/coord.out" 2>"$W/logs/coord.err" &
  echo $! >"$W/coord.pid"
  local i
  for i in $(seq 300); do
    grep -q 'listening on' "$W/logs/coord.out" 2>/dev/null && [[ -s $CANOPY_CONFIG ]] && break
    ours_pid "$(cat "$W/coord.pid")" || die "coordinator died: $(tail -5 "$W/logs/coord.err")"
    sleep 0.1
  done
  grep -q 'listening on' "$W/logs/coord.out" || die "coordinator did not start in 30 s"
  log "$(head -1 "$W/logs/coord.out")"

  # One agent per host: token (bound to the name), then the agent joins with it.
  local name addr port
  while read -r name addr port; do
    [[ -n $name ]] || continue
    # The agent refuses to run in a root that does not exist (it creates only
    # its default root): create the host's "/" when missing, removed again by
    # cleanup if still empty.
    if [[ ! -d $PUSHBENCH_ROOT/$name ]]; then
      mkdir -p "$PUSHBENCH_ROOT/$name"
      echo "$PUSHBENCH_ROOT/$name" >>"$W/created-roots"
    fi
  done <"$PUSHBENCH_HOSTS_ADDR"
  export NODE MAIN W LOGLEVEL PUSHBENCH_ROOT
  # shellcheck disable=SC2016
  xargs -P "$JOBS" -L 1 sh -c '
    name=$1 addr=$2
    tok=$("$NODE" "$MAIN" token create --name "$name" --ttl 10m 2>>"$W/logs/tokens.err") || exit 1
    setsid "$NODE" "$MAIN" agent --data "$W/agents/$name" --join "$tok" --name "$name" \
      --bind "$addr" --root "$PUSHBENCH_ROOT/$name" --log-level "$LOGLEVEL" \
      </dev/null >"$W/logs/$name.out" 2>"$W/logs/$name.err" &
    echo $! >>"$W/agents.pids"
  ' _ <"$PUSHBENCH_HOSTS_ADDR" || die "starting the agents failed: $(grep -v '^one-time token' "$W/logs/tokens.err" | tail -5)"
  [[ $(wc -l <"$W/agents.pids") == "$N" ]] || die "started $(wc -l <"$W/agents.pids") agents, expected $N"
  cat "$W/coord.pid" "$W/agents.pids" >"$PUSHBENCH_WORK/pids"

  local online=0
  for i in $(seq 240); do
    online=$(online_count)
    (( online >= N )) && break
    sleep 1
  done
  (( online >= N )) || die "only $online of $N agents online after 240 s"
  log "$online agents online"

  if [[ $WARMUP == 1 && $SCEN == push-* ]]; then
    canopy push "$W/push/push.yaml" --vars-file "$PUSHBENCH_TASK_VARS" --check --limit h001 --json \
      >"$W/warmup.json" 2>"$W/logs/warmup.err" || die "warm-up push failed: $(tail -3 "$W/logs/warmup.err")"
    log "warm-up: $(jq -c .summary "$W/warmup.json")"
  elif [[ $WARMUP == 1 ]]; then
    local hosts
    mapfile -t hosts <"$PUSHBENCH_HOSTS"
    canopy run "${hosts[@]}" --json -- true >"$W/warmup.json" 2>"$W/logs/warmup.err" ||
      die "warm-up run failed: $(jq -c .summary "$W/warmup.json" 2>/dev/null)"
    log "warm-up: $(jq -c .summary "$W/warmup.json")"
  fi
  # Let the daemons finish starting (JIT, first heartbeats).
  wait_daemons_idle "$W/coord.pid" "$W/agents.pids"
  trap - EXIT
}

# The push file for the harness's workload: one entry per files.tsv line.
write_push_file() {
  mkdir -p "$W/push"
  cp -r "$PUSHBENCH_TEMPLATES" "$W/push/templates"
  {
    echo "targets: all"
    echo "files:"
    local tpl dest mode
    while IFS=$'\t' read -r tpl dest mode; do
      [[ -z $tpl || $tpl == \#* ]] && continue
      dest=${dest//\{root\}/$PUSHBENCH_ROOT}
      dest=${dest//\{host\}/'{{ inventory_hostname }}'}
      printf '  - template: templates/%s\n    dest: "%s"\n    mode: "%s"\n' "$tpl" "$dest" "$mode"
    done <"$PUSHBENCH_FILES"
  } >"$W/push/push.yaml"
}

timed_push() {
  local rc=0
  canopy push "$W/push/push.yaml" --vars-file "$PUSHBENCH_TASK_VARS" --json >"$W/run.json" || rc=$?
  jq -c '{changed_count: .summary.files.written, hosts: .summary.hosts}' "$W/run.json" || rc=1
  return "$rc"
}

timed() {
  [[ $SCEN == push-* ]] && { timed_push; return; }
  local hosts rc=0
  mapfile -t hosts <"$PUSHBENCH_HOSTS"
  canopy run "${hosts[@]}" --json -- "${PUSHBENCH_CMD:-uptime}" >"$W/run.json" || rc=$?
  jq -c '{outputs: (.results | map({key: .host, value: .stdout}) | from_entries)}' "$W/run.json" || rc=1
  return "$rc"
}

case $PHASE in
  prepare) prepare ;;
  timed) timed ;;
  cleanup) cleanup_all ;;
esac
