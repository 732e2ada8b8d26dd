#!/bin/bash
# Runs the rdma tests for real: boots Debian's own kernel under qemu (TCG, no network:
# -nic none), loads Soft-RoCE (rdma_rxe), and inside the guest runs
#   1. rdma_test over one rxe device on a dummy interface (198.19.0.1),
#   2. rdma_test with client and server on two rxe devices on the two ends of a veth
#      pair (198.18.0.2 -> 198.18.0.1), so RoCE v2 packets really cross a link,
#   3. rdma_test --bench on both set-ups (zcrpc echo RPC vs raw verbs ping-pong).
# The guest prints everything on its serial console (captured here) and reports its
# verdict through the isa-debug-exit port.
#
# Usage: run_vm.sh path/to/rdma_test
# Exit: 0 pass, 1 fail, 77 skipped (the reason is printed) when qemu, busybox, the RDMA
# user-space packages or the kernel image are missing and cannot be had.
#
# Environment:
#   ZCRPC_TEST_RDMA_KERNEL_ROOT  where `dpkg -x` of Debian's linux-image package lives
#                                (default ~/.cache/zcrpc/rdma-kernel; fetched with
#                                `apt-get download` into it when absent)
#   ZCRPC_TEST_RDMA_GTEST_FILTER gtest filter for both runs (default: all)
#   ZCRPC_TEST_RDMA_BENCH_CALLS  round trips per benchmark (default 5000)
#   ZCRPC_TEST_RDMA_KEEP         keep the work folder (initramfs, console log)
#   ZCRPC_TEST_RDMA_GUEST_HOOK   a shell file sourced in the guest before the runs (debugging,
#                                tests/tls/ktls_vm.sh); it may end the run with `verdict pass|fail`
#   ZCRPC_TEST_VM_EXTRA_BINS     more programs copied to the guest's /bin, with their libraries
#   ZCRPC_TEST_VM_EXTRA_MODULES  more kernel modules loaded (and what they depend on)
set -u
set -o pipefail

TEST_BIN=${1:?usage: run_vm.sh path/to/rdma_test}
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

ARCH_LIB=/usr/lib/x86_64-linux-gnu
[ "$(uname -m)" = x86_64 ] || skip "the VM harness boots an x86_64 Debian kernel; this host is $(uname -m)"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
command -v cpio >/dev/null || skip "cpio not found (apt-get install cpio)"
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 || skip "a static busybox is needed (apt-get install busybox-static)"
IP=$(command -v ip || ls /usr/sbin/ip /sbin/ip 2>/dev/null | head -1)
RDMA_TOOL=$(command -v rdma || ls /usr/sbin/rdma /sbin/rdma 2>/dev/null | head -1)
KMOD=$(command -v kmod || ls /usr/bin/kmod /bin/kmod 2>/dev/null | head -1)
MODPROBE=$(command -v modprobe || ls /usr/sbin/modprobe /sbin/modprobe 2>/dev/null | head -1)
[ -n "$IP" ] && [ -n "$RDMA_TOOL" ] || skip "ip and rdma from iproute2 not found (apt-get install iproute2)"
[ -n "$KMOD" ] && [ -n "$MODPROBE" ] || skip "kmod not found (apt-get install kmod)"
RXE_PROVIDER=$(ls $ARCH_LIB/libibverbs/librxe-rdmav*.so 2>/dev/null | head -1)
[ -n "$RXE_PROVIDER" ] && [ -f /etc/libibverbs.d/rxe.driver ] ||
  skip "the rxe verbs provider is missing (apt-get install ibverbs-providers rdma-core)"
[ -x "$TEST_BIN" ] || fail "test binary $TEST_BIN not built"

# ---- kernel: Debian's own, unpacked (not installed) ----
KROOT=${ZCRPC_TEST_RDMA_KERNEL_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/zcrpc/rdma-kernel}
if ! ls "$KROOT"/boot/vmlinuz-* >/dev/null 2>&1; then
  command -v apt-get >/dev/null && command -v apt-cache >/dev/null ||
    skip "no kernel in $KROOT and no apt-get to fetch one"
  PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$PKG" ] || skip "no kernel in $KROOT and apt-cache does not know linux-image-amd64 (run apt-get update)"
  echo "fetching $PKG into $KROOT"
  mkdir -p "$KROOT.dl" && (cd "$KROOT.dl" && apt-get download "$PKG" >/dev/null 2>&1) ||
    skip "no kernel in $KROOT and 'apt-get download $PKG' failed"
  dpkg -x "$KROOT.dl"/"$PKG"_*.deb "$KROOT" || skip "dpkg -x of $PKG failed"
  rm -rf "$KROOT.dl"
