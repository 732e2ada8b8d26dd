#include <capnp/message.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bench.capnp.h"
#include "callback.capnp.zcrpc.h"
#include "echo.capnp.zcrpc.h"
#include "system.h"
#include "zcrpc/capnp.h"
#include "zcrpc/message.h"
#include "zcrpc/rpc.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"

namespace zcrpc::bench {

namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr auto kPrefaultTime = std::chrono::seconds(3);  // longest prefault of a connection

/// How long a new connection's rings and arenas are cycled: until done, at most 3 s and
/// 8 times the cell (a --quick cell prefaults briefly: its figures are a smoke test's).
std::chrono::nanoseconds prefaultTime(const Budget& cell) {
  return std::min<std::chrono::nanoseconds>(kPrefaultTime, 8 * cell.total());
}
constexpr auto kShutdownGrace = std::chrono::seconds(2);
constexpr auto kStall = std::chrono::milliseconds(2);  // a pipelined pass this long was stalled
constexpr uint64_t kStopSeq = UINT64_MAX;  // seq of the message that ends a messages cell

kj::ArrayPtr<const kj::byte> bytesOf(std::span<const std::byte> s) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

void check(Status s, const char* what, const Connection& conn) {
  if (s == Status::kOk) return;
  std::string why = conn.lastError();
  throw BenchError(fmt::format("{} on {}: {}{}{}", what, conn.endpoint(), statusName(s),
                               why.empty() ? "" : ": ", why));
}

/// 64 MiB written once: the one-way stream's source (beyond the caches, as a real sender's
/// data would be) and memcpy's buffers. Allocated on first use, in the process that uses it.
std::span<std::byte> pool(int which) {
  static std::array<std::vector<std::byte>, 2> pools;
  auto& p = pools[which];
  if (p.empty()) {
    p.resize(64 * kMiB);
    for (size_t i = 0; i < p.size(); ++i) p[i] = std::byte(i * 31 + which);
  }
  return p;
}

ConnectionOptions connectionOptions(const Settings& s, WaitMode w,
                                    SpinPolicy p = SpinPolicy::kAdaptive) {
  ConnectionOptions co;
  co.waitMode = w;
  co.spinTime = s.spinTime;
  co.spinPolicy = p;
  return co;
}

// ---- RPC ---------------------------------------------------------------------------------

/// Echo answers with the request's data (read in place): copied into an answer built in
/// place (the one copy an echo makes) or, from `referenceFrom` bytes on, by reference to the
/// request, as the raw TCP echo sends back the buffer it read into. It notes the largest
/// request frame (header, segments, table: the bytes a stream transport carries), so a raw
/// ping-pong of the same bytes can be measured, and counts the one-way sinks. Threads: the
/// server's worker; as the callback rows' client object, the thread that polls the Channel.
class BenchEchoService final : public echo::EchoService {
 public:
  explicit BenchEchoService(size_t referenceFrom) noexcept : referenceFrom_(referenceFrom) {}
  void echo(EchoCall& call) override {
    if (noteArrivals) arrivals.push_back(Clock::now());  // reserved: no allocation
    const uint64_t frame = call.context().request().header().frameBytes;
    if (frame > largestFrame_.load(std::memory_order_relaxed)) largestFrame_ = frame;
    capnp::Data::Reader data = call.params().getData();
    if (data.size() >= referenceFrom_)  // the request stays until the answer is sent
      call.context().response().referenceData(call.results(echoWords(0)), "data", data);
    else
      call.results(echoWords(data.size())).setData(data);
  }
  void ping(PingCall&) override {}
  // Reads its data, as echo.capnp says and as the stream rows' Chunks.put reads each
  // chunk: the one-way floor a stream is set against does the same work per message.
  void sink(SinkCall& call) override {
    lastSinkBytes_ = call.params().getData().size();
    sinks_.fetch_add(1, std::memory_order_relaxed);
  }
  void delay(DelayCall&) override { throw ApplicationError(1, "zcrpc-bench: no delay"); }
  void fail(FailCall& call) override {
    throw ApplicationError(call.params().getCode(), call.params().getMessage().cStr());
  }
  std::atomic<uint64_t> largestFrame_{0};
  std::atomic<uint64_t> sinks_{0};
  size_t lastSinkBytes_ = 0;  // the worker's; what sink() read
  /// The callback rows: when each echo arrived (reserve room first).
  bool noteArrivals = false;
  std::vector<Clock::time_point> arrivals;

