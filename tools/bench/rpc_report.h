// zcrpc-bench — what RPC mode measured, and how it is shown: terminal tables, targets, JSON.
//
// As in messages mode, nothing here measures or estimates. Figures across repetitions are
// medians of the per-repetition figures; ratios are taken within a repetition first, then
// their median is reported.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "report.h"
#include "rpc_mode.h"

namespace zcrpc::bench {

class JsonWriter;

/// A latency's three percentiles, each the median over repetitions, in nanoseconds.
struct Percentiles {
  double p50 = 0, p99 = 0, p999 = 0;
};

/// Medians over repetitions for one cell of the matrix.
struct RpcSummary {
  Transport transport = Transport::kShm;
  WaitMode waitMode = WaitMode::kBusyPoll;
  size_t payloadBytes = 0;
  Percentiles reference, zcrpc, capnp;
  Ratios zcrpcVsReference;
  Ratios capnpVsZcrpc;
  double callsPerSecond = 0;           ///< pipelined, whole run
  double stallFreeCallsPerSecond = 0;  ///< pipelined, less stalls (see Pipelined)
  double stalledFraction = 0;          ///< pipelined: share of time stalled by other load
  double bytesPerSecond = 0;
  uint32_t window = 0;  ///< pipelined window used (capped over shm, see rpc_mode.cc)
  uint64_t samplesReference = 0, samplesZcrpc = 0, samplesCapnp = 0;  ///< smallest over reps
  uint64_t mostPreemptions = 0;  ///< the most any one of the cell's sub-cells saw
  /// Cap'n Proto's own work per round trip (see RpcCell::capnpWork), and the medians of the
  /// per-repetition ratios of the bound (what moves the bytes + it) to the reference and of
  /// zcrpc to the bound.
  double capnpWorkP50 = 0, capnpWorkP99 = 0;
  double boundVsReference = 0, zcrpcVsBound = 0;
  /// tcp rows: zcrpc's request frame bytes (largest over repetitions), the raw ping-pong of
  /// that many bytes (median p50) and its per-repetition ratio to the reference (median).
  uint64_t frameBytes = 0;
  double frameReferenceP50 = 0, frameVsReference = 0;
  double capnpVsReference = 0;  ///< median of Cap'n Proto RPC p50 / reference p50
};

std::vector<RpcSummary> summarize(const RpcRun& run);
std::vector<TargetResult> evaluateTargets(const RpcRun& run,
                                          const std::vector<RpcSummary>& summary);

/// The terminal report: round-trip table, ratios and throughput table, targets.
void printReport(std::FILE* out, const RpcRun& run, bool color);
/// Appends the run to `j` as one JSON object, named `key` inside an object.
void writeJson(JsonWriter& j, const RpcRun& run, std::string_view key = {});

/// "PASS" / "MISS" / "n/a", coloured when `color`.
std::string verdictText(Verdict v, bool color);

}  // namespace zcrpc::bench
