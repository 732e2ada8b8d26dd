#!/bin/bash
# install_test.sh SOURCE_ROOT BUILD_ROOT MODE
#   MODE install:    install the build, then compile and run programs against the
#                    installed headers and library found through pkg-config: as root
#                    with the prefix /usr/local, as the README says (`meson install`,
#                    `ldconfig`, no PKG_CONFIG_PATH, run path or LD_LIBRARY_PATH) in a
#                    mount namespace of its own over overlays of /usr/local and /etc;
#                    otherwise `meson install --destdir`, with LD_LIBRARY_PATH. Programs:
#                    consumer.cc (messages only) and service_consumer.cc, whose schema
#                    greeter.capnp has an interface, generated with the installed plugin by
#                    the README's `capnp compile -oc++ -ozcrpc` line, and which uses the
#                    installed admin stub; and the quickstart (examples/quickstart), built
#                    by the commands docs/quickstart.md gives, then run.
#   MODE subproject: a separate meson project that uses zcrpc as a subproject through
#                    dependency('zcrpc') (meson.override_dependency), built from scratch,
#                    generating greeter.capnp's stubs with zcrpc-schemas.meson.example.
set -euo pipefail
src=$1 build=$2 mode=$3
work=$(mktemp -d -t zcrpc-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() { echo "install_test ($mode): $*" >&2; exit 1; }

# consumers ROOT: builds and runs, against the zcrpc installed under ROOT ("" for /), the
# programs a user of an install builds: consumer.cc, service_consumer.cc (a schema with an
# interface, the installed plugin, the installed admin stub) and the quickstart by
# docs/quickstart.md's commands. $run prefixes every run of a built program.
consumers() {
  local root=$1
  for h in rpc.h transport.h message.h frame.h shm.h tcp.h loopback.h config.h context.h \
           admin.capnp admin_stats.capnp admin.capnp.h admin_stats.capnp.h admin.capnp.zcrpc.h \
           health.h health.capnp health_types.capnp health.capnp.zcrpc.h health_types.capnp.h; do
    [[ -f $root$prefix/include/zcrpc/$h ]] || fail "header zcrpc/$h not installed in $prefix/include"
  done
  plugin=$root$prefix/bin/capnpc-zcrpc
  [[ -x $plugin ]] || fail "capnpc-zcrpc not installed in $prefix/bin"
  lib=$(find "$root$prefix" -name 'libzcrpc.so' -print -quit)
  [[ -n $lib ]] || fail "no libzcrpc.so installed"
  # Installed tools that link libzcrpc carry the library's directory as their run path,
  # unless it is one the loader searches anyway (prefix /usr).
  libdir=$(dirname "${lib#"$root"}")
  info=$root$prefix/bin/zcrpc-info
  [[ -x $info ]] || fail "zcrpc-info not installed"
  if [[ $libdir != /usr/lib* ]]; then
    readelf -d "$info" | grep -q "R.*PATH.*\[$libdir\]" ||
      fail "zcrpc-info has no run path $libdir: $(readelf -d "$info" | grep PATH)"
  fi
  flags=$(pkg-config --cflags --libs zcrpc) || fail "pkg-config cannot resolve zcrpc"
  # shellcheck disable=SC2086
  g++ -std=c++20 -Wall -Werror "$src/tests/install/consumer.cc" -o "$work/consumer" $flags ||
    fail "a program does not build against the installed zcrpc (flags: $flags)"
  $run "$work/consumer" || fail "the consumer failed"

  # A schema with an interface, through the installed plugin found on PATH as `-ozcrpc`.
  mkdir "$work/app"
  cp "$src/tests/install/greeter.capnp" "$src/tests/install/service_consumer.cc" "$work/app/"
  (cd "$work/app" && PATH=$(dirname "$plugin"):$PATH capnp compile -oc++ -ozcrpc greeter.capnp) ||
    fail "capnp compile -oc++ -ozcrpc greeter.capnp failed with the installed capnpc-zcrpc"
  [[ -f $work/app/greeter.capnp.zcrpc.h ]] || fail "the plugin wrote no greeter.capnp.zcrpc.h"
  # shellcheck disable=SC2086
  (cd "$work/app" && g++ -std=c++20 -Wall -Werror service_consumer.cc greeter.capnp.c++ \
      -o service_consumer $flags -pthread) ||
    fail "a program with an interface schema does not build against the installed zcrpc (flags: $flags)"
  $run "$work/app/service_consumer" || fail "the service consumer failed"

  # The quickstart, built by docs/quickstart.md's own commands, then served and called.
  mkdir "$work/quickstart"
  cp "$src/examples/quickstart/"{inventory.capnp,server.cc,client.cc} "$work/quickstart/"
  sed -n '/<!-- quickstart-build:begin -->/,/<!-- quickstart-build:end -->/p' "$src/docs/quickstart.md" |
    grep -v -e '^<!--' -e '^```' >"$work/quickstart/build.sh"
  grep -q 'capnp compile' "$work/quickstart/build.sh" || fail "docs/quickstart.md has no build commands"
  (cd "$work/quickstart" && PATH=$(dirname "$plugin"):$PATH bash -eu build.sh) ||
    fail "the quickstart does not build with docs/quickstart.md's commands: $(cat "$work/quickstart/build.sh")"
  $run python3 "$src/examples/run_example.py" \
    "$work/quickstart/quickstart_server" "$work/quickstart/quickstart_client" ||
    fail "the quickstart built against the install failed"
}

case $mode in
install)
  # A sanitized libzcrpc needs its sanitizer's runtime loaded first, in a program built with
  # the same -fsanitize: the plain consumers below are what other projects build, so this
  # mode checks the packaging of an ordinary build only (77: meson's SKIP).
  sanitize=$(meson introspect "$build" --buildoptions 2>/dev/null |
             python3 -c 'import json, sys; print(next((o["value"] for o in json.load(sys.stdin) if o["name"] == "b_sanitize"), "none"))' || echo none)
  if [[ $sanitize != none ]]; then
    echo "install_test (install): skipped: this build is sanitized (b_sanitize=$sanitize), its library cannot be loaded by plain programs"
    exit 77
  fi
  prefix=$(meson introspect "$build" --buildoptions |
           python3 -c 'import json, sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"))')
  # As the README says, for real: `meson install` to /usr/local, `ldconfig`, then programs
  # built with `pkg-config --cflags --libs zcrpc` alone (no PKG_CONFIG_PATH, no run path)
  # run without LD_LIBRARY_PATH. Done as root in a mount namespace of its own, where
  # /usr/local and /etc (the loader's cache) are overlays that vanish with it.
  if [[ $prefix == /usr/local && $EUID == 0 ]] && unshare -m true 2>/dev/null; then
    mkdir "$work/overlay"  # removed by this process's trap, once the namespace is gone
    status=0
    unshare -m "$0" "$src" "$build" install-namespace "$work/overlay" || status=$?
    ((status == 3)) || exit $status  # 3: no overlay there; stage it as below instead
  fi
  # Otherwise into a staging directory: pkg-config and the loader are pointed at it.
  meson install -C "$build" --destdir "$work/root" --no-rebuild --quiet >"$work/install.log" 2>&1 ||
    { cat "$work/install.log" >&2; fail "meson install failed"; }
  pc=$(find "$work/root" -name zcrpc.pc -print -quit)
  [[ -n $pc ]] || fail "no zcrpc.pc installed"
  export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR="$work/root"
  lib=$(find "$work/root" -name 'libzcrpc.so' -print -quit)
  [[ -n $lib ]] || fail "no libzcrpc.so installed"
  run="env LD_LIBRARY_PATH=$(dirname "$lib")"
  consumers "$work/root"
  echo "install_test (install): ok (staged in a directory, run with LD_LIBRARY_PATH: not root, no mount namespace or no overlay)"
  exit 0
  ;;
