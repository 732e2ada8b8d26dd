#include "rpc_mode.h"

#include <fmt/format.h>
#include <kj/exception.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "capnp_ref.h"
#include "raw_ring.h"
#include "zcrpc/rpc.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"

namespace zcrpc::bench {

namespace {

constexpr auto kIdleTimeout = std::chrono::seconds(120);  // peer: longest wait for a command
constexpr auto kReplyTimeout = std::chrono::seconds(10);
constexpr auto kShutdownGrace = std::chrono::seconds(2);
constexpr auto kPrefaultTime = std::chrono::seconds(3);  // longest prefault of a connection
/// Room for an echo frame's bytes beyond its payload (header, pointers, segment table:
/// 80 bytes today) in the raw TCP cell that sends as many bytes as zcrpc's frames.
constexpr size_t kFrameSlack = 4096;

double safeRatio(uint64_t a, uint64_t b) {
  return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0;
}

Ratios ratios(const Latency& a, const Latency& b) {
  return {safeRatio(a.p50Ns, b.p50Ns), safeRatio(a.p99Ns, b.p99Ns), safeRatio(a.p999Ns, b.p999Ns)};
}

std::string referenceName(Transport t) { return t == Transport::kShm ? "floor" : "raw tcp"; }

// ---- peer side ---------------------------------------------------------------------------

/// The peer's state across cells. Threads: the peer's main thread (the zcrpc server's
/// worker and acceptor threads are started and joined inside one cell).
/// Echo payloads from this size on go by reference: over tcp only, which writes them from
/// the caller's memory. shm copies referenced data into its arena, where setData() builds
/// it in the ring (faster; measured 5.5 vs 7.7 us at 64 KiB), so shm payloads are copied in.
size_t referenceFromFor(const RpcOptions& o, Transport t) {
  return t == Transport::kTcp ? o.referenceFrom : SIZE_MAX;
}

class RpcPeer final {
 public:
  RpcPeer(ControlChannel& control, const RawRing& ring, const RpcOptions& o, size_t maxPayload)
      : control_(control), ring_(ring), o_(o), buffer_(maxPayload) {}

  void run(int cpu) {
    pinToCpu(cpu);  // before any thread starts: the server's threads inherit the CPU
    std::fill(buffer_.begin(), buffer_.end(), std::byte{0});  // fault the pages in now
    reply(ReplyKind::kReady);
    for (;;) {
      Command c;
      if (!control_.receive(c, Clock::now() + kIdleTimeout))
        throw BenchError("peer: no command from the measuring process for 120 s");
      if (c.op == Op::kQuit) {
        reply(ReplyKind::kDone);
        return;
      }
      if (c.payloadBytes > buffer_.size() || c.budgetNs < 0) throw BenchError("peer: bad command");
      Deadline deadline = Clock::now() + std::chrono::nanoseconds(c.budgetNs) + kStallTimeout;
      uint64_t preempted = preemptionCount();
      Reply done;
      done.kind = ReplyKind::kDone;
      switch (c.op) {
        case Op::kFloorEcho: {
          RawEnd end(ring_, RawRole::kServer, c.payloadBytes, c.waitMode, o_.spinTime);
          reply(ReplyKind::kStarted);
          done.value = floorEcho(end, deadline);
          break;
        }
        case Op::kRawTcpEcho:
          done.value = rawTcpEcho(c, deadline);
          break;
        // A serving cell ends when the measuring side says so; it has its own stall bounds
        // (for each wait, and the drain of a pipelined window), so the peer allows for them.
        case Op::kRpcServe:
          done.value = serveZcrpc(c, deadline + 2 * kStallTimeout);
          break;
        case Op::kCapnpServe:
          serveCapnp(c, deadline + 2 * kStallTimeout);
          break;
        default:
          throw BenchError(fmt::format("peer: unknown command {}", static_cast<uint32_t>(c.op)));
      }
      done.preemptions = preemptionCount() - preempted;
      control_.send(done);
    }
  }