 private:
  size_t referenceFrom_;
};

/// The stream rows' receiver: checks each chunk's size and counts it; flush answers the count
/// (every chunk sent before it was handled first). Threads: the server's worker.
class BenchChunks final : public callback::ChunksService {
 public:
  explicit BenchChunks(uint64_t bytes) noexcept : bytes_(bytes) {}
  void put(PutCall& call) override {
    if (size_t got = call.params().getData().size(); got != bytes_)
      throw ApplicationError(
          1, fmt::format("zcrpc-bench: a chunk of {} bytes, expected {}", got, bytes_));
    ++count_;
  }
  void flush(FlushCall& call) override { call.results().setCount(count_); }

 private:
  uint64_t bytes_, count_ = 0;
};

/// The callback rows' server: calls the client's Echo `count` times with `size` bytes of
/// `data`, each waiting for its answer (the worker dispatches the connection's other frames
/// meanwhile), then answers. Threads: the server's worker.
class BenchPump final : public callback::PumpService {
 public:
  explicit BenchPump(std::span<const std::byte> data) noexcept : data_(data) {}
  void pump(PumpCall& call) override {
    echo::EchoClient target(call.params().getTarget());
    const uint32_t count = call.params().getCount(), size = call.params().getSize();
    if (size > data_.size())
      throw ApplicationError(
          1, fmt::format("zcrpc-bench: pump of {} bytes, room for {}", size, data_.size()));
    for (uint32_t i = 0; i < count; ++i) {
      auto req = target.echoRequest(echoWords(size));
      req.params().setData(bytesOf(data_.first(size)));
      if (req.call().results().getData().size() != size)
        throw ApplicationError(1, "zcrpc-bench: the callback's echo came back with another size");
    }
  }

 private:
  std::span<const std::byte> data_;
};

constexpr uint32_t kPumpBatch = 256;  // callbacks per Pump.pump call

/// Which peers a ZcrpcRpc cell puts together.
enum class Flavor : uint8_t {
  kNative,         ///< zcrpc Channel -> zcrpc Server, over shm:// or tcp://
  kCapnpListener,  ///< EzRpcClient -> zcrpc Server's capnp listener (unix socket or TCP)
  kCapnpClient,    ///< zcrpc Channel over capnp:// -> EzRpcServer
};

class ZcrpcRpc final : public System {
 public:
  ZcrpcRpc(const Settings& s, Flavor flavor, SpinPolicy spin = SpinPolicy::kAdaptive)
      : s_(s), flavor_(flavor), spin_(spin) {}

  SeriesInfo info(Transport t) const override {
    const bool unix = t == Transport::kShm;
    switch (flavor_) {
      case Flavor::kCapnpListener:
        return {"zcrpc-capnp",
                unix ? "zcrpc capnp+unix listener <- EzRpcClient" : "zcrpc capnp listener <- EzRpcClient",
                Role::kZcrpc};
      case Flavor::kCapnpClient:
        return {"zcrpc-capnp-client",
                unix ? "zcrpc Channel over capnp+unix -> EzRpcServer"
                     : "zcrpc Channel over capnp -> EzRpcServer",
                Role::kZcrpc};
      case Flavor::kNative:
        break;
    }
    if (spin_ == SpinPolicy::kFixed)
      return {"zcrpc-fixed-spin", "zcrpc, spin_policy fixed", Role::kZcrpc};
    return {"zcrpc", "zcrpc", Role::kZcrpc};
  }
  bool covers(Transport) const override { return true; }