install-namespace)
  # In the private mount namespace made above; $4: where the overlays keep their changes.
  prefix=/usr/local overlay=$4
  for dir in /usr/local /etc; do
    mkdir -p "$overlay$dir/upper" "$overlay$dir/work"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$overlay$dir/upper,workdir=$overlay$dir/work" "$dir" ||
      { echo "install_test (install): cannot mount an overlay on $dir: staging the install instead"; exit 3; }
  done
  meson install -C "$build" --no-rebuild --quiet >"$work/install.log" 2>&1 ||
    { cat "$work/install.log" >&2; fail "meson install failed"; }
  ldconfig || fail "ldconfig failed"
  unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR LD_LIBRARY_PATH
  pkg-config --exists zcrpc ||
    fail "pkg-config does not find zcrpc.pc installed to /usr/local without PKG_CONFIG_PATH"
  run=env
  consumers ""
  readelf -d "$work/app/service_consumer" | grep -q 'R.*PATH' &&
    fail "the service consumer has a run path: it should find libzcrpc through ldconfig's cache"
  "$prefix/bin/zcrpc-info" >/dev/null || fail "the installed zcrpc-info does not run"
  echo "install_test (install): ok (installed to /usr/local in a private mount namespace; ldconfig; no PKG_CONFIG_PATH, run path or LD_LIBRARY_PATH)"
  exit 0
  ;;
subproject)
  mkdir -p "$work/consumer/subprojects"
  ln -s "$src" "$work/consumer/subprojects/zcrpc"
  cp "$src/tests/install/consumer.cc" "$src/tests/install/service_consumer.cc" \
     "$src/tests/install/greeter.capnp" "$work/consumer/"
  {
    cat <<'MESON'
project('zcrpc-consumer', 'cpp', default_options: ['cpp_std=c++20', 'buildtype=release'])
subproject('zcrpc', default_options: ['tests=false', 'benchmarks=false', 'rdma=disabled', 'fuzz=disabled'])
executable('consumer', 'consumer.cc', dependencies: dependency('zcrpc'))
MESON
    sed 's/my_service.capnp/greeter.capnp/' "$src/tools/capnpc-zcrpc/zcrpc-schemas.meson.example"
    echo "executable('service_consumer', 'service_consumer.cc', dependencies: my_schema_dep)"
  } >"$work/consumer/meson.build"
  (cd "$work/consumer" && meson setup build >"$work/setup.log" 2>&1) ||
    { tail -30 "$work/setup.log" >&2; fail "meson setup of a project using zcrpc as a subproject failed"; }
  ninja -C "$work/consumer/build" consumer service_consumer >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log" >&2; fail "building against the zcrpc subproject failed"; }
  "$work/consumer/build/consumer" || fail "the consumer failed"
  "$work/consumer/build/service_consumer" || fail "the service consumer failed"
  ;;
*) fail "unknown mode" ;;
esac
echo "install_test ($mode): ok"
