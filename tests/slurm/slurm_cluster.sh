#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for tests/slurm.
#
#   bash tests/slurm/slurm_cluster.sh install     apt-get what is missing (root)
#   bash tests/slurm/slurm_cluster.sh start DIR   start munged, MariaDB, slurmdbd,
#                                                 slurmctld and slurmd; all state,
#                                                 configuration, logs and sockets
#                                                 live in DIR (created, must be empty)
#   bash tests/slurm/slurm_cluster.sh stop DIR    cancel the cluster's jobs, then stop
#                                                 every daemon `start` started, by the
#                                                 pid it recorded in DIR/pids
#
# After `start`, `export SLURM_CONF=DIR/etc/slurm.conf` makes sbatch, squeue, sacct,
# scontrol (and Snakemake's SLURM executor, which calls them) talk to this cluster.
#
# What it is: Debian's slurm-wlm (slurmctld + slurmd on one node named after
# `hostname -s`, partition `debug`), munge for authentication, and slurmdbd with a
# private MariaDB for accounting, because snakemake-executor-plugin-slurm polls job
# states with `sacct` and the tests read the jobs' CPUs/memory/GRES back from it.
# The node has the machine's real CPUs and memory (`slurmd -C`) and declares one
# fake GPU (gres.conf `Name=gpu Count=1`, no device file) so that `--gpus=1` is
# accepted, scheduled and accounted (AllocTRES gres/gpu=1); nothing uses it.
# Processes are tracked without cgroups (proctrack/linuxproc, task/none), so it
# also runs in containers. The daemons run in the foreground of background shells;
# their pids go to DIR/pids (one "name pid" per line) as they start, so that `stop`
# can end exactly what `start` began, also after a half-finished start. Ports are
# free ports picked at start, so it does not collide with a site's SLURM.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server mariadb-client)

die() { echo "slurm_cluster.sh: $*" >&2; exit 1; }

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  local sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  echo "slurm_cluster.sh: apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  # policy-rc.d-less machines would start the packaged services; we stop those below.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s; give up early
# when the daemon started last has died.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local end=$((SECONDS + limit)) last
  last="$(tail -n 1 "$DIR/pids")"
  until "$@" >"$DIR/log/wait_for.out" 2>&1; do
    alive "${last#* }" || { echo "slurm_cluster.sh: ${last% *} exited; see $DIR/log" >&2; return 1; }
    if ((SECONDS >= end)); then
      echo "slurm_cluster.sh: timed out after ${limit}s waiting for $what; '$*' said:" >&2
      cat "$DIR/log/wait_for.out" >&2
      return 1
    fi
    sleep 0.2
  done
}

# launch NAME LOG COMMAND...: run COMMAND in the background, record its pid.
launch() {
  local name=$1 log=$2
  shift 2
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo "$name $!" >>"$DIR/pids"
}

alive() { kill -0 "$1" 2>/dev/null; }

# Inside a job, the `srun` that runs a rule has no SLURM_CONF:
# snakemake-executor-plugin-slurm-jobstep (0.6.1) removes every SLURM_* variable
# except the job's identity from that srun's environment, so it looks for the
# configuration at the default path and fails with "Could not establish a
# configuration source" where there is none. So the cluster's slurm.conf is also
# linked there, for as long as the cluster runs. A link left by a cluster that is
# gone (killed test) is replaced; any other file there means a real SLURM
# installation, and the script stops rather than touch it.
DEFAULT_CONF=/etc/slurm/slurm.conf
claim_default_conf() {
  if [[ -L "$DEFAULT_CONF" ]]; then
    local old pid
    old="$(readlink "$DEFAULT_CONF")"
    if [[ "$old" == */etc/slurm.conf && -f "${old%/etc/slurm.conf}/pids" ]]; then
      while read -r _ pid; do
        alive "$pid" && die "$DEFAULT_CONF links to $old, a cluster that still runs; stop it first"
      done <"${old%/etc/slurm.conf}/pids"
      rm -f "$DEFAULT_CONF"
    elif [[ ! -e "$DEFAULT_CONF" ]]; then
      rm -f "$DEFAULT_CONF"
    fi
  fi
  [[ ! -e "$DEFAULT_CONF" ]] || die "$DEFAULT_CONF exists: this machine has a SLURM configuration of its own"
  mkdir -p "$(dirname "$DEFAULT_CONF")"
  ln -s "$DIR/etc/slurm.conf" "$DEFAULT_CONF"
}

