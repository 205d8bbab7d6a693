#!/bin/bash
# Boots systemd as PID 1 of new PID, mount, UTS and IPC namespaces, on a throw-away overlay of this
# machine's root file system, with the Cairn package installed into it: the units then run under a
# real service manager, with their sandboxing, while this machine's files, package database and
# /tmp stay untouched (every write lands in a tmpfs that goes away with the namespaces). The network
# is shared, so the services' ports are reachable from outside.
#   systemd-root.sh BASE DEB      (run under: unshare --pid --fork --mount --uts --ipc)
set -euo pipefail
base=$1
deb=$2
mount --make-rprivate /
mount -t tmpfs -o size=4g,mode=0755 cairn-systemd-root "$base"
mkdir -p "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
r=$base/root
mount -t proc proc "$r/proc"
# /sys read-only (as systemd-nspawn gives it): the service manager then leaves devices to the host
# (no udev) and still manages its cgroups, which stay writable below.
mount --rbind /sys "$r/sys"
mount -o remount,bind,ro "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs -o mode=0755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
mount -t tmpfs -o mode=1777 tmpfs "$r/var/tmp"
cp "$deb" "$r/root/cairn.deb"
chroot "$r" env DEBIAN_FRONTEND=noninteractive dpkg --install /root/cairn.deb >/dev/null
mkdir -p "$r/oldroot"
cd "$r"
pivot_root . oldroot
umount -l /oldroot
rmdir /oldroot
echo "systemd-root: booting"
export container=cairn-test
exec /lib/systemd/systemd --system --unit=basic.target
