// zcrpc-bench — the one report writer: every output (the summary, the detailed tables, JSON,
// CSV, the plot) is drawn from the same Table (model.h), so they cannot disagree.
#pragma once

#include <cstdio>
#include <string>

#include "model.h"

namespace zcrpc::bench {

/// The first lines: which transport for me. zcrpc's echo p50/p99 over each transport in
/// busy-poll and in the default wait mode beside the best rival of each, zcrpc's p50 at
/// every size, what is missing and why, and the targets met.
void printSummary(std::FILE* out, const Table& table);
/// --details: every row and series with percentiles, ratios to the row's baseline,
/// rates, per-repetition p50s, disturbance notes, and each target with its verdict.
void printDetails(std::FILE* out, const Table& table, bool color);

/// --json (every figure of every repetition), --csv (one line per row and series, medians).
/// Throw BenchError when the file cannot be written.
void writeJson(const std::string& path, const Table& table);
void writeCsv(const std::string& path, const Table& table);

/// Whether gnuplot is on PATH.
bool haveGnuplot();
/// --plot: echo round-trip p50 (solid) and p99 (dashed) against payload size, every system
/// over every transport, one panel per wait mode on one shared scale. Throws BenchError.
void writePlot(const std::string& path, const Table& table);

}  // namespace zcrpc::bench
