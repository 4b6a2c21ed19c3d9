#!/usr/bin/env bash
# Runs a private libvirtd whose runtime, state, cache, config and log
# directories all live under DIR, so tests can use their own daemon (the
# host's release, or an older one from scripts/build-test-roots.sh) without
# sharing anything with the host's daemon, and several can run side by side.
#
# Usage: private-libvirtd.sh start DIR [ROOT]   starts (or finds running) and
#                                               prints the URI on stdout
#        private-libvirtd.sh stop DIR           SIGTERM, SIGKILL after a deadline
#        private-libvirtd.sh status DIR         exit 0 if running, 3 if not
# Without ROOT the host's libvirtd binary runs; with ROOT (a root built by
# build-test-roots.sh) libvirtd runs chrooted there. Either way it runs in its
# own mount namespace where DIR's directories are bound over /run/libvirt,
# /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /etc/libvirt.
# The sockets are then DIR/run/libvirt/libvirt-sock{,-ro} on the host:
#   virsh -c 'qemu:///system?socket=DIR/run/libvirt/libvirt-sock' ...
# Guests started through it run in that namespace too (same /usr/bin paths as
# the daemon sees them: inside ROOT with ROOT). No virtlogd is run: with
# stdio_handler = "file" QEMU writes DIR/log/libvirt/qemu/NAME.log itself
# (tested on libvirt 7.0, 9.0, 11.3 and 12.9: Debian 13's libvirt-daemon,
# stock and from trixie-backports, still ships the monolithic libvirtd, with
# the same config keys; no modular daemon is installed). Guests still running
# at stop are left running (libvirt's design) and listed; a later start
# reconnects them.
#
# Cgroups: without systemd libvirt uses cgroupfs and names a guest's cgroup
# /machine/qemu-ID-NAME.libvirt-qemu in every daemon, so two daemons' guests of
# the same name and ID share one cgroup (summed cpu.* stats, each removing the
# other's). Each daemon therefore gets its own cgroup subtree for the
# controllers in $VIRTPULSE_PRIVATE_CGROUPS (default "cpu cpuacct": what
# domstats' cpu.* group needs on libvirt 7.0, which has no /proc fallback)
# and runs in a cgroup namespace rooted there, with those hierarchies mounted
# afresh, so its /machine is physically /virtpulse-private-HASH/machine.
# Memory (the caller's cgroup) and the rest are not given to libvirt.
# VIRTPULSE_PRIVATE_CGROUPS=none, or a host without those v1 hierarchies,
# gives cgroup_controllers = [] (no cgroups; no cpu.* stats on 7.0).
#
# Network: with VIRTPULSE_PRIVATE_NETNS=1 the daemon also gets a network
# namespace of its own (unshare -n) with only its loopback up, so the
# bridges, dnsmasq and firewall rules of its virtual networks, and its
# guests' taps and DHCP traffic, never reach the host's network. Clients
# still reach it through its unix sockets. Without it (the default) the
# daemon shares the host's network namespace: start no network there.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() { echo "usage: $0 start|stop|status DIR [ROOT]" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
DIR=$(realpath -m "$2")
ROOT=${3:+$(realpath -m "$3")}
TIMEOUT=${VIRTPULSE_PRIVATE_TIMEOUT:-30}
NETNS=${VIRTPULSE_PRIVATE_NETNS:-0}
NETNS_FLAG=
[ "$NETNS" = 1 ] && NETNS_FLAG=-n

SOCK=$DIR/run/libvirt/libvirt-sock
URI="qemu:///system?socket=$SOCK"
PIDFILE=$DIR/libvirtd.pid
# What the daemon writes itself, as seen from the host (it writes
# /run/libvirt/libvirtd.pid in its namespace: DIR itself is not visible
# inside ROOT). Not the default /run/libvirtd.pid, which the host's daemon holds.
DAEMON_PIDFILE=$DIR/run/libvirt/libvirtd.pid
# (host dir, DIR subdir) pairs bound over each other in the namespace.
BINDS=(/run/libvirt:run/libvirt /var/lib/libvirt:lib/libvirt /var/cache/libvirt:cache/libvirt
       /var/log/libvirt:log/libvirt /etc/libvirt:etc/libvirt)


