#!/usr/bin/env bash
# make test-kernel: boot Debian 12's Linux 6.1 (package linux-image-amd64)
# in qemu-system-x86_64 with a small initramfs, load every BPF program
# there and run the packet tests (the ./loader/ test binary: the data
# plane's and the decap program's packet cases, ring swaps, flow events).
#
# KVM is used when /dev/kvm is there and the CPU offers virtualisation
# (vmx or svm); otherwise TCG, about 3 minutes on the project's test VM.
# SLUICE_KERNEL_ACCEL=tcg|kvm overrides. The kernel package is fetched
# once with apt-get download and kept in $SLUICE_KERNEL_CACHE.
set -euo pipefail
cd "$(dirname "$0")/../.."

cache="${SLUICE_KERNEL_CACHE:-/var/cache/sluice/test-kernel}"
GO="${GO:-go}"

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: apt-get install $2" >&2; exit 1; }; }
need qemu-system-x86_64 qemu-system-x86
need busybox busybox-static
need cpio cpio
need dpkg-deb dpkg
need apt-get apt

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
	echo "error: apt knows no linux-image-amd64 package: run apt-get update (Debian 12 sources)" >&2
	exit 1
fi
kernel="$cache/$pkg/vmlinuz"
if [ ! -s "$kernel" ]; then
	echo "== fetching $pkg"
	dl=$(mktemp -d)
	trap 'rm -rf "$dl"' EXIT
	(cd "$dl" && apt-get download -q "$pkg" >/dev/null 2>&1) || { echo "error: apt-get download $pkg failed" >&2; exit 1; }
	dpkg-deb -x "$dl"/*.deb "$dl/root"
	mkdir -p "$cache/$pkg"
	cp "$dl"/root/boot/vmlinuz-* "$kernel.tmp"
	mv "$kernel.tmp" "$kernel"
	rm -rf "$dl"
	trap - EXIT
fi

work=$(mktemp -d /tmp/sluice-test-kernel.XXXXXX)
trap 'rm -rf "$work"' EXIT
ir="$work/initramfs"
mkdir -p "$ir/bin" "$ir/proc" "$ir/sys" "$ir/tmp" "$ir/dev"
echo "== building the test binary (static)"
CGO_ENABLED=0 "$GO" test -c -o "$ir/loader.test" ./loader/
cp "$(command -v busybox)" "$ir/bin/busybox"
cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t bpf bpffs /sys/fs/bpf
/bin/busybox mount -t tmpfs tmp /tmp
echo "guest kernel: $(/bin/busybox uname -r) ($(/bin/busybox cat /proc/version))"
cd /tmp
CI=true /loader.test -test.count=1 -test.v 2>&1
echo "SLUICE_TEST_KERNEL rc=$?"
/bin/busybox poweroff -f
EOF
chmod +x "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initrd.gz")

accel="${SLUICE_KERNEL_ACCEL:-}"
if [ -z "$accel" ]; then
	accel=tcg
	if [ -w /dev/kvm ] && grep -qE '^flags.* (vmx|svm)( |$)' /proc/cpuinfo; then accel=kvm; fi
fi
case "$accel" in
kvm) accel_args=(-enable-kvm -cpu host) ;;
tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
*) echo "error: SLUICE_KERNEL_ACCEL=$accel: want tcg or kvm" >&2; exit 1 ;;
esac
echo "== booting $pkg ($accel)"
log="$work/console.log"
timeout 1800 qemu-system-x86_64 "${accel_args[@]}" -m 2048 -smp 2 -nographic -no-reboot \
	-kernel "$kernel" -initrd "$work/initrd.gz" -append "console=ttyS0 panic=-1 quiet" </dev/null | tee "$log" |
	sed -u 's/.*guest kernel:/guest kernel:/' |
	grep --line-buffered -E '^(guest kernel|--- |ok|PASS|FAIL|SLUICE_TEST_KERNEL)|^    [a-z_]+\.go:[0-9]+:' || true
rc=$(sed -n 's/.*SLUICE_TEST_KERNEL rc=\([0-9]*\).*/\1/p' "$log" | tail -1)
if [ -z "$rc" ]; then
	echo "error: the guest did not finish the tests; its console:" >&2
	tail -40 "$log" >&2
	exit 1
fi
if [ "$rc" != 0 ]; then
	echo "error: the packet tests failed on $pkg (rc=$rc)" >&2
	exit 1
fi
echo "== every program loaded and the packet tests passed on $pkg ($(sed -n 's/.*guest kernel: \([^ ]*\).*/\1/p' "$log" | head -1))"
