// zcrpc-bench — what a run measured, and how it is shown: a terminal table and JSON.
//
// Nothing here measures or estimates: every figure comes from a cell that ran. Figures
// across repetitions are medians of the per-repetition figures; ratios are taken within a
// repetition first (the host may move the two CPUs between repetitions) and then their
// median is reported.
#pragma once

#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cells.h"

namespace zcrpc::bench {

class JsonWriter;

struct RunConfig {
  int clientCpu = 0;
  int serverCpu = 1;
  std::string waitMode;  ///< zcrpc's wait mode; the floor always busy-polls
  unsigned reps = 0;
  double secondsPerCell = 0;
  uint32_t batch = 0;
  std::vector<size_t> sizes;
  bool quick = false;
  std::string endpoint;
  uint64_t ringBytes = 0;
  uint64_t arenaBytes = 0;
  double loadStart = -1;  ///< host 1-minute load average before and after the run
  double loadEnd = -1;
};

/// zcrpc figure / floor figure, from the same repetition.
struct Ratios {
  double p50 = 0;
  double p99 = 0;
  double p999 = 0;
};

/// All cells of one payload size in one repetition.
struct SizeResult {
  size_t payloadBytes = 0;
  Latency floor;
  Latency zcrpc;
  /// A shorter floor run on the other side of the zcrpc cell; if its p50 differs from
  /// `floor`'s, the CPUs moved during the repetition and `ratio` is less trustworthy.
  Latency floorCheck;
  Ratios ratio;
  /// Cap'n Proto's own build and read of the request and the echo (data field empty), one
  /// thread, no transport (capnpWorkPingPong); floor + this is the least a round trip of
  /// Cap'n Proto messages can take.
  Latency capnpWork;
  double boundVsFloor = 0;  ///< (floor + capnpWork) / floor, p50s of this repetition
  double zcrpcVsBound = 0;  ///< zcrpc / (floor + capnpWork), p50s of this repetition
  Throughput oneWay;
  std::optional<double> memcpyBytesPerSecond;  ///< measured for payloads of 1 MiB and more
  std::optional<double> oneWayVsMemcpy;
};

struct Repetition {
  bool zcrpcFirst = false;  ///< order of the two latency cells (alternates by repetition)
  std::vector<SizeResult> sizes;
};

struct Run {
  RunConfig config;
  std::vector<Repetition> reps;
};

/// Medians over repetitions for one payload size.
struct SizeSummary {
  size_t payloadBytes = 0;
  double floorP50 = 0, floorP99 = 0, floorP999 = 0;
  double zcrpcP50 = 0, zcrpcP99 = 0, zcrpcP999 = 0;
  Ratios ratio;  ///< median of the per-repetition ratios
  double capnpWorkP50 = 0;
  double boundVsFloor = 0;  ///< median of the per-repetition ratios
  double zcrpcVsBound = 0;
  double messagesPerSecond = 0;
  double bytesPerSecond = 0;
  std::optional<double> memcpyBytesPerSecond;
  std::optional<double> oneWayVsMemcpy;
};

enum class Verdict { kPass, kMiss, kNotMeasured };

struct TargetResult {
  std::string name;
  std::string goal;      ///< e.g. "<= 1.20x"
  std::string measured;  ///< formatted, or "not run" (size not in --sizes)
  std::optional<double> value;
  double threshold = 0;
  bool atMost = false;  ///< pass when value <= threshold (else when >=)
  Verdict verdict = Verdict::kNotMeasured;
};

std::vector<SizeSummary> summarize(const Run& run);
std::vector<TargetResult> evaluateTargets(const Run& run, const std::vector<SizeSummary>& summary);

/// The terminal report. `color`: ANSI colours for PASS / MISS.
void printReport(std::FILE* out, const Run& run, bool color);
/// Writes `l` as the JSON object `key` (samples, min, percentiles, max, preemptions).
void writeLatency(JsonWriter& j, std::string_view key, const Latency& l);
/// Appends the run to `j` as one JSON object (the caller places it in the document).
void writeJson(JsonWriter& j, const Run& run);

}  // namespace zcrpc::bench
