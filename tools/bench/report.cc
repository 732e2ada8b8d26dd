#include "report.h"

#include <fmt/color.h>
#include <fmt/format.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace zcrpc::bench {

namespace {

using Json = nlohmann::ordered_json;

constexpr uint64_t kBusyPreemptions = 10;  // in one cell: other load took a pinned CPU

double value(std::optional<double> v) { return v.value_or(0); }
std::string ratioText(std::optional<double> v) { return v ? formatRatio(*v) : "-"; }
bool isRate(const SeriesInfo& s) {
  return s.measure == Measure::kPipelined || s.measure == Measure::kOneWay ||
         s.measure == Measure::kStream;
}
bool isOpenLoop(const SeriesInfo& s) { return s.measure == Measure::kOpenLoop; }
std::string roleName(Role r) {
  return std::array{"reference", "zcrpc", "rival", "part", "derived"}[static_cast<size_t>(r)];
}
std::string waitLabel(WaitMode w) {
  return std::string(waitModeName(w)) + (w == WaitMode::kSpinThenSleep ? " (default)" : "");
}
std::vector<Stat> statsOf(const SeriesInfo& s) {
  if (isOpenLoop(s))
    return {Stat::kP50,       Stat::kP99,       Stat::kP999,
            Stat::kClientCpu, Stat::kServerCpu, Stat::kAchieved};
  if (!isRate(s)) return {Stat::kP50, Stat::kP99, Stat::kP999};
  if (s.measure != Measure::kPipelined) return {Stat::kPerSecond, Stat::kBytesPerSecond};
  return {Stat::kPerSecond, Stat::kStallFree, Stat::kStalled, Stat::kBytesPerSecond};
}

void writeTextFile(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throwErrno("open " + path);
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (!(std::fclose(f) == 0 && ok)) throwErrno("write " + path);
}

const Row* sectionRow(const Table& table, std::string_view section, Transport t, WaitMode w,
                      size_t size) {
  for (const Row& r : table.rows)
    if (r.section == section && r.transport == t && r.waitMode == w && r.payloadBytes == size)
      return &r;
  return nullptr;
}
const Row* rpcRow(const Table& table, Transport t, WaitMode w, size_t size) {
  return sectionRow(table, "rpc", t, w, size);
}

/// The rival with the lowest median p50 in `row`, or npos.
size_t bestRival(const Row& row) {
  size_t best = Row::npos;
  for (size_t i = 0; i < row.series.size(); ++i)
    if (auto p50 = medianOf(row, i, Stat::kP50);
        row.series[i].role == Role::kRival && p50 &&
        (best == Row::npos || *p50 < *medianOf(row, best, Stat::kP50)))
      best = i;
  return best;
}

std::string p50p99(const Row& row, size_t i) {
  if (i == Row::npos) return "-";
  return formatNs(value(medianOf(row, i, Stat::kP50))) + " / " +
         formatNs(value(medianOf(row, i, Stat::kP99)));
}

/// The standard rows' lines of the summary: Cap'n Proto's own client against its own server
/// and against zcrpc's capnp listener, a zcrpc Channel against Cap'n Proto's server, and
/// zcrpc's own transport, at the smallest size, in each wait mode measured.
void printStandard(std::FILE* out, const Table& table, size_t size) {
  constexpr std::string_view kLine = "  {:<4} {:<26} {:>19}   {:>19} {:>6}   {:>19}   {:>19}\n";
  bool header = false;
  for (Transport t : table.settings.transports)
    for (WaitMode w : standardWaitModes(table.settings)) {
      const Row* row = sectionRow(table, "standard", t, w, size);
      if (!row) continue;
      if (!header) {
        fmt::print(out,
                   "\n  Standard Cap'n Proto peers (zcrpc/capnp.h), {} echo p50 / p99. Cap'n "
                   "Proto's side waits in epoll;\n  the wait mode is zcrpc's (its server, its "
                   "Channel); 'x' = zcrpc's listener / EzRpcServer:\n",
                   formatSize(size));
        fmt::print(out, kLine, "over", "zcrpc waits", "EzRpc client+server", "EzRpcClient->zcrpc",
                   "x", "zcrpc->EzRpcServer", "zcrpc native");
        header = true;
      }
      const size_t listener = row->find("zcrpc-capnp"), client = row->find("zcrpc-capnp-client"),
                   native = row->find("zcrpc");
      fmt::print(out, kLine, t == Transport::kShm ? "unix" : "tcp", waitLabel(w), p50p99(*row, 0),
                 p50p99(*row, listener), ratioText(medianRatio(*row, listener, 0, Stat::kP50)),
                 p50p99(*row, client), p50p99(*row, native) + (t == Transport::kShm ? " shm" : " tcp"));
    }
}

size_t smallest(const Settings& s) { return *std::min_element(s.sizes.begin(), s.sizes.end()); }

}  // namespace

