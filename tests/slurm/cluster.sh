#!/usr/bin/env bash
# A real single-node SLURM (munged + mariadbd + slurmdbd + slurmctld + slurmd) for clipvip's tests.
#
#   tests/slurm/cluster.sh start    install packages if missing, start all daemons, wait until usable
#   tests/slurm/cluster.sh stop     stop every daemon this script started (reverse order); safe to repeat
#   tests/slurm/cluster.sh status   show what runs; exit 0 only when the cluster is usable
#   tests/slurm/cluster.sh env      print KEY=VALUE facts (hostname, partition, account, state dir)
#
# Debian 12 (SLURM 22.05), run as root, no systemd, no cgroups. Each daemon runs in the foreground
# under setsid; its PID is taken from `$!` and written to $STATE/pids/<name>.pid, so `stop` kills exactly
# the processes `start` launched. State (keys, sockets, database, spool, logs) lives in
# $CLIPVIP_SLURM_DIR (default /tmp/clipvip-slurm); /etc/slurm/slurm.conf and slurmdbd.conf are written
# because jobs and the Snakemake jobstep plugin (which strips SLURM_CONF) read the default path; any
# previous files there are backed up and restored by `stop`.
#
# Environment: CLIPVIP_SLURM_DIR, CLIPVIP_SLURM_PARTITION (debug), CLIPVIP_SLURM_ACCOUNT (clipvip),
# CLIPVIP_SLURM_CLUSTER (clipvip), CLIPVIP_SLURM_DB_PORT (3307), CLIPVIP_SLURM_PORT_BASE (6817: ctld,
# +1 slurmd, +2 slurmdbd), CLIPVIP_SLURM_TIMEOUT (seconds per wait, 60), CLIPVIP_SLURM_NO_INSTALL=1.
set -euo pipefail

STATE=${CLIPVIP_SLURM_DIR:-/tmp/clipvip-slurm}
PARTITION=${CLIPVIP_SLURM_PARTITION:-debug}
ACCOUNT=${CLIPVIP_SLURM_ACCOUNT:-clipvip}
CLUSTER=${CLIPVIP_SLURM_CLUSTER:-clipvip}
DB_PORT=${CLIPVIP_SLURM_DB_PORT:-3307}
PORT_BASE=${CLIPVIP_SLURM_PORT_BASE:-6817}
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
TIMEOUT=${CLIPVIP_SLURM_TIMEOUT:-60}
CONF_DIR=/etc/slurm
MARKER="# written by clipvip tests/slurm/cluster.sh"
HOST=$(hostname -s)
DB_PASS=clipvip-slurm-db
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
# Start order; stop goes in reverse.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

MUNGE_SOCK=$STATE/munge/munge.socket
MYSQL_SOCK=$STATE/mysql/mysqld.sock

log() { printf '[cluster.sh] %s\n' "$*" >&2; }
die() { printf '[cluster.sh] ERROR: %s\n' "$*" >&2; exit 1; }

pidfile() { echo "$STATE/pids/$1.pid"; }

# The binary name a daemon's /proc/<pid>/comm shows (comm is cut at 15 characters).
comm_of() { case $1 in mariadbd) echo mariadbd ;; *) echo "$1" ;; esac; }

# PID of a daemon we started, if it is still alive and still that program; empty otherwise.
live_pid() {
    local f pid comm
    f=$(pidfile "$1")
    [[ -f $f ]] || return 0
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ $comm == "$(comm_of "$1")" ]] && alive "$pid" && echo "$pid"
    return 0
}

# True while the process exists and is not a zombie (a container's PID 1 may never reap it).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

tail_log() { # the daemon's own log file and its captured stdout/stderr
    local f
    for f in "$STATE/log/$1.log" "$STATE/log/$1.out"; do
        [[ -s $f ]] && { echo "---- last lines of $f ----"; tail -n 25 "$f"; } >&2
    done
    return 0
}

