// Proof that the busy-poll call path allocates nothing: this binary replaces the global
// operator new/delete with counting versions (every thread: the client, the server's
// worker, the shm acceptor), warms a busy-poll echo up, then requires that 100k
// steady-state calls (20k over tcp) make no allocation at all, and that a callback (the
// server calling an object the client passed it) makes none either. When one does, the
// first few allocations of the measured window are printed with their backtraces.
#include <execinfo.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "callback.capnp.zcrpc.h"
#include "echo.capnp.zcrpc.h"
#include "rpc/rpc_test_util.h"

// ---------------------------------------------------------------------------------------
// Counting allocator

namespace {

std::atomic<uint64_t> gAllocations{0};
std::atomic<bool> gTracing{false};
constexpr int kMaxTraces = 6;
constexpr int kTraceDepth = 40;
void* gTraces[kMaxTraces][kTraceDepth];
int gTraceDepths[kMaxTraces];
size_t gTraceSizes[kMaxTraces];
std::atomic<int> gTraceCount{0};

void noteAllocation(size_t size) noexcept {
  gAllocations.fetch_add(1, std::memory_order_relaxed);
  if (gTracing.load(std::memory_order_relaxed)) {
    int i = gTraceCount.fetch_add(1, std::memory_order_relaxed);
    if (i < kMaxTraces) {
      gTraceSizes[i] = size;
      gTraceDepths[i] = ::backtrace(gTraces[i], kTraceDepth);
    }
  }
}

void* allocate(size_t size) noexcept {
  noteAllocation(size);
  return std::malloc(size ? size : 1);
}

void* allocateAligned(size_t size, std::align_val_t align) noexcept {
  noteAllocation(size);
  size_t a = std::max(static_cast<size_t>(align), sizeof(void*));
  void* p = nullptr;
  return ::posix_memalign(&p, a, size ? size : 1) == 0 ? p : nullptr;
}

}  // namespace

