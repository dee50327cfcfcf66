# Shared helpers for scripts/testbed-slurm and scripts/testbed-sge (sourced, not run).
# shellcheck shell=bash

TB_NAME=${TB_NAME:-testbed}

tb_die() {
    echo "$TB_NAME: $*" >&2
    exit 1
}

tb_log() {
    [ -n "${PBQ_TESTBED_QUIET:-}" ] || echo "$TB_NAME: $*" >&2
}

tb_need_root() {
    [ "$(id -u)" -eq 0 ] || tb_die "must run as root (it installs packages and starts daemons)"
}

# tb_installed PKG...: true when every package is installed.
tb_installed() {
    local p st
    for p in "$@"; do
        st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) || return 1
        [ "$st" = "install ok installed" ] || return 1
    done
}

# tb_install PKG...: install the missing packages non-interactively (apt-get update when needed).
tb_install() {
    tb_installed "$@" && return 0
    local log="$TB_STATE/apt.log"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef
        -o Dpkg::Options::=--force-confold)
    tb_log "installing $*"
    if ! "${apt[@]}" install --no-install-recommends "$@" >"$log" 2>&1; then
        "${apt[@]}" update >>"$log" 2>&1 || true
        "${apt[@]}" install --no-install-recommends "$@" >>"$log" 2>&1 ||
            tb_die "apt-get install $* failed (see $log): $(tail -n 1 "$log")"
    fi
    tb_installed "$@" || tb_die "packages $* did not install (see $log)"
}

# tb_alive PID: the process exists and is not a zombie (a killed daemon's zombie may linger).
tb_alive() {
    local pid=$1 state
    [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 1
    state=$(awk '/^State:/ {print $2; exit}' "/proc/$pid/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# tb_pid_of FILE: the pid in FILE when that process is alive, else nothing (status 1).
tb_pid_of() {
    local f=$1 pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    tb_alive "$pid" || return 1
    echo "$pid"
}

# tb_wait SECONDS COMMAND...: poll COMMAND every 0.1 s until it succeeds or the deadline passes.
tb_wait() {
    local secs=$1
    shift
    local deadline=$((SECONDS + secs))
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# tb_stop_pid NAME PID: TERM, then KILL after 10 s; waits until the process is gone or a zombie.
tb_stop_pid() {
    local name=$1 pid=$2
    tb_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! tb_wait 10 tb_dead "$pid"; then
        tb_log "$name ($pid) ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        tb_wait 5 tb_dead "$pid" || tb_die "$name ($pid) does not stop"
    fi
}

tb_dead() { ! tb_alive "$1"; }

# tb_lock: serialize up/down of one testbed (flock on a file in the state dir).
tb_lock() {
    mkdir -p "$TB_STATE" || tb_die "cannot create state dir $TB_STATE"
    exec 9>"$TB_STATE/.lock"
    flock -w 120 9 || tb_die "another $TB_NAME command holds $TB_STATE/.lock"
}
