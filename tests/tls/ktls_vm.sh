#!/bin/bash
# Kernel TLS for real. This machine's kernel has no kTLS; Debian's has (tls.ko). Boots the
# rdma tests' qemu guest (tests/rdma/run_vm.sh: Debian's kernel, TCG) with the tls module
# loaded and, from a hook, runs inside it
#   1. tls_tcp_test's TlsTcp cases with ZCRPC_EXPECT_KTLS=1: the kernel must take both
#      ends' send keys, and calls of every size must arrive intact;
#   2. when given, zcrpc-bench's tls rows (zcrpc over plain tcp, over TLS with kTLS, gRPC
#      over TLS), printed with a "BENCH " prefix (figures under emulation: ratios only);
# then ends the guest with the verdict. Exit: 0 pass, 1 fail, 77 skipped as run_vm.sh.
#
# Usage: ktls_vm.sh RUN_VM_SH RDMA_TEST TLS_TCP_TEST [ZCRPC_BENCH [BENCH ARGS...]]
set -u
run_vm=${1:?usage: ktls_vm.sh RUN_VM_SH RDMA_TEST TLS_TCP_TEST [ZCRPC_BENCH [ARGS...]]}
rdma_test=${2:?rdma_test}
tls_tcp_test=${3:?tls_tcp_test}
bench=${4:-}
shift 4 2>/dev/null || shift $#
bench_args="$*"
[ -n "$bench_args" ] || bench_args="--mode tls --transports tcp --sizes 64,1M --wait-modes busy-poll --reps 3 --duration 0.3 --details"

hook=$(mktemp /tmp/zcrpc-ktls-hook.XXXXXX)
trap 'rm -f "$hook"' EXIT
cat > "$hook" <<HOOK
echo "=== kTLS at \$(now) s"
grep -q '^tls ' /proc/modules || { echo "the tls module did not load"; verdict fail; }
ZCRPC_EXPECT_KTLS=1 /bin/$(basename "$tls_tcp_test") --gtest_filter='TlsTcp.*:Token.*' || verdict fail
echo "--- /proc/net/tls_stat"; cat /proc/net/tls_stat
if [ -n "$bench" ]; then
  echo "=== zcrpc-bench $bench_args at \$(now) s"
  /bin/$(basename "${bench:-none}") $bench_args > /tmp/bench.out 2>&1; rc=\$?
  sed 's/^/BENCH /' /tmp/bench.out; sed 's/^/BENCH /' /proc/net/tls_stat
  [ \$rc = 0 ] || { echo "zcrpc-bench failed (exit \$rc)"; verdict fail; }
fi
echo "=== kTLS done at \$(now) s"
verdict pass
HOOK
export ZCRPC_TEST_RDMA_GUEST_HOOK=$hook
export ZCRPC_TEST_VM_EXTRA_BINS="$tls_tcp_test${bench:+ $bench}"
export ZCRPC_TEST_VM_EXTRA_MODULES=tls
"$run_vm" "$rdma_test"