// free() of what allocate() got from malloc(): GCC cannot see they match.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(size_t size) {
  if (void* p = allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t size) {
  if (void* p = allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new(size_t size, const std::nothrow_t&) noexcept { return allocate(size); }
void* operator new[](size_t size, const std::nothrow_t&) noexcept { return allocate(size); }
void* operator new(size_t size, std::align_val_t align) {
  if (void* p = allocateAligned(size, align)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t size, std::align_val_t align) {
  if (void* p = allocateAligned(size, align)) return p;
  throw std::bad_alloc();
}
void* operator new(size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return allocateAligned(size, align);
}
void* operator new[](size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return allocateAligned(size, align);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace zcrpc::rpctest {
namespace {

constexpr size_t kDataBytes = 64;
constexpr size_t kReferencedBytes = 20 << 10;  // gathered at send() by tcp and shm
constexpr uint64_t kWarmUpCalls = 10'000;
constexpr uint64_t kMeasuredCalls = 100'000;

/// Counts operator new calls between start() and stop(), on every thread, recording the
/// first few with their backtraces.
class AllocationWindow {
 public:
  AllocationWindow() {
    void* frames[4];
    (void)::backtrace(frames, 4);  // loads the unwinder now, not inside the window
  }
  void start() {
    gTraceCount = 0;
    before_ = gAllocations.load();
    gTracing = true;
  }
  uint64_t stop() {
    gTracing = false;
    return gAllocations.load() - before_;
  }
  /// Prints the recorded allocations (symbols via backtrace_symbols_fd: no allocation).
  static void printTraces() {
    int n = std::min(gTraceCount.load(), kMaxTraces);
    for (int i = 0; i < n; ++i) {
      std::fprintf(stderr, "---- allocation %d of the measured window: %zu bytes\n", i + 1,
                   gTraceSizes[i]);
      std::fflush(stderr);
      ::backtrace_symbols_fd(gTraces[i], gTraceDepths[i], 2);
    }
  }

 private:
  uint64_t before_ = 0;
};

/// Builds an echo request of kDataBytes for `seq`; returns its checksum.
uint64_t fillRequest(EchoRequest& req, uint64_t seq) {
  auto p = req.params();
  p.setSeq(seq);
  auto d = p.initData(kDataBytes);
  test::fillPattern(d.begin(), kDataBytes, seq);
  uint64_t sum = checksum(d.begin(), kDataBytes);
  p.setChecksum(sum);
  return sum;
}

bool isEchoOf(Payload::Reader r, uint64_t seq, uint64_t sum) {
  auto d = r.getData();
  return r.getSeq() == seq + 1 && d.size() == kDataBytes && r.getChecksum() == sum &&
         checksum(d.begin(), d.size()) == sum;
}

// The instrument itself: it must see allocations made on any thread, through any form of
// operator new, or a zero below would prove nothing.
TEST(AllocationCounter, SeesAllocationsOnEveryThread) {
  AllocationWindow window;
  window.start();
  // Direct calls of the replaceable functions: unlike new-expressions, never elided.
  ::operator delete(::operator new(24));
  std::thread([] {
    ::operator delete[](::operator new[](40));
    ::operator delete(::operator new(64, std::align_val_t{64}), std::align_val_t{64});
    ::operator delete(::operator new(8, std::nothrow));
  }).join();
  uint64_t n = window.stop();
  EXPECT_GE(n, 4u);
}

class ZeroAlloc : public ::testing::TestWithParam<Transport> {
 protected:
  ZeroAlloc() {
    ServerOptions so;
    so.workerThreads = 1;
    so.idleMode = WaitMode::kBusyPoll;
    harness_ = std::make_unique<Harness>(GetParam(), so, testConnOpts(WaitMode::kBusyPoll));
    channel_ = harness_->channel();
  }
  ~ZeroAlloc() override {
    channel_.reset();
    harness_.reset();
  }

  /// Runs `calls` calls of `kind` (bounded by `budget`); returns how many were answered
  /// correctly.
  template <typename OneCall>
  uint64_t run(uint64_t calls, std::chrono::seconds budget, OneCall&& oneCall) {
    auto deadline = deadlineAfter(budget);
    uint64_t good = 0;
    for (uint64_t i = 0; i < calls; ++i) {
      if ((i & 1023) == 0 && Clock::now() > deadline) break;
      good += oneCall(i);
    }
    return good;
  }

  template <typename OneCall>
  void expectNoAllocations(const char* what, OneCall&& oneCall) {
    // Over tcp every message is a system call: fewer calls, the same proof.
    const bool tcp = GetParam() == Transport::kTcp;
    const uint64_t warmUp = tcp ? kWarmUpCalls / 2 : kWarmUpCalls;
    const uint64_t measured = tcp ? kMeasuredCalls / 5 : kMeasuredCalls;
    ASSERT_EQ(run(warmUp, 60s, oneCall), warmUp) << what << ": warm-up failed";
    AllocationWindow window;
    window.start();
    auto start = Clock::now();
    uint64_t good = run(measured, 150s, oneCall);
    auto took = Clock::now() - start;
    uint64_t allocations = window.stop();
    EXPECT_EQ(good, measured) << what << ": calls answered correctly";
    std::printf("[ info     ] %s over %s: %llu calls, %.2f us/call, %llu allocations (%.3f per call)\n",
                what, transportName(GetParam()), static_cast<unsigned long long>(good),
                std::chrono::duration<double, std::micro>(took).count() / std::max<uint64_t>(good, 1),
                static_cast<unsigned long long>(allocations),
                static_cast<double>(allocations) / std::max<uint64_t>(good, 1));
    EXPECT_EQ(allocations, 0u) << what << ": allocations during " << good
                               << " steady-state calls (first ones printed above)";
    if (allocations) AllocationWindow::printTraces();
  }

  std::unique_ptr<Harness> harness_;
  std::unique_ptr<Channel> channel_;
};

TEST_P(ZeroAlloc, SynchronousCallsAllocateNothing) {
  Channel& ch = *channel_;
  expectNoAllocations("synchronous call()", [&](uint64_t seq) {
    EchoRequest req(ch, kTestIface, kEcho, payloadWords(kDataBytes));
    uint64_t sum = fillRequest(req, seq);
    auto resp = req.call();
    return isEchoOf(resp.results(), seq, sum);
  });
}

TEST_P(ZeroAlloc, AsyncCallAndWaitAllocateNothing) {
  Channel& ch = *channel_;
  expectNoAllocations("callAsync() + wait()", [&](uint64_t seq) {
    EchoRequest req(ch, kTestIface, kEcho, payloadWords(kDataBytes));
    uint64_t sum = fillRequest(req, seq);
    CallResult r = req.callAsync().wait();
    return r.ok() && isEchoOf(r.results<Payload>(), seq, sum);
  });
}

TEST_P(ZeroAlloc, AsyncCallWithSmallCallbackAllocatesNothing) {
  Channel& ch = *channel_;
  expectNoAllocations("callAsync(callback)", [&](uint64_t seq) {
    EchoRequest req(ch, kTestIface, kEcho, payloadWords(kDataBytes));
    struct {
      uint64_t seq, sum;
      bool done = false, good = false;
    } call{seq, fillRequest(req, seq)};
    // One pointer of capture: fits std::function's own storage.
    req.callAsync([c = &call](CallResult&& r) {
      c->done = true;
      c->good = r.ok() && isEchoOf(r.results<Payload>(), c->seq, c->sum);
    });
    for (int i = 0; i < 10'000'000 && !call.done; ++i) ch.poll();
    return call.good;
  });
}

// Large data given to OutgoingMessage::referenceData, both ways, over tcp and shm: added
// to the field's segment at send() (tcp writes it from where it lies, shm copies it into
// the record), so neither end builds or reads a multi-segment message (with
// Orphanage::referenceExternalData, Cap'n Proto allocates on both ends for every call).
// (loopback copies the data in at once: what does not fit the first segment goes into a
// segment of its own, as setData() would put it.)
class ZeroAllocGathered : public ZeroAlloc {};

TEST_P(ZeroAllocGathered, ReferencedDataAllocatesNothing) {
  Channel& ch = *channel_;
  std::vector<uint8_t> data(kReferencedBytes);
  expectNoAllocations("referenceData() both ways", [&](uint64_t seq) {
    test::fillPattern(data.data(), data.size(), seq);
    const uint64_t sum = checksum(data.data(), data.size());
    EchoRequest req(ch, kTestIface, kEchoReferencing, payloadWords(0));
    auto p = req.params();
    p.setSeq(seq);
    p.setChecksum(sum);
    req.raw().message().referenceData(p, "data", kj::arrayPtr(data.data(), data.size()));
    auto resp = req.call();
    auto r = resp.results();
    return r.getSeq() == seq + 1 && r.getChecksum() == sum &&
           checksum(r.getData().begin(), r.getData().size()) == sum;
  });
}

// Callbacks: Pump.pump calls the client's Echo `count` times. A pump call allocates for
// the capability it carries (its table, the server's import), the same whatever its count,
// so the callbacks themselves allocate nothing when a pump of many costs what a pump of
// one does. Each callback request is copied out of transport memory (a handler may wait on
// its own connection, Session::dispatch): that copy reuses its thread's block.
class PumpImpl final : public callback::PumpService {
 public:
  void pump(PumpCall& call) override {
    echo::EchoClient target(call.params().getTarget());
    const uint32_t count = call.params().getCount();
    for (uint32_t i = 0; i < count; ++i) {
      auto req = target.echoRequest(16);
      const uint64_t seq = i;
      req.params().setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(&seq), sizeof seq));
      auto data = req.call().results().getData();
      if (data.size() != sizeof seq || std::memcmp(data.begin(), &seq, sizeof seq) != 0)
        throw ApplicationError(1, "callback " + std::to_string(i) + " came back wrong");
    }
  }
};

class EchoBack final : public echo::EchoService {
 public:
  void echo(EchoCall& call) override { call.results(16).setData(call.params().getData()); }
  void ping(PingCall&) override {}
  void sink(SinkCall&) override {}
  void delay(DelayCall& call) override { call.results(); }
  void fail(FailCall&) override { throw ApplicationError(1, "fail"); }
};

class ZeroAllocCallbacks : public ::testing::TestWithParam<Transport> {};

TEST_P(ZeroAllocCallbacks, CallbackRoundTripsAllocateNothing) {
  PumpImpl pumpImpl;
  ServerOptions so;
  so.workerThreads = 1;
  so.idleMode = WaitMode::kBusyPoll;
  Harness harness(GetParam(), so, testConnOpts(WaitMode::kBusyPoll), {&pumpImpl});
  auto channel = harness.channel();
  callback::PumpClient pump(*channel);
  const Capability mine = Capability::local(std::make_shared<EchoBack>());
  auto pumpOf = [&](uint32_t count) {
    auto req = pump.pumpRequest();
    req.params().setTarget(mine);
    req.params().setCount(count);
    req.call();
  };
  const uint32_t many = GetParam() == Transport::kTcp ? 2'000 : 20'000;
  for (int i = 0; i < 3; ++i) pumpOf(many);  // warm up: first-use allocations, caches
  AllocationWindow window;
  uint64_t one = UINT64_MAX, lots = UINT64_MAX;
  for (int round = 0; round < 3; ++round) {  // the least of three: a stray allocation elsewhere
    window.start();
    pumpOf(1);
    one = std::min(one, window.stop());
    window.start();
    pumpOf(many);
    lots = std::min(lots, window.stop());
  }
  std::printf("[ info     ] pump of 1 callback over %s: %llu allocations; of %u: %llu\n",
              transportName(GetParam()), static_cast<unsigned long long>(one), many,
              static_cast<unsigned long long>(lots));
  EXPECT_EQ(lots, one) << "the " << many - 1 << " more callbacks allocated";
  if (lots != one) {
    window.start();
    pumpOf(many);
    window.stop();
    AllocationWindow::printTraces();
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, ZeroAllocCallbacks,
                         ::testing::Values(Transport::kLoopback, Transport::kShm, Transport::kTcp),
                         [](const auto& info) { return std::string(transportName(info.param)); });

INSTANTIATE_TEST_SUITE_P(Transports, ZeroAlloc,
                         ::testing::Values(Transport::kLoopback, Transport::kShm, Transport::kTcp),
                         [](const auto& info) { return std::string(transportName(info.param)); });
INSTANTIATE_TEST_SUITE_P(Transports, ZeroAllocGathered,
                         ::testing::Values(Transport::kShm, Transport::kTcp),
                         [](const auto& info) { return std::string(transportName(info.param)); });

}  // namespace
}  // namespace zcrpc::rpctest