# wait_for <what> <daemon-or-empty> <command...>: poll until the command succeeds.
wait_for() {
    local what=$1 daemon=$2 t0=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [[ -n $daemon && -z $(live_pid "$daemon") ]]; then
            tail_log "$daemon"
            die "$daemon exited while waiting for $what (logs: $STATE/log/$daemon.{log,out})"
        fi
        if ((SECONDS - t0 > TIMEOUT)); then
            [[ -n $daemon ]] && tail_log "$daemon"
            die "timed out after ${TIMEOUT}s waiting for $what"
        fi
        sleep 0.5
    done
}

# launch <name> <command...>: run a foreground daemon detached from this shell, record its PID.
launch() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
    local pid=$! i
    echo "$pid" >"$(pidfile "$name")"
    # Wait until setsid has exec'd the daemon, so live_pid recognises it by name.
    for ((i = 0; i < 50; i++)); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$(comm_of "$name")" ]] && break
        alive "$pid" || break
        sleep 0.05
    done
    log "started $name (pid $pid)"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ ${CLIPVIP_SLURM_NO_INSTALL:-0} == 1 ]] && die "missing packages: ${missing[*]} (CLIPVIP_SLURM_NO_INSTALL=1)"
    [[ $(id -u) == 0 ]] || die "missing packages ${missing[*]}; run as root to install them"
    log "installing ${missing[*]}"
    # Keep the packages' init scripts from starting system daemons during the install.
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
    fi
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"; } >"${TMPDIR:-/tmp}/clipvip-slurm-apt.log" 2>&1 || rc=$?
    ((ours)) && rm -f "$policy"
    ((rc == 0)) || { tail -n 20 "${TMPDIR:-/tmp}/clipvip-slurm-apt.log" >&2; die "apt-get install failed"; }
}

write_file_backup() { # write_file_backup <path> <mode>  (content on stdin)
    local path=$1 mode=$2
    if [[ -e $path ]] && ! grep -qF "$MARKER" "$path" && [[ ! -e $path.clipvip-backup ]]; then
        cp -p "$path" "$path.clipvip-backup"
        log "backed up $path to $path.clipvip-backup"
    fi
    cat >"$path"
    chmod "$mode" "$path"
}

restore_conf() {
    local f
    for f in "$CONF_DIR/slurm.conf" "$CONF_DIR/slurmdbd.conf"; do
        if [[ -e $f.clipvip-backup ]]; then
            mv -f "$f.clipvip-backup" "$f"
        elif [[ -e $f ]] && grep -qF "$MARKER" "$f"; then
            rm -f "$f"
        fi
    done
}

