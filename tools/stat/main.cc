// zcrpc-stat ENDPOINT... — live call counters and latency percentiles of a running zcrpc
// server, read through its stats endpoint (Server::enableStats(), schemas/admin.capnp):
// per method over every connection the server has had, and (--connections) per open
// connection. Refreshes every --interval seconds until Ctrl-C; --once prints one
// snapshot; --json writes each snapshot as one JSON object per line. Percentiles are over
// the last interval (from the difference of two snapshots' histograms), or since the
// server started with --cumulative (and in the first snapshot). Calls the client gave up
// on (cancelled, or past their deadline) are counted apart from failures.
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "zcrpc/admin.capnp.zcrpc.h"
#include "zcrpc/context.h"
#include "zcrpc/rpc.h"

namespace {

using zcrpc::admin::MethodStats;
using zcrpc::admin::StatsSnapshot;

std::atomic<bool> gStop{false};
void onSignal(int) { gStop.store(true); }

void sleepFor(std::chrono::nanoseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (!gStop.load() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(
        until - std::chrono::steady_clock::now(), std::chrono::milliseconds(10)));
}

using MethodKey = std::pair<uint64_t, uint16_t>;

constexpr uint8_t kCancelled = static_cast<uint8_t>(zcrpc::ErrorKind::kCancelled);
constexpr uint8_t kExpired = static_cast<uint8_t>(zcrpc::ErrorKind::kDeadlineExceeded);

/// One histogram bucket as the server sent it.
struct Bucket {
  double lowNs = 0, highNs = 0;
  uint64_t count = 0;
};

/// What a snapshot said about one method: enough to subtract it from the next.
struct MethodState {
  uint64_t calls = 0;
  std::map<uint8_t, uint64_t> errors;  // by ErrorKind
  std::map<double, Bucket> buckets;    // by lowNs
};

MethodState stateOf(MethodStats::Reader m) {
  MethodState s;
  s.calls = m.getCalls();
  for (auto e : m.getErrors()) s.errors[e.getKind()] = e.getCount();
  for (auto b : m.getLatency().getBuckets()) s.buckets[b.getLowNs()] = {b.getLowNs(), b.getHighNs(), b.getCount()};
  return s;
}

/// The calls of one interval: `now` less `before` (counters only grow; a method new in this
/// interval has an empty `before`).
struct Interval {
  double seconds = 0;
  uint64_t calls = 0;
  std::map<uint8_t, uint64_t> errors;
  std::vector<Bucket> buckets;  // ascending

  uint64_t count() const {
    uint64_t n = 0;
    for (const auto& b : buckets) n += b.count;
    return n;
  }
  /// The middle of the bucket holding the q-th sample (within about 6 % of it, as the
  /// server's own percentiles); 0 without samples.
  double percentileNs(double q) const {
    const uint64_t n = count();
    if (!n) return 0;
    const auto rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(n))));
    uint64_t seen = 0;
    for (const auto& b : buckets)
      if ((seen += b.count) >= rank) return (b.lowNs + b.highNs) / 2;
    return buckets.back().highNs;
  }
  /// The upper end of the highest bucket with a sample (at most 12.5 % above the maximum).
  double maxNs() const { return buckets.empty() ? 0 : buckets.back().highNs; }
};

Interval intervalOf(const MethodState& now, const MethodState& before, double seconds) {
  Interval in;
  in.seconds = seconds;
  in.calls = now.calls - std::min(now.calls, before.calls);
  for (const auto& [kind, n] : now.errors) {
    auto it = before.errors.find(kind);
    uint64_t d = n - std::min(n, it == before.errors.end() ? 0 : it->second);
    if (d) in.errors[kind] = d;
  }
  for (const auto& [low, b] : now.buckets) {
    auto it = before.buckets.find(low);
    uint64_t d = b.count - std::min(b.count, it == before.buckets.end() ? 0 : it->second.count);
    if (d) in.buckets.push_back({b.lowNs, b.highNs, d});
  }
  return in;
}

/// Appends `item` to a `sep`-separated list. (Not `(a.empty() ? "" : sep) + b`: g++ 12
/// warns falsely, -Wrestrict, about a literal plus a std::string at -O3.)
void appendItem(std::string& list, std::string_view sep, std::string_view item) {
  if (!list.empty()) list += sep;
  list += item;
}

