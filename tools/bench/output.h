// zcrpc-bench — file outputs of a whole run: JSON (--json), CSV (--csv) and a latency plot
// drawn by gnuplot (--plot). The terminal tables are in report.h and rpc_report.h.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "report.h"
#include "rpc_mode.h"

namespace zcrpc::bench {

/// Everything one invocation measured: messages-mode runs (one per wait mode) and the RPC
/// matrix, either of which may be absent.
struct Results {
  std::vector<Run> messages;
  std::optional<RpcRun> rpc;
};

/// {"tool": "zcrpc-bench", "messages": [...], "rpc": {...}} to `path`. Throws BenchError.
void writeJsonFile(const std::string& path, const Results& results);

/// One row per mode x transport x wait mode x size x series (floor, raw-tcp, zcrpc, capnp),
/// medians over repetitions; see the header line. Throws BenchError.
void writeCsvFile(const std::string& path, const Results& results);

/// The gnuplot executable on PATH, or empty when there is none.
std::string findGnuplot();

/// Draws p50 / p99 / p99.9 round-trip latency against payload size, one panel per
/// transport and wait mode (RPC mode) and per messages-mode run, into the PNG `path`, with
/// `gnuplot`. Throws BenchError naming what failed (gnuplot's own messages go to stderr).
void writePlot(const std::string& path, const std::string& gnuplot, const Results& results);

}  // namespace zcrpc::bench
