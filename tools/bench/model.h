// zcrpc-bench — what a run measured: rows of series, one Figure per series and repetition,
// and the figures derived from them. Everything the report prints comes from here.
//
// A row is one (section, transport, wait mode, payload size); its first series is its
// baseline (the floor ring or raw TCP). Figures across repetitions are medians of the
// per-repetition figures; a ratio is taken within each repetition first (the host may move
// the two CPUs between repetitions) and then its median is reported. Nothing is estimated.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "system.h"

namespace zcrpc::bench {

/// One repetition of a row: figures[i] belongs to Row::series[i]; a figure with nothing
/// in it was not measured (a rival that failed, a part measured only at some sizes).
struct RowRep {
  std::vector<Figure> figures;
  std::string order;  ///< the series' ids in the order their cells ran
};

struct Row {
  std::string section;  ///< "echo" (RPC round trips), "messages" (raw messages), ...
  Transport transport = Transport::kShm;
  WaitMode waitMode = WaitMode::kBusyPoll;
  size_t payloadBytes = 0;
  int64_t intervalNs = 0;          ///< open-loop rows: a call every intervalNs
  std::vector<SeriesInfo> series;  ///< series[0] is the baseline
  std::vector<RowRep> reps;

  /// Index of the series `id`, or npos.
  size_t find(std::string_view id) const;
  static constexpr size_t npos = SIZE_MAX;
  std::string name() const;  ///< "echo shm busy-poll 64 B", "open-loop shm blocking 64 B 10 k/s"
};

/// A series that could not be measured in this run, and why.
struct Missing {
  std::string series;
  std::string why;
};

struct Table {
  Settings settings;
  double loadStart = -1, loadEnd = -1;  ///< host 1-minute load average around the run
  std::vector<Row> rows;
  std::vector<Missing> missing;
};

enum class Stat {
  kP50,
  kP99,
  kP999,
  kPerSecond,
  kStallFree,
  kStalled,
  kBytesPerSecond,
  kClientCpu,  ///< open loop: CPU ns per call of the measuring process
  kServerCpu,  ///< open loop: CPU ns per call of the serving process
  kAchieved,   ///< open loop: calls per second achieved
};
std::string_view statName(Stat s) noexcept;  ///< "p50", ..., "per_second"
double statOf(const Figure& f, Stat s) noexcept;
/// Whether a cell filled the figure (a latency or a rate).
inline bool measured(const Figure& f) { return f.latency.p50Ns > 0 || f.rate.count > 0; }

/// Median over the repetitions that measured series `i` (nullopt if none did).
std::optional<double> medianOf(const Row& row, size_t i, Stat s);
/// Median over repetitions of series a's stat / series b's, each repetition first.
std::optional<double> medianRatio(const Row& row, size_t a, size_t b, Stat s);

enum class Verdict { kPass, kMiss, kNotMeasured };

/// A goal the report checks (never asserts): series / versus (or series alone when versus
/// is empty) in rows of `section` that match transport and size (nullopt: any).
struct Target {
  std::string section;
  std::optional<Transport> transport;
  std::optional<size_t> payloadBytes;
  std::string series, versus;
  Stat stat = Stat::kP50;
  bool atMost = true;  ///< pass when value <= threshold (else >=)
  double threshold = 0;
  std::optional<WaitMode> waitMode = {};     ///< only rows of this wait mode
  std::optional<int64_t> intervalNs = {};    ///< open loop: only rows of this pace
};

struct TargetResult {
  std::string name, goal, measured;
  std::optional<double> value;
  Verdict verdict = Verdict::kNotMeasured;
  std::string note;  ///< why a goal is out of reach for any transport, when it is
};

/// The project's targets (issue figures): zcrpc against the floor, raw TCP and the rivals.
std::vector<Target> standardTargets();
/// One result per target and matching row, in the order of `targets`.
std::vector<TargetResult> evaluate(const Table& table, std::span<const Target> targets);

/// Measures everything `s` asks for (driver.cc); progress on stderr. Throws BenchError
/// naming the cell when zcrpc or a baseline fails; a rival that fails is dropped and listed
/// as missing.
Table runBench(const Settings& s);

/// "329 ns", "7.3 us", "1.25 ms"; "2.45 M", "840.2 k"; "3.14x".
std::string formatNs(double ns);
std::string formatRate(double perSecond);
std::string formatRatio(double ratio);
/// "10k calls/s" for an interval of 100 us.
std::string formatPace(int64_t intervalNs);

}  // namespace zcrpc::bench