  void serve(PeerCell& cell) override {
    if (flavor_ == Flavor::kCapnpClient) return serveCapnpEcho(cell);
    ServerOptions so;
    so.workerThreads = 1;
    so.idleMode = cell.spec.waitMode;
    so.spinTime = s_.spinTime;
    so.spinPolicy = spin_;
    so.metrics = s_.metrics;
    BenchEchoService service(referenceFrom(cell.spec.transport));  // these outlive the server
    std::optional<BenchChunks> chunks;
    std::optional<BenchPump> pump;
    Server server(so);
    server.addService(service);
    // Only where used: the echo rows' server serves Echo alone.
    if (cell.spec.measure == Measure::kStream)
      server.addService(chunks.emplace(cell.spec.payloadBytes));
    if (cell.spec.measure == Measure::kCallback || cell.spec.measure == Measure::kCallbackInPlace)
      server.addService(pump.emplace(cell.scratch));
    const ConnectionOptions co = connectionOptions(s_, cell.spec.waitMode, spin_);
    std::string endpoint;
    if (flavor_ == Flavor::kCapnpListener) {
      // The same handler, served to Cap'n Proto's own client through the capnp listener,
      // on a socket of the kind EzRpcServer gets in this row (its endpoint in kj's form).
      CapnpOptions o;
      o.connection = co;
      if (cell.spec.transport == Transport::kShm) {
        const std::string path = fmt::format("/tmp/zcrpc-bench-{}-zcrpc-capnp-{}.sock", ::getpid(), ++serves_);
        server.addListener(listenCapnpUnix(path, o));  // removes the socket file when it goes
        endpoint = "unix:" + path;
      } else {
        auto listener = listenCapnp("127.0.0.1:0", o);
        endpoint = listener->endpoint().substr(std::string_view("capnp://").size());
        server.addListener(std::move(listener));
      }
    } else if (cell.spec.transport == Transport::kShm) {
      ShmListenOptions lo;
      lo.connection = co;
      endpoint = fmt::format("zcrpc-bench-{}-rpc-{}", ::getpid(), ++serves_);
      server.addListener(listenShm(endpoint, lo));
    } else {
      TcpOptions to;
      to.connection = co;
      if (cell.spec.tls) {
        to.tls.enabled = true;
        to.tls.certFile = s_.tlsFiles.cert;
        to.tls.keyFile = s_.tlsFiles.key;
      }
      auto listener = listenTcp("127.0.0.1:0", to);
      endpoint = listener->endpoint();
      server.addListener(std::move(listener));
    }
    server.start();
    cell.started(endpoint);
    cell.awaitEnd();
    server.shutdown(deadlineAfter(kShutdownGrace));
    cell.value = cell.spec.measure == Measure::kOneWay ? service.sinks_.load()
                                                       : service.largestFrame_.load();
  }

  Figure measure(ClientCell& cell) override {
    const Transport t = cell.spec.transport;
    const ConnectionOptions co = connectionOptions(s_, cell.spec.waitMode, spin_);
    if (flavor_ == Flavor::kCapnpListener) {
      Figure f;
      f.latency = capnpEchoLatency(cell, cell.endpoint);
      return f;
    }
    std::unique_ptr<Connection> conn;
    if (flavor_ == Flavor::kCapnpClient) {
      CapnpOptions o;
      o.connection = co;
      const std::string_view unixPrefix = "unix:";
      conn = cell.endpoint.rfind(unixPrefix, 0) == 0 ? connectCapnpUnix(cell.endpoint.substr(unixPrefix.size()), o)
                                                    : connectCapnp(cell.endpoint, o);
    } else if (t == Transport::kShm) {
      conn = connectShm(cell.endpoint, co);
    } else {
      TcpOptions to;
      to.connection = co;
      if (cell.spec.tls) {
        to.tls.enabled = true;
        to.tls.caFile = s_.tlsFiles.ca;
      }
      conn = connectTcp(cell.endpoint, to);
    }
    ChannelOptions cho;
    cho.window = std::max<uint32_t>(64, std::bit_ceil(s_.window));
    cho.metrics = s_.metrics;
    Channel channel(std::move(conn), cho);
    echo::EchoClient client(channel);
    if (t == Transport::kShm && flavor_ == Flavor::kNative) {  // cycle both directions' ring and arena once
      const ConnectionOptions defaults;
      Budget b;
      b.measure = kPrefaultTime;
      b.maxIterations =
          (defaults.ringBytes + defaults.arenaBytes) / std::max<size_t>(cell.payload.size(), 4096) +
          16;
      (void)pingPong(client, cell, b);
    }
    Figure f;
    switch (cell.spec.measure) {
      case Measure::kPipelined: {
        const uint64_t maxCalls =
            std::max<uint64_t>(1000, (uint64_t{64} << 30) / (cell.payload.size() + 64));
        (void)pipelined(client, cell, cell.budget.measure / 4, maxCalls);  // warm-up
        f.rate = pipelined(client, cell, cell.budget.measure, maxCalls);
        break;
      }
      case Measure::kOneWay:
      case Measure::kStream: {
        uint64_t chunks = 0;  // sent on this connection so far
        (void)oneWay(client, cell, cell.budget.measure / 4, chunks);  // warm-up
        f.rate = oneWay(client, cell, cell.budget.measure, chunks);
        break;
      }
      case Measure::kCallback:
      case Measure::kCallbackInPlace:
        f.latency = callbacks(channel, cell, cell.spec.measure == Measure::kCallbackInPlace
                                                 ? Capability::Requests::kInPlace
                                                 : Capability::Requests::kCopied);
        break;
      default:  // closed or open loop (cell.budget)
        f.latency = pingPong(client, cell, cell.budget);
    }
    return f;
  }