/// The open-loop rows in a few lines: what a service with real traffic (asleep when a call
/// comes) gets from each wait mode, against the baselines and a plain unix socket.
static void printOpenLoopSummary(std::FILE* out, const Table& table) {
  std::vector<const Row*> rows;
  for (const Row& r : table.rows)
    if (r.section == "open-loop") rows.push_back(&r);
  if (rows.empty()) return;
  fmt::print(out,
             "\n  Open loop: {} echo calls at a fixed pace, timed from when each was due; p50 / p99, "
             "and CPU per call\n  of the client + the server ('!' after the pace: could not keep "
             "it).\n",
             formatSize(rows.front()->payloadBytes));
  constexpr std::string_view kLine = "  {:<4} {:<26} {:<14} {:<38} {:<46} {}\n";
  fmt::print(out, kLine, "over", "wait mode", "pace", "zcrpc", "baseline (same wait mode)",
             "unix socket (blocking)");
  auto cellText = [](const Row& row, std::string_view id) -> std::string {
    const size_t i = row.find(id);
    if (i == Row::npos || !medianOf(row, i, Stat::kP50)) return "-";
    return fmt::format("{} / {}  {}+{}", formatNs(value(medianOf(row, i, Stat::kP50))),
                       formatNs(value(medianOf(row, i, Stat::kP99))),
                       formatNs(value(medianOf(row, i, Stat::kClientCpu))),
                       formatNs(value(medianOf(row, i, Stat::kServerCpu))));
  };
  for (const Row* row : rows) {
    const size_t z = row->find("zcrpc");
    const bool slow = value(medianOf(*row, z, Stat::kAchieved)) <
                      0.95e9 / static_cast<double>(row->intervalNs);
    fmt::print(out, kLine, transportName(row->transport), waitLabel(row->waitMode),
               formatPace(row->intervalNs) + (slow ? " !" : ""), cellText(*row, "zcrpc"),
               row->series[0].id + " " + cellText(*row, row->series[0].id),
               cellText(*row, "unix-socket"));
  }
}

constexpr std::string_view kStreamTitle =
    "Streams, messages/s and payload GB/s, each a burst sent with its library's \"more is "
    "coming\" hint:\n  zcrpc `-> stream` (Chunks.put, SendHint::kMoreComing, flush timed), zcrpc "
    "one-way (Echo.sink, the same\n  hint, a ping timed) and gRPC client streaming over TCP "
    "(Write with WriteOptions::set_buffer_hint,\n  WritesDone + Finish timed)";
constexpr std::string_view kCallbackTitle =
    "Callbacks over shm, p50 / p99: the server calls the client's Echo (time between "
    "consecutive\n  callbacks at the client: one whole round trip each; 'in place': the Echo "
    "exported with\n  Capability::Requests::kInPlace, read where it arrived, no copy) against an "
    "echo call of the same size";

