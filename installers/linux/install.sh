#!/usr/bin/env bash
# Installs Cairn (the `cairn` executable and its systemd units) on a Linux distribution without
# dpkg, in the same layout as the .deb; installers/README.md lists every path, owner and mode.
#
# Contract:
# - Idempotent: running it again is an upgrade. Existing configuration in /etc/cairn is never
#   overwritten (a changed shipped default is written beside it as FILE.new), and /var/lib/cairn,
#   /var/log/cairn are kept.
# - The binary is replaced by rename, so a running agent keeps its old executable until restarted.
# - Units go to /etc/systemd/system: the one unit folder every systemd distribution searches that
#   belongs to the administrator rather than to the distribution's package manager (/usr/lib may be
#   read-only or owned by rpm). `systemctl edit` drop-ins land beside them.
# - --uninstall keeps configuration, state and logs; --uninstall --purge deletes them and the
#   `cairn` user.
set -euo pipefail

readonly UNITS=(cairn-agent.service cairn-control-plane.service)
readonly CP_HOME=/var/lib/cairn/control-plane

usage() {
  cat <<'USAGE'
Usage:
  install.sh [--root DIR] [--binary PATH] [--no-start]
  install.sh --uninstall [--purge] [--root DIR]

Installs the Cairn agent and control plane as systemd services:
  /usr/bin/cairn, /etc/systemd/system/cairn-{agent,control-plane}.service,
  /etc/cairn/{agent.json,control-plane.env}, /var/lib/cairn, /var/log/cairn, user 'cairn'.
The agent service is enabled and started; the control plane is installed but not enabled
(on the control plane host: systemctl enable --now cairn-control-plane).
Running it again upgrades: configuration and state are kept.

  --binary PATH   the cairn executable to install (default: 'cairn' beside this script)
  --root DIR      install into DIR instead of / (an image or chroot): nothing is started, and the
                  'cairn' user is made with 'useradd --root DIR' when DIR has an /etc/passwd
                  (else skipped, with a note)
  --no-start      do not enable, start or restart any service
  --uninstall     stop and disable the services, remove the executable and the units; keep
                  /etc/cairn, /var/lib/cairn, /var/log/cairn
  --purge         with --uninstall: also delete /etc/cairn, /var/lib/cairn, /var/log/cairn,
                  /var/cache/cairn and the 'cairn' user (backups in vaults are not touched)
  -h, --help      this text
USAGE
}

die() {
  echo "install.sh: $*" >&2
  exit 1
}

note() {
  echo "install.sh: $*"
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=""
binary=""
start=yes
mode=install
purge=no

given=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --root)
      [ $# -ge 2 ] && [ -n "$2" ] || die "--root needs a folder; see 'install.sh --help'"
      root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; [ -n "$root" ] || die "--root needs a folder"; shift ;;
    --binary)
      [ $# -ge 2 ] && [ -n "$2" ] || die "--binary needs a path; see 'install.sh --help'"
      binary=$2; shift 2 ;;
    --binary=*) binary=${1#--binary=}; [ -n "$binary" ] || die "--binary needs a path"; shift ;;
    --no-start) start=no; shift ;;
    --uninstall) mode=uninstall; shift ;;
    --purge) purge=yes; shift ;;
    *) die "unknown argument '$1'; see 'install.sh --help'" ;;
  esac
done

[ "$purge" = no ] || [ "$mode" = uninstall ] || die "--purge goes with --uninstall"
[ "$mode" = install ] || [ -z "$binary" ] || die "--binary does not go with --uninstall"
if [ -n "$root" ]; then
  [ -d "$root" ] || die "--root $root is not a folder"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=""
