#!/usr/bin/env python3
"""Runs zcrpc-bench (the arguments after the binary) and checks that its JSON holds what
every run must measure: in each row, every series that ran has its figures (the baselines,
zcrpc, Cap'n Proto's own work, the bound built on it, the rates; over tcp the frame size
the peer saw; in open-loop rows the CPU time per call of both processes), every rival either has figures or is listed as missing with a reason, and
the summary answers for each transport and wait mode. The stream and callback rows (--mode
stream or all) must be there, their tables printed in the summary, and their ratios (the
issue's targets) measured: finite and above zero, gRPC's unless it is listed as missing (a
ThreadSanitizer build has no gRPC). Targets are reported, not asserted: only a failure to
measure fails."""
import json
import math
import subprocess
import sys

NEEDED = {"rpc": ["zcrpc", "capnp-work", "bound", "zcrpc-pipelined"],
          "standard": ["capnp", "zcrpc-capnp", "zcrpc-capnp-client", "zcrpc"],
          "tls": ["zcrpc", "zcrpc-tls"],
          "messages": ["floor", "zcrpc", "floor-check", "capnp-work", "bound", "zcrpc-one-way"],
          "open-loop": ["zcrpc"],
          "stream": ["zcrpc-one-way", "zcrpc-stream"],
          "callback": ["zcrpc-echo", "zcrpc-callback"]}


def check_streams(report, stdout, missing):
    """The stream and callback rows, their summary tables and their targets' ratios."""
    problems = []
    sections = {r["section"] for r in report["rows"]}
    for section, title in (("stream", "Streams, messages/s"), ("callback", "Callbacks over shm")):
        if section not in sections:
            problems.append(f"no {section} rows")
        elif title not in stdout:
            problems.append(f"the summary has no {section} table ('{title}')")
    for row in report["rows"]:
        if row["section"] == "stream" and row["transport"] == "tcp" and "grpc-stream" not in missing \
                and "grpc-stream" not in {s["id"] for s in row["series"]}:
            problems.append(f'stream tcp {row["payload_bytes"]} B: no gRPC client streaming, and it is not listed as missing')
    ratios = [t for t in report["targets"] if t["name"].startswith(("stream ", "callback "))]
    if not ratios:
        problems.append("no stream or callback targets")
    for t in ratios:
        if "grpc-stream" in t["name"] and "grpc-stream" in missing:
            continue
        value = t["measured"]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            problems.append(f'target {t["name"]}: ratio {value!r}')
    return problems


def main() -> int:
    bench, args = sys.argv[1], sys.argv[2:]
    json_path = args[args.index("--json") + 1]
    run = subprocess.run([bench] + args, check=False, stdout=subprocess.PIPE, text=True)
    print(run.stdout, end="")
    if run.returncode != 0:
        print("check_quick: zcrpc-bench failed")
        return 1
    with open(json_path, encoding="utf-8") as f:
        report = json.load(f)
    missing = {m["series"]: m["why"] for m in report["missing"]}
    problems = [] if report["rows"] else ["no rows"]
    for row in report["rows"]:
        name = f'{row["section"]} {row["transport"]} {row["wait_mode"]} {row["payload_bytes"]} B'
        series = {s["id"]: s for s in row["series"]}
        needed = NEEDED[row["section"]] + (["memcpy"] if row["section"] == "messages" and row["payload_bytes"] >= 1 << 20 else [])
        if row["section"] == "rpc":
            needed += ["floor"] if row["transport"] == "shm" else ["raw-tcp", "raw-tcp-frame"]
        if row["section"] == "open-loop":
            name += f' {row["interval_ns"]} ns apart'
            needed += ["floor", "unix-socket"] if row["transport"] == "shm" else ["raw-tcp"]
            for sid in needed:  # CPU time per call of both processes, counted
                m = series.get(sid, {}).get("median", {})
                if not (m.get("client_cpu_ns_per_call") and m.get("server_cpu_ns_per_call")):
                    problems.append(f"{name}: no CPU time per call for {sid}")
        for s in row["series"]:
            median = s["median"].get("p50") or s["median"].get("per_second")
            if s["role"] == "rival" and not median and s["id"] not in missing:
                problems.append(f"{name}: rival {s['id']} has no figures and is not listed as missing")
        for sid in needed:
            s = series.get(sid)
            if not s or not (s["median"].get("p50") or s["median"].get("per_second")):
                problems.append(f"{name}: no figures for {sid}")
        if row["section"] == "rpc" and row["transport"] == "tcp":
            frame = series["zcrpc"]["reps"][0].get("peer_value", 0)
            # a 32-byte header, the root pointer, the struct, the segment table: 40+ bytes over
            if not row["payload_bytes"] + 40 < frame < row["payload_bytes"] + 4096:
                problems.append(f"{name}: implausible frame size {frame}")
    if args[args.index("--mode") + 1] in ("stream", "all"):
        problems += check_streams(report, run.stdout, missing)
    config = report["config"]
    if "rpc" in {r["section"] for r in report["rows"]} and \
            len(report["summary"]) != len(config["transports"]) * len(config["wait_modes"]):
        problems.append(f"summary has {len(report['summary'])} lines")
    for p in problems:
        print("check_quick:", p)
    for sid, why in missing.items():
        print(f"check_quick: missing {sid}: {why}")
    print(f"check_quick: {len(report['rows'])} rows checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