 private:
  void reply(ReplyKind kind, const std::string& text = {}) {
    Reply r;
    r.kind = kind;
    std::strncpy(r.text, text.c_str(), sizeof r.text - 1);
    control_.send(r);
  }

  /// Waits for the measuring side's kEndCell. Throws BenchError if it does not come.
  void awaitEndOfCell(Deadline deadline, const char* what) {
    Command end;
    if (!control_.receive(end, deadline))
      throw BenchError(fmt::format("peer: the measuring process did not end the {} cell", what));
    if (end.op != Op::kEndCell)
      throw BenchError(fmt::format("peer: command {} in the middle of the {} cell",
                                   static_cast<uint32_t>(end.op), what));
  }

  uint64_t rawTcpEcho(const Command& c, Deadline deadline) {
    uint16_t port = 0;
    TcpSocket listener = TcpSocket::listenLoopback(port);
    reply(ReplyKind::kStarted, std::to_string(port));
    TcpSocket socket = listener.accept(deadline);
    socket.prepare(c.waitMode);
    return bench::rawTcpEcho(socket, c.payloadBytes, buffer_, c.waitMode, o_.spinTime, deadline);
  }

  /// Serves echo calls until the cell ends; returns the largest request frame's bytes.
  uint64_t serveZcrpc(const Command& c, Deadline deadline) {
    ServerOptions so;
    so.workerThreads = 1;
    so.idleMode = c.waitMode;
    so.spinTime = o_.spinTime;
    so.metrics = o_.metrics;
    BenchEchoService service(referenceFromFor(o_, c.transport));  // outlives the server
    Server server(so);
    server.addService(service);
    ConnectionOptions co;
    co.waitMode = c.waitMode;
    co.spinTime = o_.spinTime;
    std::string endpoint;
    if (c.transport == Transport::kShm) {
      ShmListenOptions lo;
      lo.connection = co;
      endpoint = fmt::format("zcrpc-bench-{}-rpc-{}", ::getpid(), ++serves_);
      server.addListener(listenShm(endpoint, lo));
    } else {
      TcpOptions to;
      to.connection = co;
      auto listener = listenTcp("127.0.0.1:0", to);
      endpoint = listener->endpoint();
      server.addListener(std::move(listener));
    }
    server.start();
    reply(ReplyKind::kStarted, endpoint);
    awaitEndOfCell(deadline, "zcrpc");
    server.shutdown(deadlineAfter(kShutdownGrace));
    return service.largestFrameBytes();
  }

  void serveCapnp(const Command& c, Deadline deadline) {
    std::string bind = c.transport == Transport::kShm
                           ? fmt::format("unix:/tmp/zcrpc-bench-{}-capnp.sock", ::getpid())
                           : std::string("127.0.0.1:0");
    Command end;
    bool ended = serveCapnpEcho(
        bind, control_.fd(), deadline - Clock::now(),
        [&](const std::string& address) { reply(ReplyKind::kStarted, address); },
        std::as_writable_bytes(std::span(&end, 1)));
    if (!ended || end.op != Op::kEndCell)
      throw BenchError("peer: the measuring process did not end the Cap'n Proto cell");
  }

  ControlChannel& control_;
  const RawRing& ring_;
  const RpcOptions& o_;
  std::vector<std::byte> buffer_;  // raw TCP echo
  unsigned serves_ = 0;
};

// ---- measuring side ----------------------------------------------------------------------

/// The measuring process's state across cells. Threads: its main thread.
class RpcDriver final {
 public:
  RpcDriver(PeerProcess& peer, RawRing& ring, const RpcOptions& o, size_t maxPayload)
      : peer_(peer), ring_(ring), o_(o), payload_(maxPayload), buffer_(maxPayload, std::byte{0}) {
    for (size_t i = 0; i < payload_.size(); ++i) payload_[i] = std::byte(i * 131 + 7);
    uint64_t maxSamples = 4096;
    for (size_t s : o.sizes)
      maxSamples = std::max(maxSamples, Budget::forPayload(s, o.seconds).maxIterations);
    samples_.assign(maxSamples, 0);
  }

