#!/bin/busybox sh
# /init of the weir Linux test guest. Runs the fio job at /weir/job.fio (appended to the
# initramfs by the runner), prints fio's JSON and stderr between markers on the console, prints
# fio's exit status, and powers off. A watchdog powers off if fio outlives weir.timeout seconds.
# The markers are parsed by weir-lab (lab/src/serial.rs): keep both in step.
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp

off() {
  sync
  # Under QEMU, ACPI powers off. weir vm has no ACPI, and there `poweroff -f` would halt the
  # CPU for good: the reboot (reboot=k, the i8042 reset line) ends the guest instead.
  if [ -d /sys/firmware/acpi/tables ]; then
    poweroff -f
  fi
  reboot -f
}

param() {
  for word in $(cat /proc/cmdline); do
    case "$word" in "$1="*) echo "${word#*=}"; return ;; esac
  done
  echo "$2"
}

echo "WEIR-GUEST-INIT uptime_s=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
echo "WEIR-GUEST-DISKS $(ls /sys/block | tr '\n' ' ')"

job=/weir/job.fio
if [ ! -f "$job" ]; then
  echo "WEIR-GUEST-ERROR no fio job at $job"
  echo "WEIR-FIO-EXIT=2"
  off
fi

timeout_s=$(param weir.timeout 600)
(
  sleep "$timeout_s"
  echo "WEIR-GUEST-WATCHDOG fio still running after ${timeout_s}s, powering off"
  echo "WEIR-FIO-EXIT=124"
  off
) &

cd /tmp
# --eta=never: the progress line has no newline and would swallow the next marker.
fio --eta=never --output-format=json --output=/tmp/fio.json "$job" 2>/tmp/fio.err
rc=$?
echo
echo "<<<WEIR:FIO-JSON:BEGIN>>>"
cat /tmp/fio.json 2>/dev/null
echo "<<<WEIR:FIO-JSON:END>>>"
echo "<<<WEIR:FIO-STDERR:BEGIN>>>"
cat /tmp/fio.err 2>/dev/null
echo "<<<WEIR:FIO-STDERR:END>>>"
echo "WEIR-FIO-EXIT=$rc"
off
