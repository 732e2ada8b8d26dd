// zcrpc-bench — what zcrpc's shm:// transport costs, measured against a floor in the same run.
//
// Two processes (this one measures, a forked peer echoes or sinks), each pinned to its own
// CPU, talk over shm:// (the peer listens, this process connects). For each payload size
// (64 B, 4 KiB, 64 KiB, 1 MiB by default) and each repetition it measures, back to back:
//
//  * round-trip latency p50 / p99 / p99.9 of a bench::Payload built in place and echoed
//    (the echo reads the request in place and copies its data into a reply of the same
//    size), one steady_clock reading per round trip, after a warm-up;
//  * the same ping-pong over the floor: a minimal raw ring in a shared anonymous mapping
//    (raw_ring.h) that only copies the payload and bumps a sequence word;
//  * one-way throughput: send(msg, /*flush=*/false), flush() every --batch messages, the
//    peer counting and releasing; messages/s and payload GB/s;
//  * for payloads of 1 MiB and more, single-core memcpy bandwidth (1 MiB copies rotating
//    over 64 MiB), and the stream's share of it.
//
// zcrpc latency is reported as a ratio to the floor from the same repetition; the median of
// the per-repetition ratios is the headline, because the host may move the CPUs between
// near and far placement during a run. Targets are printed with PASS / MISS, never asserted.
// Every figure printed was measured in this run; nothing is estimated.
//
//   zcrpc-bench                          # full run: 3 repetitions, 0.5 s per cell
//   zcrpc-bench --quick --json out.json  # a few seconds (the bench-smoke test)
//   zcrpc-bench --sizes 64,1M --cpus 2,3 --wait-mode spin-then-sleep --reps 5
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <kj/exception.h>

#include "cells.h"
#include "peer.h"
#include "raw_ring.h"
#include "report.h"
#include "zcrpc/shm.h"

namespace zcrpc::bench {

namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kMaxPayloadBytes = 16 * kMiB;
constexpr size_t kPoolBytes = 64 * kMiB;  // stream source and memcpy buffers: beyond the caches
constexpr auto kIdleTimeout = std::chrono::seconds(120);  // peer: longest wait for a command
constexpr auto kReplyTimeout = std::chrono::seconds(10);

struct Options {
  std::string cpus = "0,1";
  std::vector<std::string> sizes = {"64", "4K", "64K", "1M"};
  double seconds = 0.5;
  unsigned reps = 3;
  std::string waitMode = "busy-poll";
  uint32_t batch = 32;
  std::string json;
  bool quick = false;
};

/// "64", "4K", "4KiB", "64k", "1M", "1MiB" -> bytes. Throws BenchError.
size_t parseSize(const std::string& text) {
  size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &pos);
  } catch (const std::exception&) {
    throw BenchError("size '" + text + "' is not a number");
  }
  std::string unit = text.substr(pos);
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  size_t mul = 1;
  if (unit == "" || unit == "b") mul = 1;
  else if (unit == "k" || unit == "kib") mul = 1024;
  else if (unit == "m" || unit == "mib") mul = kMiB;
  else throw BenchError("size '" + text + "': unit must be B, K/KiB or M/MiB");
  if (v == 0 || v > kMaxPayloadBytes / mul)
    throw BenchError("size '" + text + "' must be between 1 byte and 16 MiB");
  return static_cast<size_t>(v) * mul;
}

std::pair<int, int> parseCpus(const std::string& text) {
  int a = -1, b = -1;
  char tail = 0;
  if (std::sscanf(text.c_str(), "%d,%d%c", &a, &b, &tail) != 2 || a < 0 || b < 0)
    throw BenchError("--cpus '" + text + "' must be two CPU numbers, like 0,1");
  if (a == b) throw BenchError("--cpus: the two processes need two different CPUs");
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) throwErrno("sched_getaffinity");
  for (int cpu : {a, b})
    if (cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed))
      throw BenchError(fmt::format("--cpus: CPU {} is not available to this process", cpu));
  return {a, b};
}