/// The stream and callback rows in a few lines, then their targets as the issue states them.
static void printStreamSummary(std::FILE* out, const Table& table) {
  std::vector<const Row*> streams, callbacks;
  for (const Row& r : table.rows)
    if (r.section == "stream" || r.section == "callback")
      (r.section == "stream" ? streams : callbacks).push_back(&r);
  if (streams.empty() && callbacks.empty()) return;
  auto rate = [](const Row& row, size_t i) -> std::string {
    if (i == Row::npos || !medianOf(row, i, Stat::kPerSecond)) return "-";
    return fmt::format("{}/s {:.2f} GB/s", formatRate(value(medianOf(row, i, Stat::kPerSecond))),
                       value(medianOf(row, i, Stat::kBytesPerSecond)) / 1e9);
  };
  // A table: its title, then its column heads in the format of its lines.
  auto heading = [out](std::string_view title, std::string_view line, const auto&... heads) {
    fmt::print(out, "\n  {}:\n", title);
    fmt::print(out, fmt::runtime(line), heads...);
  };
  if (!streams.empty()) {
    constexpr std::string_view kLine = "  {:<4} {:<8} {:<26} {:>22} {:>22} {:>8} {:>22} {:>8}\n";
    heading(kStreamTitle, kLine, "over", "size", "wait mode", "zcrpc stream", "zcrpc one-way", "x",
            "gRPC", "x gRPC");
    const bool grpcMissing =
        std::any_of(table.missing.begin(), table.missing.end(),
                    [](const Missing& m) { return m.series == "grpc-stream"; });
    for (const Row* row : streams) {
      const size_t z = row->find("zcrpc-stream"), g = row->find("grpc-stream");
      fmt::print(out, kLine, transportName(row->transport), formatSize(row->payloadBytes),
                 waitLabel(row->waitMode), rate(*row, z), rate(*row, 0),
                 ratioText(medianRatio(*row, z, 0, Stat::kPerSecond)),
                 g != Row::npos                                     ? rate(*row, g)
                 : row->transport == Transport::kTcp && grpcMissing ? "not built"
                                                                    : "-",
                 g == Row::npos ? "-" : ratioText(medianRatio(*row, z, g, Stat::kPerSecond)));
    }
  }
  if (!callbacks.empty()) {
    constexpr std::string_view kLine = "  {:<8} {:<26} {:>19} {:>8} {:>19} {:>8} {:>19}\n";
    heading(kCallbackTitle, kLine, "size", "wait mode", "callback", "x", "in place", "x",
            "echo call");
    for (const Row* row : callbacks) {
      const size_t c = row->find("zcrpc-callback"), p = row->find("zcrpc-callback-in-place");
      fmt::print(out, kLine, formatSize(row->payloadBytes), waitLabel(row->waitMode),
                 p50p99(*row, c), ratioText(medianRatio(*row, c, 0, Stat::kP50)),
                 p == Row::npos ? "-" : p50p99(*row, p),
                 p == Row::npos ? "-" : ratioText(medianRatio(*row, p, 0, Stat::kP50)),
                 p50p99(*row, 0));
    }
  }
  for (const TargetResult& r : evaluate(table, standardTargets()))
    if (r.name.starts_with("stream ") || r.name.starts_with("callback "))
      fmt::print(out, "  {:<62} target {:<9} measured {:<8} {}\n", r.name, r.goal, r.measured,
                 r.verdict == Verdict::kPass   ? "PASS"
                 : r.verdict == Verdict::kMiss ? "MISS"
                                               : "n/a");
}