  RpcCell measure(Transport t, WaitMode w, size_t size, unsigned rep, const std::string& label) {
    RpcCell cell;
    cell.transport = t;
    cell.waitMode = w;
    cell.payloadBytes = size;
    const Budget b = Budget::forPayload(size, o_.seconds);
    const auto data = std::span<const std::byte>(payload_).first(size);
    // The reference runs right before or right after zcrpc in every repetition, so the
    // ratio compares cells a fraction of a second apart: the host moves the two vCPUs
    // every few seconds to minutes, which changes a round trip by up to 2x. Which of the
    // two runs first alternates; over tcp the raw ping-pong of zcrpc's frame bytes (their
    // size comes from the zcrpc cell) follows them, and Cap'n Proto RPC runs first or last.
    enum Kind { kRef, kZcrpc, kRefFrame, kCapnp };
    static constexpr std::array<std::array<Kind, 4>, 3> kOrders{{
        {kRef, kZcrpc, kRefFrame, kCapnp},
        {kCapnp, kRef, kZcrpc, kRefFrame},
        {kZcrpc, kRef, kRefFrame, kCapnp},
    }};
    for (Kind k : kOrders[rep % kOrders.size()]) {
      if (k == kRefFrame && t != Transport::kTcp) continue;
      if (!cell.order.empty()) cell.order += ',';
      switch (k) {
        case kRef:
          cell.order += "ref";
          cell.reference =
              t == Transport::kShm ? floorCell(w, data, b, label) : rawTcpCell(w, data, b, label);
          break;
        case kZcrpc:
          cell.order += "zcrpc";
          cell.zcrpc = zcrpcLatencyCell(t, w, data, b, label, &cell.frameBytes);
          break;
        case kRefFrame:
          // The same bytes as zcrpc's frames: what the kernel charges for them.
          if (cell.frameBytes < size || cell.frameBytes > payload_.size())
            throw BenchError(fmt::format("{}: the peer saw request frames of {} bytes for {}-byte "
                                         "payloads", label, cell.frameBytes, size));
          cell.order += "ref-frame";
          cell.frameReference = rawTcpCell(
              w, std::span<const std::byte>(payload_).first(cell.frameBytes), b, label + " frame-size");
          break;
        case kCapnp:
          cell.order += "capnp";
          cell.capnp = capnpCell(t, data, b, label);
          break;
      }
    }
    cell.pipelined = pipelinedCell(t, w, data, label);
    cell.zcrpcVsReference = ratios(cell.zcrpc, cell.reference);
    cell.capnpVsZcrpc = ratios(cell.capnp, cell.zcrpc);
    cell.capnpVsReference = safeRatio(cell.capnp.p50Ns, cell.reference.p50Ns);
    // Cap'n Proto's own work, in this process alone (the peer waits for a command).
    uint64_t preempted = preemptionCount();
    cell.capnpWork = capnpWorkPingPong<echo::Echo::EchoParams, echo::Echo::EchoResults>(
        Budget::forPayload(0, o_.seconds / 4), samples_);
    cell.capnpWork.preemptions = preemptionCount() - preempted;
    const double reference = static_cast<double>(cell.reference.p50Ns);
    const uint64_t moved = t == Transport::kShm ? cell.reference.p50Ns : cell.frameReference.p50Ns;
    if (t == Transport::kTcp) cell.frameVsReference = safeRatio(moved, cell.reference.p50Ns);
    const double bound = static_cast<double>(moved + cell.capnpWork.p50Ns);
    cell.boundVsReference = reference > 0 ? bound / reference : 0;
    cell.zcrpcVsBound = bound > 0 ? static_cast<double>(cell.zcrpc.p50Ns) / bound : 0;
    return cell;
  }