/// The peer process: listens, accepts the measuring process, then runs cells on command.
void peerMain(ControlChannel& control, int cpu, const std::string& endpoint,
              const ConnectionOptions& options, const RawRing& ring) {
  pinToCpu(cpu);
  ShmListenOptions listenOptions;
  listenOptions.connection = options;
  auto listener = listenShm(endpoint, listenOptions);
  Reply r;
  r.kind = ReplyKind::kReady;
  control.send(r);
  auto conn = listener->accept(Clock::now() + kStallTimeout);
  if (!conn) {
    std::string why = "nobody connected to " + listener->endpoint() + " in time";
    for (const auto& refusal : listener->refusals()) why += "; refused: " + refusal;
    throw BenchError(why);
  }
  for (;;) {
    Command c;
    if (!control.receive(c, Clock::now() + kIdleTimeout))
      throw BenchError("peer: no command from the measuring process for 120 s");
    r = Reply();
    if (c.op == Op::kQuit) {
      conn->close();
      r.kind = ReplyKind::kDone;
      control.send(r);
      return;
    }
    if (c.payloadBytes > kMaxPayloadBytes || c.budgetNs < 0)
      throw BenchError("peer: bad command");
    Deadline deadline = Clock::now() + std::chrono::nanoseconds(c.budgetNs) + kStallTimeout;
    r.kind = ReplyKind::kStarted;
    control.send(r);
    uint64_t preempted = preemptionCount();
    switch (c.op) {
      case Op::kFloorEcho: {
        RawEnd end(ring, RawRole::kServer, c.payloadBytes);
        r.value = floorEcho(end, deadline);
        break;
      }
      case Op::kZcrpcEcho: r.value = zcrpcEcho(*conn, deadline); break;
      case Op::kZcrpcSink: r.value = zcrpcSink(*conn, c.payloadBytes, deadline); break;
      default:
        throw BenchError(fmt::format("peer: unknown command {}", static_cast<uint32_t>(c.op)));
    }
    r.preemptions = preemptionCount() - preempted;
    r.kind = ReplyKind::kDone;
    control.send(r);
  }
}

/// Starts a cell on the peer, runs the measuring side, and waits for the peer to finish.
/// The result's `preemptions` counts both processes. A failure names the cell and, when
/// the peer failed too, the peer's own reason.
template <typename Measure>
auto runCell(PeerProcess& peer, Op op, size_t payloadBytes, std::chrono::nanoseconds budget,
             const std::string& what, Measure&& measure) {
  Command c;
  c.op = op;
  c.payloadBytes = payloadBytes;
  c.budgetNs = budget.count();
  peer.send(c);
  peer.expect(ReplyKind::kStarted, Clock::now() + kReplyTimeout, what);
  uint64_t preempted = preemptionCount();
  std::optional<decltype(measure())> result;
  try {
    result.emplace(measure());
  } catch (const std::exception& e) {
    std::string peerSays = peer.failure(std::chrono::milliseconds(500));
    throw BenchError(what + ": " + e.what() +
                     (peerSays.empty() ? "" : " (peer process: " + peerSays + ")"));
  } catch (const kj::Exception& e) {
    throw BenchError(what + ": Cap'n Proto: " + e.getDescription().cStr());
  }
  result->preemptions = preemptionCount() - preempted;
  Reply done = peer.expect(ReplyKind::kDone, Clock::now() + kReplyTimeout + budget, what);
  result->preemptions += done.preemptions;
  return *result;
}

/// The 1-minute load average: how many tasks compete with the two pinned processes.
double loadAverage() {
  double load[1] = {0};
  return ::getloadavg(load, 1) == 1 ? load[0] : -1;
}

double safeRatio(uint64_t a, uint64_t b) {
  return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0;
}