void printSummary(std::FILE* out, const Table& table) {
  const Settings& s = table.settings;
  const size_t size = smallest(s);
  fmt::print(out, "\nzcrpc-bench: which transport for me? Echo call round trip of {}, p50 / p99\n",
             formatSize(size));
  fmt::print(out,
             "(medians of {} repetitions, {:.2f} s per cell, CPUs {} and {}, load average {:.1f} "
             "at start, {:.1f} at end)\n\n",
             s.reps, s.seconds, s.clientCpu, s.serverCpu, table.loadStart, table.loadEnd);
  constexpr std::string_view kLine = "  {:<4} {:<26} {:>19}   {:<34} {:>19}  {}\n";
  fmt::print(out, kLine, "over", "wait mode", "zcrpc", "fastest rival", "rival", "rival/zcrpc");
  bool any = false;
  for (Transport t : s.transports)
    for (WaitMode w : s.waitModes)
      if (const Row* row = rpcRow(table, t, w, size)) {
        any = true;
        const size_t z = row->find("zcrpc"), best = bestRival(*row);
        fmt::print(out, kLine, transportName(t), waitLabel(w), p50p99(*row, z),
                   best == Row::npos ? "(none measured)" : row->series[best].label,
                   p50p99(*row, best),
                   best == Row::npos ? "-" : ratioText(medianRatio(*row, best, z, Stat::kP50)));
      }
  if (!any) fmt::print(out, "  (no rpc rows: run with --mode rpc or all)\n");
  printStandard(out, table, size);
  fmt::print(out,
             "  rdma: not measured here (tests/rdma/ sets it against raw verbs in a qemu guest)\n");
  if (any && s.sizes.size() > 1) {
    fmt::print(out, "\n  zcrpc p50 by payload size:  ");
    for (size_t b : s.sizes) fmt::print(out, "{:>10}", formatSize(b));
    for (Transport t : s.transports)
      for (WaitMode w : s.waitModes) {
        fmt::print(out, "\n  {:<4} {:<23}", transportName(t), waitModeName(w));
        for (size_t b : s.sizes) {
          const Row* row = rpcRow(table, t, w, b);
          fmt::print(out, "{:>10}",
                     row ? formatNs(value(medianOf(*row, row->find("zcrpc"), Stat::kP50))) : "-");
        }
      }
    fmt::print(out, "\n");
  }
  printOpenLoopSummary(out, table);
  printStreamSummary(out, table);
  fmt::print(out,
             "\n  shm: two processes on one host; tcp: anywhere else (here 127.0.0.1). Rivals with "
             "their own wait\n  ([epoll] in --details) wait the same way in every row.\n");
  for (const Missing& m : table.missing) fmt::print(out, "  Missing: {}: {}\n", m.series, m.why);
  const auto results = evaluate(table, standardTargets());
  auto count = [&](auto pred) { return std::count_if(results.begin(), results.end(), pred); };
  fmt::print(out,
             "  Targets met: {} of {} measured. --details: every row, ratio and target; "
             "--json/--csv: every figure; --plot: a chart.\n\n",
             count([](const TargetResult& r) { return r.verdict == Verdict::kPass; }),
             count([](const TargetResult& r) { return r.verdict != Verdict::kNotMeasured; }));
}