 private:
  /// Starts a cell on the peer, runs `measure` with the endpoint the peer reported, ends
  /// the cell (kEndCell when `endCommand`) and waits for the peer. `preemptions` of the
  /// result count both processes. A failure names the cell and the peer's own reason.
  template <typename Measure>
  auto runCell(const Command& c, const std::string& what, bool endCommand, Measure&& measure,
               uint64_t* peerValue = nullptr) {
    peer_.send(c);
    Reply started = peer_.expect(ReplyKind::kStarted, Clock::now() + kReplyTimeout, what);
    started.text[sizeof started.text - 1] = 0;
    const std::string endpoint = started.text;
    uint64_t preempted = preemptionCount();
    std::optional<decltype(measure(endpoint))> result;
    try {
      result.emplace(measure(endpoint));
    } catch (const std::exception& e) {
      std::string peerSays = peer_.failure(std::chrono::milliseconds(500));
      throw BenchError(what + ": " + e.what() +
                       (peerSays.empty() ? "" : " (peer process: " + peerSays + ")"));
    } catch (const kj::Exception& e) {
      std::string peerSays = peer_.failure(std::chrono::milliseconds(500));
      throw BenchError(what + ": Cap'n Proto: " + e.getDescription().cStr() +
                       (peerSays.empty() ? "" : " (peer process: " + peerSays + ")"));
    }
    result->preemptions = preemptionCount() - preempted;
    if (endCommand) {
      Command end;
      end.op = Op::kEndCell;
      peer_.send(end);
    }
    auto budget = std::chrono::nanoseconds(c.budgetNs);
    Reply done = peer_.expect(ReplyKind::kDone, Clock::now() + kReplyTimeout + budget, what);
    result->preemptions += done.preemptions;
    if (peerValue) *peerValue = done.value;
    return *result;
  }

  static Command command(Op op, Transport t, WaitMode w, size_t size,
                         std::chrono::nanoseconds budget) {
    Command c;
    c.op = op;
    c.transport = t;
    c.waitMode = w;
    c.payloadBytes = size;
    c.budgetNs = budget.count();
    return c;
  }

  ConnectionOptions connectionOptions(WaitMode w) const {
    ConnectionOptions co;
    co.waitMode = w;
    co.spinTime = o_.spinTime;
    return co;
  }

  std::unique_ptr<Connection> connect(Transport t, WaitMode w, const std::string& endpoint) {
    if (t == Transport::kShm) return connectShm(endpoint, connectionOptions(w));
    TcpOptions to;
    to.connection = connectionOptions(w);
    return connectTcp(endpoint, to);
  }

  ChannelOptions channelOptions() const {
    ChannelOptions co;
    co.window = std::max<uint32_t>(64, std::bit_ceil(o_.window));
    co.metrics = o_.metrics;
    return co;
  }

  Latency floorCell(WaitMode w, std::span<const std::byte> data, const Budget& b,
                    const std::string& label) {
    ring_.clear(data.size());
    auto c = command(Op::kFloorEcho, Transport::kShm, w, data.size(), b.total());
    return runCell(c, label + " floor ping-pong", false, [&](const std::string&) {
      RawEnd end(ring_, RawRole::kClient, data.size(), w, o_.spinTime);
      return floorPingPong(end, data, b, samples_, peer_.controlFd());
    });
  }

  Latency rawTcpCell(WaitMode w, std::span<const std::byte> data, const Budget& b,
                     const std::string& label) {
    auto c = command(Op::kRawTcpEcho, Transport::kTcp, w, data.size(), b.total());
    return runCell(c, label + " raw tcp ping-pong", false, [&](const std::string& port) {
      TcpSocket socket = TcpSocket::connectLoopback(static_cast<uint16_t>(std::stoul(port)));
      socket.prepare(w);
      return rawTcpPingPong(socket, data, buffer_, w, o_.spinTime, b, samples_);
    });  // the socket closes before the peer is asked for kDone: its echo loop sees EOF
  }

