#include "messages.h"

#include <fmt/format.h>
#include <kj/exception.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bench.capnp.h"
#include "cells.h"
#include "peer.h"
#include "raw_ring.h"
#include "zcrpc/shm.h"

namespace zcrpc::bench {

namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kPoolBytes = 64 * kMiB;  // stream source and memcpy buffers: beyond the caches
constexpr auto kIdleTimeout = std::chrono::seconds(120);  // peer: longest wait for a command
constexpr auto kReplyTimeout = std::chrono::seconds(10);

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
    if (c.payloadBytes > kMaxPayloadBytes || c.budgetNs < 0) throw BenchError("peer: bad command");
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
      case Op::kZcrpcEcho:
        r.value = zcrpcEcho(*conn, deadline);
        break;
      case Op::kZcrpcSink:
        r.value = zcrpcSink(*conn, c.payloadBytes, deadline);
        break;
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

double safeRatio(uint64_t a, uint64_t b) {
  return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0;
}

}  // namespace

Run runMessages(const MessagesOptions& o) {
  const int clientCpu = o.clientCpu, serverCpu = o.serverCpu;
  const std::vector<size_t>& sizes = o.sizes;
  if (sizes.empty()) throw BenchError("--sizes: no sizes given");
  size_t maxSize = *std::max_element(sizes.begin(), sizes.end());

  ConnectionOptions options;
  options.waitMode = o.waitMode;

  Run result;
  RunConfig& cfg = result.config;
  cfg.clientCpu = clientCpu;
  cfg.serverCpu = serverCpu;
  cfg.waitMode = std::string(waitModeName(o.waitMode));
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
  PeerProcess peer(
      [&](ControlChannel& control) { peerMain(control, serverCpu, cfg.endpoint, options, ring); });
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
  for (size_t s : sizes)
    maxSamples = std::max(maxSamples, Budget::forPayload(s, o.seconds).maxIterations);
  std::vector<uint64_t> samples(std::max<uint64_t>(maxSamples, 4096));

  // Cycle both directions' rings and arenas once, so first-touch page faults of the
  // memfds land here and not in the first repetition.
  {
    auto prefault = [&](size_t bytes, uint64_t capacity) {
      Budget b;
      b.measure = std::chrono::seconds(10);
      b.maxIterations = capacity / bytes + 8;
      runCell(peer, Op::kZcrpcEcho, bytes, b.total(), "warming the connection",
              [&] { return zcrpcPingPong(*conn, std::span(payload).first(bytes), b, samples); });
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
      {
        // Cap'n Proto's own work, in this process alone (the peer waits for a command).
        uint64_t preempted = preemptionCount();
        s.capnpWork =
            capnpWorkPingPong<Payload, Payload>(Budget::forPayload(0, o.seconds / 4), samples);
        s.capnpWork.preemptions = preemptionCount() - preempted;
        const uint64_t bound = s.floor.p50Ns + s.capnpWork.p50Ns;
        s.boundVsFloor = safeRatio(bound, s.floor.p50Ns);
        s.zcrpcVsBound = safeRatio(s.zcrpc.p50Ns, bound);
      }

      auto cellTime = std::chrono::nanoseconds(static_cast<int64_t>(o.seconds * 1e9));
      if (size >= kMiB) s.memcpyBytesPerSecond = memcpyBandwidth(pool, copyTarget, size, cellTime);
      uint64_t maxMessages = std::max<uint64_t>(1000, (uint64_t{64} << 30) / (size + 64));
      for (auto phase : {cellTime / 4, cellTime}) {  // warm-up, then the measured stream
        s.oneWay = runCell(peer, Op::kZcrpcSink, size, phase, label + " zcrpc one-way stream", [&] {
          return zcrpcStream(*conn, size, pool, o.batch, phase, maxMessages);
        });
      }
      if (s.memcpyBytesPerSecond)
        s.oneWayVsMemcpy = s.oneWay.bytesPerSecond / *s.memcpyBytesPerSecond;

      fmt::print(stderr,
                 "messages rep {}/{} {:<7} floor p50 {:>6} ns (check {:>6})  zcrpc p50 {:>6} ns "
                 "({:.2f}x)  capnp work {:>6} ns  "
                 "one-way {:.3g} msg/s {:.2f} GB/s{}\n",
                 rep + 1, o.reps, formatSize(size), s.floor.p50Ns, s.floorCheck.p50Ns,
                 s.zcrpc.p50Ns, s.ratio.p50, s.capnpWork.p50Ns, s.oneWay.messagesPerSecond,
                 s.oneWay.bytesPerSecond / 1e9,
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

  return result;
}

}  // namespace zcrpc::bench