 private:
  size_t referenceFrom(Transport t) const {
    // Over tcp large payloads go by reference: the kernel writes them from the caller's
    // memory. shm copies referenced data into its arena, where setData() builds it in the
    // ring faster (5.5 vs 7.7 us at 64 KiB), so shm payloads are copied in.
    return t == Transport::kTcp ? s_.referenceFrom : SIZE_MAX;
  }

  /// A request with the cell's payload, copied in or referenced from `referenceFrom` on;
  /// `send` calls or queues it.
  template <typename Send>
  void request(echo::EchoClient& client, const ClientCell& cell, Send&& send) {
    const bool byRef = cell.payload.size() >= referenceFrom(cell.spec.transport);
    auto req = client.echoRequest(echoWords(byRef ? 0 : cell.payload.size()));
    if (byRef)
      req.raw().message().referenceData(req.params(), "data", bytesOf(cell.payload));
    else
      req.params().setData(bytesOf(cell.payload));
    send(req);
  }

  Latency pingPong(echo::EchoClient& client, ClientCell& cell, const Budget& b) {
    const size_t n = cell.payload.size();
    const kj::byte last = n ? static_cast<kj::byte>(cell.payload[n - 1]) : 0;
    auto roundTrip = [&] {
      request(client, cell, [&](auto& req) {
        auto resp = req.call();
        capnp::Data::Reader back = resp.results().getData();  // read in place
        if (back.size() != n || (n && back[n - 1] != last))
          throw BenchError(fmt::format("zcrpc echo: answer of {} bytes, sent {}", back.size(), n));
      });
    };
    return measureLatency(roundTrip, b, cell.samples);
  }

  /// kOneWay: Echo.sink sent with sendOneWay() (no answer, no flow control), then a ping
  /// call, answered after every sink before it (one worker, in order; the peer's count,
  /// Figure::peerValue, is checked by the driver). kStream: Chunks.put (`-> stream`: send()
  /// returns while the stream window has room), then Chunks.flush, whose count must be
  /// every chunk sent on this connection so far (`chunksSent`, counted on). Payloads are
  /// copied into the messages (unlike the echo rows, whatever the size: a payload sent by
  /// reference must leave before send() returns, so every chunk would be a write of its
  /// own; copied, a burst of 64 KiB chunks goes 2.3x faster over tcp). Both send with
  /// SendHint::kMoreComing, as a bulk sender
  /// would (over tcp a burst then leaves in few system calls); the final call sends the
  /// rest. gRPC's stream gets the same hint (grpc.cc).
  Rate oneWay(echo::EchoClient& client, ClientCell& cell, std::chrono::nanoseconds duration,
              uint64_t& chunksSent) {
    const auto data = bytesOf(cell.payload);
    const uint32_t words = echoWords(data.size());
    if (cell.spec.measure == Measure::kOneWay) {
      auto send = [&](uint64_t) {
        auto sink = client.sinkRequest(words);
        sink.params().setData(data);
        sink.sendOneWay(SendHint::kMoreComing);
      };
      return streamFor(duration, data.size(), send, [&](uint64_t) { client.pingRequest().call(); });
    }
    callback::ChunksClient chunks(*client.channel());
    auto send = [&](uint64_t) {
      auto put = chunks.putRequest(words);
      put.params().setData(data);
      put.send(SendHint::kMoreComing);
    };
    auto finish = [&](uint64_t sent) {
      chunksSent += sent;
      const uint64_t counted = chunks.flushRequest().call().results().getCount();
      if (counted != chunksSent)
        throw BenchError(fmt::format("zcrpc stream: the server counted {} chunks, {} were sent",
                                     counted, chunksSent));
    };
    return streamFor(duration, data.size(), send, finish);
  }

