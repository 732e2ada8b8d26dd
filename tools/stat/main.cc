// zcrpc-stat ENDPOINT... — live call counters and latency percentiles of a running zcrpc
// server, read through its stats endpoint (Server::enableStats(), schemas/admin.capnp):
// per method over every connection the server has had, and (--connections) per open
// connection. Refreshes every --interval seconds until Ctrl-C; --once prints one
// snapshot; --json writes each snapshot as one JSON object per line.
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
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

uint64_t errorTotal(MethodStats::Reader m) {
  uint64_t n = 0;
  for (auto e : m.getErrors()) n += e.getCount();
  return n;
}

std::string errorList(MethodStats::Reader m) {
  std::string out;
  for (auto e : m.getErrors()) appendItem(out, " ", fmt::format("{}:{}", e.getName().cStr(), e.getCount()));
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
  Printer(bool json, bool connections) : json_(json), connections_(connections) {}

  void print(StatsSnapshot::Reader s, double sinceLast) {
    std::map<MethodKey, uint64_t> calls;
    for (auto m : s.getMethods()) calls[{m.getInterfaceId(), m.getMethodId()}] = m.getCalls();
    if (json_)
      printJson(s, sinceLast);
    else
      printTable(s, sinceLast);
    previous_ = std::move(calls);
    std::fflush(stdout);
  }

 private:
  /// Calls per second since the previous snapshot (negative: not known yet).
  double rate(MethodStats::Reader m, double sinceLast) const {
    auto it = previous_.find({m.getInterfaceId(), m.getMethodId()});
    if (sinceLast <= 0) return -1;
    uint64_t before = it == previous_.end() ? 0 : it->second;
    return static_cast<double>(m.getCalls() - std::min(before, m.getCalls())) / sinceLast;
  }

  void printMethodRows(capnp::List<MethodStats>::Reader methods, double sinceLast, bool withRate) {
    for (auto m : methods) {
      auto l = m.getLatency();
      double r = withRate ? rate(m, sinceLast) : -1;
      fmt::print("{:<32} {:>10} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}\n",
                 methodName(m), m.getCalls(),
                 r < 0 ? std::string("-") : fmt::format("{:.1f}", r), errorTotal(m),
                 bytes(m.getRequestBytes()), bytes(m.getResponseBytes()), micros(l.getP50Ns()),
                 micros(l.getP90Ns()), micros(l.getP99Ns()), micros(l.getP999Ns()),
                 micros(l.getMaxNs()), errorList(m));
    }
  }

  void header() {
    fmt::print("{:<32} {:>10} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n", "METHOD",
               "CALLS", "CALLS/S", "ERRORS", "REQ B", "RESP B", "P50 us", "P90 us", "P99 us",
               "P99.9 us", "MAX us");
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
    header();
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

  std::string methodJson(MethodStats::Reader m, double sinceLast, bool withRate) const {
    auto l = m.getLatency();
    std::string errors;
    for (auto e : m.getErrors())
      appendItem(errors, ",", fmt::format("{}:{}", jsonString(e.getName().cStr()), e.getCount()));
    double r = withRate ? rate(m, sinceLast) : -1;
    return fmt::format(
        "{{\"interface_id\":\"{:#018x}\",\"method_id\":{},\"name\":{},\"calls\":{},{}\"errors\":{{{}}},"
        "\"request_bytes\":{},\"response_bytes\":{},\"latency_ns\":{{\"count\":{},\"min\":{},"
        "\"mean\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}",
        m.getInterfaceId(), m.getMethodId(), jsonString(methodName(m)),
        m.getCalls(), r < 0 ? std::string() : fmt::format("\"calls_per_s\":{},", jsonNumber(r)), errors,
        m.getRequestBytes(), m.getResponseBytes(), l.getCount(), jsonNumber(l.getMinNs()),
        jsonNumber(l.getMeanNs()), jsonNumber(l.getP50Ns()), jsonNumber(l.getP90Ns()),
        jsonNumber(l.getP99Ns()), jsonNumber(l.getP999Ns()), jsonNumber(l.getMaxNs()));
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
  std::map<MethodKey, uint64_t> previous_;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zcrpc-stat: live call counters and latency percentiles of a zcrpc server"};
  std::vector<std::string> endpoints;
  bool once = false, json = false, connections = false;
  double interval = 1.0;
  uint64_t count = 0;
  app.add_option("endpoints", endpoints,
                 "the server's endpoint(s): shm://NAME, tcp://HOST:PORT, rdma://HOST:PORT")
      ->required();
  app.add_flag("--once", once, "print one snapshot and exit");
  app.add_flag("--json", json, "one JSON object per snapshot (one line each)");
  app.add_flag("--connections", connections, "also show each open connection's counters");
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
  Printer printer(json, connections);
  auto last = std::chrono::steady_clock::time_point{};
  const auto gap = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(interval));
  for (uint64_t n = 0; !gStop.load() && (count == 0 || n < count); ++n) {
    if (n > 0) sleepFor(gap);
    if (gStop.load()) break;
    try {
      auto req = admin.statsRequest();
      req.params().setConnections(connections);
      auto resp = req.call();
      auto now = std::chrono::steady_clock::now();
      double sinceLast = n == 0 ? 0 : std::chrono::duration<double>(now - last).count();
      last = now;
      if (clear) fmt::print("\033[H\033[2J");
      printer.print(resp.results(), sinceLast);
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
