// zcrpc — an echo call through the generated stubs and a Server worker thread, against
// the same messages echoed by a bare thread over the same transport (in-process
// loopback, busy-polling): what the RPC layer adds to a round trip. And a callback round
// trip (the server calls an object the client passed it, and waits), against the echo
// call of the same size (issue 18: within 1.1x).
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "bench.capnp.h"
#include "callback.capnp.zcrpc.h"
#include "echo.capnp.zcrpc.h"
#include "micro.h"
#include "micro_payload.h"
#include "zcrpc/error.h"
#include "zcrpc/loopback.h"
#include "zcrpc/rpc.h"

namespace zcrpc::micro {
namespace {

using namespace std::chrono_literals;

class EchoImpl final : public echo::EchoService {
 public:
  void echo(EchoCall& call) override {
    auto data = call.params().getData();
    call.results(payloadWords(data.size())).setData(data);
  }
  void ping(PingCall&) override {}
  // Reads its message as Chunks.put reads its chunk: the one-way floor a stream is
  // measured against does the same work per message.
  void sink(SinkCall& call) override { sunk_ += call.params().getData().size() != 0; }
  void delay(DelayCall&) override { throw ApplicationError(1, "not in the microbenchmarks"); }
  void fail(FailCall& call) override {
    throw ApplicationError(call.params().getCode(), call.params().getMessage());
  }