/// The name the server gave the method ("Inventory.placeOrder"), else its ids.
std::string methodName(MethodStats::Reader m) {
  if (m.hasName() && m.getName().size() > 0) return m.getName().cStr();
  if (m.getInterfaceId() == 0 && m.getMethodId() == zcrpc::ConnectionMetrics::kOverflowMethod)
    return "(other methods)";
  return fmt::format("{:#018x}.{}", m.getInterfaceId(), m.getMethodId());
}

std::string micros(double ns) {
  double us = ns / 1000.0;
  if (us == 0) return "-";
  return us < 10 ? fmt::format("{:.2f}", us) : us < 10000 ? fmt::format("{:.1f}", us) : fmt::format("{:.0f}", us);
}

std::string bytes(uint64_t b) {
  if (b < 10'000) return fmt::format("{}", b);
  if (b < 10'000'000) return fmt::format("{:.1f}K", static_cast<double>(b) / 1024);
  if (b < 10'000'000'000ull) return fmt::format("{:.1f}M", static_cast<double>(b) / (1024 * 1024));
  return fmt::format("{:.1f}G", static_cast<double>(b) / (1024.0 * 1024 * 1024));
}

/// Calls that failed (errors other than the client giving up), cancelled ones, expired ones.
struct Ends {
  uint64_t failures = 0, cancelled = 0, expired = 0;
};
Ends endsOf(MethodStats::Reader m) {
  Ends e;
  for (auto k : m.getErrors()) {
    if (k.getKind() == kCancelled) e.cancelled += k.getCount();
    else if (k.getKind() == kExpired) e.expired += k.getCount();
    else e.failures += k.getCount();
  }
  return e;
}

/// The failures by kind, "Application:3 Overloaded:1" (cancelled and expired calls have
/// columns of their own).
std::string errorList(MethodStats::Reader m) {
  std::string out;
  for (auto e : m.getErrors())
    if (e.getKind() != kCancelled && e.getKind() != kExpired)
      appendItem(out, " ", fmt::format("{}:{}", e.getName().cStr(), e.getCount()));
  return out;
}

std::string jsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += c;
    }
  }
  return out + "\"";
}

std::string jsonNumber(double v) { return std::isfinite(v) ? fmt::format("{:.1f}", v) : "null"; }

class Printer {
 public:
  Printer(bool json, bool connections, bool cumulative)
      : json_(json), connections_(connections), cumulative_(cumulative) {}

  void print(StatsSnapshot::Reader s, double sinceLast) {
    std::map<MethodKey, MethodState> now;
    for (auto m : s.getMethods()) now[{m.getInterfaceId(), m.getMethodId()}] = stateOf(m);
    if (json_)
      printJson(s, sinceLast);
    else
      printTable(s, sinceLast);
    previous_ = std::move(now);
    std::fflush(stdout);
  }

 private:
  /// The method's calls since the previous snapshot; nullopt for the first snapshot.
  std::optional<Interval> interval(MethodStats::Reader m, double sinceLast) const {
    if (sinceLast <= 0) return std::nullopt;
    auto it = previous_.find({m.getInterfaceId(), m.getMethodId()});
    return intervalOf(stateOf(m), it == previous_.end() ? MethodState{} : it->second, sinceLast);
  }

  void printMethodRows(capnp::List<MethodStats>::Reader methods, double sinceLast, bool withInterval) {
    for (auto m : methods) {
      auto l = m.getLatency();
      std::optional<Interval> in = withInterval ? interval(m, sinceLast) : std::nullopt;
      const bool recent = in && !cumulative_;
      Ends e = endsOf(m);
      fmt::print("{:<32} {:>10} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n",
                 methodName(m), m.getCalls(),
                 in ? fmt::format("{:.1f}", static_cast<double>(in->calls) / in->seconds) : std::string("-"),
                 e.failures, e.cancelled, e.expired, bytes(m.getRequestBytes()),
                 bytes(m.getResponseBytes()),
                 micros(recent ? in->percentileNs(0.50) : l.getP50Ns()),
                 micros(recent ? in->percentileNs(0.90) : l.getP90Ns()),
                 micros(recent ? in->percentileNs(0.99) : l.getP99Ns()),
                 micros(recent ? in->percentileNs(0.999) : l.getP999Ns()),
                 micros(recent ? in->maxNs() : l.getMaxNs()), errorList(m));
    }
  }

