#!/usr/bin/env bash
# cluster.sh - a real single-node Slurm cluster on localhost, for tests, CI and trying `--executor slurm`.
# Debian 12 packages only (munge, slurmctld, slurmd, slurm-client, slurmdbd + MariaDB for accounting),
# no systemd, no cgroups; runs as root. Every subcommand is idempotent.
#
#   cluster.sh up              install what is missing, start munged, mariadbd, slurmdbd, slurmctld, slurmd,
#                              wait until the node is idle
#   cluster.sh smoke           sbatch --wait one job and check that sacct saw it complete
#   cluster.sh status          which daemons run, and sinfo
#   cluster.sh down [--purge]  cancel jobs, stop the daemons by pid (--purge: also drop state and accounting DB)
#
# Knobs: BENCH_SLURM_ROOT (/tmp/bench-slurm: state, spool, logs, pid files)
#        BENCH_SLURM_CPUS (4; may exceed the real cores so several array tasks run at once)
#        BENCH_SLURM_ACCOUNTING (1: slurmdbd + MariaDB. submitit needs sacct to notice a killed job;
#                                without it a cancelled job's result() blocks forever)
#        BENCH_SLURM_GPUS (1: fake file-backed GRES gpu:bench:N, for scheduling only (--gres gpu:1 or
#                          gpu:bench:1); CUDA_VISIBLE_DEVICES is not set)
#        BENCH_SLURM_QOS (bench_qos: with accounting, a QOS that root and $SUDO_USER may use; associations
#                         and QOS are enforced, so sbatch refuses any other --qos, as a site's cluster does)
# Configs go to /etc/slurm, so sbatch/sacct/submitit find them without SLURM_CONF.
# Daemons are only ever stopped through their pid file, after /proc/PID/comm confirms which daemon it is.
set -euo pipefail

ROOT=${BENCH_SLURM_ROOT:-/tmp/bench-slurm}
CPUS=${BENCH_SLURM_CPUS:-4}
ACCOUNTING=${BENCH_SLURM_ACCOUNTING:-1}
GPUS=${BENCH_SLURM_GPUS:-1}
QOS=${BENCH_SLURM_QOS:-bench_qos}
HOST=$(hostname -s)
ETC=/etc/slurm
DBPASS=benchslurm