int run(const Options& o) {
  auto [clientCpu, serverCpu] = parseCpus(o.cpus);
  std::vector<size_t> sizes;
  for (const auto& s : o.sizes) sizes.push_back(parseSize(s));
  if (sizes.empty()) throw BenchError("--sizes: no sizes given");
  size_t maxSize = *std::max_element(sizes.begin(), sizes.end());

  ConnectionOptions options;
  options.waitMode = parseWaitMode(o.waitMode);

  Run result;
  RunConfig& cfg = result.config;
  cfg.clientCpu = clientCpu;
  cfg.serverCpu = serverCpu;
  cfg.waitMode = o.waitMode;
  cfg.reps = o.reps;
  cfg.secondsPerCell = o.seconds;
  cfg.batch = o.batch;
  cfg.sizes = sizes;
  cfg.quick = o.quick;
  cfg.endpoint = fmt::format("zcrpc-bench-{}", ::getpid());
  cfg.ringBytes = options.ringBytes;
  cfg.arenaBytes = options.arenaBytes;

  cfg.loadStart = loadAverage();
  RawRing ring(maxSize);  // before fork: both processes share it
  std::fflush(stdout);
  std::fflush(stderr);
  PeerProcess peer([&](ControlChannel& control) {
    peerMain(control, serverCpu, cfg.endpoint, options, ring);
  });
  pinToCpu(clientCpu);
  peer.expect(ReplyKind::kReady, Clock::now() + kReplyTimeout, "starting the peer process");
  std::unique_ptr<Connection> conn;
  try {
    conn = connectShm(cfg.endpoint, options);
  } catch (const std::exception& e) {
    std::string peerSays = peer.failure(std::chrono::milliseconds(500));
    throw BenchError(std::string("connecting to shm://") + cfg.endpoint + ": " + e.what() +
                     (peerSays.empty() ? "" : " (peer process: " + peerSays + ")"));
  }

  // Allocated after fork and written once, so no page is shared copy-on-write or faulted
  // in during a measurement.
  std::vector<std::byte> payload(std::max(maxSize, kMiB));
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = std::byte(i * 131 + 7);
  std::vector<std::byte> pool(kPoolBytes);
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = std::byte(i * 31 + 1);
  std::vector<std::byte> copyTarget(kPoolBytes, std::byte{0x5a});
  uint64_t maxSamples = 0;
  for (size_t s : sizes) maxSamples = std::max(maxSamples, Budget::forPayload(s, o.seconds).maxIterations);
  std::vector<uint64_t> samples(std::max<uint64_t>(maxSamples, 4096));

  // Cycle both directions' rings and arenas once, so first-touch page faults of the
  // memfds land here and not in the first repetition.
  {
    auto prefault = [&](size_t bytes, uint64_t capacity) {
      Budget b;
      b.measure = std::chrono::seconds(10);
      b.maxIterations = capacity / bytes + 8;
      runCell(peer, Op::kZcrpcEcho, bytes, b.total(), "warming the connection", [&] {
        return zcrpcPingPong(*conn, std::span(payload).first(bytes), b, samples);
      });
    };
    prefault(options.ringBytes / 8, options.ringBytes);
    prefault(kMiB, options.arenaBytes);
  }

  for (unsigned rep = 0; rep < o.reps; ++rep) {
    Repetition r;
    r.zcrpcFirst = rep % 2 == 1;
    for (size_t size : sizes) {
      SizeResult s;
      s.payloadBytes = size;
      std::string label = fmt::format("rep {} {}", rep + 1, formatSize(size));
      Budget b = Budget::forPayload(size, o.seconds);
      auto data = std::span<const std::byte>(payload).first(size);
      auto floorCell = [&](const Budget& budget) {
        ring.clear(size);
        RawEnd end(ring, RawRole::kClient, size);
        return runCell(peer, Op::kFloorEcho, size, budget.total(), label + " floor ping-pong",
                       [&] { return floorPingPong(end, data, budget, samples, peer.controlFd()); });
      };
      // A shorter floor run on the other side of the zcrpc cell: if the host moved the CPUs
      // during the repetition, the two floors disagree and the report says so.
      Budget checkBudget = b;
      checkBudget.measure /= 4;
      checkBudget.warmup /= 4;
      checkBudget.maxIterations = std::max<uint64_t>(checkBudget.maxIterations / 4, 1000);
      auto zcrpcCell = [&] {
        return runCell(peer, Op::kZcrpcEcho, size, b.total(), label + " zcrpc ping-pong",
                       [&] { return zcrpcPingPong(*conn, data, b, samples); });
      };
      if (r.zcrpcFirst) {
        s.floorCheck = floorCell(checkBudget);
        s.zcrpc = zcrpcCell();
        s.floor = floorCell(b);
      } else {
        s.floor = floorCell(b);
        s.zcrpc = zcrpcCell();
        s.floorCheck = floorCell(checkBudget);
      }
      s.ratio = {safeRatio(s.zcrpc.p50Ns, s.floor.p50Ns), safeRatio(s.zcrpc.p99Ns, s.floor.p99Ns),
                 safeRatio(s.zcrpc.p999Ns, s.floor.p999Ns)};

      auto cellTime = std::chrono::nanoseconds(static_cast<int64_t>(o.seconds * 1e9));
      if (size >= kMiB)
        s.memcpyBytesPerSecond = memcpyBandwidth(pool, copyTarget, size, cellTime);
      uint64_t maxMessages = std::max<uint64_t>(1000, (uint64_t{64} << 30) / (size + 64));
      for (auto phase : {cellTime / 4, cellTime}) {  // warm-up, then the measured stream
        s.oneWay = runCell(peer, Op::kZcrpcSink, size, phase, label + " zcrpc one-way stream", [&] {
          return zcrpcStream(*conn, size, pool, o.batch, phase, maxMessages);
        });
      }
      if (s.memcpyBytesPerSecond)
        s.oneWayVsMemcpy = s.oneWay.bytesPerSecond / *s.memcpyBytesPerSecond;

      fmt::print(stderr,
                 "rep {}/{} {:<7} floor p50 {:>6} ns (check {:>6})  zcrpc p50 {:>6} ns ({:.2f}x)  "
                 "one-way {:.3g} msg/s {:.2f} GB/s{}\n",
                 rep + 1, o.reps, formatSize(size), s.floor.p50Ns, s.floorCheck.p50Ns,
                 s.zcrpc.p50Ns, s.ratio.p50,
                 s.oneWay.messagesPerSecond, s.oneWay.bytesPerSecond / 1e9,
                 s.oneWayVsMemcpy ? fmt::format(" ({:.2f}x memcpy {:.2f} GB/s)", *s.oneWayVsMemcpy,
                                                *s.memcpyBytesPerSecond / 1e9)
                                  : "");
      r.sizes.push_back(s);
    }
    result.reps.push_back(std::move(r));
  }

  conn.reset();
  peer.quit();
  cfg.loadEnd = loadAverage();

  printReport(stdout, result, ::isatty(STDOUT_FILENO) != 0);
  if (!o.json.empty()) {
    writeJson(o.json, result);
    fmt::print("JSON written to {}\n", o.json);
  }
  return 0;
}

}  // namespace

}  // namespace zcrpc::bench

