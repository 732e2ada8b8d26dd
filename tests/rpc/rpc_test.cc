// The RPC core (Channel, Server, CallContext, DeferredReply, ChannelPool) as a user sees
// it, over loopback and shm alike: every error kind with its message, synchronous,
// asynchronous and one-way calls, deferred answers from other threads, cancellation seen
// by the handler, graceful shutdown; and over shm between processes: many client
// processes with many threads each, and a server SIGKILLed mid-call then restarted.
// Suites: 'rpc' runs everything but *Stress*; 'stress' runs *Stress*.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <capnp/any.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "rpc/rpc_test_util.h"
#include "zcrpc/tcp.h"

namespace zcrpc::rpctest {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using test::Child;
using test::Pipe;

class RpcTest : public ::testing::TestWithParam<Transport> {
 protected:
  Harness& h() {
    if (!harness_) harness_ = std::make_unique<Harness>(GetParam());
    return *harness_;
  }
  Harness& h(ServerOptions so) {
    harness_ = std::make_unique<Harness>(GetParam(), so);
    return *harness_;
  }
  std::unique_ptr<Harness> harness_;
};

/// Makes an echo call and checks the answer; returns the failure, if any.
::testing::AssertionResult syncEcho(Channel& ch, uint64_t seq, size_t size,
                                    uint16_t method = kEcho) {
  EchoRequest req(ch, kTestIface, method, payloadWords(size));
  fillPayload(req.params(), seq, size);
  auto resp = req.call();
  return isEcho(resp.results(), seq, size);
}

/// Expects `fn` to throw a zcrpc::Error of `kind`; returns it.
template <typename Fn>
std::optional<Error> expectError(ErrorKind kind, Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << "wrong kind " << errorKindName(e.kind()) << ": " << e.what();
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-zcrpc exception: " << e.what();
    return std::nullopt;
  }
  ADD_FAILURE() << "did not throw (expected " << errorKindName(kind) << ")";
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------
// Calls that succeed

TEST_P(RpcTest, SynchronousEchoOfEverySize) {
  auto ch = h().channel();
  const size_t sizes[] = {0, 1, 7, 8, 100, 1000, 4096, 20000, 200000, 1 << 20};
  uint64_t seq = 1;
  for (int round = 0; round < 20; ++round)
    for (size_t size : sizes) ASSERT_TRUE(syncEcho(*ch, seq++ * 1000, size)) << size;
  EXPECT_EQ(ch->outstanding(), 0u);
  EXPECT_TRUE(ch->connected());
}

TEST_P(RpcTest, AsynchronousCallsWithCallbacks) {
  constexpr int kCalls = 64;  // the whole default window at once
  std::map<uint64_t, size_t> expected;
  int answered = 0;
  std::vector<std::string> problems;
  auto ch = h().channel();  // after what its callbacks use: they may run when it goes
  for (int i = 0; i < kCalls; ++i) {
    uint64_t seq = 5000 + i;
    size_t size = (i * 37) % 3000;
    expected[seq] = size;
    EchoRequest req(*ch, kTestIface, i % 2 ? kEcho : kDeferredEcho, payloadWords(size));
    fillPayload(req.params(), seq, size);
    req.callAsync([&, seq, size](CallResult&& r) {
      ++answered;
      if (!r.ok()) {
        problems.push_back("seq " + std::to_string(seq) + ": " + r.errorMessage());
        return;
      }
      std::string why = echoProblem(r.results<Payload>(), seq, size);
      if (!why.empty()) problems.push_back(why);
    });
  }
  EXPECT_EQ(ch->outstanding(), static_cast<size_t>(kCalls));
  ASSERT_TRUE(drainChannel(*ch)) << ch->outstanding() << " calls never finished";
  EXPECT_EQ(answered, kCalls);
  EXPECT_THAT(problems, ::testing::IsEmpty());
}

TEST_P(RpcTest, AsynchronousCallsWaitedInAnyOrder) {
  auto ch = h().channel();
  constexpr int kCalls = 48;
  std::vector<PendingCall> calls;
  for (int i = 0; i < kCalls; ++i) {
    EchoRequest req(*ch, kTestIface, i % 3 ? kEcho : kDeferredEcho, payloadWords(i * 11));
    fillPayload(req.params(), 100 + i, i * 11);
    calls.push_back(req.callAsync());
  }
  // Newest first: waiting for one call delivers the others' results to their slots.
  for (int i = kCalls - 1; i >= 0; --i) {
    CallResult r = calls[i].wait();
    ASSERT_TRUE(r.ok()) << r.errorMessage();
    EXPECT_TRUE(calls[i].done());
    EXPECT_TRUE(isEcho(r.results<Payload>(), 100 + i, i * 11));
  }
  EXPECT_EQ(ch->outstanding(), 0u);
  // A result is collected once.
  CallResult again = calls[0].wait();
  EXPECT_FALSE(again.ok());
}

TEST_P(RpcTest, ManyOutstandingAtOnce) {
  ChannelOptions co;
  co.window = 256;  // = ConnectionOptions::maxLeases: every response may be held at once
  auto ch = h().channel(co);
  std::mt19937_64 rng(42);
  std::vector<std::pair<PendingCall, std::pair<uint64_t, size_t>>> calls;
  for (int i = 0; i < 256; ++i) {
    size_t size = rng() % 200;
    uint64_t seq = rng() >> 8;
    EchoRequest req(*ch, kTestIface, i % 4 ? kEcho : kDeferredEcho, payloadWords(size));
    fillPayload(req.params(), seq, size);
    calls.push_back({req.callAsync(), {seq, size}});
  }
  EXPECT_EQ(ch->outstanding(), 256u);
  std::shuffle(calls.begin(), calls.end(), rng);
  for (auto& [call, what] : calls) {
    CallResult r = call.wait();
    ASSERT_TRUE(r.ok()) << r.errorMessage();
    ASSERT_TRUE(isEcho(r.results<Payload>(), what.first, what.second));
  }
  EXPECT_EQ(ch->outstanding(), 0u);
}

// Every answer the Channel holds for collection is a receive lease. A window larger than
// the connection's leases (ConnectionOptions::maxLeases, 256 by default) must be refused
// when the Channel is made, or work; answered calls must not stall until their deadline.
TEST_P(RpcTest, WindowLargerThanTheLeasesIsRefusedOrServed) {
  ChannelOptions co;
  co.window = 512;
  co.defaultTimeout = 3s;
  std::unique_ptr<Channel> ch;
  try {
    ch = h().channel(co);
  } catch (const InvalidArgument& e) {
    SUCCEED() << "refused: " << e.what();
    return;
  }
  std::vector<PendingCall> calls;
  for (int i = 0; i < 512; ++i) {
    EchoRequest req(*ch, kTestIface, kEcho, payloadWords(8));
    fillPayload(req.params(), i, 8);
    calls.push_back(req.callAsync());
  }
  int ok = 0;
  std::string firstError;
  for (int i = 511; i >= 0; --i) {  // collected newest first: all answers get held
    CallResult r = calls[i].wait();
    if (r.ok()) {
      ++ok;
    } else if (firstError.empty()) {
      firstError = r.errorMessage();
    }
  }
  EXPECT_EQ(ok, 512) << "a window of 512 was accepted, but " << 512 - ok
                     << " answered calls failed; first: " << firstError;
}

TEST_P(RpcTest, UncollectedAnswersDoNotHoldBackAnEarlierOne) {
  // A slow (deferred) call, then quick calls whose answers nobody collects before waiting
  // for the slow one. Together they are three times the answer ring, which reclaims space
  // in arrival order: the channel must move the answers it holds out of the ring, or the
  // slow answer (and the later quick ones) never find room to arrive.
  ConnectionOptions o = testConnOpts();
  o.ringBytes = 64 << 10;
  Harness local(GetParam(), {}, o);
  auto ch = local.channel();
  constexpr size_t kSize = 8 << 10;
  EchoRequest slow(*ch, kTestIface, kSlow, 0);
  slow.setTimeout(5s);
  fillSlow(slow.params(), 7, 50ms);
  PendingCall slowCall = slow.callAsync();
  std::vector<PendingCall> quick;
  for (uint64_t i = 0; i < 24; ++i) {
    EchoRequest req(*ch, kTestIface, kEcho, payloadWords(kSize));
    req.setTimeout(5s);
    fillPayload(req.params(), 100 + i, kSize);
    quick.push_back(req.callAsync());
  }
  {
    CallResult r = slowCall.wait();  // released before the next waits: the ring holds it
    ASSERT_TRUE(r.ok()) << r.errorMessage();
    EXPECT_EQ(r.results<Payload>().getSeq(), 8u);
  }
  for (uint64_t i = 0; i < quick.size(); ++i) {
    CallResult q = quick[i].wait();
    ASSERT_TRUE(q.ok()) << "quick call " << i << ": " << q.errorMessage();
    EXPECT_TRUE(isEcho(q.results<Payload>(), 100 + i, kSize));
  }
}

TEST_P(RpcTest, DeferredAnswerFromAnotherThread) {
  auto ch = h().channel();
  for (uint64_t i = 0; i < 100; ++i) ASSERT_TRUE(syncEcho(*ch, 70000 + i, i * 13, kDeferredEcho));
  // A deferred answer that comes later than the next calls.
  EchoRequest slow(*ch, kTestIface, kSlow, 0);
  fillSlow(slow.params(), 41, 100ms);
  auto start = Clock::now();
  PendingCall p = slow.callAsync();
  for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(syncEcho(*ch, 80000 + i, 10));
  CallResult r = p.wait();
  ASSERT_TRUE(r.ok()) << r.errorMessage();
  EXPECT_EQ(r.results<Payload>().getSeq(), 42u);
  EXPECT_GE(Clock::now() - start, 95ms);
}

TEST_P(RpcTest, OneWayCallsReachTheServerAndGetNoResponse) {
  auto ch = h().channel();
  for (uint64_t i = 0; i < 100; ++i) {
    EchoRequest req(*ch, kTestIface, kOneWay, 0);
    fillPayload(req.params(), i, 8);
    req.sendOneWay();
    EXPECT_EQ(ch->outstanding(), 0u);
  }
  // Requests on one connection are handled in order: after this answer the server has
  // seen every one-way call.
  ASSERT_TRUE(syncEcho(*ch, 1, 1));
  auto seqs = h().service.oneWaySeqs();
  ASSERT_EQ(seqs.size(), 100u);
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(seqs[i], i);
  EXPECT_TRUE(h().service.oneWaysWereOneWay());
  EXPECT_EQ(ch->poll(), 0u);

  // On the wire: nothing comes back for a one-way frame, not even for an unknown method
  // or a throwing handler; the first frame back answers the request that follows them.
  auto conn = h().connect();
  auto sendFrame = [&](FrameKind kind, uint64_t callId, uint16_t method) {
    OutgoingMessage m;
    ASSERT_EQ(conn->startMessage(m, payloadWords(8), deadlineAfter(2s)), Status::kOk);
    fillPayload(m.initRoot<Payload>(), callId, 8);
    m.header().kind = static_cast<uint8_t>(kind);
    m.header().callId = callId;
    m.header().interfaceId = kTestIface;
    m.header().methodId = method;
    ASSERT_EQ(conn->send(m), Status::kOk);
  };
  for (uint64_t id = 1; id <= 30; ++id)
    sendFrame(FrameKind::kOneWay, id, id % 3 == 0 ? kOneWay : id % 3 == 1 ? kFailStd : kUnknownMethod);
  sendFrame(FrameKind::kRequest, 31, kEcho);
  IncomingMessage in;
  ASSERT_EQ(conn->receive(in, deadlineAfter(5s)), Status::kOk);
  EXPECT_EQ(in.header().kind, static_cast<uint8_t>(FrameKind::kResponse));
  EXPECT_EQ(in.header().callId, 31u);
  in.release();
  EXPECT_EQ(conn->receive(in, deadlineAfter(100ms)), Status::kTimedOut);
}

TEST_P(RpcTest, AOneWayCallSentJustBeforeClosingIsStillHandled) {
  // The server's worker sleeps (blocking idle mode), so the signal for the call and the
  // hang-up wake it together: what the client sent before it went must still be read.
  ServerOptions so;
  so.idleMode = WaitMode::kBlocking;
  auto& harness = h(so);
  constexpr uint64_t kRounds = 20;
  for (uint64_t i = 0; i < kRounds; ++i) {
    auto ch = harness.channel();
    ASSERT_TRUE(syncEcho(*ch, 1, 1));  // connected and adopted
    std::this_thread::sleep_for(2ms);  // the worker is asleep again
    EchoRequest req(*ch, kTestIface, kOneWay, 0);
    fillPayload(req.params(), i, 8);
    req.sendOneWay();
    ch.reset();
    ASSERT_TRUE(eventually([&] { return harness.service.oneWaySeqs().size() == i + 1; }))
        << "the one-way call of round " << i << " was never handled";
  }
  auto seqs = harness.service.oneWaySeqs();
  for (uint64_t i = 0; i < kRounds; ++i) EXPECT_EQ(seqs[i], i);
}

// ---------------------------------------------------------------------------------------
// Every error kind, with a message saying what happened

TEST_P(RpcTest, HandlerApplicationErrorReachesCallerWithCode) {
  auto ch = h().channel();
  EchoRequest req(*ch, kTestIface, kFailApp, 0);
  fillPayload(req.params(), 7, 0);
  try {
    req.call();
    FAIL() << "no error";
  } catch (const ApplicationError& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kApplication);
    EXPECT_EQ(e.code(), 1007);
    EXPECT_THAT(e.what(), HasSubstr("application refused seq 7"));
  }
  // Asynchronously, as a CallResult.
  EchoRequest req2(*ch, kTestIface, kFailApp, 0);
  fillPayload(req2.params(), 9, 0);
  CallResult r = req2.callAsync().wait();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.errorKind(), ErrorKind::kApplication);
  EXPECT_EQ(r.errorCode(), 1009);
  EXPECT_THAT(r.errorMessage(), HasSubstr("application refused seq 9"));
  EXPECT_THROW(r.throwIfError(), ApplicationError);
  // The channel goes on.
  EXPECT_TRUE(syncEcho(*ch, 3, 3));
}