start() {
  [[ "$(id -u)" == 0 ]] || die "start needs root (slurmd runs jobs as their user)"
  for cmd in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
    command -v "$cmd" >/dev/null || die "$cmd not found: run '$0 install' first"
  done
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  [[ -z "$(ls -A "$DIR")" ]] || die "$DIR is not empty"
  # A failed start leaves nothing running.
  trap 'echo "slurm_cluster.sh: start failed; logs in $DIR/log" >&2; stop' ERR

  local host node_line cpus mem
  host="$(hostname -s)"
  claim_default_conf
  mkdir -p "$DIR"/{etc,log,run,state,spool,munge,db}
  chmod 700 "$DIR/munge"
  : >"$DIR/pids"

  # --- munge: a fresh key and a private socket ----------------------------------
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  local msock="$DIR/munge/munge.socket"
  launch munged "$DIR/log/munged.out" munged --foreground --force \
    --key-file="$DIR/munge/munge.key" --socket="$msock" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
  wait_for 20 munged munge --socket="$msock" -n

  # --- MariaDB for slurmdbd, on a private port -----------------------------------
  local dbport dbsock="$DIR/run/mysqld.sock" dbpass
  dbport="$(free_port)"
  dbpass="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root \
    --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1
  launch mariadbd "$DIR/log/mariadbd.log" mariadbd --no-defaults --user=root \
    --datadir="$DIR/db" --socket="$dbsock" --port="$dbport" --bind-address=127.0.0.1 \
    --pid-file="$DIR/run/mariadbd.pid" --innodb-buffer-pool-size=64M --skip-name-resolve
  wait_for 60 mariadbd mariadb --no-defaults --socket="$dbsock" -uroot -e 'select 1'
  mariadb --no-defaults --socket="$dbsock" -uroot -e "
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$dbpass';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

  # --- configuration -----------------------------------------------------------------
  local ctldport slurmdport dbdport
  ctldport="$(free_port)"
  slurmdport="$(free_port)"
  dbdport="$(free_port)"
  node_line="$(slurmd -C | head -1)"
  cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
  [[ -n "$cpus" && -n "$mem" ]] || die "cannot read CPUs/RealMemory from 'slurmd -C': $node_line"
  # Leave the system some memory; jobs may ask for up to this.
  mem=$((mem * 9 / 10))

  cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$msock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbdport
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$dbport
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"

  cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=lsstest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctldport
SlurmdPort=$slurmdport
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$msock
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbdport
# for accounting_storage/slurmdbd, "Pass" is the munge socket to authenticate with
AccountingStoragePass=$msock
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
JobCompType=jobcomp/none
# sacct shows the --comment Snakemake gives each job (rule_<rule>_wildcards_<...>)
AccountingStoreFlags=job_comment
# Keep finished jobs in slurmctld for 10 minutes (scontrol show job, squeue).
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # A fake GPU: slurmd drops file-less GPUs ("Removing file-less GPU"), so it gets a
  # plain file as its device; with task/none nothing opens or constrains it.
  mkdir -p "$DIR/dev"
  : >"$DIR/dev/fakegpu0"
  echo "NodeName=$host Name=gpu File=$DIR/dev/fakegpu0" >"$DIR/etc/gres.conf"
  : >"$DIR/etc/plugstack.conf"

  export SLURM_CONF="$DIR/etc/slurm.conf"

  # --- daemons -------------------------------------------------------------------------
  launch slurmdbd "$DIR/log/slurmdbd.out" slurmdbd -D
  wait_for 20 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster lsstest >/dev/null
  launch slurmctld "$DIR/log/slurmctld.out" slurmctld -D -i -f "$DIR/etc/slurm.conf"
  wait_for 60 slurmctld scontrol ping
  launch slurmd "$DIR/log/slurmd.out" slurmd -D -f "$DIR/etc/slurm.conf"
  node_ready() { [[ "$(sinfo -h -N -o %T)" == idle ]]; }
  wait_for 60 "node $host idle" node_ready
  trap - ERR
  echo "slurm_cluster.sh: cluster lsstest up; export SLURM_CONF=$SLURM_CONF"
}

stop() {
  [[ -f "$DIR/pids" ]] || return 0
  local name pid t
  # Jobs first, while slurmctld/slurmd can still end them (slurmstepd and the job's
  # processes are not children of slurmd).
  if [[ -f "$DIR/etc/slurm.conf" ]] && grep -q '^slurmctld ' "$DIR/pids"; then
    export SLURM_CONF="$DIR/etc/slurm.conf"
    local ids
    ids="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')" || true
    if [[ -n "${ids// /}" ]]; then
      # shellcheck disable=SC2086
      scancel --full $ids 2>/dev/null || true
      for t in $(seq 1 100); do
        [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
        sleep 0.2
      done
    fi
  fi
  # Then the daemons, last started first.
  tac "$DIR/pids" | while read -r name pid; do
    alive "$pid" || continue
    kill -TERM "$pid" 2>/dev/null || true
    for t in $(seq 1 100); do
      alive "$pid" || break
      sleep 0.2
    done
    if alive "$pid"; then
      echo "slurm_cluster.sh: $name ($pid) ignored SIGTERM for 20 s; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # The default-path link, if it is ours.
  if [[ -L "$DEFAULT_CONF" && "$(readlink "$DEFAULT_CONF")" == "$DIR/etc/slurm.conf" ]]; then
    rm -f "$DEFAULT_CONF"
  fi
  return 0
}

cmd="${1:-}"
case "$cmd" in
  install) install_packages ;;
  start | stop)
    [[ $# == 2 ]] || die "usage: $0 $cmd DIR"
    DIR="$2"
    "$cmd"
    ;;
  *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