fi
if [ -n "$root" ]; then
  # Run as root on an image, a link in it (say var/lib/cairn -> /etc) would lead chmod, chown and
  # rm -rf out of the image onto this machine: refuse any link on the paths this script writes.
  for p in usr usr/bin etc etc/cairn etc/systemd etc/systemd/system var var/lib var/lib/cairn \
    var/lib/cairn/control-plane var/log var/log/cairn var/cache var/cache/cairn var/cache/cairn/control-plane; do
    [ ! -L "$root/$p" ] || die "$root/$p is a symbolic link: refusing to follow it out of the root; replace it with a folder"
  done
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  die "must run as root (try: sudo $0${given[*]:+ ${given[*]}}), or give --root DIR to install into a folder"
fi

# systemctl only for the running system: never for --root, never without a running systemd.
systemd_running() {
  [ -z "$root" ] && [ -d /run/systemd/system ]
}

is_root() {
  [ "$(id -u)" -eq 0 ]
}

# The numeric id of group 'cairn' in $root's /etc/group, or nothing.
cairn_gid() {
  [ -f "$root/etc/group" ] && awk -F: '$1 == "cairn" { print $3 }' "$root/etc/group" || true
}

cairn_uid() {
  [ -f "$root/etc/passwd" ] && awk -F: '$1 == "cairn" { print $3 }' "$root/etc/passwd" || true
}

create_user() {
  local uid
  uid=$(cairn_uid)
  if [ -n "$uid" ]; then
    # A person's account of that name must not become the control plane's service account.
    [ "$uid" -lt 1000 ] || die "a user 'cairn' with uid $uid exists and is not a system user: rename it, or make the system user 'cairn' yourself, then run install.sh again"
    return
  fi
  if [ -n "$root" ] && [ ! -f "$root/etc/passwd" ]; then
    note "$root/etc/passwd does not exist: not making the 'cairn' user; make it on the target system (useradd --system --user-group --home-dir $CP_HOME --no-create-home --shell /usr/sbin/nologin cairn)"
    return
  fi
  is_root || die "making the 'cairn' user needs root"
  command -v useradd >/dev/null || die "useradd is missing: install the shadow utilities (package 'shadow-utils' or 'passwd')"
  local shell=/usr/sbin/nologin
  if [ ! -x "$root$shell" ] && [ -x "$root/sbin/nologin" ]; then shell=/sbin/nologin; fi
  local args=(--system --home-dir "$CP_HOME" --no-create-home --shell "$shell" --comment "Cairn control plane")
  [ -z "$root" ] || args+=(--root "$root")
  # An existing group 'cairn' (made by hand) becomes the user's group.
  if grep -q '^cairn:' "$root/etc/group" 2>/dev/null; then args+=(--gid cairn); else args+=(--user-group); fi
  useradd "${args[@]}" cairn
  note "made system user and group 'cairn'"
}

# install_dir MODE OWNER:GROUP PATH — creates or fixes PATH (ownership only as root).
install_dir() {
  local path=$root$3
  mkdir -p "$path"
  chmod "$1" "$path"
  if is_root; then chown "$2" "$path"; fi
}

# Writes a shipped config file unless one is there; a different existing file is kept and the
# shipped one goes beside it as FILE.new.
install_config() {
  local src=$1 dest=$root$2 mode=$3 group=$4
  if [ -e "$dest" ]; then
    if cmp -s "$src" "$dest"; then return; fi
    install -m "$mode" "$src" "$dest.new"
    if is_root; then chown "0:$group" "$dest.new"; fi
    note "kept your $2; the shipped default is in $2.new"
    return
  fi
  install -m "$mode" "$src" "$dest"
  if is_root; then chown "0:$group" "$dest"; fi
}

