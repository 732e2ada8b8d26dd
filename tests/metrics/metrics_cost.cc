// metrics_cost — what per-call metrics cost an echo call, measured two ways:
//
//   metrics_cost [CALLS] [BLOCKS]
//     Latency: an in-process server and a channel over loopback rings, busy-poll on
//     both sides, 64-byte Echo.echo calls. Blocks of CALLS calls alternate between
//     metrics on and off (a fresh, warmed-up set-up each) so drift and other load hit
//     both alike; prints the median over blocks of each block's p50 and p99 (ns).
//
//   valgrind --tool=callgrind --collect-atstart=no metrics_cost --callgrind CALLS
//     Instructions: the same calls with blocking waits (no spinning to count), each mode
//     collected in its own window and dumped as "metrics off" / "metrics on" / "capnp
//     accessors" (metrics off, both ends reading and building the params and results
//     through Cap'n Proto's own accessors, paramsCapnp() and resultsCapnp(), instead of
//     zcrpc's generated ones). Callgrind collects per thread, and these windows are the
//     client's thread only: the caller's side of a call (build, send, wait, read the
//     answer), not the server's. Then "both ends": the same calls made, served (a server
//     without worker threads, driven by Server::poll()) and answered on one thread, so the
//     dump holds what a round trip costs both processes, with no waiting in it (the
//     figure issue 20's target is stated in). Then "callback": CALLS round trips the server makes to
//     an Echo object the client passed it (Pump.pump), metrics off, both ends counted
//     (the client serving the callbacks inside its pump call, the server's worker inside
//     the pump handler). Then "one-way" and "stream": CALLS Echo.sink messages sent with
//     sendOneWay(), and CALLS chunks of Chunks.put (`-> stream`), each followed by one
//     call that waits for them all; the sender's side only. Then "one-way both ends" and
//     "stream both ends": the same, sent and handled on one thread (Server::poll() after
//     every 16). Divide each dump's total Ir by CALLS.
#include <valgrind/callgrind.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "callback.capnp.zcrpc.h"
#include "metrics/echo_impl.h"
#include "zcrpc/loopback.h"
#include "zcrpc/rpc.h"

namespace zcrpc {
namespace {

struct Setup {
  testing::EchoImpl impl;
  std::unique_ptr<Server> server;
  std::unique_ptr<Channel> channel;

  /// `workers` 0: the server runs no thread; its owner drives it with Server::poll().
  Setup(bool metrics, WaitMode wait, bool capnpAccessors = false, Service* also = nullptr,
        size_t workers = 1) {
    impl.capnpAccessors = capnpAccessors;
    ServerOptions so;
    so.metrics = metrics;
    so.idleMode = wait;
    so.workerThreads = workers;
    server = std::make_unique<Server>(so);
    server->addService(impl);
    if (also) server->addService(*also);
    server->start();
    ConnectionOptions co;
    co.waitMode = wait;
    auto [client, serverEnd] = makeLoopbackPair(co);
    server->addConnection(std::move(serverEnd));
    ChannelOptions cho;
    cho.metrics = metrics;
    channel = std::make_unique<Channel>(std::move(client), cho);
  }
  ~Setup() {
    channel.reset();
    server->shutdown();
  }
};

const char kData[64] = "sixty-four bytes of payload, the size the zero-alloc test uses.";

inline void call(Channel& ch) {
  echo::EchoClient client(ch);
  auto req = client.echoRequest(16);
  req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(kData), sizeof kData));
  auto resp = req.call();
  if (resp.results().getData().size() != sizeof kData) std::abort();
}

// The same call with both ends on this thread: sent, served by server.poll() (the server
// has no worker thread), its answer taken by wait() (already there: nothing waits).
inline void callBothEnds(Channel& ch, Server& server) {
  echo::EchoClient client(ch);
  auto req = client.echoRequest(16);
  req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(kData), sizeof kData));
  PendingCall pending = req.callAsync();
  server.poll();
  CallResult result = pending.wait();
  if (result.results<echo::Echo::EchoResults>().getData().size() != sizeof kData) std::abort();
}

// The same call through Cap'n Proto's own builder and reader.
inline void callCapnp(Channel& ch) {
  echo::EchoClient client(ch);
  auto req = client.echoRequest(16);
  req.paramsCapnp().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(kData), sizeof kData));
  auto resp = req.call();
  if (resp.resultsCapnp().getData().size() != sizeof kData) std::abort();
}

