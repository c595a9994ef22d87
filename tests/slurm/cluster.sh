#!/usr/bin/env bash
# A real, local Slurm 22.05 test cluster on this one machine (two slurmd "nodes").
#
#   tests/slurm/cluster.sh up [--no-accounting]   start (idempotent; installs packages when missing)
#   tests/slurm/cluster.sh down [--purge]         stop every daemon (--purge: also forget jobs + accounting DB)
#   tests/slurm/cluster.sh status                 what is running, node states, accounting mode
#   tests/slurm/cluster.sh stop slurmctld|slurmdbd   stop one daemon (fault tests; `up` restarts it)
#   tests/slurm/cluster.sh min-job-age SECONDS    set MinJobAge live (scontrol reconfigure, no restart);
#                                                 `min-job-age 3600` restores the default below
#
# Why a script and not a container: the SLURM backend must be proven against real
# slurmctld/slurmd/slurmdbd, and CI machines are fresh Debian 12 VMs where we are root
# without systemd. Facts it relies on are in ../shared/notes/slurm-local-cluster.md.
#
# Accounting modes (the choice is written into slurm.conf, so `status` reports it):
#   up                  slurmdbd on MariaDB; `sacct` answers. This is the default because
#                       real clusters have it and the backend's sacct path must be exercised.
#   up --no-accounting  AccountingStorageType=accounting_storage/none; `sacct` prints
#                       "Slurm accounting storage is disabled", so tests can prove that
#                       orch status works from squeue + the run folder's markers alone.
#                       MariaDB/slurmdbd are neither started nor stopped in this mode.
# Switching mode rewrites slurm.conf and restarts slurmctld + the slurmds (jobs survive:
# their state is in StateSaveLocation).
#
# Test-cluster deviations from a production config, on purpose:
#   AuthInfo=cred_expire=30  a requeued job waits cred_expire+1 s before it may start again
#                            (default 120 s); 30 s keeps the requeue tests short.
#   SchedulerParameters=sched_interval=5,bf_interval=5
#                            a requeued job is noticed within seconds of becoming eligible.
#   RealMemory=16000         per node (more than this machine has, as nothing enforces it): a spec's
#                            default mem of 8G must fit a node, as it does on real clusters.
#   JobAcctGatherType=none   no per-job polling threads on a 2-core machine; sacct still has
#                            states and exit codes.
set -euo pipefail

CLUSTER_NAME=${ORCH_SLURM_CLUSTER:-orchtest}
ETC=/etc/slurm
LOGDIR=/var/log/slurm
STATESAVE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
NODES=(n1 n2)
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=orchtest-slurmdbd
PKGS=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
DBD_PID=/run/slurmdbd.pid
MYSQL_PID=/run/mysqld/mysqld.pid
UP_TIMEOUT=${ORCH_SLURM_UP_TIMEOUT:-120}

