#!/bin/busybox sh
# /init of the lab VM (the L1 host). Loads KVM (AMD-V) and virtio, runs /lab/cmd.sh with its
# output on the console between markers, writes /results as a tar stream onto the results disk
# (the host unpacks it), prints the command's exit status and powers off.
# The markers are parsed by weir-labvm (labvm/src/machine.rs): keep both in step.
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /results /run
/bin/busybox --install -s /bin
export PATH=/lab/bin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o size=80% tmpfs /tmp
for m in $(cat /lab/modules); do
  insmod "/lib/modules/$m.ko" || echo "WEIR-LAB-ERROR insmod $m failed"
done
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

. /lab/env
echo "WEIR-LAB-BEGIN uptime_s=$(cut -d' ' -f1 /proc/uptime) kvm=$([ -c /dev/kvm ] && echo yes || echo no)"
cd /tmp
# A heartbeat while the command runs: the host tells a frozen VM (QEMU's emulation stopped:
# no heartbeat) from a command that hangs (heartbeats go on) and stops waiting for the former.
( while :; do sleep 5; echo "WEIR-LAB-ALIVE uptime_s=$(cut -d' ' -f1 /proc/uptime)"; done ) &
alive=$!
sh /lab/cmd.sh
rc=$?
kill $alive 2>/dev/null
echo
echo "WEIR-LAB-END"
disk=$(ls /sys/block 2>/dev/null | grep '^vd' | head -n1)
if [ -n "$disk" ]; then
  tar -cf "/dev/$disk" -C /results . || echo "WEIR-LAB-ERROR cannot write the results disk"
else
  echo "WEIR-LAB-ERROR no results disk"
fi
sync
echo "WEIR-LAB-EXIT=$rc"
poweroff -f