  void header(double sinceLast) {
    fmt::print("latency {}; CANCEL and EXPIRED: calls the client gave up on, apart from ERRORS\n",
               sinceLast > 0 && !cumulative_ ? fmt::format("over the last {:.1f} s", sinceLast)
                                             : std::string("since the server started"));
    fmt::print("{:<32} {:>10} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n",
               "METHOD", "CALLS", "CALLS/S", "ERRORS", "CANCEL", "EXPIRED", "REQ B", "RESP B",
               "P50 us", "P90 us", "P99 us", "P99.9 us", "MAX us", "ERRORS BY KIND");
  }

  void printTable(StatsSnapshot::Reader s, double sinceLast) {
    std::vector<std::string> endpoints;
    for (auto e : s.getEndpoints()) endpoints.push_back(e.cStr());
    std::string eps;
    for (auto& e : endpoints) appendItem(eps, " ", e);
    fmt::print("server pid {} on {}: up {:.1f} s, {} worker thread(s), connections {} open, {} opened, {} closed\n",
               s.getPid(), eps.empty() ? "(no listener)" : eps,
               static_cast<double>(s.getUptimeNs()) / 1e9, s.getWorkerThreads(),
               s.getConnectionsOpened() - s.getConnectionsClosed(), s.getConnectionsOpened(),
               s.getConnectionsClosed());
    header(sinceLast);
    printMethodRows(s.getMethods(), sinceLast, true);
    if (connections_) {
      for (auto c : s.getConnections()) {
        fmt::print("connection {} ({}), open {:.1f} s:\n", c.getId(), c.getEndpoint().cStr(),
                   static_cast<double>(c.getAgeNs()) / 1e9);
        printMethodRows(c.getMethods(), sinceLast, false);
      }
    }
    fmt::print("\n");
  }

  static std::string errorsJson(const std::map<uint8_t, uint64_t>& byKind) {
    std::string out;
    for (const auto& [kind, n] : byKind)
      appendItem(out, ",", fmt::format("{}:{}", jsonString(zcrpc::errorKindName(static_cast<zcrpc::ErrorKind>(kind))), n));
    return "{" + out + "}";
  }

  std::string methodJson(MethodStats::Reader m, double sinceLast, bool withInterval) const {
    auto l = m.getLatency();
    std::string errors;
    for (auto e : m.getErrors())
      appendItem(errors, ",", fmt::format("{}:{}", jsonString(e.getName().cStr()), e.getCount()));
    std::optional<Interval> in = withInterval ? interval(m, sinceLast) : std::nullopt;
    std::string recent;
    if (in)
      recent = fmt::format(
          "\"calls_per_s\":{},\"interval\":{{\"seconds\":{:.3f},\"calls\":{},\"errors\":{},"
          "\"latency_ns\":{{\"count\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}},",
          jsonNumber(static_cast<double>(in->calls) / in->seconds), in->seconds, in->calls,
          errorsJson(in->errors), in->count(), jsonNumber(in->percentileNs(0.5)),
          jsonNumber(in->percentileNs(0.9)), jsonNumber(in->percentileNs(0.99)),
          jsonNumber(in->percentileNs(0.999)), jsonNumber(in->maxNs()));
    Ends e = endsOf(m);
    return fmt::format(
        "{{\"interface_id\":\"{:#018x}\",\"method_id\":{},\"name\":{},\"calls\":{},{}\"errors\":{{{}}},"
        "\"failures\":{},\"cancelled\":{},\"expired\":{},"
        "\"request_bytes\":{},\"response_bytes\":{},\"latency_ns\":{{\"count\":{},\"min\":{},"
        "\"mean\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}",
        m.getInterfaceId(), m.getMethodId(), jsonString(methodName(m)), m.getCalls(), recent, errors,
        e.failures, e.cancelled, e.expired, m.getRequestBytes(), m.getResponseBytes(), l.getCount(),
        jsonNumber(l.getMinNs()), jsonNumber(l.getMeanNs()), jsonNumber(l.getP50Ns()),
        jsonNumber(l.getP90Ns()), jsonNumber(l.getP99Ns()), jsonNumber(l.getP999Ns()),
        jsonNumber(l.getMaxNs()));
  }