int main(int argc, char** argv) {
  using zcrpc::bench::Options;
  Options o;
  CLI::App app{
      "zcrpc-bench: round-trip latency (vs a raw shared-memory floor) and one-way throughput "
      "of zcrpc's shm:// transport between two pinned processes"};
  app.add_option("--cpus", o.cpus, "CPUs for the measuring and the echo process: A,B")
      ->capture_default_str();
  app.add_option("--sizes", o.sizes, "Payload sizes (B, K/KiB, M/MiB), comma separated")
      ->delimiter(',')
      ->capture_default_str();
  auto* duration = app.add_option("--duration", o.seconds, "Seconds per measured cell")
                       ->check(CLI::Range(0.001, 60.0))
                       ->capture_default_str();
  auto* reps = app.add_option("--reps", o.reps, "Repetitions (ratios are per repetition)")
                   ->check(CLI::Range(1u, 100u))
                   ->capture_default_str();
  app.add_option("--wait-mode", o.waitMode, "zcrpc wait mode (the floor always busy-polls)")
      ->check(CLI::IsMember({"busy-poll", "spin-then-sleep", "blocking"}))
      ->capture_default_str();
  app.add_option("--batch", o.batch, "Messages per flush() in the one-way stream")
      ->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--json", o.json, "Also write all figures, every repetition, as JSON to FILE");
  app.add_flag("--quick", o.quick,
               "Short run (0.02 s per cell, 2 repetitions) unless --duration/--reps are given");
  CLI11_PARSE(app, argc, argv);
  if (o.quick) {
    if (duration->count() == 0) o.seconds = 0.02;
    if (reps->count() == 0) o.reps = 2;
  }
  ::signal(SIGPIPE, SIG_IGN);  // a dead peer shows up as an error, not as a signal
  try {
    return zcrpc::bench::run(o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "zcrpc-bench: error: {}\n", e.what());
  } catch (const kj::Exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "zcrpc-bench: error: Cap'n Proto: {}\n", e.getDescription().cStr());
  }
  return 1;
}
