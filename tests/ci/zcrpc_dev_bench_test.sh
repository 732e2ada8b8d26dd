#!/bin/bash
# `scripts/zcrpc-dev bench` on a fresh Debian machine installs only what the benchmark
# needs and builds only zcrpc-bench (issue 23 item 2): run in a scratch copy of the
# repository with stand-ins for dpkg-query (nothing installed), apt-get, sudo and meson on
# PATH, which record what they were asked. Checks that apt-get installs the bench's
# packages and none of the tests' (qemu, clang, valgrind, busybox, GoogleTest, rdma-core,
# dnsmasq, gnuplot), that build-bench is configured without tests, rdma and fuzzers, that
# only the zcrpc-bench target is built, and that the bench gets the arguments given.
# Usage: zcrpc_dev_bench_test.sh SOURCE_ROOT
set -euo pipefail
root=${1:?usage: zcrpc_dev_bench_test.sh SOURCE_ROOT}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() { echo "zcrpc_dev_bench_test: $*" >&2; exit 1; }

mkdir -p "$scratch/repo/scripts" "$scratch/bin"
cp "$root/scripts/zcrpc-dev" "$scratch/repo/scripts/"
log=$scratch/log installed=$scratch/installed
touch "$log" "$installed"
stub() { printf '#!/bin/bash\n%s\n' "$2" >"$scratch/bin/$1" && chmod +x "$scratch/bin/$1"; }
# dpkg-query -W -f=... PACKAGE: "installed" once the stand-in apt-get installed it.
stub dpkg-query "grep -qxF \"\${@: -1}\" '$installed' && printf installed; exit 0"
stub apt-get "echo \"apt-get \$*\" >>'$log'
if [[ \" \$* \" == *' install '* ]]; then
  for a in \"\$@\"; do [[ \$a == -* || \$a == install || \$a == *=* ]] || echo \"\$a\" >>'$installed'; done
fi"
stub sudo 'exec "$@"'
stub meson "echo \"meson \$*\" >>'$log'
if [[ \$1 == compile ]]; then
  mkdir -p \"\$3/tools\"
  printf '#!/bin/bash\necho \"zcrpc-bench \$*\" >>%s\n' '$log' >\"\$3/tools/zcrpc-bench\"
  chmod +x \"\$3/tools/zcrpc-bench\"
fi"

PATH="$scratch/bin:$PATH" "$scratch/repo/scripts/zcrpc-dev" bench --quick --details >/dev/null 2>&1 ||
  fail "scripts/zcrpc-dev bench failed: $(cat "$log")"

install_line=$(grep -m1 '^apt-get .* install ' "$log") || fail "nothing was installed: $(cat "$log")"
for p in capnproto libcapnp-dev meson ninja-build libfmt-dev libcli11-dev libucx-dev libgrpc++-dev; do
  grep -qxF "$p" "$installed" || fail "the bench's package $p was not installed: $install_line"
done
for p in qemu-system-x86 busybox-static clang libclang-rt-dev valgrind libgtest-dev libgmock-dev \
         libibverbs-dev librdmacm-dev dnsmasq-base gnuplot-nox nodejs; do
  grep -qxF "$p" "$installed" && fail "zcrpc-dev bench installed $p, which only the tests need"
done
setup=$(grep -m1 '^meson setup ' "$log") || fail "build-bench was not configured: $(cat "$log")"
for option in build-bench -Dtests=false -Drdma=disabled -Dfuzz=disabled; do
  [[ " $setup " == *" $option "* ]] || fail "configured without $option: $setup"
done
compile=$(grep '^meson compile ' "$log") || fail "nothing was built: $(cat "$log")"
[[ $compile == "meson compile -C build-bench zcrpc-bench" ]] ||
  fail "built more than zcrpc-bench: $compile"
grep -qxF "zcrpc-bench --quick --details" "$log" || fail "zcrpc-bench did not run with the arguments given: $(cat "$log")"
echo "ok: zcrpc-dev bench installs $(wc -l <"$installed") packages, none of the tests', and builds only zcrpc-bench"