  /// Callback round trips: Pump.pump calls this process's Echo object (passed in the call)
  /// kPumpBatch times; this thread serves it while call() waits. Each sample is the time
  /// between two consecutive callbacks reaching the object: one whole round trip as the
  /// server makes it (its call out, the answer back, its next call built and sent), timed
  /// here with one clock. The first callback of a pump call has no predecessor in it.
  /// `requests`: how the object is exported (its handler never waits on the connection).
  Latency callbacks(Channel& channel, ClientCell& cell, Capability::Requests requests) {
    auto mine = std::make_shared<BenchEchoService>(SIZE_MAX);  // answers with a copy
    mine->noteArrivals = true;
    mine->arrivals.reserve(kPumpBatch);
    const Capability target = Capability::local(mine, requests);
    callback::PumpClient pump(channel);
    auto batch = [&](uint32_t count) {
      mine->arrivals.clear();
      auto req = pump.pumpRequest();
      req.params().setTarget(target);
      req.params().setCount(count);
      req.params().setSize(static_cast<uint32_t>(cell.payload.size()));
      req.call();
      if (mine->arrivals.size() != count)
        throw BenchError(fmt::format("zcrpc callback: {} of {} callbacks arrived",
                                     mine->arrivals.size(), count));
    };
    const Budget& b = cell.budget;
    const auto warmEnd = Clock::now() + b.warmup;
    for (uint64_t done = 0; done < b.warmupIterations && Clock::now() < warmEnd; done += kPumpBatch)
      batch(kPumpBatch);
    const size_t limit = std::min<uint64_t>(b.maxIterations, cell.samples.size());
    const auto end = Clock::now() + b.measure;
    size_t n = 0;
    while (limit - n >= 1 && (n == 0 || Clock::now() < end)) {
      const auto count = static_cast<uint32_t>(std::min<size_t>(kPumpBatch, limit - n + 1));
      batch(count);
      for (uint32_t i = 1; i < count; ++i)
        cell.samples[n++] =
            static_cast<uint64_t>((mine->arrivals[i] - mine->arrivals[i - 1]).count());
    }
    return summarizeLatency(cell.samples.first(n));
  }

  /// callAsync() while fewer than the window are outstanding, then pollUntil() (which waits
  /// by the connection's wait mode); every answer is checked in its callback.
  Rate pipelined(echo::EchoClient& client, ClientCell& cell, std::chrono::nanoseconds duration,
                 uint64_t maxCalls) {
    struct State {  // one pointer to it is all a callback captures: stored inline, no allocation
      size_t bytes = 0;
      uint64_t completed = 0, failed = 0;
      std::string firstError;
    } state;
    state.bytes = cell.payload.size();
    State* shared = &state;
    const CallCallback onDone = [shared](CallResult&& r) {
      ++shared->completed;
      size_t got = r.ok() ? r.results<echo::Echo::EchoResults>().getData().size() : 0;
      if (r.ok() && got == shared->bytes) return;
      if (shared->failed++ == 0)
        shared->firstError = r.ok() ? fmt::format("answer of {} bytes, sent {}", got, shared->bytes)
                                    : r.errorMessage();
    };
    Channel& channel = *client.channel();
    const uint32_t window = cell.spec.window;
    const Deadline deadline = cellDeadline(duration);
    uint64_t issued = 0, lastCompleted = 0, activeCalls = 0;
    const auto start = Clock::now(), end = start + duration;
    // Passes of the loop (each runs at least one call) that take kStall or more mean a
    // process did not run; they, and the calls that finished in them, are left out of the
    // stall-free rate.
    auto last = start;
    std::chrono::nanoseconds active{0}, stalled{0};
    for (;;) {
      while (channel.outstanding() < window && issued < maxCalls) {
        request(client, cell, [&](auto& req) { req.callAsync(onDone); });
        ++issued;
      }
      if (issued >= maxCalls) break;
      const auto now = Clock::now();
      if (now - last >= kStall) {
        stalled += now - last;
      } else {
        active += now - last;
        activeCalls += state.completed - lastCompleted;
      }
      last = now;
      lastCompleted = state.completed;
      if (now >= end) break;
      if (channel.pollUntil(deadline) == 0 && Clock::now() >= deadline)
        throw BenchError("zcrpc pipelined: no answer before the deadline");
    }
    while (channel.outstanding() > 0)
      if (channel.pollUntil(deadline) == 0 && Clock::now() >= deadline)
        throw BenchError("zcrpc pipelined: calls still unanswered at the deadline");
    const auto stop = Clock::now();
    if (state.failed)
      throw BenchError(fmt::format("zcrpc pipelined: {} of {} calls failed; first: {}",
                                   state.failed, state.completed, state.firstError));
    if (state.completed != issued)
      throw BenchError(
          fmt::format("zcrpc pipelined: {} calls sent, {} answered", issued, state.completed));
    Rate r = rateOf(state.completed, std::chrono::duration<double>(stop - start).count(),
                    cell.payload.size());
    r.window = window;
    r.stalledFraction = std::chrono::duration<double>(stalled).count() / r.seconds;
    if (active.count() > 0)
      r.stallFreePerSecond =
          static_cast<double>(activeCalls) / std::chrono::duration<double>(active).count();
    return r;
  }