void printDetails(std::FILE* out, const Table& table, bool color) {
  uint64_t mostPreempted = 0;
  fmt::print(out,
             "Details. p50 / p99 / p99.9 of each round trip (steady_clock around each), medians "
             "over repetitions;\n'x' = the series / the row's first series, in each repetition, "
             "then the median. [epoll]: its own wait.\n");
  constexpr std::string_view kLine = "  {:<46}|{:>9} {:>9} {:>9} |{:>8} {:>7} {:>7} |{:>8} {:>7}\n";
  for (const Row& row : table.rows) {
    fmt::print(out, "\n{}{}", row.name(),
               fmt::format(fmt::runtime(kLine), "", "p50", "p99", "p99.9", "x " + row.series[0].id,
                           "p99", "p99.9", "samples", "preempt")
                   .substr(row.name().size()));
    for (size_t i = 0; i < row.series.size(); ++i) {
      const SeriesInfo& si = row.series[i];
      if (!medianOf(row, i, Stat::kP50)) continue;  // never ran in this row
      const std::string label = si.label + (si.ownWait.empty() ? "" : " [" + si.ownWait + "]");
      uint64_t samples = UINT64_MAX, preempted = 0;
      for (const auto& rep : row.reps) {
        samples = std::min(samples, rep.figures[i].latency.samples);
        preempted = std::max(preempted, rep.figures[i].preemptions);
      }
      mostPreempted = std::max(mostPreempted, preempted);
      auto m = [&](Stat st) { return value(medianOf(row, i, st)); };
      if (isRate(si)) {
        std::string extra;
        if (si.measure == Measure::kPipelined)
          extra = fmt::format(", window {}, stall-free {}/s, stalled {:.0f}%",
                              row.reps[0].figures[i].rate.window, formatRate(m(Stat::kStallFree)),
                              100 * m(Stat::kStalled));
        if (size_t c = row.find("memcpy");
            c != Row::npos && c != i && medianOf(row, c, Stat::kPerSecond))
          extra += ", " + ratioText(medianRatio(row, i, c, Stat::kBytesPerSecond)) + " memcpy";
        else if (i && isRate(row.series[0]))
          extra +=
              ", " + ratioText(medianRatio(row, i, 0, Stat::kPerSecond)) + " " + row.series[0].id;
        fmt::print(out, "  {:<46}|{:>9}/s {:.2f} GB/s{} | {}\n", label,
                   formatRate(m(Stat::kPerSecond)), m(Stat::kBytesPerSecond) / 1e9, extra,
                   preempted);
        continue;
      }
      auto x = [&](Stat st) { return i ? ratioText(medianRatio(row, i, 0, st)) : ""; };
      fmt::print(out, fmt::runtime(kLine), label, formatNs(m(Stat::kP50)), formatNs(m(Stat::kP99)),
                 formatNs(m(Stat::kP999)), x(Stat::kP50), x(Stat::kP99), x(Stat::kP999),
                 samples == 0       ? "-"
                 : samples < 10'000 ? std::to_string(samples)
                                    : formatRate(samples),
                 si.role == Role::kDerived ? "" : std::to_string(preempted));
      if (isOpenLoop(si))
        fmt::print(out, "  {:<46}| CPU per call: client {} server {} ({}), {} calls/s achieved\n",
                   "", formatNs(m(Stat::kClientCpu)), formatNs(m(Stat::kServerCpu)),
                   i ? ratioText(medianRatio(row, i, 0, Stat::kServerCpu)) + " " + row.series[0].id
                     : std::string("baseline"),
                   formatRate(m(Stat::kAchieved)));
    }
    if (size_t z = row.find("raw-tcp-frame"); z != Row::npos)
      fmt::print(out, "  zcrpc's request frame: {} bytes\n",
                 row.reps[0].figures[row.find("zcrpc")].peerValue);
    for (size_t r = 0; r < row.reps.size(); ++r) {
      fmt::print(out, "  rep {} [{}]:", r + 1, row.reps[r].order);
      for (size_t i = 0; i < row.series.size(); ++i) {
        const Figure& f = row.reps[r].figures[i];
        if (row.series[i].role != Role::kDerived && f.latency.p50Ns)
          fmt::print(out, " {} {}", row.series[i].id, formatNs(f.latency.p50Ns));
        else if (f.rate.count)  // a rate: stream, one-way, pipelined, memcpy
          fmt::print(out, " {} {}/s", row.series[i].id, formatRate(f.rate.perSecond));
      }
      fmt::print(out, "\n");
    }
  }
  if (mostPreempted >= kBusyPreemptions)
    fmt::print(out,
               "\nNote: other load shared the pinned CPUs (up to {} involuntary context switches "
               "in one cell).\nTails, busy-polling figures and throughput suffer most; rerun on an "
               "idle host for undisturbed figures.\n",
               mostPreempted);
  fmt::print(out, "\nTargets (reported, not asserted)\n");
  for (const TargetResult& r : evaluate(table, standardTargets())) {
    std::string verdict = r.verdict == Verdict::kPass   ? "PASS"
                          : r.verdict == Verdict::kMiss ? "MISS"
                                                        : "n/a";
    if (color && r.verdict != Verdict::kNotMeasured)
      verdict =
          fmt::format(fmt::fg(r.verdict == Verdict::kPass ? fmt::color::green : fmt::color::red) |
                          fmt::emphasis::bold,
                      "{}", verdict);
    fmt::print(out, "  {:<62} goal {:<9} measured {:<10} {}\n", r.name, r.goal, r.measured,
               verdict);
    if (!r.note.empty()) fmt::print(out, "    ({})\n", r.note);
  }
  fmt::print(out, "\n");
}

