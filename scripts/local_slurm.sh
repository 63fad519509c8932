#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for the `slurm` test marker (issue 8).
#
#   sudo bash scripts/local_slurm.sh up       # install if needed, configure, start, wait for idle
#   sudo bash scripts/local_slurm.sh status   # sinfo/squeue, or "not running"
#   sudo bash scripts/local_slurm.sh down     # stop exactly the daemons `up` started (idempotent)
#
# Everything (config, munge key/socket, pid files, logs, spool, state) lives in one state dir,
# DIFFROP_SLURM_DIR (default /tmp/diffrop-slurm); nothing under /etc is written. Clients find the
# cluster through SLURM_CONF: `source $DIR/env.sh`. See docs/slurm.md for the facts behind the config.
set -euo pipefail

DIR="$(realpath -m "${DIFFROP_SLURM_DIR:-/tmp/diffrop-slurm}")"
CONF="$DIR/etc/slurm.conf"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_PID="$MUNGE_DIR/munged.pid"
CTLD_PID="$DIR/run/slurmctld.pid"
SLURMD_PID="$DIR/run/slurmd.pid"
UP_TIMEOUT="${DIFFROP_SLURM_TIMEOUT:-60}"
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { printf '[local_slurm] %s\n' "$*" >&2; }
die() {
    log "error: $1"
    exit "${2:-1}"
}

require_root() {
    if [[ "$(id -u)" -ne 0 ]]; then
        log "error: must run as root (it installs packages and runs slurmctld/slurmd as root)."
        log "       try: sudo bash $0 ${1:-up}"
        exit 2
    fi
}

# pid recorded in $1 if that process is alive and its command name is $2, else empty.
live_pid() {
    local file="$1" name="$2" pid comm
    [[ -r "$file" ]] || return 0
    pid="$(tr -dc '0-9' <"$file")"
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 0
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" == "$name" ]] && echo "$pid"
    return 0
}

# Refuse to run next to SLURM daemons we did not start (they would share ports 6817/6818).
check_foreign() {
    local name pfile ours pid foreign=""
    for name in slurmctld slurmd slurmdbd; do
        case "$name" in
        slurmctld) pfile="$CTLD_PID" ;;
        slurmd) pfile="$SLURMD_PID" ;;
        *) pfile="" ;;
        esac
        ours=""
        [[ -z "$pfile" ]] || ours="$(live_pid "$pfile" "$name")"
        for pid in $(pgrep -x "$name" || true); do
            [[ "$pid" == "$ours" ]] || foreign+=" $name(pid $pid)"
        done
    done
    if [[ -n "$foreign" ]]; then
        die "SLURM daemons not started by this script are running:$foreign.
       This script only manages its own cluster in $DIR; stop those yourself
       (or use that cluster) and retry." 3
    fi
}

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them."
    log "installing ${missing[*]} with apt-get"
    # Keep the packages' init scripts from starting system-wide daemons during install.
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } ||
        rc=$?
    [[ $made_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $rc -eq 0 ]] || die "apt-get install ${missing[*]} failed (exit $rc)."
}