do_install() {
  local bin=${binary:-$here/cairn}
  [ -f "$bin" ] || die "no executable at $bin; give --binary PATH"
  for f in "${UNITS[@]}" agent.json control-plane.env; do
    [ -f "$here/$f" ] || die "$here/$f is missing: run install.sh from the unpacked Cairn folder"
  done

  local upgrade=no
  [ -e "$root/usr/bin/cairn" ] && upgrade=yes

  create_user
  local gid
  gid=$(cairn_gid)
  local cp_group=${gid:-0}

  mkdir -p "$root/usr/bin" "$root/etc/systemd/system"
  # Rename over the old binary: a running process keeps its file, and no one sees half a copy.
  install -m 0755 "$bin" "$root/usr/bin/.cairn.new"
  mv -f "$root/usr/bin/.cairn.new" "$root/usr/bin/cairn"
  for unit in "${UNITS[@]}"; do
    install -m 0644 "$here/$unit" "$root/etc/systemd/system/$unit"
  done

  # Made once; a mode the admin gave it later (say 0750) is kept on upgrades.
  [ -d "$root/etc/cairn" ] || install_dir 0755 0:0 /etc/cairn
  install_config "$here/agent.json" /etc/cairn/agent.json 0640 0
  install_config "$here/control-plane.env" /etc/cairn/control-plane.env 0640 "$cp_group"
  # 0711, not 0700: user cairn must pass through to its own 0700 folder inside.
  install_dir 0711 0:0 /var/lib/cairn
  install_dir 0711 0:0 /var/cache/cairn
  install_dir 0750 0:0 /var/log/cairn
  if [ -n "$gid" ]; then
    install_dir 0700 "$(cairn_uid):$gid" "$CP_HOME"
    install_dir 0700 "$(cairn_uid):$gid" /var/cache/cairn/control-plane
  fi

  if systemd_running; then
    systemctl daemon-reload
    if [ "$start" = yes ]; then
      if [ "$upgrade" = yes ]; then
        # An upgrade restarts what runs and leaves enabled/disabled as the admin set it.
        systemctl try-restart "${UNITS[@]}"
      else
        systemctl enable --now cairn-agent.service
      fi
    fi
  elif [ -z "$root" ]; then
    note "systemd is not running: nothing started; start the agent with: /usr/bin/cairn agent run --config /etc/cairn/agent.json"
  fi

  if [ "$upgrade" = yes ]; then
    note "upgraded Cairn in ${root:-/}: $("$root/usr/bin/cairn" --version 2>/dev/null || echo 'cairn')"
  else
    note "installed Cairn in ${root:-/}"
    note "agent config: /etc/cairn/agent.json; status: systemctl status cairn-agent"
    note "on the control plane host: edit /etc/cairn/control-plane.env, then systemctl enable --now cairn-control-plane (its admin token is then in /var/lib/cairn/control-plane/admin-token)"
  fi
}

do_uninstall() {
  if systemd_running; then
    systemctl disable --now "${UNITS[@]}" 2>/dev/null || true
  fi
  rm -f "$root/usr/bin/cairn"
  for unit in "${UNITS[@]}"; do
    rm -f "$root/etc/systemd/system/$unit"
  done
  if systemd_running; then
    systemctl daemon-reload
    systemctl reset-failed "${UNITS[@]}" 2>/dev/null || true
  fi
  if [ "$purge" = no ]; then
    note "removed Cairn from ${root:-/}; kept /etc/cairn, /var/lib/cairn and /var/log/cairn (--purge deletes them)"
    return
  fi
  rm -rf "$root/etc/cairn" "$root/var/lib/cairn" "$root/var/log/cairn" "$root/var/cache/cairn"
  if [ -n "$(cairn_uid)" ]; then
    local args=()
    [ -z "$root" ] || args+=(--root "$root")
    userdel ${args[@]+"${args[@]}"} cairn || note "could not delete user 'cairn' (still logged in or running?): delete it later with userdel cairn"
  fi
  if [ -n "$(cairn_gid)" ]; then
    local args=()
    [ -z "$root" ] || args+=(--root "$root")
    groupdel ${args[@]+"${args[@]}"} cairn || note "could not delete group 'cairn': delete it later with groupdel cairn"
  fi
  note "removed Cairn, its configuration, state, logs and the 'cairn' user from ${root:-/}"
}

if [ "$mode" = install ]; then do_install; else do_uninstall; fi