log() { echo "[cluster.sh $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

alive() { # alive PIDFILE: its pid runs and is the daemon the file is named after (guards against pid reuse)
  [[ -s $1 ]] || return 1
  local pid name
  pid=$(cat "$1"); name=$(basename "$1" .pid); [[ $name == mysqld ]] && name=mariadbd
  kill -0 "$pid" 2>/dev/null && [[ $(cat /proc/"$pid"/comm 2>/dev/null) == "$name"* ]]
}

waitfor() { # waitfor SECONDS DESCRIPTION CMD...
  local t=$1 what=$2 i
  shift 2
  for ((i = 0; i < t * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "timed out after ${t}s waiting for $what"
}

stop_pid() { # stop_pid PIDFILE NAME
  alive "$1" || return 0
  local pid i
  pid=$(cat "$1"); log "stopping $2 (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  log "$2 did not exit in 30s, SIGKILL"; kill -9 "$pid" 2>/dev/null || true
}

install_pkgs() {
  local pkgs=(munge slurmctld slurmd slurm-client) missing=() p made_policy=0
  [[ $ACCOUNTING == 1 ]] && pkgs+=(slurmdbd mariadb-server)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian packages"
  log "apt installing: ${missing[*]}"
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then # keep postinst from starting the daemons through init.d
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
  return 0
}

start_munge() {
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    waitfor 10 munged sh -c 'munge -n | unmunge'
  fi
}

start_mariadb() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! mysqladmin ping >/dev/null 2>&1; then
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    log "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
      --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=256M \
      </dev/null >"$ROOT/log/mariadb.log" 2>&1 &
    waitfor 60 mariadb mysqladmin ping
  fi
  # A fresh slurmctld state restarts job ids at 1: start a fresh accounting DB too, or sacct mixes old jobs in.
  if [[ ! -e $ROOT/state/job_state ]] && ! alive "$ROOT/slurmdbd.pid"; then
    mysql -e "DROP DATABASE IF EXISTS slurm_acct_db"
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

write_if_changed() { # write_if_changed FILE MODE < content; status 0 when the file changed
  local tmp
  tmp=$(mktemp); cat >"$tmp"
  if [[ -f $1 ]] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  install -D -m "$2" "$tmp" "$1"; rm -f "$tmp"; return 0
}

slurm_conf() {
  local mem acct gres_types="" gres_node=""
  mem=$(($(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 1024))
  if [[ $ACCOUNTING == 1 ]]; then
    acct=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nJobAcctGatherType=jobacct_gather/linux'
    acct+=$'\nAccountingStorageEnforce=associations,limits,qos'
  else
    acct=$'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none'
  fi
  ((GPUS > 0)) && { gres_types="GresTypes=gpu"; gres_node="Gres=gpu:bench:$GPUS"; }
  [[ $ACCOUNTING == 1 ]] && ((GPUS > 0)) && acct+=$'\nAccountingStorageTRES=gres/gpu'  # sacct shows gres/gpu
  # cred_expire + the short scheduler intervals: a requeued job restarts after ~12 s instead of ~130 s.
  cat <<EOF
# generated by bench slurm/cluster.sh
ClusterName=bench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$acct
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MailProg=/bin/true
$gres_types
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/slurmctld.pid
SlurmdPidFile=$ROOT/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

write_configs() { # status 0 when something changed
  local changed=1 g
  if ((GPUS > 0)); then
    for ((g = 0; g < GPUS; g++)); do touch "$ROOT/fakegpu$g"; done
    write_if_changed $ETC/gres.conf 644 <<<"NodeName=$HOST Name=gpu Type=bench File=$ROOT/fakegpu[0-$((GPUS - 1))]" && changed=0
  else
    rm -f $ETC/gres.conf
  fi
  slurm_conf | write_if_changed $ETC/slurm.conf 644 && changed=0
  if [[ $ACCOUNTING == 1 ]]; then
    write_if_changed $ETC/slurmdbd.conf 600 <<EOF && changed=0
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$ROOT/log/slurmdbd.log
PidFile=$ROOT/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
  fi
  return $changed
}

add_qos() { # the QOS the integration test submits with (--qos), allowed for root and the sudo user
  local user
  waitfor 30 "root's association" sh -c "sacctmgr -n -P show assoc user=root format=user | grep -q root"
  sacctmgr -n -P show qos format=name | grep -qx "$QOS" || sacctmgr -i add qos "$QOS" >/dev/null
  for user in root ${SUDO_USER:-}; do
    [[ $user == root ]] || sacctmgr -n -P show user "$user" | grep -q . || sacctmgr -i add user "$user" account=root >/dev/null
    sacctmgr -n -P show assoc user="$user" format=qos | grep -qw "$QOS" || sacctmgr -i modify user "$user" set qos+="$QOS" >/dev/null
  done
}

node_state() { sinfo -h -n "$HOST" -o %t 2>/dev/null || true; }
node_ready() { [[ $(node_state) =~ ^(idle|mix|alloc) ]]; }

cmd_up() {
  [[ $(id -u) == 0 ]] || die "must run as root"
  local t0=$SECONDS i
  install_pkgs
  mkdir -p "$ROOT"/{state,spool,log}
  if write_configs && { alive "$ROOT/slurmctld.pid" || alive "$ROOT/slurmd.pid"; }; then
    log "config changed: restarting the slurm daemons"
    stop_pid "$ROOT/slurmd.pid" slurmd; stop_pid "$ROOT/slurmctld.pid" slurmctld; stop_pid "$ROOT/slurmdbd.pid" slurmdbd
  fi
  start_munge
  if [[ $ACCOUNTING == 1 ]]; then
    start_mariadb
    alive "$ROOT/slurmdbd.pid" || { log "starting slurmdbd"; slurmdbd; }
    waitfor 30 slurmdbd sacctmgr -n list cluster
  fi
  alive "$ROOT/slurmctld.pid" || { log "starting slurmctld"; slurmctld; }
  waitfor 30 slurmctld scontrol ping
  [[ $ACCOUNTING == 1 ]] && add_qos
  alive "$ROOT/slurmd.pid" || { log "starting slurmd"; slurmd -N "$HOST"; }
  for ((i = 0; i < 150; i++)); do
    node_ready && break
    [[ $(node_state) =~ (drain|down|inval) ]] && { scontrol update nodename="$HOST" state=resume 2>/dev/null || true; }
    sleep 0.2
  done
  node_ready || { tail -n 20 "$ROOT"/log/*.log >&2; die "node $HOST is not idle: $(sinfo -h -o '%t %E')"; }
  log "cluster up in $((SECONDS - t0))s: $(sinfo -h -o '%P %a %D %t %c cpus %G')"
}

cmd_smoke() {
  local out jid
  out=$(mktemp)
  jid=$(sbatch --parsable --wait -o "$out" --wrap 'echo "hello from $(hostname) job $SLURM_JOB_ID"') || die "sbatch failed"
  grep -q "hello from" "$out" || die "job output missing"
  log "smoke job $jid: $(cat "$out")"
  rm -f "$out"
  if [[ $ACCOUNTING == 1 ]]; then
    waitfor 20 "sacct record of job $jid" sh -c "sacct -n -X -P -j $jid -o State | grep -q COMPLETED"
    log "sacct: $(sacct -n -X -P -j "$jid" -o JobID,State,ExitCode)"
  fi
}

cmd_status() {
  local f
  for f in "$ROOT/slurmctld.pid" "$ROOT/slurmd.pid" "$ROOT/slurmdbd.pid" /run/munge/munged.pid /run/mysqld/mysqld.pid; do
    if alive "$f"; then echo "up   $(basename "$f" .pid) pid $(cat "$f")"; else echo "down $(basename "$f" .pid)"; fi
  done
  sinfo 2>/dev/null || true
}

cmd_down() {
  local purge=0 jobs i
  [[ ${1:-} == --purge ]] && purge=1
  if alive "$ROOT/slurmctld.pid"; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs || true
      for ((i = 0; i < 100; i++)); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
    fi
  fi
  stop_pid "$ROOT/slurmd.pid" slurmd
  stop_pid "$ROOT/slurmctld.pid" slurmctld
  stop_pid "$ROOT/slurmdbd.pid" slurmdbd
  if ((purge)) && mysqladmin ping >/dev/null 2>&1; then mysql -e "DROP DATABASE IF EXISTS slurm_acct_db" || true; fi
  stop_pid /run/mysqld/mysqld.pid mariadbd
  stop_pid /run/munge/munged.pid munged
  ((purge)) && rm -rf "$ROOT"
  log "down"
}

case ${1:-} in
  up) cmd_up ;;
  smoke) cmd_smoke ;;
  status) cmd_status ;;
  down) shift; cmd_down "$@" ;;
  *) echo "usage: $0 up|smoke|status|down [--purge]" >&2; exit 2 ;;
esac
