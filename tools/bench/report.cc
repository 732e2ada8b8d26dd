#include "report.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <string_view>

#include <fmt/color.h>
#include <fmt/format.h>

#include "json.h"

namespace zcrpc::bench {

namespace {

constexpr size_t kTargetLatencyBytes = 64;
constexpr double kTargetLatencyRatio = 1.2;
constexpr size_t kTargetRateBytes = 64;
constexpr double kTargetMessagesPerSecond = 10e6;
constexpr size_t kTargetBandwidthBytes = size_t{1} << 20;
constexpr double kTargetMemcpyShare = 0.5;
/// Involuntary context switches in one cell from which the report warns that other load
/// disturbed the run (a 0.5 s cell on an idle host sees almost none).
constexpr double kBusyPreemptions = 10;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

template <typename Get>
double medianOf(const Run& run, size_t index, Get get) {
  std::vector<double> v;
  for (const auto& rep : run.reps) v.push_back(get(rep.sizes[index]));
  return median(std::move(v));
}

template <typename Get>
std::optional<double> optionalMedianOf(const Run& run, size_t index, Get get) {
  std::vector<double> v;
  for (const auto& rep : run.reps)
    if (auto x = get(rep.sizes[index])) v.push_back(*x);
  if (v.empty()) return std::nullopt;
  return median(std::move(v));
}

std::string ns(double v) {
  if (v < 1e4) return fmt::format("{:.0f} ns", v);
  if (v < 1e6) return fmt::format("{:.1f} us", v / 1e3);
  return fmt::format("{:.2f} ms", v / 1e6);
}

std::string rate(double v) {
  if (v >= 1e6) return fmt::format("{:.2f} M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f} k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

std::string gbps(double bytesPerSecond) { return fmt::format("{:.2f}", bytesPerSecond / 1e9); }
std::string ratio(double v) { return fmt::format("{:.2f}x", v); }
std::string count(uint64_t v) { return v >= 10'000 ? rate(static_cast<double>(v)) : std::to_string(v); }

const SizeSummary* find(const std::vector<SizeSummary>& s, size_t bytes) {
  for (const auto& x : s)
    if (x.payloadBytes == bytes) return &x;
  return nullptr;
}

void writeRatios(JsonWriter& j, std::string_view key, const Ratios& r) {
  j.beginObject(key);
  j.number("p50", r.p50);
  j.number("p99", r.p99);
  j.number("p999", r.p999);
  j.endObject();
}

void writeGb(JsonWriter& j, std::string_view key, const std::optional<double>& bytesPerSecond) {
  j.optional(key, bytesPerSecond ? std::optional<double>(*bytesPerSecond / 1e9) : std::nullopt);
}

}  // namespace

void writeLatency(JsonWriter& j, std::string_view key, const Latency& l) {
  j.beginObject(key);
  j.integer("samples", l.samples);
  j.integer("min_ns", l.minNs);
  j.integer("p50_ns", l.p50Ns);
  j.integer("p99_ns", l.p99Ns);
  j.integer("p999_ns", l.p999Ns);
  j.integer("max_ns", l.maxNs);
  j.integer("preemptions", l.preemptions);
  j.endObject();
}

std::vector<SizeSummary> summarize(const Run& run) {
  std::vector<SizeSummary> out;
  if (run.reps.empty()) return out;
  for (size_t i = 0; i < run.reps.front().sizes.size(); ++i) {
    SizeSummary s;
    s.payloadBytes = run.reps.front().sizes[i].payloadBytes;
    auto d = [](uint64_t v) { return static_cast<double>(v); };
    s.floorP50 = medianOf(run, i, [&](const SizeResult& r) { return d(r.floor.p50Ns); });
    s.floorP99 = medianOf(run, i, [&](const SizeResult& r) { return d(r.floor.p99Ns); });
    s.floorP999 = medianOf(run, i, [&](const SizeResult& r) { return d(r.floor.p999Ns); });
    s.zcrpcP50 = medianOf(run, i, [&](const SizeResult& r) { return d(r.zcrpc.p50Ns); });
    s.zcrpcP99 = medianOf(run, i, [&](const SizeResult& r) { return d(r.zcrpc.p99Ns); });
    s.zcrpcP999 = medianOf(run, i, [&](const SizeResult& r) { return d(r.zcrpc.p999Ns); });
    s.ratio.p50 = medianOf(run, i, [](const SizeResult& r) { return r.ratio.p50; });
    s.ratio.p99 = medianOf(run, i, [](const SizeResult& r) { return r.ratio.p99; });
    s.ratio.p999 = medianOf(run, i, [](const SizeResult& r) { return r.ratio.p999; });
    s.capnpWorkP50 = medianOf(run, i, [&](const SizeResult& r) { return d(r.capnpWork.p50Ns); });
    s.boundVsFloor = medianOf(run, i, [](const SizeResult& r) { return r.boundVsFloor; });
    s.zcrpcVsBound = medianOf(run, i, [](const SizeResult& r) { return r.zcrpcVsBound; });
    s.messagesPerSecond =
        medianOf(run, i, [](const SizeResult& r) { return r.oneWay.messagesPerSecond; });
    s.bytesPerSecond = medianOf(run, i, [](const SizeResult& r) { return r.oneWay.bytesPerSecond; });
    s.memcpyBytesPerSecond =
        optionalMedianOf(run, i, [](const SizeResult& r) { return r.memcpyBytesPerSecond; });
    s.oneWayVsMemcpy =
        optionalMedianOf(run, i, [](const SizeResult& r) { return r.oneWayVsMemcpy; });
    out.push_back(s);
  }
  return out;
}

std::vector<TargetResult> evaluateTargets(const Run& run, const std::vector<SizeSummary>& summary) {
  std::vector<TargetResult> t(3);
  t[0].name = formatSize(kTargetLatencyBytes) + " round trip p50 vs floor";
  t[0].goal = "<= " + ratio(kTargetLatencyRatio);
  t[0].threshold = kTargetLatencyRatio;
  t[0].atMost = true;
  if (auto* s = find(summary, kTargetLatencyBytes)) t[0].value = s->ratio.p50;

  t[1].name = fmt::format("{} one-way msg/s (batch {})", formatSize(kTargetRateBytes),
                          run.config.batch);
  t[1].goal = ">= " + rate(kTargetMessagesPerSecond);
  t[1].threshold = kTargetMessagesPerSecond;
  if (auto* s = find(summary, kTargetRateBytes)) t[1].value = s->messagesPerSecond;

  t[2].name = formatSize(kTargetBandwidthBytes) + " one-way vs memcpy bandwidth";
  t[2].goal = ">= " + ratio(kTargetMemcpyShare);
  t[2].threshold = kTargetMemcpyShare;
  if (auto* s = find(summary, kTargetBandwidthBytes)) t[2].value = s->oneWayVsMemcpy;

  for (size_t i = 0; i < t.size(); ++i) {
    if (!t[i].value) {
      t[i].measured = "not run";
      t[i].verdict = Verdict::kNotMeasured;
      continue;
    }
    double v = *t[i].value;
    t[i].measured = i == 1 ? rate(v) : ratio(v);
    bool pass = t[i].atMost ? v <= t[i].threshold : v >= t[i].threshold;
    t[i].verdict = pass ? Verdict::kPass : Verdict::kMiss;
  }
  return t;
}

void printReport(std::FILE* out, const Run& run, bool color) {
  const RunConfig& c = run.config;
  auto summary = summarize(run);
  auto targets = evaluateTargets(run, summary);
  auto p = [out](std::string_view s) { fmt::print(out, "{}\n", s); };

  p("");
  fmt::print(out,
             "zcrpc-bench: shm:// between two processes pinned to CPUs {} (measuring) and {} "
             "(echo/sink)\n",
             c.clientCpu, c.serverCpu);
  fmt::print(out,
             "zcrpc wait mode {}, floor busy-poll; ring {} + arena {} per direction; {} "
             "repetition{}, {:.2f} s per cell{}\n",
             c.waitMode, formatSize(c.ringBytes), formatSize(c.arenaBytes), c.reps,
             c.reps == 1 ? "" : "s", c.secondsPerCell, c.quick ? " (--quick)" : "");
  fmt::print(out, "Host load average (1 min) {:.2f} at start, {:.2f} at end (2 pinned busy "
             "processes add about 2)\n", c.loadStart, c.loadEnd);
  p("Figures are medians over repetitions; ratios are zcrpc / floor within each repetition, "
    "then the median.");

  p("");
  p("Round trip (ping-pong; request built in place, echoed with one copy; steady_clock per round "
    "trip)");
  std::string rule(112, '-');
  fmt::print(out, "  {:<8}| {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>7} {:>7} {:>7} | {:>13}\n",
             "size", "floor p50", "p99", "p99.9", "zcrpc p50", "p99", "p99.9", "x p50", "x p99",
             "x p99.9", "samples f/z");
  fmt::print(out, "  {}\n", rule);
  for (size_t i = 0; i < summary.size(); ++i) {
    const auto& s = summary[i];
    const auto& last = run.reps.back().sizes[i];
    fmt::print(out,
               "  {:<8}| {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>7} {:>7} {:>7} | {:>13}\n",
               formatSize(s.payloadBytes), ns(s.floorP50), ns(s.floorP99), ns(s.floorP999),
               ns(s.zcrpcP50), ns(s.zcrpcP99), ns(s.zcrpcP999), ratio(s.ratio.p50),
               ratio(s.ratio.p99), ratio(s.ratio.p999),
               count(last.floor.samples) + "/" + count(last.zcrpc.samples));
  }

  p("");
  p("Cap'n Proto's own share (one thread, no transport, measured in each repetition: the request");
  p("built into memory zeroed beforehand and read, the echo built and read, the data field empty,");
  p("since moving the payload's bytes is what the floor does too). Every round trip of Cap'n Proto");
  p("messages does this work in sequence, so floor + capnp is the least one can take, however the");
  p("messages travel.");
  fmt::print(out, "  {:<8}| {:>9} {:>9} | {:>12} {:>8} | {:>10}\n", "size", "capnp p50", "p99",
             "floor+capnp", "x floor", "zcrpc x it");
  fmt::print(out, "  {}\n", std::string(68, '-'));
  for (size_t i = 0; i < summary.size(); ++i) {
    const auto& s = summary[i];
    double p99 = medianOf(run, i, [](const SizeResult& r) { return static_cast<double>(r.capnpWork.p99Ns); });
    fmt::print(out, "  {:<8}| {:>9} {:>9} | {:>12} {:>8} | {:>10}\n", formatSize(s.payloadBytes),
               ns(s.capnpWorkP50), ns(p99), ns(s.floorP50 + s.capnpWorkP50), ratio(s.boundVsFloor),
               ratio(s.zcrpcVsBound));
  }

  p("");
  fmt::print(out,
             "One-way stream (send without flush, flush() every {} messages; the sink checks and "
             "releases each one; GB = 1e9 bytes)\n",
             c.batch);
  fmt::print(out, "  {:<8}| {:>10} | {:>9} | {:>11} | {:>9}\n", "size", "msg/s", "GB/s",
             "memcpy GB/s", "vs memcpy");
  fmt::print(out, "  {}\n", std::string(62, '-'));
  for (const auto& s : summary)
    fmt::print(out, "  {:<8}| {:>10} | {:>9} | {:>11} | {:>9}\n", formatSize(s.payloadBytes),
               rate(s.messagesPerSecond), gbps(s.bytesPerSecond),
               s.memcpyBytesPerSecond ? gbps(*s.memcpyBytesPerSecond) : "",
               s.oneWayVsMemcpy ? ratio(*s.oneWayVsMemcpy) : "");

  p("");
  p("Per repetition. 'first': which latency cell ran first (alternates); a shorter floor run on");
  p("the other side of the zcrpc cell checks that the CPUs did not move ('check' = its p50 vs the");
  p("floor's); 'preempt': involuntary context switches of both processes in the floor / zcrpc /");
  p("stream cells (other load on the host taking a pinned CPU).");
  fmt::print(out,
             "  {:>3} {:<7} {:<6}| {:>9} {:>6} {:>9} {:>6} | {:>10} {:>10} {:>6} | {:>8} {:>6} "
             "{:>6} | {:>12}\n",
             "rep", "size", "first", "floor p50", "check", "zcrpc p50", "x", "floor 99.9",
             "zcrpc 99.9", "x", "msg/s", "GB/s", "x mcpy", "preempt");
  for (size_t r = 0; r < run.reps.size(); ++r) {
    const auto& rep = run.reps[r];
    for (const auto& s : rep.sizes) {
      double drift = s.floor.p50Ns ? static_cast<double>(s.floorCheck.p50Ns) /
                                             static_cast<double>(s.floor.p50Ns) - 1
                                   : 0;
      fmt::print(out,
                 "  {:>3} {:<7} {:<6}| {:>9} {:>+5.0f}% {:>9} {:>6} | {:>10} {:>10} {:>6} | {:>8} "
                 "{:>6} {:>6} | {:>12}\n",
                 r + 1, formatSize(s.payloadBytes), rep.zcrpcFirst ? "zcrpc" : "floor",
                 ns(static_cast<double>(s.floor.p50Ns)), drift * 100,
                 ns(static_cast<double>(s.zcrpc.p50Ns)), ratio(s.ratio.p50),
                 ns(static_cast<double>(s.floor.p999Ns)), ns(static_cast<double>(s.zcrpc.p999Ns)),
                 ratio(s.ratio.p999), rate(s.oneWay.messagesPerSecond),
                 gbps(s.oneWay.bytesPerSecond), s.oneWayVsMemcpy ? ratio(*s.oneWayVsMemcpy) : "",
                 fmt::format("{}/{}/{}", s.floor.preemptions + s.floorCheck.preemptions,
                             s.zcrpc.preemptions, s.oneWay.preemptions));
    }
  }

  std::vector<double> preempted;
  for (const auto& rep : run.reps)
    for (const auto& s : rep.sizes)
      for (uint64_t n : {s.floor.preemptions, s.zcrpc.preemptions, s.oneWay.preemptions})
        preempted.push_back(static_cast<double>(n));
  double mostPreempted = preempted.empty() ? 0 : *std::max_element(preempted.begin(), preempted.end());
  if (mostPreempted >= kBusyPreemptions) {
    p("");
    fmt::print(out,
               "Note: other load shared the pinned CPUs (median {:.0f}, most {:.0f} involuntary "
               "context switches per cell).\n"
               "      Tails (p99, p99.9) and the one-way stream, which needs both CPUs at once, "
               "suffer most;\n"
               "      rerun on an idle host for undisturbed figures.\n",
               median(preempted), mostPreempted);
  }

  p("");
  p("Targets (reported, not asserted)");
  for (const auto& t : targets) {
    std::string verdict = t.verdict == Verdict::kPass   ? "PASS"
                          : t.verdict == Verdict::kMiss ? "MISS"
                                                        : "n/a";
    std::string shown = verdict;
    if (color && t.verdict != Verdict::kNotMeasured)
      shown = fmt::format(fmt::fg(t.verdict == Verdict::kPass ? fmt::color::green : fmt::color::red) |
                              fmt::emphasis::bold,
                          "{}", verdict);
    fmt::print(out, "  {:<44} goal {:<10} measured {:<10} {}\n", t.name, t.goal, t.measured,
               shown);
  }
  if (const auto* s = find(summary, kTargetLatencyBytes); s && s->boundVsFloor > 0)
    fmt::print(out,
               "  ({} floor + Cap'n Proto's own work alone is {} the floor, the least a round trip "
               "of Cap'n Proto\n   messages can take, so the {} goal is {} for any "
               "transport of them; zcrpc is {} that bound.)\n",
               formatSize(kTargetLatencyBytes), ratio(s->boundVsFloor), ratio(kTargetLatencyRatio),
               s->boundVsFloor > kTargetLatencyRatio ? "out of reach" : "within reach",
               ratio(s->zcrpcVsBound));
  p("");
}

void writeJson(JsonWriter& j, const Run& run) {
  const RunConfig& c = run.config;
  j.beginObject();
  j.string("mode", "messages");
  j.beginObject("config");
  j.string("transport", "shm");
  j.string("endpoint", "shm://" + c.endpoint);
  j.beginArray("cpus");
  j.integer({}, static_cast<uint64_t>(c.clientCpu));
  j.integer({}, static_cast<uint64_t>(c.serverCpu));
  j.endArray();
  j.string("wait_mode", c.waitMode);
  j.string("floor_wait_mode", "busy-poll");
  j.integer("reps", c.reps);
  j.number("seconds_per_cell", c.secondsPerCell);
  j.integer("batch", c.batch);
  j.integer("ring_bytes", c.ringBytes);
  j.integer("arena_bytes", c.arenaBytes);
  j.boolean("quick", c.quick);
  j.number("loadavg_start", c.loadStart);
  j.number("loadavg_end", c.loadEnd);
  j.beginArray("sizes");
  for (size_t s : c.sizes) j.integer({}, s);
  j.endArray();
  j.endObject();

  j.beginArray("reps");
  for (size_t r = 0; r < run.reps.size(); ++r) {
    const auto& rep = run.reps[r];
    j.beginObject();
    j.integer("rep", r + 1);
    j.string("latency_order", rep.zcrpcFirst ? "zcrpc-first" : "floor-first");
    j.beginArray("sizes");
    for (const auto& s : rep.sizes) {
      j.beginObject();
      j.integer("payload_bytes", s.payloadBytes);
      writeLatency(j, "floor", s.floor);
      writeLatency(j, "zcrpc", s.zcrpc);
      writeLatency(j, "floor_check", s.floorCheck);
      writeRatios(j, "ratio", s.ratio);
      writeLatency(j, "capnp_work", s.capnpWork);
      j.number("floor_plus_capnp_vs_floor", s.boundVsFloor);
      j.number("zcrpc_vs_floor_plus_capnp", s.zcrpcVsBound);
      j.beginObject("throughput");
      j.integer("messages", s.oneWay.messages);
      j.number("seconds", s.oneWay.seconds);
      j.number("msgs_per_s", s.oneWay.messagesPerSecond);
      j.number("bytes_per_s", s.oneWay.bytesPerSecond);
      j.integer("preemptions", s.oneWay.preemptions);
      j.endObject();
      j.optional("memcpy_bytes_per_s", s.memcpyBytesPerSecond);
      writeGb(j, "memcpy_gb_per_s", s.memcpyBytesPerSecond);
      j.optional("throughput_vs_memcpy", s.oneWayVsMemcpy);
      j.endObject();
    }
    j.endArray();
    j.endObject();
  }
  j.endArray();

  auto summary = summarize(run);
  j.beginArray("summary");
  for (const auto& s : summary) {
    j.beginObject();
    j.integer("payload_bytes", s.payloadBytes);
    j.beginObject("floor");
    j.number("p50_ns", s.floorP50);
    j.number("p99_ns", s.floorP99);
    j.number("p999_ns", s.floorP999);
    j.endObject();
    j.beginObject("zcrpc");
    j.number("p50_ns", s.zcrpcP50);
    j.number("p99_ns", s.zcrpcP99);
    j.number("p999_ns", s.zcrpcP999);
    j.endObject();
    writeRatios(j, "ratio", s.ratio);
    j.number("capnp_work_p50_ns", s.capnpWorkP50);
    j.number("floor_plus_capnp_vs_floor", s.boundVsFloor);
    j.number("zcrpc_vs_floor_plus_capnp", s.zcrpcVsBound);
    j.beginObject("throughput");
    j.number("msgs_per_s", s.messagesPerSecond);
    j.number("bytes_per_s", s.bytesPerSecond);
    j.endObject();
    j.optional("memcpy_bytes_per_s", s.memcpyBytesPerSecond);
    writeGb(j, "memcpy_gb_per_s", s.memcpyBytesPerSecond);
    j.optional("throughput_vs_memcpy", s.oneWayVsMemcpy);
    j.endObject();
  }
  j.endArray();

  j.beginArray("targets");
  for (const auto& t : evaluateTargets(run, summary)) {
    j.beginObject();
    j.string("name", t.name);
    j.string("goal", t.goal);
    j.optional("measured", t.value);
    j.number("threshold", t.threshold);
    j.string("result", t.verdict == Verdict::kPass   ? "PASS"
                       : t.verdict == Verdict::kMiss ? "MISS"
                                                     : "not-run");
    j.endObject();
  }
  j.endArray();
  j.endObject();
}

void writeTextFile(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throwErrno("open " + path);
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) throwErrno("write " + path);
}

}  // namespace zcrpc::bench