void writeJson(const std::string& path, const Table& table) {
  const Settings& s = table.settings;
  Json j = {
      {"tool", "zcrpc-bench"},
      {"config",
       {{"cpus", {s.clientCpu, s.serverCpu}},
        {"reps", s.reps},
        {"seconds_per_cell", s.seconds},
        {"sizes", s.sizes},
        {"transports", Json::array()},
        {"wait_modes", Json::array()},
        {"batch", s.batch},
        {"pipelined_window", s.window},
        {"uncapped_window", s.uncappedWindow},
        {"metrics", s.metrics},
        {"spin_time_ns", s.spinTime.count()},
        {"quick", s.quick},
        {"payload_by_reference_from", s.referenceFrom == SIZE_MAX ? Json() : Json(s.referenceFrom)},
        {"loadavg_start", table.loadStart},
        {"loadavg_end", table.loadEnd}}},
      {"missing", Json::array()},
      {"rows", Json::array()},
      {"summary", Json::array()},
      {"targets", Json::array()}};
  for (Transport t : s.transports) j["config"]["transports"].push_back(transportName(t));
  for (WaitMode w : s.waitModes) j["config"]["wait_modes"].push_back(waitModeName(w));
  for (const Missing& m : table.missing)
    j["missing"].push_back({{"series", m.series}, {"why", m.why}});
  for (const Row& row : table.rows) {
    Json r = {{"section", row.section},
              {"transport", transportName(row.transport)},
              {"wait_mode", waitModeName(row.waitMode)},
              {"payload_bytes", row.payloadBytes},
              {"interval_ns", row.intervalNs ? Json(row.intervalNs) : Json()},
              {"order", Json::array()},
              {"series", Json::array()}};
    for (const RowRep& rep : row.reps) r["order"].push_back(rep.order);
    for (size_t i = 0; i < row.series.size(); ++i) {
      const SeriesInfo& si = row.series[i];
      Json x = {{"id", si.id},
                {"label", si.label},
                {"role", roleName(si.role)},
                {"own_wait", si.ownWait},
                {"median", Json::object()},
                {"reps", Json::array()}};
      for (Stat st : statsOf(si)) {  // NaN: not measured (dump() writes null)
        x["median"][std::string(statName(st))] = medianOf(row, i, st).value_or(NAN);
        if (i && !isRate(si))
          x["vs_baseline"][std::string(statName(st))] = medianRatio(row, i, 0, st).value_or(NAN);
      }
      for (const RowRep& rep : row.reps) {
        const Figure& f = rep.figures[i];
        const Latency& l = f.latency;
        Json fig = isRate(si)
                       ? Json{{"count", f.rate.count},
                              {"seconds", f.rate.seconds},
                              {"window", f.rate.window}}
                       : Json{{"samples", l.samples}, {"min_ns", l.minNs},   {"p50_ns", l.p50Ns},
                              {"p99_ns", l.p99Ns},    {"p999_ns", l.p999Ns}, {"max_ns", l.maxNs}};
        if (isRate(si) || isOpenLoop(si))
          for (Stat st : statsOf(si)) fig[std::string(statName(st))] = statOf(f, st);
        fig["preemptions"] = f.preemptions;
        if (f.peerValue) fig["peer_value"] = f.peerValue;
        x["reps"].push_back(fig);
      }
      r["series"].push_back(x);
    }
    j["rows"].push_back(r);
  }
  for (Transport t : s.transports)
    for (WaitMode w : s.waitModes)
      if (const Row* row = rpcRow(table, t, w, smallest(s))) {
        const size_t z = row->find("zcrpc"), b = bestRival(*row);
        auto pair = [&](size_t i) {
          return Json{{"id", row->series[i].id},
                      {"label", row->series[i].label},
                      {"p50_ns", value(medianOf(*row, i, Stat::kP50))},
                      {"p99_ns", value(medianOf(*row, i, Stat::kP99))}};
        };
        Json e = {{"transport", transportName(t)},
                  {"wait_mode", waitModeName(w)},
                  {"payload_bytes", smallest(s)},
                  {"zcrpc", pair(z)}};
        if (b != Row::npos)
          e["fastest_rival"] = pair(b),
          e["rival_vs_zcrpc_p50"] = value(medianRatio(*row, b, z, Stat::kP50));
        j["summary"].push_back(e);
      }
  for (const TargetResult& r : evaluate(table, standardTargets()))
    j["targets"].push_back({{"name", r.name},
                            {"goal", r.goal},
                            {"measured", r.value ? Json(*r.value) : Json()},
                            {"result", r.verdict == Verdict::kPass   ? "PASS"
                                       : r.verdict == Verdict::kMiss ? "MISS"
                                                                     : "not-run"},
                            {"note", r.note}});
  writeTextFile(path, j.dump(2) + "\n");
}

