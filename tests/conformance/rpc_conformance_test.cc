// The RPC core over every transport: a zcrpc::Server with a hand-written Service and a
// zcrpc::Channel making sync and async calls, application errors, unknown methods and
// interfaces, deadlines, large calls, calls through a listener, shutdown, wait modes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <sched.h>

#include <cerrno>
#include <cstring>

#include <atomic>
#include <iostream>
#include <thread>
#include <vector>

#include "conformance/fixture.h"

namespace zcrpc::conformance {
namespace {

using ::testing::HasSubstr;

/// A Server serving EchoService, and a Channel to it over one connected pair.
struct RpcSetup {
  RpcSetup(const Conformance& test, const ConnectionOptions& o, ServerOptions so = {},
           ChannelOptions co = {})
      : server(so) {
    server.addService(service);
    server.start();
    auto pair = test.transport().makePair(o);
    server.addConnection(std::move(pair.server));
    channel = std::make_unique<Channel>(std::move(pair.client), co);
  }
  EchoService service;
  Server server;
  std::unique_ptr<Channel> channel;  // destroyed first
};

/// An RpcSetup whose client and server both wait by `mode`.
struct RpcSetupInMode : RpcSetup {
  RpcSetupInMode(const Conformance& test, WaitMode mode)
      : RpcSetup(test, withWait(test.options(), mode), serverWaiting(mode)) {}
  static ConnectionOptions withWait(ConnectionOptions o, WaitMode mode) {
    o.waitMode = mode;
    return o;
  }
  static ServerOptions serverWaiting(WaitMode mode) {
    ServerOptions so;
    so.idleMode = mode;
    return so;
  }
};

/// Makes `m` a request to EchoService's `method` with `callId`, as a Channel would.
void markEchoRequest(OutgoingMessage& m, uint16_t method, uint64_t callId) {
  FrameHeader& h = m.header();
  h.kind = static_cast<uint8_t>(FrameKind::kRequest);
  h.interfaceId = kEchoInterface;
  h.methodId = method;
  h.callId = callId;
}

/// The kind of the error a call throws (or nothing if it succeeded).
std::optional<ErrorKind> callError(Channel& channel, uint16_t method, uint64_t seq,
                                   std::chrono::milliseconds timeout,
                                   uint64_t interfaceId = kEchoInterface,
                                   std::string* message = nullptr) {
  try {
    auto req = channel.newRequest(interfaceId, method, 16);
    req.setTimeout(timeout);
    buildPayload(req.message(), seq, 0);
    (void)req.call();
    return std::nullopt;
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.kind();
  }
}

TEST_P(Conformance, RpcSyncCalls) {
  RpcSetup rpc(*this, options());
  for (uint64_t i = 0; i < 200; ++i) ASSERT_TRUE(echoCall(*rpc.channel, i, (i * 131) % 5000));
  EXPECT_EQ(rpc.service.calls(), 200u);
  EXPECT_EQ(rpc.channel->outstanding(), 0u);
  EXPECT_TRUE(rpc.channel->connected());
}

TEST_P(Conformance, RpcAsyncCalls) {
  RpcSetup rpc(*this, options());
  Channel& ch = *rpc.channel;
  constexpr uint64_t kCalls = 48;  // within the default window of 64
  std::atomic<uint64_t> callbacks{0};
  std::vector<std::pair<uint64_t, PendingCall>> waited;
  for (uint64_t i = 0; i < kCalls; ++i) {
    auto req = ch.newRequest(kEchoInterface, kEcho, payloadWords(i * 10));
    req.setTimeout(5s);
    buildPayload(req.message(), i, i * 10);
    if (i % 2) {
      req.callAsync([&callbacks, i](CallResult&& r) {
        EXPECT_TRUE(r.ok()) << r.errorMessage();
        if (r.ok()) {
          EXPECT_TRUE(checkPayload(r.response(), i, i * 10));
        }
        ++callbacks;
      });
    } else {
      waited.emplace_back(i, req.callAsync());
    }
  }
  EXPECT_GT(ch.outstanding(), 0u);
  for (Bound b(10'000, 10s); b.next() && callbacks < kCalls / 2;) ch.pollUntil(deadlineAfter(50ms));
  EXPECT_EQ(callbacks.load(), kCalls / 2);
  for (auto& [seq, call] : waited) {
    CallResult r = call.wait();
    ASSERT_TRUE(r.ok()) << r.errorMessage();
    EXPECT_TRUE(call.done());
    EXPECT_TRUE(checkPayload(r.response(), seq, seq * 10));
  }
  EXPECT_EQ(ch.outstanding(), 0u);
}

TEST_P(Conformance, RpcApplicationErrorReachesTheCaller) {
  RpcSetup rpc(*this, options());
  try {
    auto req = rpc.channel->newRequest(kEchoInterface, kFail);
    (void)req.call();
    ADD_FAILURE() << "the call did not fail";
  } catch (const ApplicationError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kApplication);
    EXPECT_EQ(e.code(), kFailCode);
    EXPECT_THAT(e.what(), HasSubstr("boom from EchoService"));
  }
  // Async form: the error arrives as a failed CallResult.
  auto req = rpc.channel->newRequest(kEchoInterface, kFail);
  CallResult r = req.callAsync().wait();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.errorKind(), ErrorKind::kApplication);
  EXPECT_EQ(r.errorCode(), kFailCode);
  EXPECT_TRUE(echoCall(*rpc.channel, 1, 100)) << "the connection survives application errors";
}

TEST_P(Conformance, RpcUnknownMethodAndInterfaceAreUnimplemented) {
  RpcSetup rpc(*this, options());
  std::string why;
  EXPECT_EQ(callError(*rpc.channel, kUnknownMethod, 1, 5s, kEchoInterface, &why),
            ErrorKind::kUnimplemented);
  EXPECT_THAT(why, HasSubstr("method 77"));
  EXPECT_EQ(callError(*rpc.channel, kEcho, 2, 5s, kUnknownInterface, &why),
            ErrorKind::kUnimplemented);
  EXPECT_THAT(why, HasSubstr("not served"));
  EXPECT_THROW(
      {
        auto req = rpc.channel->newRequest(kEchoInterface, kUnknownMethod);
        (void)req.call();
      },
      Unimplemented);
  EXPECT_TRUE(echoCall(*rpc.channel, 3, 10));
}

TEST_P(Conformance, RpcDeadlineExceededThenTheChannelGoesOn) {
  ServerOptions so;
  so.workerThreads = 2;
  RpcSetup rpc(*this, options(), so);
  auto start = Clock::now();
  EXPECT_EQ(callError(*rpc.channel, kSleep, /*ms=*/400, 60ms), ErrorKind::kDeadlineExceeded);
  EXPECT_GE(msSince(start), 55.0);
  EXPECT_LT(msSince(start), 2000.0);  // ended by its deadline, not by the answer at 400 ms
  // The late answer is dropped; the next call gets its own.
  EXPECT_TRUE(echoCall(*rpc.channel, 8, 64));
}

TEST_P(Conformance, RpcLargeRequestAndResponse) {
  RpcSetup rpc(*this, options());
  EXPECT_TRUE(echoCall(*rpc.channel, 1, 6u << 20, 20s));
  auto req = rpc.channel->newRequest(kEchoInterface, kMake, 16);
  buildPayload(req.message(), 7u << 20, 0);  // seq = size of the answer
  IncomingMessage r = req.call();
  EXPECT_TRUE(checkPayload(r, 7u << 20, 7u << 20));
}

// A zero-copy echo: the answer's data is the request's, referenced where it lies, answered
// by the handler or later by a deferred fill. The server must hold the request until its
// answer is sent; calls stay outstanding, so a request released early has its space reused
// by the next ones before the answer is copied or written from it (torn answers), or its
// buffer freed (tcp's large frames).
TEST_P(Conformance, RpcAnswerMayReferenceTheRequest) {
  // Large blocks straight from mmap and back to the kernel on free (a fixed threshold also
  // stops glibc raising it): a transport buffer freed with its request is then unmapped,
  // and reading the answer's data from it faults instead of finding stale bytes. (Under
  // ASan, whose allocator ignores this, the read is reported as a use after free.)
  (void)mallopt(M_MMAP_THRESHOLD, 256 << 10);
  RpcSetup rpc(*this, options());
  Channel& ch = *rpc.channel;
  const size_t sizes[] = {100, 20u << 10, 300u << 10, 2u << 20};
  constexpr uint64_t kCalls = 48;
  constexpr size_t kWindow = 8;
  std::vector<std::pair<uint64_t, PendingCall>> inFlight;
  uint64_t answered = 0;
  auto takeOldest = [&] {
    auto [seq, call] = std::move(inFlight.front());
    inFlight.erase(inFlight.begin());
    CallResult r = call.wait();
    EXPECT_TRUE(r.ok()) << "seq " << seq << ": " << r.errorMessage();
    if (r.ok() && checkPayload(r.response(), seq, sizes[seq % 4])) ++answered;
  };
  for (uint64_t i = 0; i < kCalls; ++i) {
    const uint16_t methods[] = {kEchoByReference, kDeferredEchoByReference, kEchoByReferenceData,
                                kDeferredEchoByReferenceData};
    const uint16_t method = methods[(i / 4) % 4];
    auto req = ch.newRequest(kEchoInterface, method, payloadWords(sizes[i % 4]));
    req.setTimeout(20s);
    buildPayload(req.message(), i, sizes[i % 4]);
    inFlight.emplace_back(i, req.callAsync());
    if (inFlight.size() == kWindow) takeOldest();
  }
  while (!inFlight.empty()) takeOldest();
  EXPECT_EQ(answered, kCalls);
  EXPECT_TRUE(echoCall(ch, 99, 5000));  // and the connection goes on
}

// A full window of calls whose requests and responses together far exceed both rings:
// the client must take responses while it waits for send room, or it waits for room the
// server cannot free (the server waits for response room the client does not free).
TEST_P(Conformance, RpcPipelinedBeyondTheRingsDoesNotDeadlock) {
  auto o = options();
  o.ringBytes = 64u << 10;
  ChannelOptions co;
  co.window = 64;
  RpcSetup rpc(*this, o, {}, co);
  Channel& ch = *rpc.channel;
  constexpr uint64_t kCalls = 1500, kPayload = 12u << 10;  // 64 x 12 KiB >> 64 KiB each way
  uint64_t done = 0, failed = 0;
  std::string firstError;
  const auto until = Clock::now() + 30s;  // a bound only: it takes well under a second
  uint64_t issued = 0;
  try {
    while (done < kCalls && Clock::now() < until) {
      while (issued < kCalls && ch.outstanding() < co.window) {
        // A third of the calls send their data with referenceData and are answered the
        // same way (answers that find the client's memory full wait in the server's
        // backlog, built in its own memory), a third are answered by reference.
        const uint64_t seq = issued++;
        const uint16_t methods[] = {kEcho, kEchoByReference, kEchoByReferenceData};
        auto req = ch.newRequest(kEchoInterface, methods[seq % 3],
                                 payloadWords(seq % 3 == 2 ? 0 : kPayload));
        req.setTimeout(4s);
        auto onResult = [&, seq](CallResult&& r) {
          ++done;
          if (r.ok() && checkPayload(r.response(), seq, kPayload)) return;
          if (failed++ == 0) firstError = r.ok() ? "wrong payload" : r.errorMessage();
        };
        if (seq % 3 == 2) {
          std::vector<uint8_t> data(kPayload);
          fillPattern(data.data(), data.size(), seq);
          auto p = req.message().initRoot<bench::Payload>();
          p.setSeq(seq);
          p.setChecksum(checksum(data.data(), data.size()));
          req.message().referenceData(p, "data", kj::arrayPtr(data.data(), data.size()));
          req.callAsync(std::move(onResult));
          continue;  // `data` may go: the request is sent
        }
        buildPayload(req.message(), seq, kPayload);
        req.callAsync(std::move(onResult));
      }
      ch.pollUntil(deadlineAfter(100ms));
    }
  } catch (const Error& e) {
    FAIL() << "after " << done << " calls: " << e.what();
  }
  EXPECT_EQ(done, kCalls);
  EXPECT_EQ(failed, 0u) << firstError;
  EXPECT_EQ(ch.outstanding(), 0u);
}

/// Sends echo requests of `payload` bytes (payload seeds 0, 1, ..., call ids 1, 2, ...)
/// on `raw`, a client end of a connection to a Server, until it takes no more within
/// 300 ms or `most` went out; returns how many went out.
uint64_t sendEchoRequestsUntilFull(Connection& raw, uint64_t payload, uint64_t most) {
  uint64_t sent = 0;
  for (; sent < most; ++sent) {
    OutgoingMessage m;
    if (raw.startMessage(m, payloadWords(payload), deadlineAfter(300ms)) != Status::kOk) break;
    buildPayload(m, sent, payload);
    markEchoRequest(m, kEcho, sent + 1);
    const Status sendStatus = raw.send(m);
    EXPECT_EQ(sendStatus, Status::kOk);
    if (sendStatus != Status::kOk) break;
  }
  return sent;
}

// A client the server held back (its answers waited for room, so the worker stopped
// taking its requests and polled it instead of sleeping on it) is served as promptly as
// any once it reads again: its next calls wake the sleeping worker.
TEST_P(Conformance, RpcAClientHeldBackIsServedPromptlyOnceItReadsAgain) {
  auto o = options();
  o.ringBytes = 64u << 10;
  ServerOptions so;
  so.idleMode = WaitMode::kBlocking;  // no spinning to hide a missed wake-up
  RpcSetup rpc(*this, o, so);
  auto held = transport().makePair(o);
  rpc.server.addConnection(std::move(held.server));
  Connection& raw = *held.client;
  constexpr uint64_t kPayload = 12u << 10;  // answers overfill the 64 KiB answer ring
  const uint64_t requests = sendEchoRequestsUntilFull(raw, kPayload, 40);
  ASSERT_GT(requests * kPayload, o.ringBytes);
  std::this_thread::sleep_for(50ms);  // the server has filled our answer ring
  uint64_t answered = 0;
  IncomingMessage in;
  while (answered < requests && raw.receive(in, deadlineAfter(3s)) == Status::kOk) {
    EXPECT_TRUE(checkPayload(in, answered, kPayload));
    in.release();
    ++answered;
  }
  ASSERT_EQ(answered, requests);
  std::this_thread::sleep_for(20ms);  // the worker goes back to sleep
  for (uint64_t i = 0; i < 5; ++i) {
    OutgoingMessage m;
    ASSERT_EQ(raw.startMessage(m, payloadWords(100), deadlineAfter(1s)), Status::kOk);
    buildPayload(m, 1000 + i, 100);
    markEchoRequest(m, kEcho, requests + 1 + i);
    ASSERT_EQ(raw.send(m), Status::kOk);
    const auto start = Clock::now();
    ASSERT_EQ(raw.receive(in, deadlineAfter(3s)), Status::kOk) << "call " << i;
    EXPECT_TRUE(checkPayload(in, 1000 + i, 100));
    in.release();
    EXPECT_LT(msSince(start), 500.0) << "call " << i << " waited for a liveness round";
    std::this_thread::sleep_for(5ms);
  }
}

// A client that sends calls and then stops reading the answers must not stall the
// server's other clients (one worker serves both), and its closing must free the server.
TEST_P(Conformance, RpcClientThatStopsReadingDoesNotStallOthers) {
  auto o = options();
  o.ringBytes = 64u << 10;
  RpcSetup rpc(*this, o);
  auto stalled = transport().makePair(o);
  rpc.server.addConnection(std::move(stalled.server));
  Connection& raw = *stalled.client;
  // Requests whose answers (12 KiB each) overfill the 64 KiB answer ring: as many as the
  // server takes before it holds back (its answers waiting) and our request ring fills.
  constexpr uint64_t kPayload = 12u << 10;
  const uint64_t kRequests = sendEchoRequestsUntilFull(raw, kPayload, 40);
  EXPECT_GT(kRequests * kPayload, o.ringBytes) << "the answers must overfill the answer ring";
  std::this_thread::sleep_for(50ms);  // the server has filled the stalled client's ring
  auto start = Clock::now();
  for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(echoCall(*rpc.channel, i, 100, 3s));
  EXPECT_LT(msSince(start), 1000.0) << "a stalled client held up another one";
  // The stalled client reads what was answered, in order, and every answer is intact.
  uint64_t answered = 0;
  IncomingMessage in;
  while (raw.receive(in, deadlineAfter(2s)) == Status::kOk) {
    EXPECT_EQ(in.header().callId, answered + 1);
    EXPECT_TRUE(checkPayload(in, answered, kPayload));
    in.release();
    if (++answered == kRequests) break;
  }
  EXPECT_EQ(answered, kRequests);
  stalled.client->close();
  start = Clock::now();
  ASSERT_TRUE(echoCall(*rpc.channel, 99, 100, 3s));
  EXPECT_LT(msSince(start), 1000.0);
}

TEST_P(Conformance, RpcGrowingAnswersToAClientThatStopsReadingDoNotStallOthers) {
  // Answers of 1 MiB, grown while built, to a client that reads none: once its memory is
  // full, growing the next answer waits for room. The worker must give up on it soon (the
  // call fails with Overloaded) and serve the other client, not wait connectTimeout.
  auto o = options();
  o.ringBytes = 64u << 10;
  o.connectTimeout = 5000ms;
  RpcSetup rpc(*this, o);
  auto stalled = transport().makePair(o);
  rpc.server.addConnection(std::move(stalled.server));
  Connection& raw = *stalled.client;
  constexpr uint64_t kAnswer = 1u << 20;
  const uint64_t kRequests = o.arenaBytes / kAnswer + 6;  // more than its memory holds
  for (uint64_t i = 0; i < kRequests; ++i) {
    OutgoingMessage m;
    ASSERT_EQ(raw.startMessage(m, 8, deadlineAfter(1s)), Status::kOk);
    buildPayload(m, kAnswer, 0);  // seq = the answer's size
    markEchoRequest(m, kMakeGrowing, i + 1);
    ASSERT_EQ(raw.send(m), Status::kOk);
  }
  std::this_thread::sleep_for(200ms);  // the server is at the stalled client's requests
  auto start = Clock::now();
  for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(echoCall(*rpc.channel, i, 100, 4s));
  EXPECT_LT(msSince(start), 2000.0) << "a client that does not read held up another one";
  // The stalled client reads: in order, every answer is intact or an Overloaded error.
  uint64_t answered = 0, refused = 0;
  IncomingMessage in;
  while (answered < kRequests && raw.receive(in, deadlineAfter(3s)) == Status::kOk) {
    EXPECT_EQ(in.header().callId, answered + 1);
    if (in.header().kind == static_cast<uint8_t>(FrameKind::kError)) {
      ++refused;
    } else {
      EXPECT_TRUE(checkPayload(in, kAnswer, kAnswer));
    }
    in.release();
    ++answered;
  }
  EXPECT_EQ(answered, kRequests);
  // Transports that build in the peer's memory (shm, loopback) refuse some; the others
  // queue the answers in their own memory.
  std::cout << "[ measured ] " << refused << " of " << kRequests << " answers refused\n";
}

TEST_P(Conformance, RpcRequestThatCannotGrowFailsAtItsDeadline) {
  // The peer reads nothing; requests grown past their first segment fill its memory. The
  // one that finds no room must fail with Overloaded at its call's deadline (300 ms),
  // whether it is the channel's default timeout or set on the request, not wait the
  // connection's connectTimeout (5 s).
  for (bool setOnRequest : {false, true}) {
    // Over tcp (and the capnp transports, also sockets that queue what the kernel does not
    // take) the wait is for room to start the request, inside newRequest(), before a
    // deadline can be set on it: only the channel's default timeout can bound that.
    if (setOnRequest && (overTcp() || transport().rpcFramesOnly)) continue;
    SCOPED_TRACE(setOnRequest ? "setTimeout on the request" : "the channel's default timeout");
    auto o = options();
    o.connectTimeout = 5000ms;
    auto p = connectPair(o);  // p.server is never read
    ChannelOptions co;
    co.defaultTimeout = setOnRequest ? 10s : 300ms;
    Channel ch(std::move(p.client), co);
    std::optional<ErrorKind> kind;
    double ms = 0;
    std::vector<PendingCall> sent;
    for (uint64_t i = 0; i < 48 && !kind; ++i) {
      const auto start = Clock::now();
      try {
        auto req = ch.newRequest(kEchoInterface, kEcho, 4);
        if (setOnRequest) req.setTimeout(300ms);
        buildPayload(req.message(), i, 1u << 20);
        sent.push_back(req.callAsync());
      } catch (const Error& e) {
        kind = e.kind();
        ms = msSince(start);
      }
    }
    ASSERT_TRUE(kind) << "48 MiB of requests found room in a peer that reads nothing";
    EXPECT_EQ(*kind, ErrorKind::kOverloaded);
    EXPECT_LT(ms, 2000.0) << "the request waited past its deadline for room";
  }
}

// A client that keeps large calls outstanding without collecting them, so that their
// answers fill its memory, and then builds another large request: growing it waits for
// send room, which the server frees only once it can answer the requests it holds, which
// needs room in our memory. Waiting for room must take the answers (to the heap), or the
// server gives up on one (Overloaded, after answerRoomWait) and the call is lost.
TEST_P(Conformance, RpcLargeRequestWhileUncollectedAnswersFillOurMemory) {
  auto o = options();
  o.ringBytes = 64u << 10;
  o.arenaBytes = 2u << 20;
  o.maxMessageBytes = 1u << 20;
  ServerOptions so;
  so.answerRoomWait = 2000ms;  // without the fix, the stall lasts this long and a call fails
  RpcSetup rpc(*this, o, so);
  Channel& ch = *rpc.channel;
  constexpr size_t kPayload = 256u << 10;
  constexpr uint64_t kCalls = 24;  // 6 MiB each way: three times the arena
  std::vector<PendingCall> calls;  // odd calls complete through a callback instead
  bool building = false;
  uint64_t callbacks = 0;
  const auto start = Clock::now();
  for (uint64_t i = 0; i < kCalls; ++i) {
    // The answer starts small and takes its data into the server's memory as it is sent
    // (the server's answer backlog would take an answer that is large from the start).
    // Every other pair of answers takes the data with referenceData.
    const uint16_t method = (i / 2) % 2 ? kEchoByReferenceData : kEchoByReference;
    auto req = ch.newRequest(kEchoInterface, method, payloadWords(0));
    req.setTimeout(10s);
    building = true;
    buildPayload(req.message(), i, kPayload);
    building = false;
    if (i % 2 == 0) {
      calls.push_back(req.callAsync());
      continue;
    }
    req.callAsync([&, i](CallResult&& r) {
      EXPECT_FALSE(building) << "a callback ran while a request was being built";
      ASSERT_TRUE(r.ok()) << "call " << i << ": " << r.errorMessage();
      EXPECT_TRUE(checkPayload(r.response(), i, kPayload)) << "call " << i;
      ++callbacks;
    });
  }
  for (uint64_t i = 0; i < calls.size(); ++i) {
    CallResult r = calls[i].wait();
    ASSERT_TRUE(r.ok()) << "call " << 2 * i << ": " << r.errorMessage();
    EXPECT_TRUE(checkPayload(r.response(), 2 * i, kPayload)) << "call " << 2 * i;
  }
  for (Bound b(1000, 5s); b.next() && ch.outstanding();) ch.pollUntil(deadlineAfter(50ms));
  EXPECT_EQ(callbacks, kCalls / 2);
  EXPECT_LT(msSince(start), 1500.0) << "building a request waited for the server to give up";
}

TEST_P(Conformance, RpcThroughAListenerFromSeveralThreads) {
  if (!hasListener()) GTEST_SKIP() << transport().name << " has no listener (pairs only)";
  auto o = options();
  EchoService service;
  Server server(ServerOptions{.workerThreads = 2});
  server.addService(service);
  auto listener = transport().makeListener(o);
  const std::string endpoint = listener->endpoint();
  server.addListener(std::move(listener));
  server.start();
  EXPECT_EQ(server.endpoints(), std::vector<std::string>{endpoint});
  constexpr int kThreads = 4, kCalls = 100;
  std::atomic<int> ok{0};
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        try {
          Channel ch(transport().connect(endpoint, o));
          for (int i = 0; i < kCalls; ++i)
            if (echoCall(ch, uint64_t(t) * 1000 + i, (i * 61) % 3000)) ++ok;
        } catch (const std::exception& e) {
          ADD_FAILURE() << "thread " << t << ": " << e.what();
        }
      });
  }
  EXPECT_EQ(ok.load(), kThreads * kCalls);
  EXPECT_EQ(service.calls(), uint64_t(kThreads * kCalls));
}