  /// A new shm connection's ring and arena are fresh memfd pages: echo calls that cycle
  /// once through both directions' ring and arena, so first-touch page faults land here and
  /// not in the warm-up or the measurement (messages mode prefaults its one connection the
  /// same way). Bounded by kPrefaultTime.
  void prefault(Transport t, echo::EchoClient& client, std::span<const std::byte> data) {
    if (t != Transport::kShm) return;
    const ConnectionOptions defaults;
    const uint64_t bytes = defaults.ringBytes + defaults.arenaBytes;
    const uint64_t calls = bytes / std::max<size_t>(data.size(), 4096) + 16;
    Budget b;
    b.measure = kPrefaultTime;
    b.maxIterations = calls;
    (void)rpcPingPong(client, data, referenceFromFor(o_, t), b, samples_);
  }

  /// `frameBytes`: the largest request frame the peer's echo saw.
  Latency zcrpcLatencyCell(Transport t, WaitMode w, std::span<const std::byte> data,
                           const Budget& b, const std::string& label, uint64_t* frameBytes) {
    auto c = command(Op::kRpcServe, t, w, data.size(), b.total() + kPrefaultTime);
    return runCell(
        c, label + " zcrpc echo", true,
        [&](const std::string& endpoint) {
          Channel channel(connect(t, w, endpoint), channelOptions());
          echo::EchoClient client(channel);
          prefault(t, client, data);
          return rpcPingPong(client, data, referenceFromFor(o_, t), b, samples_);
        },
        frameBytes);
  }

  Latency capnpCell(Transport t, std::span<const std::byte> data, const Budget& b,
                    const std::string& label) {
    auto c = command(Op::kCapnpServe, t, WaitMode::kBlocking, data.size(), b.total());
    return runCell(c, label + " Cap'n Proto RPC echo", true, [&](const std::string& address) {
      return capnpPingPong(address, data, b, samples_);
    });
  }

  /// The pipelined window for `size` over `t`: the requested one, capped so the calls in
  /// flight fit in one ring (shm: in the arena for messages that go there; tcp: the
  /// connection's send queue, which blocks the sender beyond ringBytes). A larger window
  /// runs into back-pressure instead (see rpc_mode.h).
  uint32_t pipelineWindow(Transport t, size_t size) const {
    if (o_.uncappedWindow) return o_.window;
    const ConnectionOptions defaults;     // the server's sizes: the peer listens with defaults
    const uint64_t message = size + 128;  // payload, capnp pointers, frame and record headers
    const uint64_t room = t == Transport::kShm && message > defaults.ringBytes / 4
                              ? defaults.arenaBytes
                              : defaults.ringBytes;
    return static_cast<uint32_t>(std::clamp<uint64_t>(room / message, 1, o_.window));
  }

  Pipelined pipelinedCell(Transport t, WaitMode w, std::span<const std::byte> data,
                          const std::string& label) {
    auto cellTime = std::chrono::nanoseconds(static_cast<int64_t>(o_.seconds * 1e9));
    auto c = command(Op::kRpcServe, t, w, data.size(), cellTime + cellTime / 4 + kPrefaultTime);
    uint64_t maxCalls = std::max<uint64_t>(1000, (uint64_t{64} << 30) / (data.size() + 64));
    return runCell(c, label + " zcrpc pipelined", true, [&](const std::string& endpoint) {
      Channel channel(connect(t, w, endpoint), channelOptions());
      echo::EchoClient client(channel);
      prefault(t, client, data);
      const uint32_t window = pipelineWindow(t, data.size());
      (void)rpcPipelined(client, data, referenceFromFor(o_, t), window, cellTime / 4, maxCalls);  // warm-up
      return rpcPipelined(client, data, referenceFromFor(o_, t), window, cellTime, maxCalls);
    });
  }

