#include "rpc_report.h"

#include <fmt/color.h>
#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <string_view>

#include "json.h"

namespace zcrpc::bench {

namespace {

constexpr double kShmFloorRatio = 1.25;  // zcrpc p50 / floor p50, every size
constexpr double kTcpRawRatio = 1.15;    // zcrpc p50 / raw TCP p50, every size
constexpr size_t kSmallBytes = 64;       // size of the rival and throughput targets
constexpr double kShmCapnpRatio = 10;    // Cap'n Proto RPC p50 / zcrpc p50 ("tens of times")
constexpr double kTcpCapnpRatio = 3;
constexpr double kShmCallsPerSecond = 5e6;
constexpr double kBusyPreemptions = 10;  // per sub-cell; as in messages mode

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

template <typename Get>
double medianOf(const RpcRun& run, size_t index, Get get) {
  std::vector<double> v;
  for (const auto& rep : run.reps) v.push_back(get(rep[index]));
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

std::string ratio(double v) {
  return v >= 100 ? fmt::format("{:.0f}x", v) : fmt::format("{:.2f}x", v);
}
std::string count(uint64_t v) {
  return v >= 10'000 ? rate(static_cast<double>(v)) : std::to_string(v);
}
std::string referenceName(Transport t) { return t == Transport::kShm ? "floor" : "raw tcp"; }

Percentiles percentiles(const RpcRun& run, size_t i, Latency RpcCell::*which) {
  auto d = [](uint64_t v) { return static_cast<double>(v); };
  return {medianOf(run, i, [&](const RpcCell& c) { return d((c.*which).p50Ns); }),
          medianOf(run, i, [&](const RpcCell& c) { return d((c.*which).p99Ns); }),
          medianOf(run, i, [&](const RpcCell& c) { return d((c.*which).p999Ns); })};
}

Ratios medianRatios(const RpcRun& run, size_t i, Ratios RpcCell::*which) {
  return {medianOf(run, i, [&](const RpcCell& c) { return (c.*which).p50; }),
          medianOf(run, i, [&](const RpcCell& c) { return (c.*which).p99; }),
          medianOf(run, i, [&](const RpcCell& c) { return (c.*which).p999; })};
}

void writePercentiles(JsonWriter& j, std::string_view key, const Percentiles& p) {
  j.beginObject(key);
  j.number("p50_ns", p.p50);
  j.number("p99_ns", p.p99);
  j.number("p999_ns", p.p999);
  j.endObject();
}

void writeRatios(JsonWriter& j, std::string_view key, const Ratios& r) {
  j.beginObject(key);
  j.number("p50", r.p50);
  j.number("p99", r.p99);
  j.number("p999", r.p999);
  j.endObject();
}

std::string cellName(Transport t, WaitMode w, size_t bytes) {
  return fmt::format("{} {} {}", transportName(t), waitModeName(w), formatSize(bytes));
}

}  // namespace

std::string verdictText(Verdict v, bool color) {
  std::string text = v == Verdict::kPass ? "PASS" : v == Verdict::kMiss ? "MISS" : "n/a";
  if (!color || v == Verdict::kNotMeasured) return text;
  return fmt::format(
      fmt::fg(v == Verdict::kPass ? fmt::color::green : fmt::color::red) | fmt::emphasis::bold,
      "{}", text);
}

std::vector<RpcSummary> summarize(const RpcRun& run) {
  std::vector<RpcSummary> out;
  if (run.reps.empty()) return out;
  for (size_t i = 0; i < run.reps.front().size(); ++i) {
    const RpcCell& first = run.reps.front()[i];
    RpcSummary s;
    s.transport = first.transport;
    s.waitMode = first.waitMode;
    s.payloadBytes = first.payloadBytes;
    s.reference = percentiles(run, i, &RpcCell::reference);
    s.zcrpc = percentiles(run, i, &RpcCell::zcrpc);
    s.capnp = percentiles(run, i, &RpcCell::capnp);
    s.zcrpcVsReference = medianRatios(run, i, &RpcCell::zcrpcVsReference);
    s.capnpVsZcrpc = medianRatios(run, i, &RpcCell::capnpVsZcrpc);
    s.callsPerSecond =
        medianOf(run, i, [](const RpcCell& c) { return c.pipelined.callsPerSecond; });
    s.stallFreeCallsPerSecond =
        medianOf(run, i, [](const RpcCell& c) { return c.pipelined.stallFreeCallsPerSecond; });
    s.stalledFraction =
        medianOf(run, i, [](const RpcCell& c) { return c.pipelined.stalledFraction; });
    s.bytesPerSecond =
        medianOf(run, i, [](const RpcCell& c) { return c.pipelined.bytesPerSecond; });
    s.capnpWorkP50 =
        medianOf(run, i, [](const RpcCell& c) { return static_cast<double>(c.capnpWork.p50Ns); });
    s.capnpWorkP99 =
        medianOf(run, i, [](const RpcCell& c) { return static_cast<double>(c.capnpWork.p99Ns); });
    s.boundVsReference = medianOf(run, i, [](const RpcCell& c) { return c.boundVsReference; });
    s.zcrpcVsBound = medianOf(run, i, [](const RpcCell& c) { return c.zcrpcVsBound; });
    s.frameReferenceP50 = medianOf(
        run, i, [](const RpcCell& c) { return static_cast<double>(c.frameReference.p50Ns); });
    s.frameVsReference = medianOf(run, i, [](const RpcCell& c) { return c.frameVsReference; });
    s.capnpVsReference = medianOf(run, i, [](const RpcCell& c) { return c.capnpVsReference; });
    s.window = first.pipelined.window;
    s.samplesReference = s.samplesZcrpc = s.samplesCapnp = UINT64_MAX;
    for (const auto& rep : run.reps) {
      const RpcCell& c = rep[i];
      s.samplesReference = std::min(s.samplesReference, c.reference.samples);
      s.samplesZcrpc = std::min(s.samplesZcrpc, c.zcrpc.samples);
      s.samplesCapnp = std::min(s.samplesCapnp, c.capnp.samples);
      s.frameBytes = std::max(s.frameBytes, c.frameBytes);
      s.mostPreemptions = std::max({s.mostPreemptions, c.reference.preemptions, c.zcrpc.preemptions,
                                    c.capnp.preemptions, c.pipelined.preemptions});
    }
    out.push_back(s);
  }
  return out;
}

std::vector<TargetResult> evaluateTargets(const RpcRun& run,
                                          const std::vector<RpcSummary>& summary) {
  std::vector<TargetResult> out;
  auto add = [&](std::string name, bool atMost, double threshold, std::string goal,
                 const RpcSummary* s, double RpcSummary::*value, const Ratios RpcSummary::*r,
                 bool isRate) {
    TargetResult t;
    t.name = std::move(name);
    t.atMost = atMost;
    t.threshold = threshold;
    t.goal = std::move(goal);
    if (s) t.value = value ? s->*value : (s->*r).p50;
    if (!t.value) {
      t.measured = "not run";
    } else {
      t.measured = isRate ? rate(*t.value) + " calls/s" : ratio(*t.value);
      bool pass = atMost ? *t.value <= threshold : *t.value >= threshold;
      t.verdict = pass ? Verdict::kPass : Verdict::kMiss;
    }
    out.push_back(std::move(t));
  };
  auto find = [&](Transport t, WaitMode w, size_t bytes) -> const RpcSummary* {
    for (const auto& s : summary)
      if (s.transport == t && s.waitMode == w && s.payloadBytes == bytes) return &s;
    return nullptr;
  };
  const RpcOptions& o = run.options;
  for (Transport t : o.transports) {
    for (WaitMode w : o.waitModes) {
      const bool shm = t == Transport::kShm;
      const double limit = shm ? kShmFloorRatio : kTcpRawRatio;
      for (size_t bytes : o.sizes)
        add(fmt::format("{} zcrpc p50 / {}", cellName(t, w, bytes), referenceName(t)), true, limit,
            "<= " + ratio(limit), find(t, w, bytes), nullptr, &RpcSummary::zcrpcVsReference, false);
      const double rival = shm ? kShmCapnpRatio : kTcpCapnpRatio;
      add(fmt::format("{} Cap'n Proto RPC p50 / zcrpc", cellName(t, w, kSmallBytes)), false, rival,
          ">= " + ratio(rival), find(t, w, kSmallBytes), nullptr, &RpcSummary::capnpVsZcrpc, false);
      if (shm) {
        add(fmt::format("{} pipelined calls/s", cellName(t, w, kSmallBytes)), false,
            kShmCallsPerSecond, ">= " + rate(kShmCallsPerSecond), find(t, w, kSmallBytes),
            &RpcSummary::callsPerSecond, nullptr, true);
        add(fmt::format("{} pipelined calls/s, stall-free", cellName(t, w, kSmallBytes)), false,
            kShmCallsPerSecond, ">= " + rate(kShmCallsPerSecond), find(t, w, kSmallBytes),
            &RpcSummary::stallFreeCallsPerSecond, nullptr, true);
      }
    }
  }
  return out;
}

void printReport(std::FILE* out, const RpcRun& run, bool color) {
  const RpcOptions& o = run.options;
  auto summary = summarize(run);
  auto targets = evaluateTargets(run, summary);
  auto p = [out](std::string_view s) { fmt::print(out, "{}\n", s); };

  std::string transports, waits;
  for (Transport t : o.transports)
    transports += (transports.empty() ? "" : ", ") + std::string(transportName(t));
  for (WaitMode w : o.waitModes)
    waits += (waits.empty() ? "" : ", ") + std::string(waitModeName(w));
  p("");
  fmt::print(out,
             "zcrpc-bench rpc: Echo.echo through the generated stubs over {}, processes pinned to "
             "CPUs {} (client) and {} (server)\n",
             transports, o.clientCpu, o.serverCpu);
  fmt::print(out,
             "Wait modes {} (zcrpc client connection, server idle mode and the reference alike); "
             "server: zcrpc::Server, 1 worker; metrics {}\n",
             waits, o.metrics ? "on (default)" : "off");
  if (o.referenceFrom == SIZE_MAX)
    p("Payloads: copied into every request and answer (--copy-payload); Cap'n Proto RPC copies too");
  else
    fmt::print(
        out,
        "Payloads: copied into the message, except over tcp from {} KiB on, where "
        "zcrpc's request references the client's buffer and the answer the request "
        "(OutgoingMessage::referenceData; written from there), as the raw echo sends back the "
        "buffer it read into; Cap'n Proto RPC copies\n",
        o.referenceFrom >> 10);
  fmt::print(out, "{} repetition{}, {:.2f} s per cell{}; pipelined window {}\n", o.reps,
             o.reps == 1 ? "" : "s", o.seconds, o.quick ? " (--quick)" : "", o.window);
  fmt::print(out,
             "Host load average (1 min) {:.2f} at start, {:.2f} at end (2 pinned busy processes "
             "add about 2)\n",
             run.loadStart, run.loadEnd);
  p("ref = the floor ring (shm rows) or a raw TCP_NODELAY send/recv loop (tcp rows), in the "
    "row's wait mode;");
  p("capnp = Cap'n Proto's own RPC (EzRpc) serving the same Echo over a unix socket (shm rows) "
    "or TCP (tcp rows);");
  p("it always waits in epoll, whatever the row's wait mode. Figures are medians over "
    "repetitions; ratios are");
  p("taken within each repetition, then the median.");

  p("");
  p("RPC round trip (one echo call at a time; steady_clock per call)");
  const auto header =
      fmt::format("  {:<4} {:<15} {:<7}| {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
                  "tr", "wait", "size", "ref p50", "p99", "p99.9", "zcrpc p50", "p99", "p99.9",
                  "capnp p50", "p99", "p99.9");
  p(header);
  fmt::print(out, "  {}\n", std::string(header.size() - 2, '-'));
  for (const auto& s : summary)
    fmt::print(
        out, "  {:<4} {:<15} {:<7}| {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}\n",
        transportName(s.transport), waitModeName(s.waitMode), formatSize(s.payloadBytes),
        ns(s.reference.p50), ns(s.reference.p99), ns(s.reference.p999), ns(s.zcrpc.p50),
        ns(s.zcrpc.p99), ns(s.zcrpc.p999), ns(s.capnp.p50), ns(s.capnp.p99), ns(s.capnp.p999));

  p("");
  p("Ratios, and pipelined throughput (one client thread, callAsync with a window of 'win' calls, "
    "one server");
  p("worker). 'calls/s' is over the whole run; 'stall-free' leaves out the passes of the client's "
    "loop that");
  p("took 2 ms or more because other load kept a process off its CPU, and 'stall' is their share "
    "of the run.");
  p("MB/s: payload each way at calls/s. 'preempt': most involuntary context switches in one cell.");
  constexpr std::string_view kRow =
      "  {:<4} {:<15} {:<7}| {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>9} {:>10} {:>5} {:>7} "
      "{:>3} "
      "| {:>17} | {:>7}\n";
  const auto header2 = fmt::format(fmt::runtime(kRow), "tr", "wait", "size", "x ref", "p99",
                                   "p99.9", "capnp/z", "p99", "p99.9", "calls/s", "stall-free",
                                   "stall", "MB/s", "win", "samples r/z/c", "preempt");
  fmt::print(out, "{}", header2);
  fmt::print(out, "  {}\n", std::string(header2.size() - 3, '-'));
  for (const auto& s : summary)
    fmt::print(
        out, fmt::runtime(kRow), transportName(s.transport), waitModeName(s.waitMode),
        formatSize(s.payloadBytes), ratio(s.zcrpcVsReference.p50), ratio(s.zcrpcVsReference.p99),
        ratio(s.zcrpcVsReference.p999), ratio(s.capnpVsZcrpc.p50), ratio(s.capnpVsZcrpc.p99),
        ratio(s.capnpVsZcrpc.p999), rate(s.callsPerSecond), rate(s.stallFreeCallsPerSecond),
        fmt::format("{:.0f}%", 100 * s.stalledFraction),
        fmt::format("{:.0f}", s.bytesPerSecond / 1e6), s.window,
        count(s.samplesReference) + "/" + count(s.samplesZcrpc) + "/" + count(s.samplesCapnp),
        s.mostPreemptions);

  if (std::any_of(summary.begin(), summary.end(),
                  [](const RpcSummary& s) { return s.capnpWorkP50 > 0; })) {
    p("");
    p("The least an echo call of Cap'n Proto messages can take, however they travel: moving its");
    p("bytes ('moved': the floor over shm; over tcp a raw ping-pong of as many bytes as zcrpc's frames,");
    p("header, pointers and segment table included, run right after the zcrpc cell) + Cap'n Proto's");
    p("own work (one thread, no transport: the echo's request built into zeroed memory and read, its");
    p("answer built and read, the data field empty; every call does this in sequence).");
    constexpr std::string_view kBoundRow =
        "  {:<4} {:<15} {:<7}| {:>9} {:>9} {:>7} | {:>9} {:>9} | {:>9} {:>7} | {:>10}\n";
    const auto header3 = fmt::format(fmt::runtime(kBoundRow), "tr", "wait", "size", "frame B",
                                     "moved p50", "x ref", "capnp p50", "p99", "least", "x ref",
                                     "zcrpc x it");
    fmt::print(out, "{}", header3);
    fmt::print(out, "  {}\n", std::string(header3.size() - 3, '-'));
    for (const auto& s : summary) {
      if (s.capnpWorkP50 <= 0) continue;
      const bool tcp = s.transport == Transport::kTcp;
      const double moved = tcp ? s.frameReferenceP50 : s.reference.p50;
      fmt::print(out, fmt::runtime(kBoundRow), transportName(s.transport),
                 waitModeName(s.waitMode), formatSize(s.payloadBytes),
                 tcp ? std::to_string(s.frameBytes) : std::string("-"), ns(moved),
                 tcp ? ratio(s.frameVsReference) : std::string("1.00x"), ns(s.capnpWorkP50),
                 ns(s.capnpWorkP99), ns(moved + s.capnpWorkP50), ratio(s.boundVsReference),
                 ratio(s.zcrpcVsBound));
    }
  }

  if (run.reps.size() > 1) {
    p("");
    p("Per repetition: p50s, the order the latency cells ran in, and involuntary context "
      "switches of both");
    p("processes in the ref / zcrpc / capnp / pipelined cells (other load taking a pinned CPU).");
    fmt::print(out,
               "  {:>3} {:<4} {:<15} {:<7}| {:<25} | {:>9} {:>9} {:>7} {:>9} {:>7} | {:>9} | {}\n",
               "rep", "tr", "wait", "size", "order", "ref p50", "zcrpc p50", "x", "capnp p50",
               "capnp/z", "calls/s", "preempt");
    for (size_t r = 0; r < run.reps.size(); ++r)
      for (const auto& c : run.reps[r])
        fmt::print(out,
                   "  {:>3} {:<4} {:<15} {:<7}| {:<25} | {:>9} {:>9} {:>7} {:>9} {:>7} | {:>9} | "
                   "{}/{}/{}/{}\n",
                   r + 1, transportName(c.transport), waitModeName(c.waitMode),
                   formatSize(c.payloadBytes), c.order, ns(static_cast<double>(c.reference.p50Ns)),
                   ns(static_cast<double>(c.zcrpc.p50Ns)), ratio(c.zcrpcVsReference.p50),
                   ns(static_cast<double>(c.capnp.p50Ns)), ratio(c.capnpVsZcrpc.p50),
                   rate(c.pipelined.callsPerSecond), c.reference.preemptions, c.zcrpc.preemptions,
                   c.capnp.preemptions, c.pipelined.preemptions);
  }

  uint64_t most = 0;
  for (const auto& s : summary) most = std::max(most, s.mostPreemptions);
  if (static_cast<double>(most) >= kBusyPreemptions) {
    p("");
    fmt::print(
        out,
        "Note: other load shared the pinned CPUs (up to {} involuntary context switches in "
        "one cell).\n"
        "      Busy-polling figures, tails and pipelined throughput suffer most; rerun on an "
        "idle host\n"
        "      for undisturbed figures.\n",
        most);
  }

  p("");
  p("Targets (reported, not asserted)");
  for (const auto& t : targets)
    fmt::print(out, "  {:<56} goal {:<10} measured {:<16} {}\n", t.name, t.goal, t.measured,
               verdictText(t.verdict, color));
  for (const auto& s : summary) {
    const bool shm = s.transport == Transport::kShm;
    const double limit = shm ? kShmFloorRatio : kTcpRawRatio;
    // The bound beside each latency goal it decides: shm's small-message goal, and every tcp
    // size that misses (where the frames' own bytes may be the reason).
    if (s.boundVsReference > 0 && (shm ? s.payloadBytes == kSmallBytes : s.zcrpcVsReference.p50 > limit)) {
      const std::string moved =
          shm ? "floor" : fmt::format("raw tcp moving zcrpc's {}-byte frames ({} the raw ping-pong)",
                                      s.frameBytes, ratio(s.frameVsReference));
      fmt::print(out,
                 "  ({}: {} + Cap'n Proto's own work is {} the {},\n   the least an echo call "
                 "of Cap'n Proto messages can take, so the {} goal is {} for any transport of "
                 "them;\n   zcrpc is {} that bound.)\n",
                 cellName(s.transport, s.waitMode, s.payloadBytes), moved,
                 ratio(s.boundVsReference), referenceName(s.transport), ratio(limit),
                 s.boundVsReference > limit ? "out of reach" : "within reach",
                 ratio(s.zcrpcVsBound));
    }
    const double rival = shm ? kShmCapnpRatio : kTcpCapnpRatio;
    if (s.payloadBytes == kSmallBytes && s.capnpVsZcrpc.p50 > 0 && s.capnpVsZcrpc.p50 < rival &&
        s.capnpVsReference > 0)
      fmt::print(out,
                 "  ({}: Cap'n Proto RPC takes only {} the {}'s time in this wait mode, so the "
                 "{} goal is {}.)\n",
                 cellName(s.transport, s.waitMode, s.payloadBytes), ratio(s.capnpVsReference),
                 referenceName(s.transport), ratio(rival),
                 s.capnpVsReference < rival ? "out of reach for any transport" : "within reach");
  }
  p("");
}

void writeJson(JsonWriter& j, const RpcRun& run, std::string_view key) {
  const RpcOptions& o = run.options;
  j.beginObject(key);
  j.string("mode", "rpc");
  j.beginObject("config");
  j.beginArray("transports");
  for (Transport t : o.transports) j.string({}, transportName(t));
  j.endArray();
  j.beginArray("wait_modes");
  for (WaitMode w : o.waitModes) j.string({}, waitModeName(w));
  j.endArray();
  j.beginArray("sizes");
  for (size_t s : o.sizes) j.integer({}, s);
  j.endArray();
  j.beginArray("cpus");
  j.integer({}, static_cast<uint64_t>(o.clientCpu));
  j.integer({}, static_cast<uint64_t>(o.serverCpu));
  j.endArray();
  j.integer("reps", o.reps);
  j.number("seconds_per_cell", o.seconds);
  j.integer("pipelined_window", o.window);
  j.integer("server_worker_threads", 1);
  j.boolean("metrics", o.metrics);
  j.optional("payload_by_reference_from",
             o.referenceFrom == SIZE_MAX ? std::nullopt
                                         : std::optional<double>(static_cast<double>(o.referenceFrom)));
  j.integer("spin_time_ns", static_cast<uint64_t>(o.spinTime.count()));
  j.boolean("quick", o.quick);
  j.number("loadavg_start", run.loadStart);
  j.number("loadavg_end", run.loadEnd);
  j.string("reference_shm",
           "floor ring (shared mapping, copy + one published word), same wait mode");
  j.string("reference_tcp", "raw TCP_NODELAY send/recv ping-pong on 127.0.0.1, same wait mode");
  j.string("capnp_shm", "capnp::EzRpcServer/EzRpcClient over a unix socket");
  j.string("capnp_tcp", "capnp::EzRpcServer/EzRpcClient over TCP on 127.0.0.1");
  j.string("frame_reference_tcp",
           "raw TCP ping-pong of as many bytes as zcrpc's request frame, right after the zcrpc cell");
  j.string("bound", "floor (shm) or frame_reference (tcp) + capnp_work: the least an echo call "
                    "of Cap'n Proto messages can take");
  j.endObject();

  j.beginArray("reps");
  for (size_t r = 0; r < run.reps.size(); ++r) {
    j.beginObject();
    j.integer("rep", r + 1);
    j.beginArray("cells");
    for (const auto& c : run.reps[r]) {
      j.beginObject();
      j.string("transport", transportName(c.transport));
      j.string("wait_mode", waitModeName(c.waitMode));
      j.integer("payload_bytes", c.payloadBytes);
      j.string("order", c.order);
      writeLatency(j, "reference", c.reference);
      writeLatency(j, "zcrpc", c.zcrpc);
      writeLatency(j, "capnp", c.capnp);
      j.beginObject("pipelined");
      j.integer("calls", c.pipelined.calls);
      j.number("seconds", c.pipelined.seconds);
      j.number("calls_per_s", c.pipelined.callsPerSecond);
      j.number("stall_free_calls_per_s", c.pipelined.stallFreeCallsPerSecond);
      j.number("stalled_fraction", c.pipelined.stalledFraction);
      j.number("bytes_per_s", c.pipelined.bytesPerSecond);
      j.integer("window", c.pipelined.window);
      j.integer("preemptions", c.pipelined.preemptions);
      j.endObject();
      writeRatios(j, "zcrpc_vs_reference", c.zcrpcVsReference);
      writeRatios(j, "capnp_vs_zcrpc", c.capnpVsZcrpc);
      if (c.frameBytes) {
        j.integer("frame_bytes", c.frameBytes);
        writeLatency(j, "frame_reference", c.frameReference);
        j.number("frame_reference_vs_reference", c.frameVsReference);
      }
      if (c.capnpWork.samples) {
        writeLatency(j, "capnp_work", c.capnpWork);
        j.number("bound_vs_reference", c.boundVsReference);
        j.number("zcrpc_vs_bound", c.zcrpcVsBound);
      }
      j.number("capnp_vs_reference", c.capnpVsReference);
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
    j.string("transport", transportName(s.transport));
    j.string("wait_mode", waitModeName(s.waitMode));
    j.integer("payload_bytes", s.payloadBytes);
    writePercentiles(j, "reference", s.reference);
    writePercentiles(j, "zcrpc", s.zcrpc);
    writePercentiles(j, "capnp", s.capnp);
    writeRatios(j, "zcrpc_vs_reference", s.zcrpcVsReference);
    writeRatios(j, "capnp_vs_zcrpc", s.capnpVsZcrpc);
    j.number("pipelined_calls_per_s", s.callsPerSecond);
    j.number("pipelined_stall_free_calls_per_s", s.stallFreeCallsPerSecond);
    j.number("pipelined_stalled_fraction", s.stalledFraction);
    j.integer("pipelined_window", s.window);
    j.number("pipelined_bytes_per_s", s.bytesPerSecond);
    j.integer("most_preemptions", s.mostPreemptions);
    if (s.frameBytes) {
      j.integer("frame_bytes", s.frameBytes);
      j.number("frame_reference_p50_ns", s.frameReferenceP50);
      j.number("frame_reference_vs_reference", s.frameVsReference);
    }
    if (s.capnpWorkP50 > 0) {
      j.number("capnp_work_p50_ns", s.capnpWorkP50);
      j.number("bound_vs_reference", s.boundVsReference);
      j.number("zcrpc_vs_bound", s.zcrpcVsBound);
    }
    j.number("capnp_vs_reference", s.capnpVsReference);
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

}  // namespace zcrpc::bench