/// Pump.pump: calls the client's Echo `count` times with 64 bytes, each waiting for its
/// answer; under callgrind it collects while it does (collection is per thread), so that
/// the dump holds both ends of each callback. Threads: the server's worker.
class PumpImpl final : public callback::PumpService {
 public:
  void pump(PumpCall& call) override {
    CALLGRIND_TOGGLE_COLLECT;
    KJ_DEFER(CALLGRIND_TOGGLE_COLLECT);
    echo::EchoClient target(call.params().getTarget());
    for (uint32_t i = 0, n = call.params().getCount(); i < n; ++i) {
      auto req = target.echoRequest(16);
      req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(kData), sizeof kData));
      if (req.call().results().getData().size() != sizeof kData) std::abort();
    }
  }
};

/// `calls` callbacks through one pump call (the pump call's own round trip is counted too).
void pump(Channel& ch, const Capability& target, size_t calls) {
  callback::PumpClient client(ch);
  auto req = client.pumpRequest();
  req.params().setTarget(target);
  req.params().setCount(static_cast<uint32_t>(calls));
  req.call();
}

/// Chunks: counts the chunks; flush answers the count. Threads: the server's worker.
class ChunksImpl final : public callback::ChunksService {
 public:
  void put(PutCall& call) override { count_ += call.params().getData().size() == sizeof kData; }
  void flush(FlushCall& call) override { call.results().setCount(count_); }

 private:
  uint64_t count_ = 0;
};

void sinks(Channel& ch, size_t n) {
  echo::EchoClient client(ch);
  for (size_t i = 0; i < n; ++i) {
    auto req = client.sinkRequest(16);
    req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(kData), sizeof kData));
    req.sendOneWay();
  }
  client.pingRequest().call();
}

/// One-way messages or stream chunks with both ends on this thread: every 16 sent (and at
/// the end), the server (no worker thread) handles what arrived and the client takes what
/// came back (the answers to the stream's marks). No final call: on a stream it would wait
/// for the server to confirm the chunks, which nothing would then poll.
void bothEnds(Channel& ch, Server& server, callback::ChunksClient* stream, size_t n) {
  echo::EchoClient client(ch);
  for (size_t i = 0; i < n; ++i) {
    if (stream) {
      auto req = stream->putRequest(16);
      req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(kData), sizeof kData));
      req.send();
    } else {
      auto req = client.sinkRequest(16);
      req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(kData), sizeof kData));
      req.sendOneWay();
    }
    if (i % 16 == 15 || i + 1 == n) {
      while (server.poll() != 0) {
      }
      ch.poll();
    }
  }
}

void chunks(callback::ChunksClient& client, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    auto req = client.putRequest(16);
    req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(kData), sizeof kData));
    req.send();
  }
  client.flushRequest().call();
}