  PeerProcess& peer_;
  RawRing& ring_;
  const RpcOptions& o_;
  std::vector<std::byte> payload_;
  std::vector<std::byte> buffer_;  // raw TCP receive
  std::vector<uint64_t> samples_;
};

std::string shortNs(uint64_t ns) {
  if (ns < 10'000) return fmt::format("{} ns", ns);
  if (ns < 10'000'000) return fmt::format("{:.1f} us", static_cast<double>(ns) / 1e3);
  return fmt::format("{:.1f} ms", static_cast<double>(ns) / 1e6);
}

}  // namespace

std::string_view transportName(Transport t) noexcept {
  return t == Transport::kShm ? "shm" : "tcp";
}

Transport parseTransport(std::string_view text) {
  if (text == "shm") return Transport::kShm;
  if (text == "tcp") return Transport::kTcp;
  throw BenchError("transport '" + std::string(text) + "' must be shm or tcp");
}

RpcRun runRpc(const RpcOptions& o) {
  if (o.sizes.empty()) throw BenchError("--sizes: no sizes given");
  if (o.transports.empty()) throw BenchError("--transports: no transport given");
  if (o.waitModes.empty()) throw BenchError("--wait-modes: no wait mode given");
  const size_t maxSize = *std::max_element(o.sizes.begin(), o.sizes.end());
  RpcRun run;
  run.options = o;
  run.loadStart = loadAverage();

  RawRing ring(maxSize);  // before fork: both processes share it
  std::fflush(stdout);
  std::fflush(stderr);
  // Raw TCP cells also send zcrpc's frame size, a little over the payload.
  const size_t rawMax = maxSize + kFrameSlack;
  PeerProcess peer(
      [&](ControlChannel& control) { RpcPeer(control, ring, o, rawMax).run(o.serverCpu); });
  pinToCpu(o.clientCpu);
  peer.expect(ReplyKind::kReady, Clock::now() + kReplyTimeout, "starting the RPC peer process");
  RpcDriver driver(peer, ring, o, rawMax);

  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const size_t total = o.reps * o.transports.size() * o.waitModes.size() * o.sizes.size();
  size_t done = 0;
  for (unsigned rep = 0; rep < o.reps; ++rep) {
    std::vector<RpcCell> cells;
    for (Transport t : o.transports) {
      for (WaitMode w : o.waitModes) {
        for (size_t size : o.sizes) {
          ++done;
          std::string what =
              fmt::format("{} {} {}", transportName(t), formatSize(size), waitModeName(w));
          std::string prefix =
              fmt::format("[{}/{}] rep {}/{} {}", done, total, rep + 1, o.reps, what);
          if (tty) {
            fmt::print(stderr, "{} ...", prefix);
            std::fflush(stderr);
          }
          RpcCell cell =
              driver.measure(t, w, size, rep, fmt::format("rpc rep {} {}", rep + 1, what));
          fmt::print(stderr,
                     "{}{}: {} p50 {}, zcrpc {} ({:.2f}x), capnp {} ({:.1f}x zcrpc), "
                     "pipelined {:.3g} calls/s ({:.3g} stall-free)\n",
                     tty ? "\r\033[K" : "", prefix, referenceName(t), shortNs(cell.reference.p50Ns),
                     shortNs(cell.zcrpc.p50Ns), cell.zcrpcVsReference.p50,
                     shortNs(cell.capnp.p50Ns), cell.capnpVsZcrpc.p50,
                     cell.pipelined.callsPerSecond, cell.pipelined.stallFreeCallsPerSecond);
          cells.push_back(std::move(cell));
        }
      }
    }
    run.reps.push_back(std::move(cells));
  }
  peer.quit();
  run.loadEnd = loadAverage();
  return run;
}

}  // namespace zcrpc::bench
