#!/usr/bin/env python3
"""Runs zcrpc-bench (the arguments after the binary) and checks that its JSON holds what
every run must measure: each cell's latencies and, per rpc row, Cap'n Proto's own work and
the bound built on it; over tcp also the frame size the peer saw and the raw ping-pong of
that many bytes. Targets are reported, not asserted: only a failure to measure fails."""
import json
import subprocess
import sys


def main() -> int:
    bench, args = sys.argv[1], sys.argv[2:]
    json_path = args[args.index("--json") + 1]
    done = subprocess.run([bench] + args, check=False)
    if done.returncode != 0:
        print(f"zcrpc-bench exited with {done.returncode}")
        return 1
    with open(json_path, encoding="utf-8") as f:
        report = json.load(f)
    problems = []
    rows = report["rpc"]["summary"]
    if not rows:
        problems.append("rpc summary is empty")
    for row in rows:
        name = f'{row["transport"]} {row["wait_mode"]} {row["payload_bytes"]} B'
        for series in ("reference", "zcrpc", "capnp"):
            if not row[series]["p50_ns"] > 0:
                problems.append(f"{name}: no {series} p50")
        if not row.get("capnp_work_p50_ns", 0) > 0:
            problems.append(f"{name}: Cap'n Proto's own work not measured")
        if not row.get("bound_vs_reference", 0) > 0 or not row.get("zcrpc_vs_bound", 0) > 0:
            problems.append(f"{name}: no bound")
        if row["transport"] == "tcp":
            frame = row.get("frame_bytes", 0)
            # a 32-byte header, the root pointer, the struct, the segment table: 40+ bytes over
            if not row["payload_bytes"] + 40 < frame < row["payload_bytes"] + 4096:
                problems.append(f"{name}: implausible frame size {frame}")
            if not row.get("frame_reference_p50_ns", 0) > 0:
                problems.append(f"{name}: no raw ping-pong of the frame's bytes")
    for p in problems:
        print("check_quick:", p)
    print(f"check_quick: {len(rows)} rpc rows checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
