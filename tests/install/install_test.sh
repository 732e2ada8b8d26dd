#!/bin/bash
# install_test.sh SOURCE_ROOT BUILD_ROOT MODE
#   MODE install:    `meson install --destdir` the build, then compile and run a program
#                    against the installed headers and library found through pkg-config.
#   MODE subproject: a separate meson project that uses zcrpc as a subproject through
#                    dependency('zcrpc') (meson.override_dependency), built from scratch.
set -euo pipefail
src=$1 build=$2 mode=$3
work=$(mktemp -d -t zcrpc-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "install_test ($mode): $*" >&2; exit 1; }

case $mode in
install)
  meson install -C "$build" --destdir "$work/root" --no-rebuild --quiet >"$work/install.log" 2>&1 ||
    { cat "$work/install.log" >&2; fail "meson install failed"; }
  pc=$(find "$work/root" -name zcrpc.pc -print -quit)
  [[ -n $pc ]] || fail "no zcrpc.pc installed"
  lib=$(find "$work/root" -name 'libzcrpc.so*' -print -quit)
  [[ -n $lib ]] || fail "no libzcrpc.so installed"
  for h in rpc.h transport.h message.h frame.h shm.h tcp.h loopback.h config.h context.h; do
    [[ -n $(find "$work/root" -path "*/include/zcrpc/$h" -print -quit) ]] || fail "header zcrpc/$h not installed"
  done
  [[ -n $(find "$work/root" -path '*/bin/capnpc-zcrpc' -print -quit) ]] || fail "capnpc-zcrpc not installed"
  export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR="$work/root"
  flags=$(pkg-config --cflags --libs zcrpc) || fail "pkg-config cannot resolve zcrpc"
  # shellcheck disable=SC2086
  g++ -std=c++20 -Wall -Werror "$src/tests/install/consumer.cc" -o "$work/consumer" $flags ||
    fail "a program does not build against the installed zcrpc (flags: $flags)"
  LD_LIBRARY_PATH=$(dirname "$lib") "$work/consumer" || fail "the consumer failed"
  ;;
subproject)
  mkdir -p "$work/consumer/subprojects"
  ln -s "$src" "$work/consumer/subprojects/zcrpc"
  cp "$src/tests/install/consumer.cc" "$work/consumer/"
  cat >"$work/consumer/meson.build" <<'MESON'
project('zcrpc-consumer', 'cpp', default_options: ['cpp_std=c++20', 'buildtype=release'])
subproject('zcrpc', default_options: ['tests=false', 'benchmarks=false', 'rdma=disabled', 'fuzz=disabled'])
executable('consumer', 'consumer.cc', dependencies: dependency('zcrpc'))
MESON
  (cd "$work/consumer" && meson setup build >"$work/setup.log" 2>&1) ||
    { tail -30 "$work/setup.log" >&2; fail "meson setup of a project using zcrpc as a subproject failed"; }
  ninja -C "$work/consumer/build" consumer >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log" >&2; fail "building against the zcrpc subproject failed"; }
  "$work/consumer/build/consumer" || fail "the consumer failed"
  ;;
*) fail "unknown mode" ;;
esac
echo "install_test ($mode): ok"