TEST_P(RpcTest, HandlerStdExceptionReachesCallerAsApplicationError) {
  auto ch = h().channel();
  EchoRequest req(*ch, kTestIface, kFailStd, 0);
  fillPayload(req.params(), 11, 0);
  auto e = expectError(ErrorKind::kApplication, [&] { req.call(); });
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("handler blew up on seq 11"));
  EXPECT_TRUE(syncEcho(*ch, 3, 3));
}

TEST_P(RpcTest, HandlerThrowingATypedErrorKeepsItsKind) {
  auto ch = h().channel();
  EchoRequest req(*ch, kTestIface, kThrowOverloaded, 0);
  fillPayload(req.params(), 1, 0);
  auto e = expectError(ErrorKind::kOverloaded, [&] { req.call(); });
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("service is busy: try later"));
  EXPECT_TRUE(syncEcho(*ch, 3, 3));
}

// A handler that throws after writing part of its response (into ring and arena) gives
// the space back: the error goes out, and so does everything after it.
TEST_P(RpcTest, HandlerFailingAfterStartingItsResponse) {
  auto ch = h().channel();
  const uint64_t sizes[] = {0, 100, 20000, 200000, 3 << 20};  // 3 MiB: most of the 8 MiB arena
  for (int round = 0; round < 10; ++round) {
    for (uint64_t size : sizes) {
      EchoRequest req(*ch, kTestIface, kFailHalfway, 0);
      fillPayload(req.params(), size, 0);
      try {
        req.call();
        FAIL() << "no error";
      } catch (const ApplicationError& e) {
        EXPECT_EQ(e.code(), kHalfwayCode);
        EXPECT_THAT(e.what(), HasSubstr("failed after starting the response"));
      }
      ASSERT_TRUE(syncEcho(*ch, round * 100 + size, size % 300000)) << size;
    }
  }
}

TEST_P(RpcTest, DeferredHandlerFailuresReachTheCaller) {
  auto ch = h().channel();
  {
    EchoRequest req(*ch, kTestIface, kDeferredFail, 0);
    fillPayload(req.params(), 5, 0);
    try {
      req.call();
      FAIL() << "no error";
    } catch (const ApplicationError& e) {
      EXPECT_EQ(e.code(), kDeferredFailCode);
      EXPECT_THAT(e.what(), HasSubstr("deferred failure of token 5"));
    }
  }
  {
    EchoRequest req(*ch, kTestIface, kDeferredFillThrows, 0);
    fillPayload(req.params(), 6, 0);
    try {
      req.call();
      FAIL() << "no error";
    } catch (const ApplicationError& e) {
      EXPECT_EQ(e.code(), kFillThrowsCode);
      EXPECT_THAT(e.what(), HasSubstr("fill of token 6 threw"));
    }
  }
  {
    EchoRequest req(*ch, kTestIface, kDropDeferred, 0);
    fillPayload(req.params(), 7, 0);
    auto e = expectError(ErrorKind::kFailed, [&] { req.call(); });
    ASSERT_TRUE(e);
    EXPECT_THAT(e->what(), HasSubstr("without answering it"));
  }
  EXPECT_TRUE(syncEcho(*ch, 3, 3));
}

TEST_P(RpcTest, UnknownInterfaceIsUnimplemented) {
  auto ch = h().channel();
  RawRequest req = ch->newRequest(kUnknownIface, 0);
  try {
    req.call();
    FAIL() << "no error";
  } catch (const Unimplemented& e) {
    EXPECT_THAT(e.what(), HasSubstr("interface 0xdeadbeefdeadbeef is not served"));
  }
  EXPECT_TRUE(syncEcho(*ch, 3, 3));
}