TEST_P(Conformance, RpcServerShutdownFailsCallsPromptly) {
  RpcSetup rpc(*this, options());
  ASSERT_TRUE(echoCall(*rpc.channel, 1, 10));
  rpc.server.shutdown(deadlineAfter(1s));
  auto start = Clock::now();
  auto kind = callError(*rpc.channel, kEcho, 2, 3s);
  EXPECT_EQ(kind, ErrorKind::kDisconnected);
  EXPECT_LT(msSince(start), 2500.0);
  EXPECT_FALSE(rpc.channel->connected());
}

TEST_P(Conformance, RpcInEveryWaitMode) {
  for (WaitMode mode : {WaitMode::kBusyPoll, WaitMode::kSpinThenSleep, WaitMode::kBlocking}) {
    SCOPED_TRACE(std::string(waitModeName(mode)));
    RpcSetupInMode rpc(*this, mode);
    auto start = Clock::now();
    for (uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(echoCall(*rpc.channel, i, i * 7));
    EXPECT_LT(msSince(start), 15'000.0);
    // An idle server in this mode still answers a call that comes after a pause.
    std::this_thread::sleep_for(60ms);
    EXPECT_TRUE(echoCall(*rpc.channel, 1000, 10, 2s));
  }
}

// SendHint::kMoreComing: a burst waits in the sender until it polls (here) or sends with
// kNow, then arrives whole and in order, in every wait mode of the server (a sleeping
// server is woken by the flush). Over tcp it does not leave before: one write for the burst.
TEST_P(Conformance, RpcOneWayBurstSentWithMoreComingLeavesAtTheNextPoll) {
  for (WaitMode mode : {WaitMode::kBusyPoll, WaitMode::kBlocking}) {
    SCOPED_TRACE(std::string(waitModeName(mode)));
    RpcSetupInMode rpc(*this, mode);
    ASSERT_TRUE(echoCall(*rpc.channel, 0, 8));  // connected, the server idle again
    std::this_thread::sleep_for(20ms);
    constexpr uint64_t kBurst = 20;
    for (uint64_t i = 1; i <= kBurst; ++i) {
      auto req = rpc.channel->newRequest(kEchoInterface, kEcho, 16);
      buildPayload(req.message(), i, 64);
      req.sendOneWay(SendHint::kMoreComing);
    }
    if (transport().name == "tcp" || transport().name == "tls") {
      std::this_thread::sleep_for(50ms);
      EXPECT_EQ(rpc.service.calls(), 1u) << "the burst left before the poll";
    }
    rpc.channel->poll();
    // Well before a sleeping server would look again by itself (its liveness check, 1 s):
    // the poll woke it.
    for (Bound b(10'000, 700ms); b.next() && rpc.service.calls() < 1 + kBurst;)
      std::this_thread::sleep_for(1ms);
    EXPECT_EQ(rpc.service.calls(), 1 + kBurst) << "the poll did not send the burst";
    EXPECT_TRUE(echoCall(*rpc.channel, kBurst + 1, 8));  // and the channel goes on
  }
}

/// Pins the calling thread (and the threads it starts from now on) to one of the CPUs it may
/// run on; puts the old set back when destroyed.
class PinnedToOneCpu {
 public:
  PinnedToOneCpu() {
    ok_ = ::sched_getaffinity(0, sizeof saved_, &saved_) == 0;
    int cpu = 0;
    while (ok_ && cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &saved_)) ++cpu;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    ok_ = ok_ && cpu < CPU_SETSIZE && ::sched_setaffinity(0, sizeof one, &one) == 0;
  }
  ~PinnedToOneCpu() {
    if (ok_) ::sched_setaffinity(0, sizeof saved_, &saved_);
  }
  bool ok() const { return ok_; }

 private:
  cpu_set_t saved_;
  bool ok_ = false;
};

// A client and a server that both busy-poll, with one CPU between them (more spinning
// threads than cores: a crowded host, a container's CPU limit). Each must give the CPU up
// soon after it runs out of work; a poller that spins until its time slice ends makes
// every call wait milliseconds for it instead of a context switch's microseconds. Runs
// alone (meson test conformance_one_cpu, not in parallel with other tests): other load on
// the CPU would take its own time slices whatever zcrpc does.
TEST_P(Conformance, RpcBusyPollersSharingOneCpuKeepCalling) {
  PinnedToOneCpu pinned;
  ASSERT_TRUE(pinned.ok()) << "sched_setaffinity: " << std::strerror(errno);
  auto o = options();
  o.waitMode = WaitMode::kBusyPoll;
  ServerOptions so;
  so.idleMode = WaitMode::kBusyPoll;
  so.workerThreads = 1;
  RpcSetup rpc(*this, o, so);  // the server's threads start pinned too
  constexpr uint64_t kCalls = 2000;
  constexpr double kLimitMs = 5000;  // ~20 ms when pollers yield; ~3 ms a call when they do not
  const auto start = Clock::now();
  uint64_t done = 0;
  while (done < kCalls && msSince(start) < kLimitMs) {
    ASSERT_TRUE(echoCall(*rpc.channel, done, 64, 2s));
    ++done;
  }
  EXPECT_EQ(done, kCalls) << "only " << done << " calls in " << kLimitMs
                          << " ms: a busy poller held the shared CPU for whole time slices";
  std::cout << "[          ] " << done << " calls on one CPU in " << msSince(start) << " ms\n";
}

}  // namespace
}  // namespace zcrpc::conformance