write_config() {
    local host cpus mem_total real_mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem_total="$(free -m | awk '/^Mem:/ {print $2}')"
    # Leave 5% (at least 256 MB) for the OS: slurmd drains a node whose RealMemory exceeds what it sees.
    real_mem=$((mem_total - (mem_total / 20 > 256 ? mem_total / 20 : 256)))
    mkdir -p "$DIR"/{etc,run,log,state,spool/slurmd}
    chmod 755 "$DIR"
    cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh for a one-node test cluster; regenerated on every \`up\`.
ClusterName=diffrop
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${MUNGE_SOCKET},cred_expire=10
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
JobRequeue=1
ReturnToService=2
# SIGTERM -> SIGKILL grace (Slurm's default 30 s): a requeued or cancelled run saves last.ckpt in it
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
    # Slurm 22.05 reads cgroup.conf next to slurm.conf even with proctrack/linuxproc; without
    # systemd here, v1 + IgnoreSystemd is what lets slurmd start ("disabled" is not known in 22.05).
    cat >"$DIR/etc/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
IgnoreSystemd=yes
EOF
    printf 'export SLURM_CONF=%s\n' "$CONF" >"$DIR/env.sh"
}

start_munge() {
    if [[ -n "$(live_pid "$MUNGE_PID" munged)" ]]; then
        return 0
    fi
    mkdir -p "$MUNGE_DIR"
    chown munge:munge "$MUNGE_DIR"
    chmod 755 "$MUNGE_DIR" # slurm clients must reach the socket
    if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
        (umask 077 && dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none)
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 400 "$MUNGE_DIR/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    runuser -u munge -- munged \
        --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_PID" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" ||
        die "munged failed to start; see $MUNGE_DIR/munged.log"
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S "$MUNGE_SOCKET" ]] && break
        sleep 0.1
    done
    munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null ||
        die "munge round-trip failed on $MUNGE_SOCKET; see $MUNGE_DIR/munged.log"
}

node_state() { sinfo -h -N -n "$(hostname -s)" -o '%T' 2>/dev/null | head -1; }

cmd_up() {
    require_root up
    check_foreign
    if [[ -n "$(live_pid "$CTLD_PID" slurmctld)" && -n "$(live_pid "$SLURMD_PID" slurmd)" ]]; then
        log "already running (state dir $DIR)"
        export SLURM_CONF="$CONF"
        cmd_status
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    install_packages
    write_config
    export SLURM_CONF="$CONF"
    start_munge
    if [[ -z "$(live_pid "$CTLD_PID" slurmctld)" ]]; then
        # -c: start from clean state, so job ids and the queue are fresh for every `up`.
        slurmctld -c -f "$CONF" || die "slurmctld failed to start; see $DIR/log/slurmctld.log"
    fi
    if [[ -z "$(live_pid "$SLURMD_PID" slurmd)" ]]; then
        slurmd -f "$CONF" -N "$(hostname -s)" || die "slurmd failed to start; see $DIR/log/slurmd.log"
    fi
    local start=$SECONDS state=""
    while ((SECONDS - start < UP_TIMEOUT)); do
        state="$(node_state)"
        [[ "$state" == idle ]] && break
        sleep 1
    done
    if [[ "$state" != idle ]]; then
        log "node did not become idle within ${UP_TIMEOUT}s (state: '${state:-unreachable}'). Log tails:"
        tail -n 15 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" "$MUNGE_DIR/munged.log" >&2 || true
        cmd_down
        exit 1
    fi
    log "cluster up in $((SECONDS - start))s (state dir $DIR)"
    cmd_status
    echo "export SLURM_CONF=$CONF"
}

# Send TERM to the daemon in pid file $1 (command name $2), KILL after 15 s; remove the pid file.
stop_daemon() {
    local file="$1" name="$2" pid i
    pid="$(live_pid "$file" "$name")"
    if [[ -n "$pid" ]]; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            [[ -d "/proc/$pid" ]] || break
            sleep 0.1
        done
        if [[ -d "/proc/$pid" ]]; then
            log "$name (pid $pid) ignored TERM; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

cmd_down() {
    require_root down
    export SLURM_CONF="$CONF"
    if [[ -n "$(live_pid "$CTLD_PID" slurmctld)" ]]; then
        # Cancel jobs through slurm so their slurmstepd processes exit before slurmd does.
        local jobs i
        jobs="$(squeue -h -o '%i' 2>/dev/null || true)"
        if [[ -n "$jobs" ]]; then
            log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 30; i++)); do
                [[ -z "$(squeue -h -o '%i' 2>/dev/null)" ]] && break
                sleep 1
            done
        fi
    fi
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
    stop_daemon "$MUNGE_PID" munged
    log "down (state dir $DIR kept: logs in $DIR/log)"
}

cmd_status() {
    local ctld munged slurmd
    ctld="$(live_pid "$CTLD_PID" slurmctld)"
    slurmd="$(live_pid "$SLURMD_PID" slurmd)"
    munged="$(live_pid "$MUNGE_PID" munged)"
    if [[ -z "$ctld$slurmd$munged" ]]; then
        echo "not running (state dir $DIR)"
        return 1
    fi
    echo "munged pid ${munged:--}, slurmctld pid ${ctld:--}, slurmd pid ${slurmd:--} (state dir $DIR)"
    SLURM_CONF="$CONF" sinfo || true
    SLURM_CONF="$CONF" squeue || true
}

if [[ "$DIR" =~ [[:space:]] ]]; then
    die "DIFFROP_SLURM_DIR='$DIR' contains whitespace, which slurm.conf cannot express; pick another path." 64
fi

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    echo "usage: $0 up|down|status   (state dir: \$DIFFROP_SLURM_DIR, default /tmp/diffrop-slurm)" >&2
    exit 64
    ;;
esac