TEST_P(RpcTest, UnknownMethodIsUnimplemented) {
  auto ch = h().channel();
  EchoRequest req(*ch, kTestIface, kUnknownMethod, 0);
  fillPayload(req.params(), 1, 1);
  auto e = expectError(ErrorKind::kUnimplemented, [&] { req.call(); });
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("method 99 of interface 0xb5e7c0de5e7f1ce1 is not implemented"));
  EXPECT_TRUE(syncEcho(*ch, 3, 3));
}

TEST_P(RpcTest, UnreadableRequestIsInvalidArgument) {
  auto ch = h().channel();
  // 1. A root pointer far outside the message.
  {
    RawRequest req = ch->newRequest(kTestIface, kEcho, 8);
    req.message().initRoot<capnp::AnyPointer>();
    auto segs = req.message().getSegmentsForOutput();
    ASSERT_EQ(segs.size(), 1u);
    ASSERT_GE(segs[0].size(), 1u);
    // struct pointer: offset 2^20 words, 1 data word, no pointers
    uint64_t bogus = (uint64_t{1} << 32) | (uint32_t{1} << 20 << 2);
    std::memcpy(static_cast<void*>(const_cast<capnp::word*>(segs[0].begin())), &bogus, 8);
    auto e = expectError(ErrorKind::kInvalidArgument, [&] { req.call(); });
    ASSERT_TRUE(e);
    EXPECT_THAT(e->what(), HasSubstr("server could not read the request"));
    EXPECT_THAT(e->what(), HasSubstr("out-of-bounds"));
  }
  // 2. A text where the method expects a struct.
  {
    RawRequest req = ch->newRequest(kTestIface, kEcho, 8);
    req.message().initRoot<capnp::AnyPointer>().setAs<capnp::Text>("not a Payload at all");
    auto e = expectError(ErrorKind::kInvalidArgument, [&] { req.call(); });
    ASSERT_TRUE(e);
    EXPECT_THAT(e->what(), HasSubstr("server could not read the request"));
  }
  EXPECT_TRUE(syncEcho(*ch, 3, 3));
}

// A call that sets no deadline gets the channel's default timeout, fixed only once the
// request is sent (so no clock is read before it leaves): it must still expire, sync and
// async.
TEST_P(RpcTest, DefaultTimeoutExpiresACallThatSetsNoDeadline) {
  ChannelOptions co;
  co.defaultTimeout = 80ms;
  auto ch = h().channel(co);
  EchoRequest req(*ch, kTestIface, kSlow, 0);
  fillSlow(req.params(), 601, 3000ms);
  auto start = Clock::now();
  auto e = expectError(ErrorKind::kDeadlineExceeded, [&] { req.call(); });
  auto took = Clock::now() - start;
  ASSERT_TRUE(e);
  EXPECT_GE(took, 80ms);
  EXPECT_LT(took, 1500ms);
  EchoRequest req2(*ch, kTestIface, kSlow, 0);
  fillSlow(req2.params(), 602, 3000ms);
  start = Clock::now();
  CallResult r = req2.callAsync().wait();
  EXPECT_EQ(r.errorKind(), ErrorKind::kDeadlineExceeded);
  EXPECT_GE(Clock::now() - start, 80ms);
  // The channel still works. This call sets its own deadline: the 80 ms default is for the
  // slow calls above, and a loaded machine may take longer than that to echo.
  EchoRequest req3(*ch, kTestIface, kEcho, payloadWords(3));
  req3.setTimeout(10s);
  fillPayload(req3.params(), 3, 3);
  EXPECT_TRUE(isEcho(req3.call().results(), 3, 3));
}

TEST_P(RpcTest, SlowCallPassesItsDeadlineAndTheHandlerIsTold) {
  auto ch = h().channel();
  EchoRequest req(*ch, kTestIface, kSlow, 0);
  fillSlow(req.params(), 501, 3000ms);
  req.setTimeout(50ms);
  auto start = Clock::now();
  auto e = expectError(ErrorKind::kDeadlineExceeded, [&] { req.call(); });
  auto took = Clock::now() - start;
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("passed its deadline"));
  EXPECT_GE(took, 50ms);
  EXPECT_LT(took, 1000ms);
  // The client gave up and said so: the deferred handler sees the cancellation.
  EXPECT_TRUE(eventually([&] { return h().service.cancelSeen(501); }, 2000ms));
  EXPECT_TRUE(syncEcho(*ch, 3, 3));
  // Asynchronously too.
  EchoRequest req2(*ch, kTestIface, kSlow, 0);
  fillSlow(req2.params(), 502, 3000ms);
  req2.setTimeout(30ms);
  CallResult r = req2.callAsync().wait();
  EXPECT_EQ(r.errorKind(), ErrorKind::kDeadlineExceeded);
  EXPECT_THAT(r.errorMessage(), HasSubstr("passed its deadline"));
  EXPECT_TRUE(eventually([&] { return h().service.cancelSeen(502); }, 2000ms));
}

TEST_P(RpcTest, CancelFinishesTheCallAndTheHandlerSeesIt) {
  std::optional<ErrorKind> kind;
  auto ch = h().channel();
  EchoRequest req(*ch, kTestIface, kSlow, 0);
  fillSlow(req.params(), 601, 5000ms);
  PendingCall p = req.callAsync();
  // Cancel once the handler holds the call, so it is the handler that must notice.
  ASSERT_TRUE(eventually([&] { return h().service.deferredSeen(601); }));
  EXPECT_FALSE(p.done());
  p.cancel();
  EXPECT_TRUE(p.done());
  EXPECT_EQ(ch->outstanding(), 0u);
  CallResult r = p.wait();
  EXPECT_EQ(r.errorKind(), ErrorKind::kCancelled);
  EXPECT_THAT(r.errorMessage(), HasSubstr("cancelled"));
  EXPECT_TRUE(eventually([&] { return h().service.cancelSeen(601); }, 2000ms))
      << "the deferred handler never saw isCancelled()";
  // A cancelled call with a callback gets kCancelled through it.
  EchoRequest req2(*ch, kTestIface, kSlow, 0);
  fillSlow(req2.params(), 602, 5000ms);
  PendingCall p2 = req2.callAsync([&](CallResult&& res) { kind = res.errorKind(); });
  ASSERT_TRUE(eventually([&] { return h().service.deferredSeen(602); }));
  p2.cancel();
  EXPECT_EQ(kind, ErrorKind::kCancelled);
  EXPECT_TRUE(eventually([&] { return h().service.cancelSeen(602); }, 2000ms));
  // The handler's late kCancelled answers are ignored; the channel goes on.
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(syncEcho(*ch, 3 + i, 3));
  ch->poll();
  EXPECT_EQ(ch->outstanding(), 0u);
}

TEST_P(RpcTest, FullWindowIsOverloaded) {
  ChannelOptions co;
  co.window = 4;
  auto ch = h().channel(co);
  std::vector<PendingCall> calls;
  for (uint64_t i = 0; i < 4; ++i) {
    EchoRequest req(*ch, kTestIface, kSlow, 0);
    fillSlow(req.params(), 700 + i, 5000ms);
    calls.push_back(req.callAsync());
  }
  {
    EchoRequest extra(*ch, kTestIface, kSlow, 0);
    fillSlow(extra.params(), 799, 10ms);
    try {
      extra.callAsync();
      FAIL() << "a fifth call in a window of 4 was accepted";
    } catch (const Overloaded& e) {
      EXPECT_THAT(e.what(), HasSubstr("window of 4 outstanding calls"));
      EXPECT_THAT(e.what(), HasSubstr("is full"));
      // ... and says what to do: callbacks and results are taken only when polled.
      EXPECT_THAT(e.what(), HasSubstr("poll() or pollUntil()"));
      EXPECT_THAT(e.what(), HasSubstr("ZCRPC_WINDOW"));
    }
  }  // the unsent request gives its space back
  EXPECT_EQ(ch->outstanding(), 4u);
  for (auto& c : calls) c.cancel();
  EXPECT_EQ(ch->outstanding(), 0u);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(syncEcho(*ch, 10 + i, 3));
}