  const Settings& s_;
  Flavor flavor_;
  SpinPolicy spin_;
  unsigned serves_ = 0;
};

// ---- messages ------------------------------------------------------------------------------

/// Builds a bench::Payload in place and sends it.
void sendPayload(Connection& conn, uint64_t seq, kj::ArrayPtr<const kj::byte> data,
                 Deadline deadline, bool flush = true) {
  OutgoingMessage out;
  check(conn.startMessage(out, echoWords(data.size()), deadline), "start message", conn);
  auto p = out.initRoot<Payload>();
  p.setSeq(seq);
  p.setData(data);
  check(conn.send(out, flush), "send", conn);
}

/// The next Payload's seq, after checking it carries `bytes` (unless it is kStopSeq); its
/// checksum goes to `checksum`.
uint64_t receiveSeq(Connection& conn, size_t bytes, Deadline deadline,
                    uint64_t* checksum = nullptr) {
  IncomingMessage in;
  check(conn.receive(in, deadline), "receive", conn);
  auto p = in.getRoot<Payload>();
  if (p.getSeq() != kStopSeq && p.getData().size() != bytes)
    throw BenchError(
        fmt::format("zcrpc: message of {} bytes, expected {}", p.getData().size(), bytes));
  if (checksum) *checksum = p.getChecksum();
  return p.getSeq();
}

class ZcrpcMessages final : public System {
 public:
  explicit ZcrpcMessages(const Settings& s) : s_(s) {}

  SeriesInfo info(Transport) const override { return {"zcrpc", "zcrpc messages", Role::kZcrpc}; }
  bool covers(Transport t) const override { return t == Transport::kShm; }

  void serve(PeerCell& cell) override {
    auto& conn = conns_[static_cast<size_t>(cell.spec.waitMode)];
    const std::string endpoint =  // the peer's pid: unique while it runs
        fmt::format("zcrpc-bench-{}-messages-{}", ::getpid(), static_cast<int>(cell.spec.waitMode));
    std::unique_ptr<Listener> listener;
    if (!conn) {  // the first cell of this wait mode: listen, then accept the client
      ShmListenOptions lo;
      lo.connection = connectionOptions(s_, cell.spec.waitMode);
      listener = listenShm(endpoint, lo);
    }
    cell.started(endpoint);
    if (listener && !(conn = listener->accept(cell.deadline))) {
      std::string why = "nobody connected to " + listener->endpoint() + " in time";
      for (const auto& refusal : listener->refusals()) why += "; refused: " + refusal;
      throw BenchError(why);
    }
    // kRoundTrip echoes until the stop message, which it echoes too: the request read in
    // place, its data copied into an answer built in place (the one copy an echo makes), the
    // request released before the answer goes. kOneWay checks, counts and releases until the
    // stop message and answers it with the count, twice (the warm-up stream, then the one
    // measured).
    const bool echo = cell.spec.measure == Measure::kRoundTrip;
    for (int stream = 0; stream < (echo ? 1 : 2); ++stream) {
      for (uint64_t count = 0;; ++count) {
        IncomingMessage in;
        check(conn->receive(in, cell.deadline), "receive", *conn);
        auto req = in.getRoot<Payload>();
        const uint64_t seq = req.getSeq();
        if (!echo && seq != kStopSeq) {
          if (seq != count || req.getData().size() != cell.spec.payloadBytes)
            throw BenchError(fmt::format("sink: message {} of {} bytes, expected {} of {}", seq,
                                         req.getData().size(), count, cell.spec.payloadBytes));
          continue;
        }
        OutgoingMessage out;
        check(conn->startMessage(out, echoWords(req.getData().size()), cell.deadline),
              "start answer", *conn);
        auto answer = out.initRoot<Payload>();
        answer.setSeq(seq);
        answer.setChecksum(count);
        answer.setData(req.getData());
        in.release();
        check(conn->send(out), "send answer", *conn);
        if (seq == kStopSeq) break;
      }
    }
  }