 private:
  uint64_t sunk_ = 0;
};

ConnectionOptions busyPoll() {
  ConnectionOptions o;
  o.waitMode = WaitMode::kBusyPoll;
  return o;
}

void zcrpcEchoCall(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<kj::byte> data(n, kj::byte{0x5a});
  EchoImpl service;
  ServerOptions so;
  so.idleMode = WaitMode::kBusyPoll;
  Server server(so);
  server.addService(service);
  server.start();
  auto [client, serverEnd] = makeLoopbackPair(busyPoll());
  server.addConnection(std::move(serverEnd));
  Channel channel(std::move(client));
  echo::EchoClient echo(channel);
  try {
    for (auto _ : state) {
      auto req = echo.echoRequest(payloadWords(n));
      req.params().setData(kj::arrayPtr(data.data(), n));
      auto resp = req.call();
      if (resp.results().getData().size() != n) {
        state.SkipWithError("the echo came back with another size");
        break;
      }
    }
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
  server.shutdown();
}

/// The server's side of the callback benchmark: calls the client's Echo object.
class PumpImpl final : public callback::PumpService {
 public:
  void pump(PumpCall& call) override {
    echo::EchoClient target(call.params().getTarget());
    const uint32_t count = call.params().getCount(), size = call.params().getSize();
    std::vector<kj::byte> data(size, kj::byte{0xa5});
    for (uint32_t i = 0; i < count; ++i) {
      auto req = target.echoRequest(payloadWords(size));
      req.params().setData(kj::arrayPtr(data.data(), size));
      if (req.call().results().getData().size() != size)
        throw ApplicationError(1, "the callback's echo came back with another size");
    }
  }
};

/// One iteration: one callback round trip, server to client and back (batches of 256 in
/// one pump call, whose own round trip is spread over them).
void zcrpcCallbackRoundTrip(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  constexpr uint32_t kBatch = 256;
  PumpImpl pump;
  ServerOptions so;
  so.idleMode = WaitMode::kBusyPoll;
  Server server(so);
  server.addService(pump);
  server.start();
  auto [client, serverEnd] = makeLoopbackPair(busyPoll());
  server.addConnection(std::move(serverEnd));
  Channel channel(std::move(client));
  callback::PumpClient pumpClient(channel);
  const Capability mine = Capability::local(std::make_shared<EchoImpl>());
  try {
    while (state.KeepRunningBatch(kBatch)) {
      auto req = pumpClient.pumpRequest();
      req.params().setTarget(mine);
      req.params().setCount(kBatch);
      req.params().setSize(static_cast<uint32_t>(n));
      req.call();
    }
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
  server.shutdown();
}

class ChunksImpl final : public callback::ChunksService {
 public:
  void put(PutCall& call) override { count_ += call.params().getData().size() != 0; }
  void flush(FlushCall& call) override { call.results().setCount(count_); }

 private:
  uint64_t count_ = 0;
};

/// A server, and a busy-polling loopback channel to it, for the one-way benchmarks.
struct OneWayRig {
  EchoImpl echo;
  ChunksImpl chunks;
  Server server{[] {
    ServerOptions so;
    so.idleMode = WaitMode::kBusyPoll;
    return so;
  }()};
  std::unique_ptr<Channel> channel;
  OneWayRig() {
    server.addService(echo);
    server.addService(chunks);
    server.start();
    auto [client, serverEnd] = makeLoopbackPair(busyPoll());
    server.addConnection(std::move(serverEnd));
    channel = std::make_unique<Channel>(std::move(client));
  }
  ~OneWayRig() {
    channel.reset();
    server.shutdown();
  }
};

/// The loop of the one-way and stream benchmarks: `send(payload)` once per iteration over a
/// OneWayRig, then `finish()` (a call answered once everything sent was handled) inside the
/// timing. `Client` is the generated client the two take.
template <typename Client, typename Send, typename Finish>
void sendEach(benchmark::State& state, Send send, Finish finish) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<kj::byte> data(n, kj::byte{0x5a});
  OneWayRig rig;
  Client client(*rig.channel);
  try {
    for (auto _ : state) send(client, kj::arrayPtr(data.data(), n));
    finish(client);
  } catch (const Error& e) {
    state.SkipWithError(e.what());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}

/// One iteration: one chunk of a stream (`-> stream`), flow-controlled by the window.
void zcrpcStream(benchmark::State& state) {
  sendEach<callback::ChunksClient>(
      state,
      [](callback::ChunksClient& chunks, kj::ArrayPtr<const kj::byte> data) {
        auto put = chunks.putRequest(payloadWords(data.size()));
        put.params().setData(data);
        put.send();
      },
      [](callback::ChunksClient& chunks) { chunks.flushRequest().call(); });
}

/// One iteration: one one-way message (sendOneWay, no answer, no flow control): the floor
/// a stream is measured against.
void zcrpcOneWay(benchmark::State& state) {
  sendEach<echo::EchoClient>(
      state,
      [](echo::EchoClient& echo, kj::ArrayPtr<const kj::byte> data) {
        auto sink = echo.sinkRequest(payloadWords(data.size()));
        sink.params().setData(data);
        sink.sendOneWay();
      },
      [](echo::EchoClient& echo) { echo.pingRequest().call(); });
}

void loopbackMessagePingPong(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<kj::byte> data(n, kj::byte{0x5a});
  auto [mine, theirs] = makeLoopbackPair(busyPoll());
  std::atomic<bool> echoFailed{false};
  // The echo side: answers every message with a copy of its data until the pair closes.
  std::thread echoer([&, peer = theirs.get()] {
    for (;;) {
      IncomingMessage in;
      Status s = peer->receive(in, deadlineAfter(10s));
      if (s == Status::kDisconnected) return;
      OutgoingMessage out;
      if (s != Status::kOk || peer->startMessage(out, payloadWords(n), deadlineAfter(10s)) != Status::kOk) {
        echoFailed = true;
        return;
      }
      auto req = in.getRoot<bench::Payload>();
      auto resp = out.initRoot<bench::Payload>();
      resp.setSeq(req.getSeq());
      resp.setData(req.getData());
      in.release();
      if (peer->send(out) != Status::kOk) {
        echoFailed = true;
        return;
      }
    }
  });
  uint64_t seq = 0;
  for (auto _ : state)
    if (!sendAndReadBack(state, *mine, *mine, kj::arrayPtr(data.data(), n), seq++, deadlineAfter(10s)))
      break;
  mine->close();
  echoer.join();
  if (echoFailed) state.SkipWithError("the echo thread failed");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}

BENCHMARK(zcrpcEchoCall)->Name("Rpc/zcrpcEchoCall")->Arg(64)->Arg(4 << 10)->Arg(64 << 10)->UseRealTime();
BENCHMARK(loopbackMessagePingPong)->Name("Rpc/loopbackMessagePingPong")->Arg(64)->Arg(4 << 10)->Arg(64 << 10)->UseRealTime();
ZCRPC_RATIO("Rpc/zcrpcEchoCall", "Rpc/loopbackMessagePingPong",
            "echo RPC vs bare echoed messages, two threads (arg: payload bytes)");
BENCHMARK(zcrpcCallbackRoundTrip)->Name("Rpc/zcrpcCallbackRoundTrip")->Arg(64)->Arg(4 << 10)->UseRealTime();
ZCRPC_RATIO("Rpc/zcrpcCallbackRoundTrip", "Rpc/zcrpcEchoCall",
            "callback (server calls the client's object) vs echo call (arg: payload bytes)");
BENCHMARK(zcrpcStream)->Name("Rpc/zcrpcStream")->Arg(64)->Arg(64 << 10)->UseRealTime();
BENCHMARK(zcrpcOneWay)->Name("Rpc/zcrpcOneWay")->Arg(64)->Arg(64 << 10)->UseRealTime();
ZCRPC_RATIO("Rpc/zcrpcStream", "Rpc/zcrpcOneWay",
            "streaming chunk vs one-way message, time per message (arg: payload bytes; "
            "issue 18: the stream's throughput at least 0.8x)");

}  // namespace
}  // namespace zcrpc::micro