// The natural answer to Overloaded: make room (cancel a call, or let one expire), then
// send the same request again. Cancelling and expiring must work while a request is open.
TEST_P(RpcTest, OverloadedRequestIsSentOnceRoomIsMade) {
  ChannelOptions co;
  co.window = 2;
  auto ch = h().channel(co);
  // 1. Room by cancelling, while the refused request is open on the same connection.
  {
    EchoRequest a(*ch, kTestIface, kSlow, 0);  // call 1
    fillSlow(a.params(), 851, 5000ms);
    PendingCall pa = a.callAsync();
    EchoRequest b(*ch, kTestIface, kSlow, 0);  // call 2
    fillSlow(b.params(), 852, 5000ms);
    PendingCall pb = b.callAsync();
    EchoRequest c(*ch, kTestIface, kEcho, payloadWords(16));
    fillPayload(c.params(), 853, 16);
    EXPECT_THROW(c.callAsync(), Overloaded);
    try {
      pa.cancel();
    } catch (const std::exception& e) {
      FAIL() << "cancel() while a request is open threw: " << e.what();
    }
    EXPECT_EQ(pa.wait().errorKind(), ErrorKind::kCancelled);
    try {
      CallResult rc = c.callAsync().wait();  // call 3, in call 1's place
      EXPECT_TRUE(rc.ok()) << rc.errorMessage();
      if (rc.ok()) {
        EXPECT_TRUE(isEcho(rc.results<Payload>(), 853, 16));
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << "retry after cancel: " << e.what();
    }
    pb.cancel();
    EXPECT_EQ(ch->outstanding(), 0u);
  }
  // 2. Room by expiry, noticed by poll() while the refused request is open.
  {
    EchoRequest a(*ch, kTestIface, kSlow, 0);  // call 4
    fillSlow(a.params(), 854, 5000ms);
    a.setTimeout(80ms);
    PendingCall pa = a.callAsync();
    EchoRequest b(*ch, kTestIface, kSlow, 0);  // call 5
    fillSlow(b.params(), 855, 5000ms);
    PendingCall pb = b.callAsync();
    EchoRequest d(*ch, kTestIface, kEcho, payloadWords(16));
    fillPayload(d.params(), 856, 16);
    EXPECT_THROW(d.callAsync(), Overloaded);
    try {
      for (int i = 0; i < 1000 && !pa.done(); ++i) {
        std::this_thread::sleep_for(1ms);
        ch->poll();
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << "poll() expiring a call while a request is open threw: " << e.what();
    }
    ASSERT_TRUE(pa.done());
    EXPECT_EQ(pa.wait().errorKind(), ErrorKind::kDeadlineExceeded);
    try {
      CallResult rd = d.callAsync().wait();  // call 6, in call 4's place
      EXPECT_TRUE(rd.ok()) << rd.errorMessage();
      if (rd.ok()) {
        EXPECT_TRUE(isEcho(rd.results<Payload>(), 856, 16));
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << "retry after expiry: " << e.what();
    }
    pb.cancel();
  }
  EXPECT_TRUE(eventually([&] {
    auto& s = h().service;
    return s.cancelSeen(851) && s.cancelSeen(852) && s.cancelSeen(854) && s.cancelSeen(855);
  }, 2000ms)) << "the server was not told about every cancelled or expired call";
}

// The window bounds the number of calls outstanding; a user relies on being able to make
// window - 1 further calls while one slow call is out.
TEST_P(RpcTest, OneSlowCallDoesNotOverloadAWindowWithRoomLeft) {
  ChannelOptions co;
  co.window = 4;
  auto ch = h().channel(co);
  EchoRequest slow(*ch, kTestIface, kSlow, 0);
  fillSlow(slow.params(), 801, 3000ms);
  PendingCall p = slow.callAsync();
  for (int i = 0; i < 12; ++i) {
    ASSERT_EQ(ch->outstanding(), 1u);
    try {
      ASSERT_TRUE(syncEcho(*ch, 20 + i, 3));
    } catch (const Overloaded& e) {
      FAIL() << "call " << i << " after the slow one, with 1 of 4 calls outstanding: "
             << e.what();
    }
  }
  p.cancel();
}

TEST_P(RpcTest, ServerRefusesDeferredCallsBeyondItsLimitWithOverloaded) {
  ServerOptions so;
  so.maxDeferredPerConnection = 2;
  auto ch = h(so).channel();
  std::vector<PendingCall> calls;
  for (uint64_t i = 0; i < 3; ++i) {
    EchoRequest req(*ch, kTestIface, kSlow, 0);
    fillSlow(req.params(), 900 + i, 300ms);
    req.setTimeout(3s);
    calls.push_back(req.callAsync());
  }
  ASSERT_TRUE(drainChannel(*ch, 4000ms));
  int overloaded = 0, ok = 0;
  for (auto& c : calls) {
    CallResult r = c.wait();
    if (r.ok()) ++ok;
    if (r.errorKind() == ErrorKind::kOverloaded) ++overloaded;
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(overloaded, 1) << "ServerOptions::maxDeferredPerConnection = 2 admitted a third "
                              "deferred call";
}

TEST_P(RpcTest, ServerShutdownDisconnectsCallsInFlight) {
  auto ch = h().channel();
  EchoRequest req(*ch, kTestIface, kSlow, 0);
  fillSlow(req.params(), 1001, 10000ms);
  PendingCall p = req.callAsync();
  ASSERT_TRUE(eventually([&] { return h().service.deferredSeen(1001); }));
  auto start = Clock::now();
  h().server().shutdown(deadlineAfter(100ms));
  ASSERT_TRUE(drainChannel(*ch, 3000ms)) << "a call outlived the server";
  EXPECT_LT(Clock::now() - start, 2000ms);
  CallResult r = p.wait();
  EXPECT_EQ(r.errorKind(), ErrorKind::kDisconnected);
  EXPECT_THAT(r.errorMessage(), HasSubstr("server shut down before answering"));
  // Later calls fail at once, saying why.
  auto e = expectError(ErrorKind::kDisconnected, [&] {
    EchoRequest again(*ch, kTestIface, kEcho, 0);
    fillPayload(again.params(), 1, 1);
    again.call();
  });
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), AnyOf(HasSubstr("disconnected"), HasSubstr("closed")));
  EXPECT_FALSE(ch->connected());
}

TEST_P(RpcTest, GracefulShutdownAnswersEveryCallInFlight) {
  ChannelOptions co;
  co.window = 128;
  auto ch = h().channel(co);
  struct Expect {
    std::string what;
    bool mustSucceed;
  };
  std::vector<std::pair<PendingCall, Expect>> calls;
  for (uint64_t i = 0; i < 40; ++i) {  // deferred answers due before the drain deadline
    EchoRequest req(*ch, kTestIface, kSlow, 0);
    fillSlow(req.params(), 2000 + i, std::chrono::milliseconds(20 + 10 * i));
    calls.push_back({req.callAsync(), {"slow " + std::to_string(i), true}});
  }
  for (uint64_t i = 0; i < 40; ++i) {
    EchoRequest req(*ch, kTestIface, i % 2 ? kEcho : kDeferredEcho, payloadWords(64));
    fillPayload(req.params(), 3000 + i, 64);
    calls.push_back({req.callAsync(), {"echo " + std::to_string(i), true}});
  }
  for (uint64_t i = 0; i < 4; ++i) {  // due long after it
    EchoRequest req(*ch, kTestIface, kSlow, 0);
    fillSlow(req.params(), 4000 + i, 30000ms);
    calls.push_back({req.callAsync(), {"stuck " + std::to_string(i), false}});
  }
  ASSERT_TRUE(eventually([&] { return h().service.deferredSeen(4003); }));
  auto start = Clock::now();
  std::thread stopper([&] { h().server().shutdown(deadlineAfter(2000ms)); });
  bool drained = drainChannel(*ch, 6000ms);
  stopper.join();
  ASSERT_TRUE(drained) << ch->outstanding() << " calls hang after shutdown";
  EXPECT_LT(Clock::now() - start, 4000ms);
  for (auto& [call, expect] : calls) {
    CallResult r = call.wait();
    if (expect.mustSucceed) {
      EXPECT_TRUE(r.ok()) << expect.what << ": " << r.errorMessage();
    } else {
      EXPECT_EQ(r.errorKind(), ErrorKind::kDisconnected) << expect.what;
      EXPECT_THAT(r.errorMessage(), HasSubstr("server shut down before answering"));
    }
  }
}

// A handler still holding a call when the server shuts down completes it once, as it
// must; the server has answered for it already, so there is nothing to do, and nothing to
// throw (a throw here typically ends the handler's thread, and with it the process).
TEST_P(RpcTest, DeferredReplyCompletedAfterShutdownIsHarmless) {
  auto ch = h().channel();
  EchoRequest req(*ch, kTestIface, kPark, 0);
  fillPayload(req.params(), 1, 0);
  PendingCall p = req.callAsync();
  ASSERT_TRUE(eventually([&] { return h().service.parkedCount() == 1; }));
  h().server().shutdown(deadlineAfter(50ms));
  ASSERT_TRUE(drainChannel(*ch, 3000ms));
  EXPECT_EQ(p.wait().errorKind(), ErrorKind::kDisconnected);
  auto parked = h().service.takeParked();
  ASSERT_EQ(parked.size(), 1u);
  try {
    parked[0].complete([](OutgoingMessage& m) { m.initRoot<Payload>().setSeq(2); });
  } catch (const std::exception& e) {
    ADD_FAILURE() << "complete() after shutdown threw: " << e.what();
  }
}

// Retrying from the callback of a call that passed its deadline is the usual way to retry;
// the retry must keep its own deadline.
TEST_P(RpcTest, RetryStartedFromAnExpiryCallbackKeepsItsDeadline) {
  ChannelOptions co;
  co.window = 4;
  PendingCall retry;
  bool expired = false;
  auto ch = h().channel(co);
  ASSERT_TRUE(syncEcho(*ch, 1, 1));  // call ids 1 and 2: the next call takes slot 3,
  ASSERT_TRUE(syncEcho(*ch, 2, 1));  // and a call made from its callback slot 0
  EchoRequest first(*ch, kTestIface, kSlow, 0);
  fillSlow(first.params(), 1101, 3000ms);
  first.setTimeout(30ms);
  first.callAsync([&](CallResult&& r) {
    expired = r.errorKind() == ErrorKind::kDeadlineExceeded;
    EchoRequest again(*ch, kTestIface, kSlow, 0);
    fillSlow(again.params(), 1102, 3000ms);
    again.setTimeout(100ms);
    retry = again.callAsync();
  });
  for (int i = 0; i < 200 && !expired; ++i) ch->pollUntil(deadlineAfter(10ms));
  ASSERT_TRUE(expired);
  auto start = Clock::now();
  CallResult r = retry.wait();
  auto took = Clock::now() - start;
  EXPECT_EQ(r.errorKind(), ErrorKind::kDeadlineExceeded)
      << (r.ok() ? "the retry was answered after " : "the retry failed after ")
      << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
      << " ms instead of expiring at 100 ms";
  EXPECT_LT(took, 1000ms);
}

// A call's default deadline is its channel's timeout from now: never less, and no more
// than a clock tick over. (It is fixed lazily, when first needed: here by asking for it.
// The kernel's coarse clock is no way to make it cheaper: it can lag by more than a tick.)
TEST_P(RpcTest, DefaultDeadlineIsTheTimeoutFromNow) {
  for (auto timeout : {std::chrono::nanoseconds(200ms), std::chrono::nanoseconds(1s),
                       std::chrono::nanoseconds(10s), std::chrono::nanoseconds(3600s)}) {
    ChannelOptions co;
    co.defaultTimeout = timeout;
    auto ch = h().channel(co);
    for (int i = 0; i < 2000; ++i) {
      const auto before = Clock::now();
      RawRequest req = ch->newRequest(kTestIface, kEcho, 8);
      const auto after = Clock::now();
      ASSERT_GE(req.deadline(), before + timeout)
          << "timeout " << timeout.count() << " ns, call " << i << ": the deadline came "
          << std::chrono::duration_cast<std::chrono::microseconds>(before + timeout - req.deadline()).count()
          << " us early";
      ASSERT_LE(req.deadline(), after + timeout + 25ms) << "timeout " << timeout.count() << " ns";
      if (i % 100 == 0) std::this_thread::sleep_for(100us);  // land at other points of a tick
    }
  }
}

// ---------------------------------------------------------------------------------------
// A Channel used from a second thread (issue 23 item 5)

/// Runs `fn` on a thread of its own and returns the zcrpc error it threw ("" if none).
template <typename Fn>
std::string onAnotherThread(Fn&& fn) {
  std::string error = "did not throw";
  std::thread([&] {
    try {
      fn();
    } catch (const Error& e) {
      error = e.kind() == ErrorKind::kInvalidArgument ? e.what() : "wrong kind: " + std::string(e.what());
    } catch (const std::exception& e) {
      error = "not a zcrpc error: " + std::string(e.what());
    }
  }).join();  // join orders the other thread's reads after this thread's writes: no race
  return error;
}

TEST_P(RpcTest, ASecondThreadIsRefusedWhileTheChannelsThreadHasCallsOutstanding) {
  auto ch = h().channel();
  EchoRequest slow(*ch, kTestIface, kSlow, 0);
  fillSlow(slow.params(), 7, 100ms);
  PendingCall pending = slow.callAsync();
  for (auto [where, error] : {
           std::pair{"poll()", onAnotherThread([&] { ch->poll(); })},
           std::pair{"pollUntil()", onAnotherThread([&] { ch->pollUntil(deadlineAfter(1ms)); })},
           std::pair{"new request", onAnotherThread([&] { EchoRequest r(*ch, kTestIface, kEcho, 8); })},
           std::pair{"PendingCall::wait()", onAnotherThread([&] { (void)pending.wait(); })},
           std::pair{"PendingCall::cancel()", onAnotherThread([&] { pending.cancel(); })},
           std::pair{"ping()", onAnotherThread([&] { ch->ping(); })},
       }) {
    EXPECT_THAT(error, HasSubstr("channel to ")) << where;
    EXPECT_THAT(error, HasSubstr(std::string("(") + where + ") while thread ")) << error;
    EXPECT_THAT(error, HasSubstr("uses it (1 call outstanding)")) << error;
    EXPECT_THAT(error, HasSubstr("one thread at a time")) << error;
    EXPECT_THAT(error, HasSubstr("ChannelPool")) << error;
  }
  // Nothing was disturbed: the channel's thread gets its answer.
  CallResult r = pending.wait();
  ASSERT_TRUE(r.ok()) << r.errorMessage();
  EXPECT_EQ(r.results<Payload>().getSeq(), 8u);
  EXPECT_EQ(ch->outstanding(), 0u);
}

TEST_P(RpcTest, ASecondThreadIsRefusedWhileTheChannelsThreadBuildsARequest) {
  auto ch = h().channel();
  EchoRequest open(*ch, kTestIface, kEcho, payloadWords(64));
  fillPayload(open.params(), 11, 64);
  // Not "a message is already open": the error names the threads.
  std::string error = onAnotherThread([&] { EchoRequest r(*ch, kTestIface, kEcho, 8); });
  EXPECT_THAT(error, HasSubstr("(new request) while thread "));
  EXPECT_THAT(error, HasSubstr("uses it (a request is being built)"));
  // A request handed to another thread to send is refused too.
  error = onAnotherThread([&] { open.call(); });
  EXPECT_THAT(error, HasSubstr("(call()) while thread "));
  auto resp = open.call();
  EXPECT_TRUE(isEcho(resp.results(), 11, 64));
}

TEST_P(RpcTest, AnIdleChannelMovesBetweenThreads) {
  auto ch = h().channel();
  ASSERT_TRUE(syncEcho(*ch, 1000, 64));  // this thread used it first
  std::string error = onAnotherThread([&] {
    if (!syncEcho(*ch, 2000, 64)) throw Failed("echo failed on the other thread");
    EchoRequest req(*ch, kTestIface, kEcho, payloadWords(8));
    fillPayload(req.params(), 3000, 8);
    PendingCall p = req.callAsync();
    CallResult r = p.wait();  // the call ends: the channel is idle again
    if (!r.ok() || !isEcho(r.results<Payload>(), 3000, 8)) throw Failed("async echo failed");
  });
  EXPECT_EQ(error, "did not throw");
  ASSERT_TRUE(syncEcho(*ch, 4000, 64));  // and back
  EXPECT_EQ(ch->outstanding(), 0u);
}

/// Two threads make whole calls on one Channel at once, as a program that shares one by
/// mistake does: sync calls, and callAsync() + wait(). Each call either works, with its own
/// answer, or is refused at its first step with the error that names the threads; nothing
/// else (no other error, no wrong answer, no crash). Before the takeover was fenced against
/// the owner's entry, two whole calls could both get through and corrupt each other.
TEST_P(RpcTest, TwoThreadsHammeringOneChannelAreRefusedNeverCorrupted) {
  // Each thread goes on until it has had kAnswers answers, so the two contend throughout;
  // bounded in attempts and in time too (sanitizer builds, load).
  constexpr int kAnswers = 1000, kMaxTries = 400'000;
  const auto until = Clock::now() + 20s;
  auto ch = h().channel();
  struct Tally {
    int tried = 0, answered = 0, refused = 0;
    std::vector<std::string> problems;  // the first few
  };
  std::array<Tally, 2> tally;
  std::atomic<int> ready{0};
  auto hammer = [&](int t) {
    Tally& my = tally[t];
    auto problem = [&](std::string why) {
      if (my.problems.size() < 5) my.problems.push_back(std::move(why));
    };
    ready.fetch_add(1);
    while (ready.load() < 2) std::this_thread::yield();  // start together
    for (int i = 0; my.answered < kAnswers && i < kMaxTries && Clock::now() < until; ++i) {
      ++my.tried;
      const uint64_t seq = static_cast<uint64_t>(t + 1) << 32 | static_cast<uint64_t>(i);
      const size_t size = 8 + (i % 5) * 200;
      try {
        if (i % 3 == 2) {
          EchoRequest req(*ch, kTestIface, kEcho, payloadWords(size));
          fillPayload(req.params(), seq, size);
          PendingCall pending = req.callAsync();
          CallResult r = pending.wait();
          if (!r.ok()) problem("async call " + std::to_string(i) + " failed: " + r.errorMessage());
          else if (auto why = echoProblem(r.results<Payload>(), seq, size); !why.empty())
            problem("async call " + std::to_string(i) + ": " + why);
          else
            ++my.answered;
        } else if (auto ok = syncEcho(*ch, seq, size); !ok) {
          problem("call " + std::to_string(i) + ": " + ok.message());
        } else {
          ++my.answered;
        }
      } catch (const Error& e) {
        const std::string what = e.what();
        if (e.kind() == ErrorKind::kInvalidArgument && what.find("one thread at a time") != std::string::npos)
          ++my.refused;
        else
          problem("call " + std::to_string(i) + " threw " + std::string(errorKindName(e.kind())) + ": " + what);
      }
    }
  };
  std::thread a(hammer, 0), b(hammer, 1);
  a.join();
  b.join();
  for (int t = 0; t < 2; ++t) {
    const Tally& my = tally[t];
    EXPECT_THAT(my.problems, ::testing::IsEmpty()) << "thread " << t;
    EXPECT_EQ(my.answered + my.refused + static_cast<int>(my.problems.size()), my.tried) << "thread " << t;
    std::printf("thread %d: %d calls tried, %d answered, %d refused\n", t, my.tried, my.answered, my.refused);
  }
  EXPECT_GT(tally[0].answered + tally[1].answered, 0);
  EXPECT_EQ(ch->outstanding(), 0u);  // every call that got through finished
  // The threads are gone: this one takes the channel over and it works. (After a race lost
  // at the very moment of a takeover, the ThreadOwner may not know what its owner does:
  // then it refuses, saying so, until the owner makes one more call; thread_owner.h.)
  try {
    EXPECT_TRUE(syncEcho(*ch, 99, 64));
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("used from two threads at once a moment ago"));
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, RpcTest,
                         ::testing::Values(Transport::kLoopback, Transport::kShm),
                         [](const auto& info) { return std::string(transportName(info.param)); });

// ---------------------------------------------------------------------------------------
// Many threads in one process, each with its own Channel from a ChannelPool

class RpcPoolTest : public ::testing::TestWithParam<Transport> {};

TEST_P(RpcPoolTest, EachThreadGetsItsOwnChannel) {
  Harness h(GetParam());
  ChannelPool pool([&] { return h.connect(); });
  constexpr int kThreads = 6, kCalls = 300;
  std::mutex m;
  std::set<Channel*> channels;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      auto deadline = deadlineAfter(20s);
      try {
        Channel& ch = pool.channel();
        EXPECT_EQ(&pool.channel(), &ch);
        {
          std::lock_guard lock(m);
          channels.insert(&ch);
        }
        for (int i = 0; i < kCalls && Clock::now() < deadline; ++i) {
          uint64_t seq = (uint64_t(t) << 32) | i;
          if (!syncEcho(ch, seq, (i * 7) % 500, i % 5 ? kEcho : kDeferredEcho)) ++failures;
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << "thread " << t << ": " << e.what();
        ++failures;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(channels.size(), static_cast<size_t>(kThreads));
}

INSTANTIATE_TEST_SUITE_P(Transports, RpcPoolTest,
                         ::testing::Values(Transport::kLoopback, Transport::kShm),
                         [](const auto& info) { return std::string(transportName(info.param)); });

// ---------------------------------------------------------------------------------------
// Processes over shm

/// A server process serving TestService on shm://name until killed or told to stop
/// (a byte on `control`). Writes 'R' on `events` when serving and 'D' for each deferred
/// kSlow call.
std::unique_ptr<Child> startServerProcess(const std::string& name, Pipe& events, Pipe& control,
                                          size_t workers = 2) {
  return std::make_unique<Child>([&, name, workers] {
    TestService svc;
    svc.onDeferred = [&](uint64_t) { events.put('D'); };
    ServerOptions so;
    so.workerThreads = workers;
    Server server(so);
    server.addService(svc);
    ShmListenOptions lo;
    lo.connection = testConnOpts();
    server.addListener(listenShm(name, lo));
    server.start();
    events.put('R');
    control.get(120s);  // bounded: the parent kills or stops us long before
    server.shutdown(deadlineAfter(2s));
    svc.stopExecutor();
    return 0;
  });
}

/// One client process: `threads` threads, each with its own Channel from a ChannelPool,
/// making `calls` checked echo calls (some synchronous, some in asynchronous batches).
/// Returns the number of problems (0 = all good), printing the first few.
int clientProcess(const std::string& name, int index, int threads, int calls,
                  std::chrono::seconds budget) {
  ChannelOptions co;
  co.defaultTimeout = 10s;
  ChannelPool pool([&] { return connectShm(name, testConnOpts()); }, co);
  std::atomic<int> problems{0};
  auto report = [&](const std::string& what) {
    if (problems++ < 5) std::fprintf(stderr, "client %d: %s\n", index, what.c_str());
  };
  std::mutex m;
  std::set<Channel*> seen;
  auto deadline = Clock::now() + budget;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(index * 1000 + t);
      try {
        Channel& ch = pool.channel();
        {
          std::lock_guard lock(m);
          seen.insert(&ch);
        }
        int done = 0;
        while (done < calls) {
          if (Clock::now() > deadline) {
            report("thread " + std::to_string(t) + " ran out of time after " +
                   std::to_string(done) + " calls");
            return;
          }
          uint64_t base = (uint64_t(index) << 48) | (uint64_t(t) << 32) | uint64_t(done);
          if (done % 64 == 0 && done + 16 <= calls) {
            std::vector<std::pair<PendingCall, std::pair<uint64_t, size_t>>> batch;
            for (int k = 0; k < 16; ++k) {
              size_t size = rng() % 4000;
              EchoRequest req(ch, kTestIface, k % 4 ? kEcho : kDeferredEcho, payloadWords(size));
              fillPayload(req.params(), base + k, size);
              batch.push_back({req.callAsync(), {base + k, size}});
            }
            for (auto& [p, what] : batch) {
              CallResult r = p.wait();
              if (!r.ok()) {
                report("async: " + r.errorMessage());
              } else if (auto why = echoProblem(r.results<Payload>(), what.first, what.second);
                         !why.empty()) {
                report(why);
              }
            }
            done += 16;
            continue;
          }
          size_t size = rng() % 16 == 0 ? 100000 + rng() % 100000 : rng() % 600;
          EchoRequest req(ch, kTestIface, kEcho, payloadWords(size));
          fillPayload(req.params(), base, size);
          auto resp = req.call();
          if (auto why = echoProblem(resp.results(), base, size); !why.empty()) report(why);
          ++done;
        }
      } catch (const std::exception& e) {
        report(std::string("thread ") + std::to_string(t) + ": " + e.what());
      }
    });
  for (auto& t : ts) t.join();
  if (seen.size() != static_cast<size_t>(threads))
    report("threads shared channels: " + std::to_string(seen.size()) + " channels for " +
           std::to_string(threads) + " threads");
  return problems.load() ? 1 : 0;
}

void runClientProcesses(int processes, int threads, int calls, std::chrono::seconds budget) {
  std::string name = uniqueName("procs");
  Pipe events, control;
  auto server = startServerProcess(name, events, control);
  ASSERT_EQ(events.get(10s), 'R');
  std::vector<std::unique_ptr<Child>> clients;
  for (int p = 0; p < processes; ++p)
    clients.push_back(std::make_unique<Child>(
        [&, p] { return clientProcess(name, p, threads, calls, budget); }));
  for (int p = 0; p < processes; ++p)
    EXPECT_EQ(clients[p]->wait(budget + 10s), 0) << "client process " << p;
  control.put('S');
  EXPECT_EQ(server->wait(10s), 0) << "server process";
}

TEST(RpcShmProcesses, ManyClientProcessesWithManyThreads) {
  runClientProcesses(/*processes=*/3, /*threads=*/4, /*calls=*/400, 40s);
}

// ---------------------------------------------------------------------------------------
// An idle server sleeps: no periodic wake-up of its acceptor or an empty worker, which on
// a busy-polling host would take the core from the threads doing the work.

namespace {

std::set<std::string> threadIds() {
  std::set<std::string> ids;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task"))
    ids.insert(e.path().filename().string());
  return ids;
}

/// Voluntary plus involuntary context switches of the given threads of this process.
uint64_t contextSwitches(const std::set<std::string>& ids) {
  uint64_t total = 0;
  for (const auto& id : ids) {
    std::ifstream status("/proc/self/task/" + id + "/status");
    std::string line;
    while (std::getline(status, line))
      if (line.find("ctxt_switches:") != std::string::npos)
        total += std::stoull(line.substr(line.find(':') + 1));
  }
  return total;
}

/// CPU time the given threads of this process have run, in nanoseconds (schedstat).
uint64_t cpuNanos(const std::set<std::string>& ids) {
  uint64_t total = 0;
  for (const auto& id : ids) {
    std::ifstream stat("/proc/self/task/" + id + "/schedstat");
    uint64_t ns = 0;
    if (stat >> ns) total += ns;
  }
  return total;
}

}  // namespace

TEST(RpcServerIdle, AThousandIdleShmConnectionsCostTheServerUnderOnePercentOfACore) {
  // The default idle mode (spin-then-sleep, adaptive). A worker that arms, polls and
  // disarms every connection at every sleep, with 20 ms slices and a liveness round every
  // 50 ms, spent several percent of a core on this; one that sleeps in one epoll set with
  // idle connections left armed spends a liveness sweep a second.
  TestService svc;
  Server server{ServerOptions{}};
  server.addService(svc);
  ConnectionOptions co;  // small: a thousand of them on each side
  co.ringBytes = 16 * 1024;
  co.arenaBytes = 0;
  co.maxMessageBytes = 2048;
  ShmListenOptions lo;
  lo.connection = co;
  const std::string name = uniqueName("idle1k");
  server.addListener(listenShm(name, lo));
  auto before = threadIds();
  server.start();
  std::set<std::string> serverThreads;
  for (const auto& id : threadIds())
    if (!before.count(id)) serverThreads.insert(id);
  constexpr size_t kConnections = 1000;
  std::vector<std::unique_ptr<Channel>> channels;
  for (size_t i = 0; i < kConnections; ++i) {
    channels.push_back(std::make_unique<Channel>(connectShm(name, co)));
    if (i % 100 == 0) {
      ASSERT_TRUE(syncEcho(*channels.back(), i, 16)) << "connection " << i;
    }
  }
  ASSERT_TRUE(eventually([&] { return server.connectionCount() == kConnections; }, 20s));
  for (size_t i = 0; i < kConnections; i += 10) ASSERT_TRUE(syncEcho(*channels[i], i, 16));
  std::this_thread::sleep_for(300ms);  // calls over: the worker learns to sleep
  const auto start = Clock::now();
  const uint64_t cpu0 = cpuNanos(serverThreads);
  std::this_thread::sleep_for(3s);
  const double share = static_cast<double>(cpuNanos(serverThreads) - cpu0) /
                       static_cast<double>((Clock::now() - start).count());
  std::printf("server threads with %zu idle shm connections: %.3f%% of a core\n", kConnections,
              share * 100);
  EXPECT_LT(share, 0.01);
  // And each connection still wakes the sleeping worker.
  for (size_t i = 5; i < kConnections; i += 97) ASSERT_TRUE(syncEcho(*channels[i], i, 16));
  channels.clear();
  EXPECT_TRUE(eventually([&] { return server.connectionCount() == 0; }, 10s))
      << server.connectionCount() << " connections left after the clients closed";
  server.shutdown(deadlineAfter(1s));
}

class RpcClientKilled : public ::testing::TestWithParam<WaitMode> {};

TEST_P(RpcClientKilled, TheServerLetsGoOfItsConnectionsPromptly) {
  // A worker sleeping in its epoll set learns of a client's death from the hang-up of
  // the connection's socket; a busy-polling one from the same event between its rounds,
  // or the liveness sweep. Either way the connections go within seconds.
  constexpr size_t kConnections = 20;
  const std::string name = uniqueName("ckill");
  Pipe go, ready;
  // Forked before the server starts any thread.
  Child client([&] {
    if (go.get(20s) != 'g') return 10;
    std::vector<std::unique_ptr<Channel>> channels;
    for (size_t i = 0; i < kConnections; ++i) {
      channels.push_back(std::make_unique<Channel>(connectShm(name, testConnOpts())));
      if (!syncEcho(*channels.back(), i, 32)) return 11;
    }
    ready.put('R');
    std::this_thread::sleep_for(60s);  // until killed
    return 0;
  });
  TestService svc;
  ServerOptions so;
  so.idleMode = GetParam();
  Server server(so);
  server.addService(svc);
  ShmListenOptions lo;
  lo.connection = testConnOpts();
  server.addListener(listenShm(name, lo));
  server.start();
  ASSERT_TRUE(go.put('g'));
  ASSERT_EQ(ready.get(30s), 'R');
  ASSERT_TRUE(eventually([&] { return server.connectionCount() == kConnections; }, 10s));
  std::this_thread::sleep_for(100ms);  // the worker goes back to its idle wait
  const auto killed = Clock::now();
  client.kill();
  const bool gone = eventually([&] { return server.connectionCount() == 0; }, 5s);
  std::printf("%s worker: connections of a killed client gone after %.1f ms\n",
              std::string(waitModeName(GetParam())).c_str(),
              std::chrono::duration<double, std::milli>(Clock::now() - killed).count());
  EXPECT_TRUE(gone) << server.connectionCount() << " connections left";
  server.shutdown(deadlineAfter(1s));
}

INSTANTIATE_TEST_SUITE_P(WaitModes, RpcClientKilled,
                         ::testing::Values(WaitMode::kBusyPoll, WaitMode::kSpinThenSleep,
                                           WaitMode::kBlocking),
                         [](const auto& info) { return std::string(test::modeName(info.param)); });

TEST(RpcServerIdle, AnIdleServerDoesNotWakeUpPeriodically) {
  TestService svc;
  ServerOptions so;
  so.workerThreads = 2;
  so.idleMode = WaitMode::kBlocking;
  Server server(so);
  server.addService(svc);
  ShmListenOptions lo;
  lo.connection = testConnOpts();
  server.addListener(listenShm(uniqueName("idle"), lo));
  server.addListener(listenTcp("127.0.0.1:0"));
  auto before = threadIds();
  server.start();
  std::set<std::string> serverThreads;
  for (const auto& id : threadIds())
    if (!before.count(id)) serverThreads.insert(id);
  ASSERT_GE(serverThreads.size(), 3u) << "expected an acceptor and two workers";
  std::this_thread::sleep_for(100ms);  // let them reach their sleep
  uint64_t start = contextSwitches(serverThreads);
  std::this_thread::sleep_for(500ms);
  uint64_t woke = contextSwitches(serverThreads) - start;
  // A 10 ms acceptor poll and 20 ms worker slices made about 100 in this half second.
  EXPECT_LE(woke, 5u) << "the idle server's threads woke " << woke << " times in 500 ms";
  server.shutdown(deadlineAfter(1s));
}

class RpcServerKill : public ::testing::TestWithParam<WaitMode> {};

TEST_P(RpcServerKill, CallsInFlightSeeDisconnectedAndARestartedServerServes) {
  const WaitMode mode = GetParam();
  std::string name = uniqueName("kill");
  Pipe events, control;
  auto server = startServerProcess(name, events, control);
  ASSERT_EQ(events.get(10s), 'R');

  auto clientOpts = testConnOpts(mode);
  ChannelPool pool([&] { return connectShm(name, clientOpts); });
  ASSERT_TRUE(syncEcho(pool.channel(), 1, 10));

  // A synchronous call blocked in another thread, on its own channel.
  std::optional<ErrorKind> syncKind;
  std::string syncMessage;
  Clock::duration syncTook{};
  std::atomic<Clock::rep> killedAt{0};
  std::thread syncCaller([&] {
    try {
      Channel ch(connectShm(name, clientOpts));
      EchoRequest req(ch, kTestIface, kSlow, 0);
      fillSlow(req.params(), 1, 60000ms);
      req.setTimeout(15s);
      req.call();
    } catch (const Error& e) {
      syncKind = e.kind();
      syncMessage = e.what();
    }
    syncTook = Clock::now() - Clock::time_point(Clock::duration(killedAt.load()));
  });
  // Whatever fails below, the blocked caller is released (by the kill) and joined.
  struct Release {
    std::thread& caller;
    std::unique_ptr<Child>& server;
    ~Release() {
      if (!caller.joinable()) return;
      server->kill();
      caller.join();
    }
  } release{syncCaller, server};
  // Asynchronous calls outstanding on this thread's channel.
  int callbacks = 0;
  Channel ch(connectShm(name, clientOpts));
  std::vector<PendingCall> calls;
  for (uint64_t i = 0; i < 8; ++i) {
    EchoRequest req(ch, kTestIface, kSlow, 0);
    fillSlow(req.params(), 100 + i, 60000ms);
    req.setTimeout(15s);
    if (i % 2)
      calls.push_back(req.callAsync());
    else
      req.callAsync([&](CallResult&& r) {
        ++callbacks;
        EXPECT_EQ(r.errorKind(), ErrorKind::kDisconnected) << r.errorMessage();
      });
  }
  int deferred = 0;
  while (deferred < 9 && events.get(5s) == 'D') ++deferred;
  ASSERT_EQ(deferred, 9) << "the server never got all calls";

  auto killTime = Clock::now();
  killedAt = killTime.time_since_epoch().count();
  server->kill();
  EXPECT_TRUE(drainChannel(ch, 5000ms)) << ch.outstanding() << " calls still waiting";
  auto took = Clock::now() - killTime;
  EXPECT_LT(took, 3000ms);
  EXPECT_EQ(callbacks, 4);
  for (auto& p : calls) {
    CallResult r = p.wait();
    EXPECT_EQ(r.errorKind(), ErrorKind::kDisconnected) << r.errorMessage();
    EXPECT_THAT(r.errorMessage(), HasSubstr(name));
    EXPECT_THAT(r.errorMessage(), AnyOf(HasSubstr("hung up"), HasSubstr("closed")));
  }
  syncCaller.join();
  EXPECT_EQ(syncKind, ErrorKind::kDisconnected) << syncMessage;
  EXPECT_LT(syncTook, 3000ms);
  EXPECT_FALSE(ch.connected());
  expectError(ErrorKind::kDisconnected, [&] {
    EchoRequest req(ch, kTestIface, kEcho, 0);
    fillPayload(req.params(), 1, 1);
    req.call();
  });
  // The pool's channel for this thread is dead too; its next call says so.
  expectError(ErrorKind::kDisconnected, [&] { (void)syncEcho(pool.channel(), 2, 10); });

  // Restart under the same name: new channels, and the pool after resetThisThread, work.
  Pipe events2, control2;
  auto server2 = startServerProcess(name, events2, control2);
  ASSERT_EQ(events2.get(10s), 'R');
  Channel fresh(connectShm(name, clientOpts));
  for (uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(syncEcho(fresh, 10 + i, i * 100));
  pool.resetThisThread();
  for (uint64_t i = 0; i < 50; ++i) ASSERT_TRUE(syncEcho(pool.channel(), 100 + i, i * 10));
  control2.put('S');
  EXPECT_EQ(server2->wait(10s), 0);
}

INSTANTIATE_TEST_SUITE_P(WaitModes, RpcServerKill,
                         ::testing::Values(WaitMode::kBusyPoll, WaitMode::kSpinThenSleep,
                                           WaitMode::kBlocking),
                         [](const auto& info) { return std::string(test::modeName(info.param)); });

// ---------------------------------------------------------------------------------------
// Stress (suite 'stress')

TEST(RpcStress, ManyClientProcessesWithManyThreads) {
  runClientProcesses(/*processes=*/4, /*threads=*/8, /*calls=*/8000, 60s);
}

class RpcStressTransport : public ::testing::TestWithParam<Transport> {};

TEST_P(RpcStressTransport, AsyncFloodKeepsTheWindowFull) {
  constexpr uint64_t kCalls = 200000;
  uint64_t sent = 0, answered = 0, refused = 0;
  int problems = 0;
  Harness h(GetParam());
  ChannelOptions co;
  co.window = 64;
  auto ch = h.channel(co);  // after the counters: its callbacks may run when it is destroyed
  std::mt19937_64 rng(7);
  auto deadline = deadlineAfter(60s);
  while (answered < kCalls && Clock::now() < deadline) {
    while (sent < kCalls && ch->outstanding() < co.window / 2) {
      size_t size = rng() % 300;
      uint64_t seq = sent;
      EchoRequest req(*ch, kTestIface, seq % 8 ? kEcho : kDeferredEcho, payloadWords(size));
      fillPayload(req.params(), seq, size);
      try {
        req.callAsync([&, seq, size](CallResult&& r) {
          ++answered;
          if (!r.ok()) {
            if (problems++ < 5) ADD_FAILURE() << "seq " << seq << ": " << r.errorMessage();
          } else if (auto ok = isEcho(r.results<Payload>(), seq, size); !ok) {
            if (problems++ < 5) ADD_FAILURE() << ok.message();
          }
        });
      } catch (const Overloaded&) {
        // Refused although the window has room: a slot is still held by an older call
        // that is out (see OneSlowCallDoesNotOverloadAWindowWithRoomLeft). Poll and retry.
        ++refused;
        break;
      }
      ++sent;
    }
    ch->pollUntil(deadlineAfter(10ms));
  }
  EXPECT_EQ(answered, kCalls);
  EXPECT_EQ(problems, 0);
  std::printf("[ info     ] %llu calls, %llu refused as Overloaded with room in the window\n",
              static_cast<unsigned long long>(answered), static_cast<unsigned long long>(refused));
}

TEST_P(RpcStressTransport, ShutdownUnderLoadAnswersEveryCall) {
  for (int round = 0; round < 5; ++round) {
    Harness h(GetParam());
    constexpr int kThreads = 4;
    std::atomic<uint64_t> ok{0}, failed{0}, unexpected{0};
    std::atomic<bool> go{true};
    std::atomic<int> connected{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        try {
          ChannelOptions co;
          co.defaultTimeout = 10s;
          Channel ch(h.connect(), co);
          ++connected;
          auto deadline = deadlineAfter(15s);
          for (uint64_t i = 0; i < 100'000'000 && Clock::now() < deadline; ++i) {
            if (!go && ch.outstanding() == 0) break;
            if (go && ch.connected() && ch.outstanding() < 32) {
              try {
                EchoRequest req(ch, kTestIface, i % 3 ? kEcho : kDeferredEcho, payloadWords(32));
                fillPayload(req.params(), i, 32);
                req.callAsync([&](CallResult&& r) {
                  if (r.ok()) {
                    ++ok;
                  } else if (r.errorKind() == ErrorKind::kDisconnected) {
                    ++failed;
                  } else {
                    ++unexpected;
                  }
                });
              } catch (const Disconnected&) {
                ++failed;
              } catch (const Overloaded&) {
                // a slot still held by an older call (see
                // OneSlowCallDoesNotOverloadAWindowWithRoomLeft): poll, then go on
              }
            }
            ch.poll();
          }
          if (!drainChannel(ch, 3000ms)) ++unexpected;
        } catch (const std::exception& e) {
          ADD_FAILURE() << "thread " << t << ": " << e.what();
        }
      });
    EXPECT_TRUE(eventually([&] { return connected == kThreads; }, 10000ms));
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + 30 * round));
    auto start = Clock::now();
    h.server().shutdown(deadlineAfter(500ms));
    go = false;
    for (auto& t : threads) t.join();
    EXPECT_LT(Clock::now() - start, 5000ms);
    EXPECT_GT(ok.load(), 0u);
    EXPECT_EQ(unexpected.load(), 0u) << "round " << round;
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, RpcStressTransport,
                         ::testing::Values(Transport::kLoopback, Transport::kShm),
                         [](const auto& info) { return std::string(transportName(info.param)); });

TEST(RpcStress, ServerKilledAndRestartedRepeatedly) {
  std::string name = uniqueName("killloop");
  constexpr int kRounds = 20;
  Pipe events, control, progress, clientControl;
  auto server = startServerProcess(name, events, control);
  ASSERT_EQ(events.get(10s), 'R');
  // The clients live in their own process (this one stays single-threaded, so it may
  // fork servers): threads that, on Disconnected, reset their channel and go on. They
  // write a 'P' to `progress` every 200 good calls; they stop at a byte on clientControl.
  Child clients([&] {
    constexpr int kThreads = 3;
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> ok{0}, disconnected{0};
    std::atomic<int> bad{0};
    ChannelPool pool([&] { return connectShm(name, testConnOpts()); });
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        auto deadline = deadlineAfter(90s);
        for (uint64_t i = 0; i < 10'000'000 && !stop && Clock::now() < deadline; ++i) {
          try {
            uint64_t seq = (uint64_t(t) << 40) | i;
            if (!syncEcho(pool.channel(), seq, i % 2000)) {
              if (bad++ < 3) std::fprintf(stderr, "wrong echo for seq %llu\n", (unsigned long long)seq);
            } else if (++ok % 200 == 0) {
              progress.put('P');
            }
          } catch (const Disconnected&) {
            ++disconnected;
            pool.resetThisThread();
          } catch (const Failed&) {  // connecting while the server is down
            pool.resetThisThread();
            std::this_thread::sleep_for(2ms);
          } catch (const std::exception& e) {
            if (bad++ < 3) std::fprintf(stderr, "thread %d: %s\n", t, e.what());
          }
        }
      });
    clientControl.get(100s);
    stop = true;
    for (auto& t : threads) t.join();
    std::fprintf(stderr, "clients: %llu calls answered, %llu saw Disconnected, %d bad\n",
                 (unsigned long long)ok.load(), (unsigned long long)disconnected.load(), bad.load());
    return bad.load() == 0 && disconnected.load() > 0 ? 0 : 1;
  });
  for (int round = 0; round < kRounds; ++round) {
    int p = 0;
    for (int i = 0; i < 1000 && p < 2; ++i) p += progress.get(10s) == 'P';
    EXPECT_EQ(p, 2) << "no progress in round " << round;
    server->kill();
    server = startServerProcess(name, events, control);
    ASSERT_EQ(events.get(10s), 'R') << "restart " << round;
  }
  int p = 0;
  for (int i = 0; i < 1000 && p < 2; ++i) p += progress.get(10s) == 'P';
  EXPECT_EQ(p, 2) << "no progress after the last restart";
  clientControl.put('S');
  EXPECT_EQ(clients.wait(20s), 0) << "client process";
  control.put('S');
  EXPECT_EQ(server->wait(10s), 0);
}

}  // namespace
}  // namespace zcrpc::rpctest