# Succeeds if PID is a libvirtd whose /run/libvirt is DIR's: a PID file can
# outlive its daemon and the number be reused, and the host's daemon must
# never be mistaken for ours.
is_ours() {
  local pid=$1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = libvirtd ] || return 1
  [ "$(stat -L -c %d:%i "/proc/$pid/root/run/libvirt" 2>/dev/null)" = "$(stat -c %d:%i "$DIR/run/libvirt" 2>/dev/null)" ]
}

running_pid() {
  local pid
  for f in "$PIDFILE" "$DAEMON_PIDFILE"; do
    pid=$(cat "$f" 2>/dev/null || true)
    if is_ours "$pid"; then echo "$pid"; return 0; fi
  done
  return 1
}

answers() { timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1; }

# Polls until the daemon answers on its socket, or the deadline passes.
wait_answer() {
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    answers && return 0
    sleep 0.2
  done
  return 1
}

# Builds DIR/etc/libvirt from the source config (host's or ROOT's) once, and
# applies the settings on every start. Only the daemon config files and the
# nwfilter definitions are copied: the host's domains, networks (the default
# network would create virbr0 in the host's network namespace), storage
# pools, secrets and hooks stay the host's.
prepare_config() {
  local src=$1 etc=$DIR/etc/libvirt
  if [ ! -f "$etc/.virtpulse-copied" ]; then
    rm -rf "$etc"
    mkdir -p "$etc/qemu/networks/autostart" "$etc/storage" "$etc/secrets" "$etc/hooks"
    find "$src" -maxdepth 1 -type f -exec cp -p {} "$etc/" \;
    [ -d "$src/nwfilter" ] && cp -a "$src/nwfilter" "$etc/"
    touch "$etc/.virtpulse-copied"
  fi
  local q=$etc/qemu.conf d=$etc/libvirtd.conf
  # Why each setting: see build-test-roots.sh, which applies the same.
  set_conf "$q" user '"root"'
  set_conf "$q" group '"root"'
  set_conf "$q" namespaces '[]'
  set_conf "$q" stdio_handler '"file"'
  set_conf "$q" remember_owner 0
  if [ ${#CG_CONTROLLERS[@]} -eq 0 ]; then
    set_conf "$q" cgroup_controllers '[]'
  else
    set_conf "$q" cgroup_controllers "[$(printf ' "%s",' "${CG_CONTROLLERS[@]}" | sed 's/,$/ /')]"
  fi
  set_conf "$d" auth_unix_ro '"none"'
  set_conf "$d" auth_unix_rw '"none"'
  set_conf "$d" unix_sock_ro_perms '"0777"'
  # With no polkit the read-write socket would be open to every user
  # (libvirt's default is 0777 when built with polkit): root only.
  set_conf "$d" unix_sock_rw_perms '"0700"'
  # Without a file output the daemon logs to syslog, i.e. the host's.
  # LIBVIRTD_LOG_FILTERS (e.g. "1:rpc") logs those sources
  # at their level too: to see, while debugging, which calls a client has
  # in flight.
  if [ -n "${LIBVIRTD_LOG_FILTERS:-}" ]; then
    [[ $LIBVIRTD_LOG_FILTERS =~ ^[0-9A-Za-z_.:\ ]+$ ]] || {
      echo "LIBVIRTD_LOG_FILTERS='$LIBVIRTD_LOG_FILTERS': expected libvirt log filters such as \"1:rpc 1:qemu.qemu_monitor\"" >&2
      exit 2
    }
    set_conf "$d" log_filters "\"$LIBVIRTD_LOG_FILTERS 3:*\""
    set_conf "$d" log_outputs '"1:file:/var/log/libvirt/libvirtd.log"'
  else
    sed -i -E '/^[[:space:]]*log_filters[[:space:]]*=/d' "$d"
    set_conf "$d" log_outputs '"3:file:/var/log/libvirt/libvirtd.log"'
  fi
}

# Finds the cgroup v1 hierarchies of the wanted controllers and creates the
# daemon's subtree in each. Sets CG_CONTROLLERS (those found) and CG_SPECS
# ("mountpoint|options" of each hierarchy, for the fresh mounts inside).
CG_CONTROLLERS=() CG_SPECS=()
CG_NAME=virtpulse-private-$(printf %s "$DIR" | sha1sum | cut -c1-12)
prepare_cgroups() {
  local want=${VIRTPULSE_PRIVATE_CGROUPS-cpu cpuacct} c line mp opts
  [ "$want" = none ] && return 0
  for c in $want; do
    # mountinfo: ... ROOT MOUNTPOINT ... - cgroup SOURCE SUPEROPTS; only a
    # hierarchy mounted from its root (we are not in a cgroup namespace).
    line=$(awk -v c="$c" '{ for (i = 1; $i != "-"; i++); if ($(i+1) != "cgroup" || $4 != "/") next
             n = split($(i+3), o, ","); for (j = 1; j <= n; j++) if (o[j] == c) { print $5, $(i+3); exit } }' /proc/self/mountinfo)
    if [ -z "$line" ]; then
      echo "no cgroup v1 hierarchy for $c: libvirt will not use it" >&2
      continue
    fi
    mp=${line%% *} opts=${line#* }
    mkdir -p "$mp/$CG_NAME"
    CG_CONTROLLERS+=("$c")
    case " ${CG_SPECS[*]} " in *" $mp|"*) ;; *) CG_SPECS+=("$mp|$opts") ;; esac
  done
  : > "$DIR/cgroups"
  for line in "${CG_SPECS[@]}"; do echo "${line%%|*}/$CG_NAME" >> "$DIR/cgroups"; done
}

# Removes the daemon's cgroup subtrees once nothing runs in them (guests left
# running keep theirs).
remove_cgroups() {
  local d
  [ -f "$DIR/cgroups" ] || return 0
  while read -r d; do
    [ -d "$d" ] || continue
    if find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | grep -q .; then
      echo "$d still has processes: left in place" >&2
      continue
    fi
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done < "$DIR/cgroups"
}

# Runs in the new mount namespace (private propagation: nothing mounted here
# reaches the host): binds DIR's dirs in place and execs the daemon, which
# forks into the background once its sockets listen.
# shellcheck disable=SC2016
INNER='
set -euo pipefail
DIR=$1 ROOT=$2 CGSPECS=$3 NETNS=$4; shift 4
if [ -n "$ROOT" ]; then
  for d in dev proc sys; do mount --rbind "/$d" "$ROOT/$d"; done
  # Fresh /run and /tmp: nothing of a previous run, or of another daemon
  # started from the same ROOT, is shared.
  mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"
  mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp"
  [ -c "$ROOT/dev/kvm" ] || { echo "no /dev/kvm in $ROOT" >&2; exit 1; }
fi
# Only the given hierarchies, mounted in this cgroup namespace: their root is
# the daemon'"'"'s own subtree, and libvirt sees no other controller (nor the
# unified hierarchy, which libvirt 9+ would use in a hybrid setup).
# (The host'"'"'s cgroup mounts are unmounted, not just covered: libvirt reads
# /proc/mounts and would try the covered ones too.)
[ "$NETNS" = 1 ] && ip link set lo up
umount -R "$ROOT/sys/fs/cgroup" 2>/dev/null || true
mount -t tmpfs -o mode=755 tmpfs "$ROOT/sys/fs/cgroup"
for spec in $CGSPECS; do
  mp=$ROOT${spec%%|*}
  mkdir -p "$mp"
  mount -t cgroup -o "${spec#*|}" cgroup "$mp"
done
for b in "$@"; do
  target=$ROOT${b%%:*}
  mkdir -p "$target"
  mount --bind "$DIR/${b#*:}" "$target"
done
if [ -n "$ROOT" ]; then
  exec chroot "$ROOT" libvirtd -d --pid-file /run/libvirt/libvirtd.pid
fi
exec libvirtd -d --pid-file /run/libvirt/libvirtd.pid
'

start() {
  local pid t0 src
  t0=$(date +%s%N)
  local mode=${ROOT:-host}
  if [ -f "$DIR/mode" ] && [ "$(cat "$DIR/mode")" != "$mode" ]; then
    echo "$DIR holds the state of a daemon from $(cat "$DIR/mode"), not $mode: use another DIR" >&2
    return 1
  fi
  if pid=$(running_pid); then
    if wait_answer; then
      echo "$pid" > "$PIDFILE"
      echo "libvirtd already running in $DIR (pid $pid)" >&2
      echo "$URI"
      return 0
    fi
    echo "libvirtd pid $pid in $DIR does not answer on $SOCK" >&2
    return 1
  fi
  # Unix socket paths are limited to 108 bytes.
  [ ${#SOCK} -lt 108 ] || { echo "DIR is too long for a socket path: $SOCK" >&2; return 1; }
  if [ -n "$ROOT" ]; then
    [ -f "$ROOT/.virtpulse-root-complete" ] || { echo "$ROOT is not a root built by build-test-roots.sh" >&2; return 1; }
    src=$ROOT/etc/libvirt
  else
    # Binding DIR over a path that contains DIR would hide DIR itself.
    for b in "${BINDS[@]}"; do
      case "$DIR/" in "${b%%:*}"/*) echo "DIR must not be under ${b%%:*}" >&2; return 1 ;; esac
    done
    command -v libvirtd >/dev/null || { echo "no libvirtd on the host (scripts/install-libvirt.sh?)" >&2; return 1; }
    src=/etc/libvirt
  fi
  for b in "${BINDS[@]}"; do mkdir -p "$DIR/${b#*:}"; done
  echo "$mode" > "$DIR/mode"
  prepare_cgroups
  prepare_config "$src"
  rm -f "$PIDFILE" "$DAEMON_PIDFILE"

  # The subshell moves itself into the subtree first: a new cgroup namespace
  # is rooted at the cgroups of the process that creates it.
  if ! (
    for spec in "${CG_SPECS[@]}"; do echo "$BASHPID" > "${spec%%|*}/$CG_NAME/cgroup.procs"; done
    exec unshare -m -C $NETNS_FLAG --propagation private \
      bash -c "$INNER" inner "$DIR" "$ROOT" "${CG_SPECS[*]}" "$NETNS" "${BINDS[@]}"
  ) > "$DIR/start.log" 2>&1; then
    echo "libvirtd failed to start; $DIR/start.log and $DIR/log/libvirt/libvirtd.log say:" >&2
    tail -n 20 "$DIR/start.log" "$DIR/log/libvirt/libvirtd.log" >&2 2>/dev/null || true
    return 1
  fi
  if ! pid=$(running_pid); then
    echo "libvirtd started but wrote no PID to $DAEMON_PIDFILE" >&2
    return 1
  fi
  echo "$pid" > "$PIDFILE"
  if ! wait_answer; then
    echo "libvirtd pid $pid did not answer on $SOCK within ${TIMEOUT}s; see $DIR/log/libvirt/libvirtd.log" >&2
    return 1
  fi
  echo "libvirtd ($mode) pid $pid answers after $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2
  echo "$URI"
}

stop() {
  local pid ns deadline left
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE"
    echo "no libvirtd running in $DIR" >&2
    return 0
  fi
  ns=$(readlink "/proc/$pid/ns/mnt")
  kill -TERM "$pid"
  deadline=$(( $(date +%s) + TIMEOUT ))
  while [ -d "/proc/$pid" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
  if [ -d "/proc/$pid" ]; then
    echo "libvirtd pid $pid still there after ${TIMEOUT}s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while [ -d "/proc/$pid" ]; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  # Guests outlive their daemon (by libvirt's design) and keep its namespace;
  # they are not ours to kill, but say so.
  left=$(for p in /proc/[0-9]*; do
           if [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ]; then echo "${p#/proc/}"; fi
         done | tr '\n' ' ')
  if [ -n "$left" ]; then
    echo "still running in its namespace (guests?): pids $left" >&2
  else
    remove_cgroups
  fi
  echo "libvirtd pid $pid in $DIR stopped" >&2
}

status() {
  local pid
  if pid=$(running_pid); then
    if answers; then echo "running: pid $pid, $URI"; else echo "running: pid $pid, not answering on $SOCK"; fi
    return 0
  fi
  echo "not running ($DIR)"
  return 3
}

case "$action" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
