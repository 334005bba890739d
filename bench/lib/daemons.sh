# bench/lib/daemons.sh -- process bookkeeping shared by the benchmark adapters
# (bench/push/ours.sh, bench/dist/ours.sh). Source it after defining log().
#
# OURS_MARKS: an array of strings; a PID is "ours" only while its command
# line contains one of them (the adapter's state directories), so a PID
# reused by another process is never signalled. PID files hold one process
# per line, the PID first (more fields may follow).

ours_pid() {  # PID: is it still a process we started?
  local -a args
  local mark
  [[ -n $1 && -r /proc/$1/cmdline ]] || return 1
  mapfile -d '' args <"/proc/$1/cmdline" 2>/dev/null || return 1
  for mark in "${OURS_MARKS[@]}"; do
    [[ "${args[*]}" == *"$mark"* ]] && return 0
  done
  return 1
}

stop_pids() {  # FILE: TERM every recorded PID still ours, wait up to 10 s, then KILL
  local f=$1 pid left i
  [[ -s $f ]] || return 0
  while read -r pid _; do ours_pid "$pid" && kill -TERM "$pid" 2>/dev/null || true; done <"$f"
  for i in $(seq 100); do
    left=0
    while read -r pid _; do ours_pid "$pid" && left=1 && break; done <"$f"
    (( left )) || return 0
    sleep 0.1
  done
  while read -r pid _; do
    if ours_pid "$pid"; then log "pid $pid ignored TERM; KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  done <"$f"
}

daemons_cpu_ticks() {  # PIDFILE...: utime + stime of the recorded processes, in clock ticks
  daemons_cpu_read "$@"
  echo $(( CPU_USER + CPU_SYS ))
}

# Sets CPU_USER and CPU_SYS to the recorded processes' utime and stime (clock
# ticks) with shell builtins only: it runs in timed windows, where a fork per
# process (cat, a subshell) would be counted against the run on a busy machine.
daemons_cpu_read() {  # PIDFILE...
  local file pid f
  local -a a
  CPU_USER=0 CPU_SYS=0
  for file in "$@"; do
    while read -r pid _; do
      { read -r f <"/proc/$pid/stat"; } 2>/dev/null || continue
      f=${f##*) }   # fields after the command name; utime, stime are fields 12, 13 here
      read -r -a a <<<"$f"
      CPU_USER=$(( CPU_USER + a[11] )) CPU_SYS=$(( CPU_SYS + a[12] ))
    done <"$file"
  done
}

wait_daemons_idle() {  # PIDFILE...: until they use under 10% of a core over 2 s (at most 60 s)
  local c0 c1 i
  for i in $(seq 30); do
    c0=$(daemons_cpu_ticks "$@"); sleep 2; c1=$(daemons_cpu_ticks "$@")
    (( (c1 - c0) * 100 < 2 * $(getconf CLK_TCK) * 10 )) && break
  done
  log "daemons idle ($(( c1 - c0 )) ticks in 2 s)"
}