  Figure measure(ClientCell& cell) override {
    auto& conn = conns_[static_cast<size_t>(cell.spec.waitMode)];
    Figure f;
    if (cell.spec.measure == Measure::kRoundTrip) {
      if (!conn) {  // the first cell: connect, then cycle the rings and arenas once
        conn = connectShm(cell.endpoint, connectionOptions(s_, cell.spec.waitMode));
        const ConnectionOptions d;
        std::vector<std::byte> big(kMiB);
        for (auto [bytes, room] : {std::pair{d.ringBytes / 8, d.ringBytes}, {kMiB, d.arenaBytes}}) {
          Budget b;
          b.measure = prefaultTime(cell.budget);
          b.maxIterations = room / bytes + 8;
          (void)pingPong(*conn, std::span(big).first(bytes), b, cell.samples);
        }
      }
      f.latency = pingPong(*conn, cell.payload, cell.budget, cell.samples);
      const Deadline deadline = Clock::now() + kStallTimeout;
      sendPayload(*conn, kStopSeq, {}, deadline);
      if (receiveSeq(*conn, 0, deadline) != kStopSeq)
        throw BenchError("zcrpc: the echo side did not acknowledge the end of the cell");
    } else {
      if (!conn) throw BenchError("messages: the one-way stream ran before a round trip");
      (void)stream(*conn, cell.payload.size(), cell.budget.measure / 4);  // warm-up
      f.rate = stream(*conn, cell.payload.size(), cell.budget.measure);
    }
    return f;
  }

 private:
  static Latency pingPong(Connection& conn, std::span<const std::byte> payload, const Budget& b,
                          std::span<uint64_t> samples) {
    const Deadline deadline = cellDeadline(b.total());
    uint64_t seq = 0;
    auto roundTrip = [&] {
      sendPayload(conn, seq, bytesOf(payload), deadline);
      if (uint64_t back = receiveSeq(conn, payload.size(), deadline); back != seq++)
        throw BenchError(fmt::format("zcrpc: echo of seq {}, sent {}", back, seq - 1));
    };
    return measureLatency(roundTrip, b, samples);
  }

  /// One-way stream of Payloads of `bytes` copied from the pool (rotating through it), sent
  /// without flush and flushed every `batch`, for `duration`; then the stop message and the
  /// sink's answer, which must count every message. The time runs to that answer.
  Rate stream(Connection& conn, size_t bytes, std::chrono::nanoseconds duration) {
    const std::span<const std::byte> source = pool(0);
    const Deadline deadline = cellDeadline(duration);
    const size_t step = (bytes + 63) / 64 * 64;
    size_t offset = 0;
    auto send = [&](uint64_t seq) {
      sendPayload(conn, seq, bytesOf(source.subspan(offset, bytes)), deadline, /*flush=*/false);
      offset = offset + step + bytes > source.size() ? 0 : offset + step;
      if ((seq + 1) % s_.batch == 0) check(conn.flush(), "flush", conn);
    };
    auto finish = [&](uint64_t sent) {
      uint64_t counted = 0;
      sendPayload(conn, kStopSeq, {}, deadline);
      if (receiveSeq(conn, 0, deadline, &counted) != kStopSeq || counted != sent)
        throw BenchError(
            fmt::format("zcrpc stream: the sink counted {} messages, {} were sent", counted, sent));
    };
    return streamFor(duration, bytes, send, finish);
  }