write_configs() {
    local mem_mb cpus sockets cores threads
    mem_mb=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    # Leave room for the OS and the test runner; never less than 1 GiB for jobs.
    mem_mb=$((mem_mb - mem_mb / 10))
    ((mem_mb < 1024)) && mem_mb=1024
    read -r cpus sockets cores threads < <(slurmd -C | awk '
        /^NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                      print v["CPUs"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"] }')
    mkdir -p "$CONF_DIR"
    write_file_backup "$CONF_DIR/slurm.conf" 644 <<EOF
$MARKER (state: $STATE)
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in the container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
# The executor plugin polls sacct: accounting through slurmdbd is required.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
# Clients give up on an unreachable controller after ~MessageTimeout s (default 10); keeps fault tests short.
MessageTimeout=5
SlurmctldTimeout=30
SlurmdTimeout=60
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    write_file_backup "$CONF_DIR/slurmdbd.conf" 600 <<EOF
$MARKER (state: $STATE)
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

mysql_root() { mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot "$@"; }
sacctmgr_q() { sacctmgr -n -P "$@"; }

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do [[ -n $(live_pid "$d") ]] || return 1; done
}

cluster_ready() {
    [[ $(sinfo -h -n "$HOST" -p "$PARTITION" -o %t 2>/dev/null) =~ ^(idle|mix|alloc)$ ]] &&
        sacct -n -X -S now-1minutes >/dev/null 2>&1
}

start_munged() {
    mkdir -p "$STATE/munge"
    chmod 700 "$STATE/munge"
    [[ -f $STATE/munge/munge.key ]] || dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge/munge.key"
    # --force: the state dir may sit below a world-writable /tmp, which munged otherwise refuses.
    launch munged munged -F --force --socket="$MUNGE_SOCK" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/run/munged.pid" --seed-file="$STATE/munge/munged.seed" \
        --log-file="$STATE/log/munged.log" --num-threads=2
    wait_for "munged to answer on $MUNGE_SOCK" munged bash -c \
        "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'"
}

start_mariadbd() {
    local data=$STATE/mysql/data
    mkdir -p "$STATE/mysql"
    if [[ ! -d $data/mysql ]]; then
        rm -rf "$data"
        mariadb-install-db --no-defaults --user=root --datadir="$data" --auth-root-authentication-method=socket \
            --skip-test-db >"$STATE/log/mariadb-install-db.log" 2>&1 ||
            { tail_log mariadb-install-db; die "mariadb-install-db failed"; }
    fi
    port_busy "$DB_PORT" && die "port $DB_PORT (CLIPVIP_SLURM_DB_PORT) is already in use"
    launch mariadbd mariadbd --no-defaults --user=root --datadir="$data" --socket="$MYSQL_SOCK" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadbd.pid" \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=48M --innodb-lock-wait-timeout=900 \
        --skip-name-resolve
    wait_for "mariadbd on $MYSQL_SOCK" mariadbd mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -uroot ping
    mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    port_busy "$DBD_PORT" && die "port $DBD_PORT (slurmdbd) is already in use (another SLURM running?)"
    launch slurmdbd slurmdbd -D
    wait_for "slurmdbd (sacctmgr show cluster)" slurmdbd sacctmgr_q show cluster
}

register_accounting() {
    # Idempotent: add only what is missing.
    if [[ -z $(sacctmgr_q show cluster "$CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if [[ -z $(sacctmgr_q show account "$ACCOUNT" format=account) ]]; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="clipvip tests" Organization=clipvip >/dev/null
    fi
    if [[ -z $(sacctmgr_q show user root format=user) ]] ||
        ! sacctmgr_q -s show user root format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    fi
    sacctmgr -i modify user root set DefaultAccount="$ACCOUNT" >/dev/null 2>&1 || true
}

start_slurmctld() {
    port_busy "$CTLD_PORT" && die "port $CTLD_PORT (slurmctld) is already in use (another SLURM running?)"
    launch slurmctld slurmctld -D -i
    wait_for "slurmctld (scontrol ping)" slurmctld bash -c "scontrol ping | grep -q UP"
}

start_slurmd() {
    port_busy "$SLURMD_PORT" && die "port $SLURMD_PORT (slurmd) is already in use (another SLURM running?)"
    launch slurmd slurmd -D -N "$HOST"
    wait_for "node $HOST idle in partition $PARTITION and sacct answering" slurmd cluster_ready
}

prepare_state() {
    # A previous run may have left a state dir: wipe it (only if it is ours), start fresh.
    if [[ -d $STATE ]]; then
        [[ -f $STATE/.clipvip-slurm || -z $(ls -A "$STATE") ]] ||
            die "$STATE exists and was not made by this script (no .clipvip-slurm marker); refusing to wipe it"
        rm -rf "$STATE"
    fi
    mkdir -p "$STATE"/{pids,run,log,spool/ctld,spool/d}
    chmod 700 "$STATE"
    : >"$STATE/.clipvip-slurm"
}

cmd_start() {
    local t0=$SECONDS d
    [[ $(id -u) == 0 ]] || die "must run as root (daemons run as SlurmUser=root and /etc/slurm is written)"
    if all_running && cluster_ready; then
        log "already running (state $STATE)"
        return 0
    fi
    for d in "${DAEMONS[@]}"; do
        if [[ -n $(live_pid "$d") ]]; then
            log "a previous run left some daemons up; stopping them first"
            cmd_stop
            break
        fi
    done
    install_packages
    prepare_state
    write_configs
    # If anything below fails, take down what was started so no daemon is left behind.
    trap 'rc=$?; if ((rc != 0)); then log "start failed; stopping what was started"; cmd_stop || true; fi' EXIT
    start_munged
    start_mariadbd
    start_slurmdbd
    register_accounting
    start_slurmctld
    start_slurmd
    trap - EXIT
    log "cluster up in $((SECONDS - t0)) s: node $HOST, partition $PARTITION, account $ACCOUNT, state $STATE"
}

stop_one() {
    local name=$1 pid i
    pid=$(live_pid "$name")
    if [[ -n $pid ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do # up to 20 s
            alive "$pid" || break
            sleep 0.2
        done
        if alive "$pid"; then
            log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$(pidfile "$name")"
}

# PIDs of slurmstepd processes of this cluster: they hold our slurmd.log open (fd 3).
our_stepds() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(cat "$p/comm" 2>/dev/null) == slurmstepd ]] || continue
        ls -l "$p/fd" 2>/dev/null | grep -qF -- "-> $STATE/log/slurmd.log" && echo "${p#/proc/}"
    done
    return 0
}

# Cancel every job of this cluster and wait for its processes to go, so that stopping slurmd
# leaves no slurmstepd or job process behind. Whatever remains is killed by PID.
cancel_jobs() {
    local ids pids t0=$SECONDS
    if [[ -n $(live_pid slurmctld) ]]; then
        ids=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
        if [[ -n $ids ]]; then
            log "cancelling jobs: $(echo $ids)"
            # shellcheck disable=SC2086
            timeout 10 scancel $ids 2>/dev/null || true
        fi
    fi
    while [[ -n $(our_stepds) ]] && ((SECONDS - t0 < 20)); do sleep 0.5; done
    if [[ -n $(our_stepds) ]]; then
        pids=$(timeout 10 scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}' || true)
        pids="$pids $(our_stepds)"
        log "killing leftover job processes: $(echo $pids)"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
}

cmd_stop() {
    local i pids
    if [[ -d $STATE/pids ]]; then
        cancel_jobs
        for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_one "${DAEMONS[i]}"; done
        pids=$(our_stepds)
        if [[ -n $pids ]]; then
            log "killing leftover slurmstepd: $(echo $pids)"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    fi
    restore_conf
}

cmd_status() {
    local d pid ok=0
    for d in "${DAEMONS[@]}"; do
        pid=$(live_pid "$d")
        if [[ -n $pid ]]; then echo "$d: running (pid $pid)"; else echo "$d: not running"; ok=1; fi
    done
    if ((ok == 0)) && cluster_ready; then
        sinfo -h -o "partition=%P nodes=%N state=%t cpus=%c memory=%m"
        echo "cluster: ready"
    else
        echo "cluster: not ready"
        return 1
    fi
}

cmd_env() {
    cat <<EOF
CLIPVIP_SLURM_DIR=$STATE
CLIPVIP_SLURM_HOST=$HOST
CLIPVIP_SLURM_PARTITION=$PARTITION
CLIPVIP_SLURM_ACCOUNT=$ACCOUNT
CLIPVIP_SLURM_CLUSTER=$CLUSTER
CLIPVIP_SLURM_CONF=$CONF_DIR/slurm.conf
EOF
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_stop && cmd_start ;;
status) cmd_status ;;
env) cmd_env ;;
# Stop or start one daemon of a running cluster (used by the fault tests).
stop-daemon) stop_one "${2:?daemon name}" ;;
start-daemon)
    case ${2:?daemon name} in
    slurmctld) start_slurmctld && wait_for "node $HOST idle and sacct answering" slurmctld cluster_ready ;;
    slurmd) start_slurmd ;;
    *) die "start-daemon supports slurmctld and slurmd" ;;
    esac
    ;;
*)
    echo "usage: $0 {start|stop|restart|status|env|stop-daemon NAME|start-daemon slurmctld|slurmd}" >&2
    exit 2
    ;;
esac