void writeCsv(const std::string& path, const Table& table) {
  std::string text =
      "section,transport,wait_mode,payload_bytes,series,role,p50_ns,p99_ns,p999_ns,x_base_p50,"
      "x_base_p99,x_base_p999,per_second,per_second_stall_free,bytes_per_second,reps,"
      "loadavg_start,loadavg_end,interval_ns,client_cpu_ns_per_call,server_cpu_ns_per_call\n";
  auto num = [](std::optional<double> v) { return v ? fmt::format("{:.6g}", *v) : std::string(); };
  for (const Row& row : table.rows)
    for (size_t i = 0; i < row.series.size(); ++i) {
      const bool rate = isRate(row.series[i]);
      auto lat = [&](Stat s) { return rate ? "" : num(medianOf(row, i, s)); };
      auto x = [&](Stat s) { return rate || !i ? "" : num(medianRatio(row, i, 0, s)); };
      auto per = [&](Stat s) { return rate ? num(medianOf(row, i, s)) : ""; };
      auto cpu = [&](Stat s) { return isOpenLoop(row.series[i]) ? num(medianOf(row, i, s)) : ""; };
      text += fmt::format(
          "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2f},{:.2f},{},{},{}\n", row.section,
          transportName(row.transport), waitModeName(row.waitMode), row.payloadBytes,
          row.series[i].id, roleName(row.series[i].role), lat(Stat::kP50), lat(Stat::kP99),
          lat(Stat::kP999), x(Stat::kP50), x(Stat::kP99), x(Stat::kP999), per(Stat::kPerSecond),
          per(Stat::kStallFree), per(Stat::kBytesPerSecond), row.reps.size(), table.loadStart,
          table.loadEnd, row.intervalNs ? std::to_string(row.intervalNs) : std::string(),
          cpu(Stat::kClientCpu), cpu(Stat::kServerCpu));
    }
  writeTextFile(path, text);
}

bool haveGnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