fi
VMLINUZ=$(ls "$KROOT"/boot/vmlinuz-* | sort -V | tail -1)
KVER=${VMLINUZ##*/vmlinuz-}
[ -d "$KROOT/lib/modules/$KVER" ] || skip "no modules for $KVER in $KROOT"
[ -f "$KROOT/lib/modules/$KVER/modules.dep" ] || depmod -b "$KROOT" "$KVER" ||
  skip "depmod -b $KROOT $KVER failed"

WORK=$(mktemp -d /tmp/zcrpc-rdma-vm.XXXXXX)
cleanup() { [ -n "${ZCRPC_TEST_RDMA_KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT
R=$WORK/root
mkdir -p $R/{bin,sbin,dev,proc,sys,tmp,etc/libibverbs.d,modules,lib64,run} $R$ARCH_LIB/libibverbs

# ---- initramfs ----
copy_libs() {  # binaries' shared libraries, by the paths ldd names
  ldd "$@" 2>/dev/null | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | sort -u |
    while read -r lib; do
      mkdir -p "$R$(dirname "$lib")"
      cp -L "$lib" "$R$lib"
      base=$(basename "$lib")
      [ -e "$R$ARCH_LIB/$base" ] || cp -L "$lib" "$R$ARCH_LIB/$base"
    done
}
cp "$BUSYBOX" $R/bin/busybox
for applet in $($BUSYBOX --list); do
  [ -e $R/bin/$applet ] || ln -s busybox $R/bin/$applet
done
rm -f $R/bin/ip $R/bin/modprobe $R/bin/insmod $R/bin/rdma
cp -L "$IP" $R/sbin/ip
cp -L "$RDMA_TOOL" $R/sbin/rdma
cp -L "$KMOD" $R/sbin/kmod
ln -s kmod $R/sbin/insmod
ln -s kmod $R/sbin/modprobe
cp -L "$TEST_BIN" $R/bin/rdma_test
cp -L /etc/libibverbs.d/rxe.driver $R/etc/libibverbs.d/
cp -L "$RXE_PROVIDER" $R$ARCH_LIB/libibverbs/
# More programs for a hook to run (ZCRPC_TEST_VM_EXTRA_BINS: host paths, each to /bin/<name>).
for extra in ${ZCRPC_TEST_VM_EXTRA_BINS:-}; do
  [ -x "$extra" ] || fail "extra program $extra not built"
  cp -L "$extra" $R/bin/
done
copy_libs "$TEST_BIN" "$IP" "$RDMA_TOOL" "$KMOD" "$RXE_PROVIDER" ${ZCRPC_TEST_VM_EXTRA_BINS:-}
for extra in libgcc_s.so.1; do  # dlopen'ed (pthread_exit), not listed by ldd
  f=$(ls /lib/x86_64-linux-gnu/$extra $ARCH_LIB/$extra 2>/dev/null | head -1)
  [ -n "$f" ] && cp -L "$f" $R$ARCH_LIB/
done

# Modules in load order, each after what it depends on.
# ZCRPC_TEST_VM_EXTRA_MODULES: more, for a hook (e.g. tls, kernel TLS).
MODS="crc32_generic udp_tunnel ip6_udp_tunnel ib_core ib_uverbs rdma_rxe configfs ib_cm iw_cm rdma_cm rdma_ucm dummy veth ${ZCRPC_TEST_VM_EXTRA_MODULES:-}"
: > $R/modules/order
for m in $MODS; do
  "$MODPROBE" -d "$KROOT" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1=="insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  cp "$ko" $R/modules/
  echo "$(basename "$ko")" >> $R/modules/order
done
grep -q rdma_rxe $R/modules/order || skip "rdma_rxe.ko not found in the $KVER modules"

cat > $R/init <<'EOF'
#!/bin/busybox sh
export PATH=/sbin:/bin
export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /dev/infiniband
exec </dev/console >/dev/console 2>&1
verdict() {  # isa-debug-exit: qemu exits with (v << 1) | 1
  echo "ZCRPC_TEST_VM_VERDICT $1"
  # The serial console drains after echo returns; writing the port at once ends qemu and
  # could cut the verdict line off the log the host reads (seen on a loaded host).
  sleep 1
  case $1 in pass) v='\020';; *) v='\021';; esac
  printf "$v" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
  sleep 5; echo o > /proc/sysrq-trigger
}
ip() { /sbin/ip "$@"; }
now() { cut -d' ' -f1 /proc/uptime; }
echo "guest up at $(now) s; loading modules"
for m in $(cat /modules/order); do
  /sbin/insmod /modules/$m 2>&1 | grep -v "File exists" || true
done
grep -q rdma_rxe /proc/modules || { echo "rdma_rxe did not load"; verdict fail; }
echo "modules loaded at $(now) s"
ip link set lo up
for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done
for f in /proc/sys/net/ipv4/conf/*/accept_local; do echo 1 > $f; done

# 1. one rxe device on a dummy interface
ip link add dum0 mtu 9000 type dummy
ip addr add 198.19.0.1/24 dev dum0
ip link set dum0 up
rdma link add rxe0 type rxe netdev dum0 || { echo "rdma link add rxe0 failed"; verdict fail; }

# 2. two rxe devices on the ends of a veth pair; locally generated traffic for the other
#    end leaves by its own veth (rules on the output interface rxe and rdma_cm set),
#    arrives on the other, and is accepted although its source address is local.
ip link add veth0 mtu 9000 type veth peer name veth1 mtu 9000
ip addr add 198.18.0.1/24 dev veth0
ip addr add 198.18.0.2/24 dev veth1
ip link set veth0 up; ip link set veth1 up
for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done
for f in /proc/sys/net/ipv4/conf/*/accept_local; do echo 1 > $f; done
ip rule add pref 10 oif veth0 lookup 100
ip rule add pref 11 oif veth1 lookup 101
ip route add 198.18.0.2 dev veth0 src 198.18.0.1 table 100
ip route add 198.18.0.1 dev veth1 src 198.18.0.2 table 101
ip rule del pref 0 lookup local
ip rule add pref 100 lookup local
rdma link add rxev0 type rxe netdev veth0 || { echo "rdma link add rxev0 failed"; verdict fail; }
rdma link add rxev1 type rxe netdev veth1 || { echo "rdma link add rxev1 failed"; verdict fail; }
rdma link show
ulimit -l unlimited
[ -f /hook.sh ] && . /hook.sh

FILTER=${ZCRPC_TEST_FILTER:-*}
CALLS=${ZCRPC_TEST_CALLS:-5000}
status=pass
echo "=== run 1: one rxe device (rxe0 on dum0, 198.19.0.1) at $(now) s"
ZCRPC_TEST_RDMA_ADDR=198.19.0.1 ZCRPC_TEST_RDMA_SERVER_DEVICE=rxe0 ZCRPC_TEST_RDMA_CLIENT_DEVICE=rxe0 \
  /bin/rdma_test --gtest_filter="$FILTER" || status=fail
echo "=== run 2: across a veth pair (client rxev1 198.18.0.2 -> server rxev0 198.18.0.1) at $(now) s"
before=$(cat /sys/class/net/veth1/statistics/tx_packets)
ZCRPC_TEST_RDMA_ADDR=198.18.0.1 ZCRPC_TEST_RDMA_SERVER_DEVICE=rxev0 ZCRPC_TEST_RDMA_CLIENT_DEVICE=rxev1 \
  ZCRPC_TEST_RDMA_CLIENT_ADDR=198.18.0.2 /bin/rdma_test --gtest_filter="$FILTER" || status=fail
after=$(cat /sys/class/net/veth1/statistics/tx_packets)
echo "veth1 sent $((after - before)) packets, veth0 received $(cat /sys/class/net/veth0/statistics/rx_packets) in all"
[ $((after - before)) -gt 100 ] || { echo "run 2 did not cross the veth link"; status=fail; }
echo "=== bench 1: one rxe device at $(now) s"
ZCRPC_TEST_RDMA_ADDR=198.19.0.1 /bin/rdma_test --bench $CALLS || status=fail
echo "=== bench 2: across the veth pair at $(now) s"
ZCRPC_TEST_RDMA_ADDR=198.18.0.1 ZCRPC_TEST_RDMA_SERVER_DEVICE=rxev0 ZCRPC_TEST_RDMA_CLIENT_DEVICE=rxev1 \
  ZCRPC_TEST_RDMA_CLIENT_ADDR=198.18.0.2 /bin/rdma_test --bench $CALLS || status=fail
echo "=== done at $(now) s"
verdict $status
EOF
chmod +x $R/init
# A hook: a host file sourced by /init after the network set-up (a debugging aid, and how
# tests/tls/ktls_vm.sh runs its own programs; it may end the run with `verdict`).
[ -n "${ZCRPC_TEST_RDMA_GUEST_HOOK:-}" ] && cp "$ZCRPC_TEST_RDMA_GUEST_HOOK" $R/hook.sh

(cd $R && find . | cpio -o -H newc 2>/dev/null | gzip -1) > $WORK/initrd.gz || fail "building the initramfs failed"
echo "initramfs: $(du -h $WORK/initrd.gz | cut -f1), kernel $KVER"

# ---- boot ----
# The guest runs emulated on the host's cores: a quiet host boots, tests and benchmarks in
# 40-90 s, but a host busy compiling took 280 s once (the benchmark part, after every test
# had passed). The limit is there to end a hung guest, not to time a slow one.
LOG=$WORK/console.log
APPEND="console=ttyS0 panic=-1 quiet ZCRPC_TEST_FILTER=${ZCRPC_TEST_RDMA_GTEST_FILTER:-*} ZCRPC_TEST_CALLS=${ZCRPC_TEST_RDMA_BENCH_CALLS:-5000}"
timeout --kill-after=10 540 qemu-system-x86_64 -m 2048 -smp 2 -nographic -nic none -no-reboot \
  -kernel "$VMLINUZ" -initrd $WORK/initrd.gz -append "$APPEND" \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 </dev/null 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
echo "qemu exit status $rc"
echo "--- figures"
grep "^BENCH" "$LOG" || true
if grep -q "ZCRPC_TEST_VM_VERDICT pass" "$LOG" && [ "$rc" = 33 ]; then
  echo "rdma VM run: PASS"
  exit 0
fi
[ "$rc" = 124 ] || [ "$rc" = 137 ] && fail "the guest ran past the time limit"
fail "rdma VM run failed (qemu status $rc)"