double percentile(std::vector<double>& v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

int latency(size_t calls, size_t blocks) {
  std::vector<double> sample(calls), p50[2], p99[2];
  const double nsPerTick = ticks::nanosPerTick();
  for (size_t b = 0; b < blocks; ++b) {
    for (int k = 0; k < 2; ++k) {
      const int mode = (b % 2) ? 1 - k : k;  // alternate which goes first
      // One setup at a time: two busy-polling servers and a client would be three
      // spinning threads, more than a small machine has cores.
      Setup setup(mode == 1, WaitMode::kBusyPoll);
      Channel& ch = *setup.channel;
      for (size_t i = 0; i < 5000; ++i) call(ch);
      for (size_t i = 0; i < calls; ++i) {
        uint64_t t0 = ticks::now();
        call(ch);
        sample[i] = static_cast<double>(ticks::now() - t0) * nsPerTick;
      }
      p50[mode].push_back(percentile(sample, 0.5));
      p99[mode].push_back(percentile(sample, 0.99));
    }
  }
  double off50 = percentile(p50[0], 0.5), on50 = percentile(p50[1], 0.5);
  double off99 = percentile(p99[0], 0.5), on99 = percentile(p99[1], 0.5);
  std::printf("echo 64 B over loopback, busy-poll, %zu blocks of %zu calls (median of block percentiles)\n",
              blocks, calls);
  std::printf("  metrics off: p50 %7.1f ns  p99 %8.1f ns\n", off50, off99);
  std::printf("  metrics on : p50 %7.1f ns  p99 %8.1f ns\n", on50, on99);
  std::printf("  difference : p50 %+7.1f ns (%+.1f %%)  p99 %+8.1f ns\n", on50 - off50,
              100 * (on50 - off50) / off50, on99 - off99);
  return 0;
}

int instructions(size_t calls) {
  static const char* const kDumps[] = {"metrics off", "metrics on", "capnp accessors"};
  for (int mode = 0; mode < 3; ++mode) {
    const bool capnp = mode == 2;
    Setup s(mode == 1, WaitMode::kBlocking, capnp);
    auto one = capnp ? callCapnp : call;
    for (size_t i = 0; i < 2000; ++i) one(*s.channel);  // first-use allocations, caches
    CALLGRIND_ZERO_STATS;
    CALLGRIND_TOGGLE_COLLECT;
    for (size_t i = 0; i < calls; ++i) one(*s.channel);
    CALLGRIND_TOGGLE_COLLECT;
    CALLGRIND_DUMP_STATS_AT(kDumps[mode]);
  }
  {
    // Both ends of each call, with no waiting in it: what a round trip costs the two
    // processes together (issue 20's figure), free of the wake-ups a blocking wait adds.
    Setup s(false, WaitMode::kBusyPoll, false, nullptr, /*workers=*/0);
    for (size_t i = 0; i < 2000; ++i) callBothEnds(*s.channel, *s.server);
    CALLGRIND_ZERO_STATS;
    CALLGRIND_TOGGLE_COLLECT;
    for (size_t i = 0; i < calls; ++i) callBothEnds(*s.channel, *s.server);
    CALLGRIND_TOGGLE_COLLECT;
    CALLGRIND_DUMP_STATS_AT("both ends");
  }
  {
    PumpImpl pumpImpl;
    Setup s(false, WaitMode::kBlocking, false, &pumpImpl);
    const Capability mine = Capability::local(std::make_shared<testing::EchoImpl>());
    pump(*s.channel, mine, 2000);  // first-use allocations, caches (the pump collects: zeroed)
    CALLGRIND_ZERO_STATS;
    CALLGRIND_TOGGLE_COLLECT;
    pump(*s.channel, mine, calls);
    CALLGRIND_TOGGLE_COLLECT;
    CALLGRIND_DUMP_STATS_AT("callback");
  }
  {
    ChunksImpl chunksImpl;
    Setup s(false, WaitMode::kBlocking, false, &chunksImpl);
    callback::ChunksClient stream(*s.channel);
    for (int k = 0; k < 2; ++k) {
      sinks(*s.channel, 2000);  // first-use allocations, caches
      chunks(stream, 2000);
      CALLGRIND_ZERO_STATS;
      CALLGRIND_TOGGLE_COLLECT;
      if (k == 0) sinks(*s.channel, calls); else chunks(stream, calls);
      CALLGRIND_TOGGLE_COLLECT;
      CALLGRIND_DUMP_STATS_AT(k == 0 ? "one-way" : "stream");
    }
  }
  {
    ChunksImpl chunksImpl;
    Setup s(false, WaitMode::kBusyPoll, false, &chunksImpl, /*workers=*/0);
    callback::ChunksClient stream(*s.channel);
    for (int k = 0; k < 2; ++k) {
      bothEnds(*s.channel, *s.server, nullptr, 2000);  // first-use allocations, caches
      bothEnds(*s.channel, *s.server, &stream, 2000);
      CALLGRIND_ZERO_STATS;
      CALLGRIND_TOGGLE_COLLECT;
      bothEnds(*s.channel, *s.server, k == 0 ? nullptr : &stream, calls);
      CALLGRIND_TOGGLE_COLLECT;
      CALLGRIND_DUMP_STATS_AT(k == 0 ? "one-way both ends" : "stream both ends");
    }
  }
  std::printf("dumped 'metrics off', 'metrics on', 'capnp accessors', 'both ends', 'callback', "
              "'one-way', 'stream', 'one-way both ends' and 'stream both ends' (%zu calls each)\n",
              calls);
  return 0;
}

}  // namespace
}  // namespace zcrpc

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--callgrind") == 0)
    return zcrpc::instructions(argc >= 3 ? std::strtoul(argv[2], nullptr, 10) : 10'000);
  size_t calls = argc >= 2 ? std::strtoul(argv[1], nullptr, 10) : 20'000;
  size_t blocks = argc >= 3 ? std::strtoul(argv[2], nullptr, 10) : 10;
  return zcrpc::latency(calls, blocks);
}
