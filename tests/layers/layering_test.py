#!/usr/bin/env python3
"""The layers of libzcrpc are enforced by the build (src/meson.build): each layer compiles
against an include folder that holds only its own headers and those of the layers below
it. This preprocesses one #include at a time with the flags a layer's sources compile
with (from compile_commands.json) and checks that what may be included is found and that
an include running up a floor, the back edges issue 22 names among them, is not.

  layering_test.py BUILD_DIR
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
import unittest

BUILD = os.path.abspath(sys.argv.pop(1)) if len(sys.argv) > 1 else "build"

# layer -> (a source file of it, headers it must find, headers it must not find)
CASES = {
    "base": ("log.cc", ["zcrpc/error.h"], ["zcrpc/frame.h", "os/os.h", "zcrpc/transport.h"]),
    "os": ("os/os.cc", ["zcrpc/error.h", "os/os.h", "os/spin.h"],
           ["zcrpc/message.h", "transport/options.h", "zcrpc/metrics.h"]),
    "message": ("message/message.cc", ["zcrpc/message.h", "zcrpc/frame.h", "os/os.h"],
                ["zcrpc/transport.h", "transport/lease_queue.h", "zcrpc/rpc.h"]),
    "transport": ("transport/tcp/tcp_send.cc",
                  ["zcrpc/transport.h", "zcrpc/tcp.h", "transport/address.h", "zcrpc/message.h"],
                  ["zcrpc/rpc.h", "rpc/frames.h", "zcrpc/config.h", "zcrpc/context.h",
                   "config/transports.cc", "zcrpc/metrics.h"]),
    # The stats service lived in metrics and included the rpc header: the back edge.
    "metrics": ("metrics/metrics.cc", ["zcrpc/metrics.h"],
                ["zcrpc/rpc.h", "rpc/stats_service.h", "zcrpc/transport.h"]),
    # The balancer lived in rpc and needed context.h while config.h includes rpc.h.
    "rpc": ("rpc/server.cc",
            ["zcrpc/rpc.h", "rpc/frames.h", "zcrpc/metrics.h", "transport/options.h",
             "zcrpc/admin_stats.capnp.h"],
            ["zcrpc/context.h", "zcrpc/config.h", "zcrpc/balancer.h", "config/transports.cc"]),
    "config": ("config/context.cc",
               ["zcrpc/context.h", "zcrpc/balancer.h", "zcrpc/rpc.h", "transport/address.h"],
               ["zcrpc/admin.capnp.zcrpc.h"]),
}


def flags_of(source):
    with open(os.path.join(BUILD, "compile_commands.json")) as f:
        commands = json.load(f)
    for c in commands:
        if c["file"].replace("\\", "/").endswith("src/" + source):
            args = shlex.split(c["command"])
            if args[0] == "ccache":
                args = args[1:]
            keep, skip = [args[0]], False
            for a in args[1:]:
                if skip:
                    skip = False
                    continue
                if a in ("-o", "-MQ", "-MF", "-c"):
                    skip = True
                    continue
                if a == "-MD":
                    continue
                keep.append(a)
            return keep, c["directory"]
    raise AssertionError("no compile command for src/" + source)


def finds(layer, header):
    cmd, cwd = flags_of(CASES[layer][0])
    with tempfile.NamedTemporaryFile("w", suffix=".cc", delete=False) as f:
        f.write('#include "%s"\n' % header)
    try:
        r = subprocess.run(cmd + ["-E", "-o", os.devnull, f.name], cwd=cwd,
                           capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(f.name)
    return r.returncode == 0, r.stderr


class Layering(unittest.TestCase):
    def test_each_layer_finds_its_own_headers_and_those_below(self):
        for layer, (_, allowed, _) in CASES.items():
            for h in allowed:
                ok, err = finds(layer, h)
                self.assertTrue(ok, "%s cannot include %s:\n%s" % (layer, h, err))

    def test_an_include_that_runs_up_a_floor_fails(self):
        for layer, (_, _, forbidden) in CASES.items():
            for h in forbidden:
                ok, _ = finds(layer, h)
                self.assertFalse(ok, "%s can include %s, which is above it" % (layer, h))


if __name__ == "__main__":
    unittest.main(verbosity=2)