  const Settings& s_;
  std::array<std::unique_ptr<Connection>, 3> conns_;  ///< one per wait mode
};

template <typename Request, typename Answer>
Latency capnpWorkOf(const Budget& budget, std::span<uint64_t> samples) {
  const uint32_t words = echoWords(0);  // what zcrpc reserves: everything in one segment
  std::vector<capnp::word> requestSpace(words), answerSpace(words);
  capnp::ReaderOptions options;
  options.traversalLimitInWords = uint64_t{1} << 40;  // as the connection's limit: no cap here
  uint64_t seq = 0;
  auto zero = [&] {
    std::memset(requestSpace.data(), 0, words * sizeof(capnp::word));
    std::memset(answerSpace.data(), 0, words * sizeof(capnp::word));
  };
  auto roundTrip = [&] {
    capnp::MallocMessageBuilder request(kj::arrayPtr(requestSpace.data(), words));
    {
      auto r = request.initRoot<Request>();
      if constexpr (requires { r.setSeq(seq); }) r.setSeq(seq);
      r.setData(kj::ArrayPtr<const kj::byte>());
    }
    capnp::SegmentArrayMessageReader requestIn(request.getSegmentsForOutput(), options);
    auto q = requestIn.getRoot<Request>();
    capnp::MallocMessageBuilder answer(kj::arrayPtr(answerSpace.data(), words));
    {
      auto a = answer.initRoot<Answer>();
      if constexpr (requires { a.setSeq(q.getSeq()); }) a.setSeq(q.getSeq());
      a.setData(q.getData());
    }
    capnp::SegmentArrayMessageReader answerIn(answer.getSegmentsForOutput(), options);
    auto got = answerIn.getRoot<Answer>();
    bool same = got.hasData() && got.getData().size() == 0;
    if constexpr (requires { got.getSeq(); }) same = same && got.getSeq() == seq;
    if (!same) throw BenchError("capnp work: the answer read back differs from the request");
    ++seq;
  };
  return measureLatency(roundTrip, budget, samples, zero);
}

}  // namespace

std::unique_ptr<System> makeZcrpcRpc(const Settings& s, SpinPolicy spin) {
  return std::make_unique<ZcrpcRpc>(s, Flavor::kNative, spin);
}
std::unique_ptr<System> makeZcrpcCapnpListener(const Settings& s) {
  return std::make_unique<ZcrpcRpc>(s, Flavor::kCapnpListener);
}
std::unique_ptr<System> makeZcrpcCapnpClient(const Settings& s) {
  return std::make_unique<ZcrpcRpc>(s, Flavor::kCapnpClient);
}
std::unique_ptr<System> makeZcrpcMessages(const Settings& s) {
  return std::make_unique<ZcrpcMessages>(s);
}

uint32_t pipelineWindow(const Settings& s, Transport t, size_t size) {
  if (s.uncappedWindow) return s.window;
  const ConnectionOptions defaults;     // the server's sizes: the peer listens with defaults
  const uint64_t message = size + 128;  // payload, capnp pointers, frame and record headers
  const uint64_t room = t == Transport::kShm && message > defaults.ringBytes / 4
                            ? defaults.arenaBytes
                            : defaults.ringBytes;
  return static_cast<uint32_t>(std::clamp<uint64_t>(room / message, 1, s.window));
}

Latency capnpWork(bool rpc, const Budget& budget, std::span<uint64_t> samples) {
  return rpc ? capnpWorkOf<echo::Echo::EchoParams, echo::Echo::EchoResults>(budget, samples)
             : capnpWorkOf<Payload, Payload>(budget, samples);
}

Rate memcpyBandwidth(size_t chunkBytes, std::chrono::nanoseconds duration) {
  std::span<const std::byte> source = pool(0);
  std::span<std::byte> target = pool(1);
  const size_t span = std::min(source.size(), target.size()) / chunkBytes * chunkBytes;
  if (span == 0) throw BenchError("memcpy buffers smaller than a chunk");
  size_t offset = 0;
  auto copy = [&] {
    std::memcpy(target.data() + offset, source.data() + offset, chunkBytes);
    asm volatile("" : : "r"(target.data() + offset) : "memory");  // keep every copy
    offset = offset + chunkBytes == span ? 0 : offset + chunkBytes;
  };
  for (size_t i = 0; i < span / chunkBytes; ++i) copy();  // one pass: warm TLB and pages
  uint64_t copies = 0;
  const uint64_t maxCopies = (uint64_t{1} << 40) / chunkBytes;  // 1 TiB: the count bound
  const auto start = Clock::now(), end = start + duration;
  auto now = start;
  while (now < end && copies < maxCopies) {
    copy();
    ++copies;
    now = Clock::now();
  }
  return rateOf(copies, std::chrono::duration<double>(now - start).count(), chunkBytes);
}

}  // namespace zcrpc::bench