  void printJson(StatsSnapshot::Reader s, double sinceLast) {
    std::string eps, methods, conns;
    for (auto e : s.getEndpoints()) appendItem(eps, ",", jsonString(e.cStr()));
    for (auto m : s.getMethods()) appendItem(methods, ",", methodJson(m, sinceLast, true));
    for (auto c : s.getConnections()) {
      std::string ms;
      for (auto m : c.getMethods()) appendItem(ms, ",", methodJson(m, 0, false));
      appendItem(conns, ",",
                 fmt::format("{{\"id\":{},\"endpoint\":{},\"age_ns\":{},\"methods\":[{}]}}",
                             c.getId(), jsonString(c.getEndpoint().cStr()), c.getAgeNs(), ms));
    }
    fmt::print(
        "{{\"pid\":{},\"endpoints\":[{}],\"uptime_ns\":{},\"worker_threads\":{},"
        "\"connections_open\":{},\"connections_opened\":{},\"connections_closed\":{},"
        "\"methods\":[{}]{}}}\n",
        s.getPid(), eps, s.getUptimeNs(), s.getWorkerThreads(),
        s.getConnectionsOpened() - s.getConnectionsClosed(), s.getConnectionsOpened(),
        s.getConnectionsClosed(), methods,
        connections_ ? fmt::format(",\"connections\":[{}]", conns) : std::string());
  }

  bool json_;
  bool connections_;
  bool cumulative_;
  std::map<MethodKey, MethodState> previous_;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zcrpc-stat: live call counters and latency percentiles of a zcrpc server"};
  std::vector<std::string> endpoints;
  bool once = false, json = false, connections = false, cumulative = false;
  double interval = 1.0;
  uint64_t count = 0;
  app.add_option("endpoints", endpoints,
                 "the server's endpoint(s): shm://NAME, tcp://HOST:PORT, rdma://HOST:PORT")
      ->required();
  app.add_flag("--once", once, "print one snapshot and exit");
  app.add_flag("--json", json, "one JSON object per snapshot (one line each)");
  app.add_flag("--connections", connections, "also show each open connection's counters");
  app.add_flag("--cumulative", cumulative,
               "percentiles since the server started (default: over the last interval)");
  app.add_option("-i,--interval", interval, "seconds between snapshots")->check(CLI::PositiveNumber);
  app.add_option("-n,--count", count, "stop after this many snapshots (default: until Ctrl-C)");
  CLI11_PARSE(app, argc, argv);
  if (once) count = 1;

  struct sigaction sa{};
  sa.sa_handler = onSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::unique_ptr<zcrpc::Channel> channel;
  try {
    zcrpc::Context context;
    channel = std::make_unique<zcrpc::Channel>(context.connect(endpoints),
                                               context.config().channelOptions());
  } catch (const std::exception& e) {
    fmt::print(stderr, "zcrpc-stat: {}\n", e.what());
    return 2;
  }
  const bool clear = !json && !once && ::isatty(STDOUT_FILENO);
  zcrpc::admin::AdminClient admin(*channel);
  Printer printer(json, connections, cumulative);
  auto last = std::chrono::steady_clock::time_point{};
  const auto gap = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(interval));
  for (uint64_t n = 0; !gStop.load() && (count == 0 || n < count); ++n) {
    if (n > 0) sleepFor(gap);
    if (gStop.load()) break;
    try {
      auto req = admin.statsRequest();
      req.params().setConnections(connections);
      req.params().setBuckets(true);  // per-interval percentiles: the difference of two snapshots
      auto resp = req.call();
      auto now = std::chrono::steady_clock::now();
      double sinceLast = n == 0 ? 0 : std::chrono::duration<double>(now - last).count();
      last = now;
      if (clear) fmt::print("\033[H\033[2J");
      printer.print(resp.resultsCapnp(), sinceLast);
    } catch (const zcrpc::Unimplemented& e) {
      fmt::print(stderr, "zcrpc-stat: the server does not serve stats (Server::enableStats()): {}\n", e.what());
      return 1;
    } catch (const std::exception& e) {
      fmt::print(stderr, "zcrpc-stat: {}\n", e.what());
      return 1;
    }
  }
  return 0;
}
