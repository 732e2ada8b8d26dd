#!/usr/bin/env python3
"""Runs capnpc-zcrpc over a schema it must refuse and checks how it refuses.

usage: expect_refusal.py CAPNP PLUGIN SCHEMA SRC_PREFIX EXPECTED

Passes when `capnp compile` fails, stderr has a line `capnpc-zcrpc: ...EXPECTED...`
(EXPECTED names the file and the interface), and no .zcrpc.h was written.
"""
import pathlib
import subprocess
import sys
import tempfile


def main() -> int:
    capnp, plugin, schema, src_prefix, expected = sys.argv[1:6]
    with tempfile.TemporaryDirectory(prefix="zcrpc-refusal-") as out:
        proc = subprocess.run(
            [capnp, "compile", "--src-prefix=" + src_prefix, "-o" + plugin + ":" + out, schema],
            capture_output=True, text=True, timeout=60)
        written = sorted(str(p) for p in pathlib.Path(out).rglob("*.zcrpc.h"))
    lines = [l for l in proc.stderr.splitlines() if l.startswith("capnpc-zcrpc: ")]
    problems = []
    if proc.returncode == 0:
        problems.append("capnp compile succeeded; expected capnpc-zcrpc to refuse the schema")
    if not any(expected in l for l in lines):
        problems.append("no 'capnpc-zcrpc: ' line on stderr contains %r" % expected)
    if written:
        problems.append("headers were written for a refused schema: %s" % ", ".join(written))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print("--- stderr of capnp compile ---\n" + proc.stderr, file=sys.stderr)
        return 1
    print("refused as expected: " + next(l for l in lines if expected in l))
    return 0


if __name__ == "__main__":
    sys.exit(main())