void writePlot(const std::string& path, const Table& table) {
  const Settings& s = table.settings;
  struct Line {  // a system over a transport: p50 solid, p99 dashed, in the system's colour
    std::string id;
    Transport transport;
    size_t colour;
  };
  std::vector<Line> lines;
  std::vector<std::string> ids;
  for (const Row& row : table.rows)
    for (const SeriesInfo& si : row.series)
      if (row.section == "rpc" && !isRate(si) && si.role != Role::kPart &&
          si.role != Role::kDerived && std::none_of(lines.begin(), lines.end(), [&](const Line& l) {
            return l.id == si.id && l.transport == row.transport;
          })) {
        if (std::find(ids.begin(), ids.end(), si.id) == ids.end()) ids.push_back(si.id);
        lines.push_back(
            {si.id, row.transport,
             static_cast<size_t>(std::find(ids.begin(), ids.end(), si.id) - ids.begin())});
      }
  if (lines.empty()) throw BenchError("--plot: no rpc rows were measured");
  std::string data = "$data << EOD\n";  // one block per wait mode: x, then p50 p99 of each line
  double lo = INFINITY, hi = 0;
  for (WaitMode w : s.waitModes) {
    for (size_t x = 0; x < s.sizes.size(); ++x) {
      data += std::to_string(x);
      for (const Line& l : lines) {
        const Row* row = rpcRow(table, l.transport, w, s.sizes[x]);
        for (Stat st : {Stat::kP50, Stat::kP99}) {
          const double v =
              row && row->find(l.id) != Row::npos ? value(medianOf(*row, row->find(l.id), st)) : 0;
          if (v > 0) lo = std::min(lo, v), hi = std::max(hi, v);
          data += v > 0 ? fmt::format(" {:.6e}", v / 1e9) : " NaN";
        }
      }
      data += '\n';
    }
    data += "\n\n";
  }
  auto quote = [](std::string_view v) {
    std::string q = "'";
    for (char c : v) q += c == '\'' ? std::string("''") : std::string(1, c);
    return q + "'";
  };
  static constexpr const char* kColours[] = {"#777777", "#1f5fbf", "#c0392b", "#27ae60", "#8e44ad",
                                             "#d35400", "#16a085", "#2c3e50", "#b7950b", "#e84393"};
  std::string gp =
      data + "EOD\n" +
      fmt::format(
          "set terminal pngcairo size {},{} font 'sans,10' noenhanced\nset output {}\nset datafile "
          "missing 'NaN'\n"
          "set multiplot layout 1,{} title {} font 'sans,12'\nset logscale y 10\nset yrange "
          "[{:.6e}:{:.6e}]\n"
          "set format y '%.0s %cs'\nset ylabel 'round trip'\nset grid ytics mytics xtics\nset "
          "xrange [-0.3:{:.1f}]\n"
          "set key below horizontal maxcols 4 font ',9' samplen 4\nset xtics (",
          std::max<size_t>(700 * s.waitModes.size(), 900), 560 + 9 * lines.size(),
          quote(std::filesystem::absolute(path).string()), s.waitModes.size(),
          quote(fmt::format(
              "zcrpc-bench echo round trip: p50 solid, p99 dashed, one scale for every panel "
              "(medians of {} repetitions; load average {:.1f})",
              s.reps, table.loadEnd)),
          lo / 1.5 / 1e9, hi * 1.5 / 1e9, static_cast<double>(s.sizes.size()) - 0.7);
  for (size_t x = 0; x < s.sizes.size(); ++x)
    gp += fmt::format("{}{} {}", x ? ", " : "", quote(formatSize(s.sizes[x])), x);
  gp += ")\n";
  for (size_t p = 0; p < s.waitModes.size(); ++p) {
    gp += fmt::format("set title {}\nplot ", quote("wait mode " + waitLabel(s.waitModes[p])));
    for (size_t k = 0; k < lines.size(); ++k)
      for (int q = 0; q < 2; ++q)
        gp += fmt::format(
            "{}$data index {} using 1:{} with linespoints lw {} dt {} pt {} lc rgb {} title {}",
            k || q ? ", \\\n     " : "", p, 2 + 2 * k + q, (lines[k].id == "zcrpc" ? 4 : 2) - q,
            1 + q, lines[k].transport == Transport::kShm ? 7 : 4,
            quote(kColours[lines[k].colour % 10]),
            quote(fmt::format("{} {} {}", lines[k].id, transportName(lines[k].transport),
                              q ? "p99" : "p50")));
    gp += "\n";
  }
  std::FILE* gnuplot = ::popen("gnuplot", "w");
  if (!gnuplot) throwErrno("--plot: cannot start gnuplot");
  std::fwrite(gp.data(), 1, gp.size(), gnuplot);
  if (int status = ::pclose(gnuplot); status != 0)
    throw BenchError(
        fmt::format("--plot: gnuplot failed (wait status {:#x}; its messages are above)", status));
}

}  // namespace zcrpc::bench