log() { printf '[cluster.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- process helpers
# pid_of PIDFILE COMM: print the pid if the file names a live process whose command is
# COMM; remove the file when it is stale (dead pid, or a pid reused by something else).
pid_of() {
    local file=$1 comm=$2 pid
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    if [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]; then
        echo "$pid"
        return 0
    fi
    log "removing stale pid file $file (pid ${pid:-?} is not $comm)"
    rm -f "$file"
    return 1
}

# stop_pid NAME PIDFILE COMM: TERM, wait up to 20 s, then KILL. Only touches the pid in
# the daemon's own pid file.
stop_pid() {
    local name=$1 file=$2 comm=$3 pid i
    pid=$(pid_of "$file" "$comm") || { log "$name: not running"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        log "$name (pid $pid) ignored TERM for 20 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$file"
    log "$name: stopped (pid $pid)"
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.25 s until it succeeds.
wait_for() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.25
    done
    log "$what: ok"
}

# ---------------------------------------------------------------- installation
ensure_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    command -v mysqld_safe >/dev/null || missing+=(mariadb-server)
    if ((${#missing[@]})); then
        log "installing ${PKGS[*]} (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${PKGS[@]}" >/dev/null
    fi
    [[ -s /etc/munge/munge.key ]] || {
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
        chown -R munge:munge /etc/munge
        chmod 700 /etc/munge
        chmod 600 /etc/munge/munge.key
    }
}

# ---------------------------------------------------------------- configuration
# install_if_changed DEST MODE: move stdin into DEST when it differs; exit 0 if changed.
install_if_changed() {
    local dest=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        chmod "$mode" "$dest"
        return 1
    fi
    install -m "$mode" -o root -g root "$tmp" "$dest"
    rm -f "$tmp"
    log "wrote $dest"
    return 0
}

# write_configs ACCOUNTING(yes|no): sets CONF_CHANGED=1 when slurm.conf changed.
write_configs() {
    local accounting=$1 host storage
    host=$(hostname -s)
    mkdir -p "$ETC" "$LOGDIR" "$STATESAVE" "${NODES[@]/#/$SPOOL/}"
    if [[ $accounting == yes ]]; then
        storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
    else
        storage="AccountingStorageType=accounting_storage/none"
    fi
    CONF_CHANGED=0
    install_if_changed "$ETC/slurm.conf" 644 <<EOF && CONF_CHANGED=1 || true
# Written by orch tests/slurm/cluster.sh; edits are overwritten by the next 'up'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=30
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$CTLD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdPidFile=/run/slurmd.%n.pid
SlurmdSpoolDir=$SPOOL/%n
SlurmdLogFile=$LOGDIR/slurmd.%n.log
StateSaveLocation=$STATESAVE
SchedulerType=sched/backfill
# Short scheduling passes: a requeued job is eligible again after cred_expire, and tests
# should not wait for the default 60 s main / 30 s backfill intervals to notice.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=3600
MaxArraySize=1001
MaxJobCount=20000
KillWait=10
JobRequeue=1
InactiveLimit=0
SlurmctldTimeout=120
SlurmdTimeout=300
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
$storage
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=17001-17002 CPUs=2 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    install_if_changed "$ETC/cgroup.conf" 644 <<EOF || true
CgroupPlugin=autodetect
EOF
    install_if_changed "$ETC/slurmdbd.conf" 600 <<EOF || true
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$DBD_PID
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# Node names must resolve like on a real cluster: a multi-node job finds its head node with
# `scontrol show hostnames` and connects to it by name (torch rendezvous).
ensure_hosts() {
    local n
    for n in "${NODES[@]}"; do
        if ! getent hosts "$n" >/dev/null; then
            echo "127.0.0.1 $n  # orch test cluster" >>/etc/hosts
            log "added $n to /etc/hosts"
        fi
    done
}

# ---------------------------------------------------------------- daemons
munge_ok() { [[ $(munge -n 2>/dev/null | unmunge 2>/dev/null) =~ STATUS:\ +Success ]]; }

start_munge() {
    if munge_ok; then log "munged: already running"; return; fi
    pid_of "$MUNGE_PID" munged >/dev/null || true   # clears a stale pid file
    install -d -o munge -g munge -m 755 /run/munge /var/log/munge /var/lib/munge
    # --force: start even if a dead munged left its socket/lock behind.
    su -s /bin/sh munge -c '/usr/sbin/munged --force' </dev/null >>/var/log/munge/orch-start.log 2>&1
    wait_for 15 "munged" munge_ok || die "munged did not start (see /var/log/munge/munged.log)"
}

mysql_ok() { [[ $(mysqladmin --no-defaults -uroot -S /run/mysqld/mysqld.sock ping 2>/dev/null) == *alive* ]]; }

start_mariadb() {
    if ! mysql_ok; then
        pid_of "$MYSQL_PID" mariadbd >/dev/null || true
        install -d -o mysql -g mysql -m 755 /run/mysqld /var/log/mysql
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            log "initialising MariaDB data directory"
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/var/log/mysql/orch-install-db.log 2>&1
        fi
        setsid mysqld_safe --pid-file="$MYSQL_PID" </dev/null >>/var/log/mysql/orch-mysqld_safe.log 2>&1 &
        wait_for 60 "mariadb" mysql_ok || die "MariaDB did not start (see /var/log/mysql/)"
    else
        log "mariadb: already running"
    fi
    mysql -uroot -S /run/mysqld/mysqld.sock <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

dbd_ok() { sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }

start_slurmdbd() {
    if pid_of "$DBD_PID" slurmdbd >/dev/null; then
        log "slurmdbd: already running"
    else
        slurmdbd </dev/null >>"$LOGDIR/slurmdbd.start.log" 2>&1
    fi
    wait_for 60 "slurmdbd" dbd_ok || die "slurmdbd does not answer (see $LOGDIR/slurmdbd.log)"
    if ! grep -qx "$CLUSTER_NAME" <<<"$(sacctmgr -n -P show cluster format=cluster)"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
        log "registered cluster $CLUSTER_NAME in slurmdbd"
        CLUSTER_ADDED=1
    fi
}

ctld_ok() { [[ $(scontrol ping 2>/dev/null) == *'is UP'* ]]; }

start_slurmctld() {
    if pid_of "$CTLD_PID" slurmctld >/dev/null; then
        log "slurmctld: already running"
    else
        slurmctld </dev/null >>"$LOGDIR/slurmctld.start.log" 2>&1
    fi
    wait_for 60 "slurmctld" ctld_ok || die "slurmctld does not answer (see $LOGDIR/slurmctld.log)"
}

start_slurmds() {
    local n
    for n in "${NODES[@]}"; do
        mkdir -p "$SPOOL/$n"
        if pid_of "/run/slurmd.$n.pid" slurmd >/dev/null; then
            log "slurmd $n: already running"
        else
            slurmd -N "$n" </dev/null >>"$LOGDIR/slurmd.$n.start.log" 2>&1
            log "slurmd $n: started"
        fi
    done
}

stop_slurm_daemons() {
    local n
    for n in "${NODES[@]}"; do stop_pid "slurmd $n" "/run/slurmd.$n.pid" slurmd; done
    stop_pid slurmctld "$CTLD_PID" slurmctld
}

# nodes_ready: every node answers (idle, or busy with jobs from an earlier 'up').
nodes_ready() {
    local states
    states=$(sinfo -N -h -o '%N %t' 2>/dev/null) || return 1
    local n
    for n in "${NODES[@]}"; do
        grep -Eq "^$n (idle|mix|alloc|comp)\$" <<<"$states" || return 1
    done
}

# resume_nodes: after a restart slurmctld may remember a node as down/drained.
resume_nodes() {
    local n state
    for n in "${NODES[@]}"; do
        state=$(sinfo -N -h -n "$n" -o '%t' 2>/dev/null | head -1)
        case $state in
        down* | drain* | drng* | fail*)
            log "node $n is '$state': resuming"
            scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
            ;;
        esac
    done
}

sacct_ok() { sacct -X -n -P -S now-1minutes >/dev/null 2>&1; }

# ---------------------------------------------------------------- commands
cmd_up() {
    local accounting=yes t0=$SECONDS
    for arg in "$@"; do
        case $arg in
        --no-accounting) accounting=no ;;
        *) die "unknown option for up: $arg" ;;
        esac
    done
    [[ $(id -u) == 0 ]] || die "must run as root"
    ensure_packages
    write_configs "$accounting"
    ensure_hosts
    CLUSTER_ADDED=0
    start_munge
    if [[ $accounting == yes ]]; then
        start_mariadb
        start_slurmdbd
    fi
    if ((CONF_CHANGED || CLUSTER_ADDED)) && pid_of "$CTLD_PID" slurmctld >/dev/null; then
        log "configuration changed: restarting slurmctld and slurmds"
        stop_slurm_daemons
    fi
    start_slurmctld
    start_slurmds
    local deadline=$((SECONDS + UP_TIMEOUT))
    until nodes_ready; do
        ((SECONDS < deadline)) || { sinfo -N >&2 || true; die "nodes not ready after ${UP_TIMEOUT}s (see $LOGDIR/slurmd.n*.log)"; }
        resume_nodes
        sleep 0.5
    done
    log "nodes: ready"
    if [[ $accounting == yes ]]; then
        wait_for 60 "sacct" sacct_ok || die "sacct does not answer"
    fi
    log "up in $((SECONDS - t0)) s (accounting: $accounting)"
    cmd_status
}

cmd_down() {
    local purge=no
    for arg in "$@"; do
        case $arg in
        --purge) purge=yes ;;
        *) die "unknown option for down: $arg" ;;
        esac
    done
    [[ $(id -u) == 0 ]] || die "must run as root"
    stop_slurm_daemons
    if [[ $purge == yes ]] && mysql_ok; then
        mysql -uroot -S /run/mysqld/mysqld.sock -e "DROP DATABASE IF EXISTS $DB_NAME" && log "dropped $DB_NAME"
    fi
    stop_pid slurmdbd "$DBD_PID" slurmdbd
    if mysql_ok; then
        mysqladmin --no-defaults -uroot -S /run/mysqld/mysqld.sock shutdown && log "mariadb: stopped"
    else
        log "mariadb: not running"
    fi
    stop_pid munged "$MUNGE_PID" munged
    if [[ $purge == yes ]]; then
        rm -rf "${STATESAVE:?}"/* "${SPOOL:?}"/*
        log "purged $STATESAVE and $SPOOL"
    fi
}

# Fault tests stop one daemon at a time and bring it back with `up` (idempotent).
cmd_stop() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    case ${1:-} in
    slurmctld) stop_pid slurmctld "$CTLD_PID" slurmctld ;;
    slurmdbd) stop_pid slurmdbd "$DBD_PID" slurmdbd ;;
    *) die "stop: name slurmctld or slurmdbd" ;;
    esac
}

# A test-local MinJobAge (how long slurmctld remembers an ended job), applied with `scontrol
# reconfigure` so running jobs and daemons are not restarted. Ended jobs are purged by slurmctld's
# background pass, once a minute.
cmd_min_job_age() {
    local secs=${1:-}
    [[ $secs =~ ^[0-9]+$ ]] || die "min-job-age: give a number of seconds"
    [[ $(id -u) == 0 ]] || die "must run as root"
    sed -i "s/^MinJobAge=.*/MinJobAge=$secs/" "$ETC/slurm.conf"
    scontrol reconfigure >/dev/null
    log "MinJobAge=$secs"
}

show() {  # show NAME PIDFILE COMM
    local pid
    if pid=$(pid_of "$2" "$3" 2>/dev/null); then
        printf '  %-11s running (pid %s)\n' "$1" "$pid"
    else
        printf '  %-11s stopped\n' "$1"
    fi
}

cmd_status() {
    local mode=unknown n
    if [[ -f $ETC/slurm.conf ]]; then
        if grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$ETC/slurm.conf"; then
            mode=slurmdbd
        else
            mode=disabled
        fi
    fi
    echo "cluster $CLUSTER_NAME (accounting: $mode)"
    if munge_ok; then echo "  munged      running"; else echo "  munged      stopped"; fi
    if mysql_ok; then echo "  mariadb     running"; else echo "  mariadb     stopped"; fi
    show slurmdbd "$DBD_PID" slurmdbd
    show slurmctld "$CTLD_PID" slurmctld
    for n in "${NODES[@]}"; do show "slurmd $n" "/run/slurmd.$n.pid" slurmd; done
    if ctld_ok; then
        sinfo -N -h -o '  node %N %t cpus=%c mem=%m' 2>/dev/null || true
        scontrol show config 2>/dev/null | grep -E '^(MaxArraySize|AccountingStorageType) ' | sed 's/^/  /' || true
    fi
}

case ${1:-} in
up) shift; cmd_up "$@" ;;
down) shift; cmd_down "$@" ;;
status) cmd_status ;;
stop) shift; cmd_stop "$@" ;;
min-job-age) shift; cmd_min_job_age "$@" ;;
*) echo "usage: $0 up [--no-accounting] | down [--purge] | status | stop slurmctld|slurmdbd | min-job-age SECONDS" >&2; exit 2 ;;
esac
