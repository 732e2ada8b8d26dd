// Metrics, tracing, ping and the stats endpoint: histograms and the method table alone,
// then through Channel and Server over loopback (counts exact under concurrent calls,
// errors by kind, bytes the same on both sides), trace contexts from setTrace() and a
// Tracer reaching handlers, and the admin interface read with the generated AdminClient.
#include "zcrpc/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "zcrpc/admin.capnp.zcrpc.h"
#include "metrics/echo_impl.h"
#include "zcrpc/loopback.h"
#include "zcrpc/metadata.h"
#include "zcrpc/rpc.h"
#include "zcrpc/tcp.h"

namespace zcrpc {
namespace {

using namespace std::chrono_literals;
using testing::EchoImpl;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

static_assert(admin::AdminClient::kInterfaceId == kAdminInterfaceId,
              "libzcrpc's stats service must answer the id schemas/admin.capnp declares");

constexpr uint64_t kEchoIface = echo::EchoClient::kInterfaceId;
enum : uint16_t { kEcho = 0, kPing = 1, kSink = 2, kDelay = 3, kFail = 4 };

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5000ms) {
  auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

const MethodSnapshot* findMethod(const std::vector<MethodSnapshot>& methods, uint64_t iface,
                                 uint16_t method) {
  for (const auto& m : methods)
    if (m.interfaceId == iface && m.methodId == method) return &m;
  return nullptr;
}

MethodSnapshot methodOf(const std::vector<MethodSnapshot>& methods, uint64_t iface, uint16_t method) {
  const MethodSnapshot* m = findMethod(methods, iface, method);
  return m ? *m : MethodSnapshot{};
}

MethodSnapshot clientMethod(const Channel& ch, uint16_t method) {
  return methodOf(ch.metrics()->snapshot().methods, kEchoIface, method);
}

// ---------------------------------------------------------------------------------------
// Histograms and the method table

TEST(LatencyHistogram, EveryValueLiesInItsBucketAndBucketsAreNarrow) {
  std::vector<uint64_t> values;
  for (uint64_t v = 0; v < 5000; ++v) values.push_back(v);
  for (unsigned e = 3; e < 48; ++e)
    for (int64_t d = -2; d <= 2; ++d) values.push_back((uint64_t{1} << e) + static_cast<uint64_t>(d));
  size_t previous = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    const uint64_t v = values[i];
    size_t b = LatencyHistogram::bucketOf(v);
    ASSERT_LT(b, LatencyHistogram::kBuckets);
    EXPECT_LE(LatencyHistogram::bucketLow(b), v) << v;
    EXPECT_GE(LatencyHistogram::bucketHigh(b), v) << v;
    // Log-linear: a bucket is at most 1/8 of its smallest value wide.
    uint64_t width = LatencyHistogram::bucketHigh(b) - LatencyHistogram::bucketLow(b) + 1;
    EXPECT_LE(width * 8, std::max<uint64_t>(8, LatencyHistogram::bucketLow(b))) << v;
    if (i < 5000) {
      EXPECT_GE(b, previous);  // monotonic
      previous = b;
    }
  }
  EXPECT_EQ(LatencyHistogram::bucketOf(UINT64_MAX), LatencyHistogram::kBuckets - 1);
  for (size_t b = 1; b < LatencyHistogram::kBuckets; ++b)
    EXPECT_EQ(LatencyHistogram::bucketLow(b), LatencyHistogram::bucketHigh(b - 1) + 1) << b;
}

TEST(LatencyHistogram, PercentilesAreWithinHalfABucket) {
  MethodMetrics m(1, 2);
  for (uint64_t v = 1; v <= 100'000; ++v) m.recordLatency(v * 10);
  LatencySnapshot s = m.snapshot().latency;
  s.nanosPerTick = 1.0;  // read the ticks themselves
  EXPECT_EQ(s.count(), 100'000u);
  EXPECT_EQ(s.minTicks, 10u);
  EXPECT_EQ(s.maxTicks, 1'000'000u);
  EXPECT_DOUBLE_EQ(s.meanNanos(), 500'005.0);
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    double exact = q * 1'000'000;
    EXPECT_NEAR(s.percentileNanos(q), exact, exact / 16 + 10) << q;
  }
  EXPECT_DOUBLE_EQ(s.percentileNanos(1.0), 1'000'000.0);  // clamped to the maximum
  LatencySnapshot empty;
  EXPECT_EQ(empty.percentileNanos(0.5), 0.0);
}

TEST(LatencyHistogram, MergeAddsSamples) {
  MethodMetrics a(1, 1), b(1, 1);
  for (int i = 0; i < 100; ++i) a.recordLatency(100);
  for (int i = 0; i < 300; ++i) b.recordLatency(10'000);
  MethodSnapshot sa = a.snapshot(), sb = b.snapshot();
  sa.latency.nanosPerTick = sb.latency.nanosPerTick = 1.0;
  sa.merge(sb);
  EXPECT_EQ(sa.latency.count(), 400u);
  EXPECT_EQ(sa.latency.minTicks, 100u);
  EXPECT_EQ(sa.latency.maxTicks, 10'000u);
  EXPECT_NEAR(sa.latency.percentileNanos(0.25), 100, 7);
  EXPECT_NEAR(sa.latency.percentileNanos(0.5), 10'000, 625);
}

TEST(ConnectionMetrics, MethodsBeyondTheTableShareTheOverflowEntry) {
  ConnectionMetrics c("test://x", MetricsSide::kClient);
  const size_t extra = 8;
  for (int round = 0; round < 3; ++round)
    for (uint16_t m = 0; m < ConnectionMetrics::kMaxMethods + extra; ++m)
      c.method(0x1234, m).countCall(10);
  ConnectionSnapshot s = c.snapshot();
  ASSERT_EQ(s.methods.size(), ConnectionMetrics::kMaxMethods + 1);
  for (uint16_t m = 0; m < ConnectionMetrics::kMaxMethods; ++m) {
    EXPECT_EQ(s.methods[m].methodId, m) << "first-use order";
    EXPECT_EQ(s.methods[m].calls, 3u);
  }
  const MethodSnapshot& overflow = s.methods.back();
  EXPECT_EQ(overflow.interfaceId, 0u);
  EXPECT_EQ(overflow.methodId, ConnectionMetrics::kOverflowMethod);
  EXPECT_EQ(overflow.calls, 3 * extra);
  EXPECT_EQ(s.totals().calls, 3 * (ConnectionMetrics::kMaxMethods + extra));
  EXPECT_EQ(s.totals().requestBytes, 30 * (ConnectionMetrics::kMaxMethods + extra));
}

// ---------------------------------------------------------------------------------------
// Through Channel and Server

/// A server of EchoImpl with loopback channels into it.
class Fixture {
 public:
  explicit Fixture(ServerOptions options = {}, bool stats = false) : server_(options) {
    server_.addService(impl_);
    if (stats) server_.enableStats();
    server_.start();
  }
  /// A server whose calls `tracer` is told about (tracedChannel(): a channel's too).
  explicit Fixture(Tracer& tracer) : Fixture(tracedBy(tracer)) { tracer_ = &tracer; }
  ~Fixture() { server_.shutdown(); }

  std::unique_ptr<Channel> channel(ChannelOptions options = {}) {
    auto [client, server] = makeLoopbackPair();
    server_.addConnection(std::move(server));
    return std::make_unique<Channel>(std::move(client), options);
  }
  /// A channel over tcp on loopback.
  std::unique_ptr<Channel> tcpChannel() {
    auto listener = listenTcp("127.0.0.1:0", TcpOptions{});
    std::unique_ptr<Connection> accepted;
    std::thread acceptor([&] { accepted = listener->accept(deadlineAfter(10s)); });
    auto client = connectTcp(listener->endpoint(), TcpOptions{});
    acceptor.join();
    server_.addConnection(std::move(accepted));
    return std::make_unique<Channel>(std::move(client));
  }
  std::unique_ptr<Channel> tracedChannel() {
    ChannelOptions co;
    co.tracer = tracer_;
    return channel(co);
  }
  Server& server() { return server_; }
  EchoImpl& impl() { return impl_; }

 private:
  static ServerOptions tracedBy(Tracer& tracer) {
    ServerOptions so;
    so.tracer = &tracer;
    return so;
  }
  EchoImpl impl_;
  Server server_;
  Tracer* tracer_ = nullptr;
};

void echoCall(Channel& ch, size_t bytes) {
  echo::EchoClient client(ch);
  auto req = client.echoRequest(static_cast<uint32_t>(bytes / 8 + 8));
  std::string data(bytes, 'x');
  req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), bytes));
  auto resp = req.call();
  ASSERT_EQ(resp.results().getData().size(), bytes);
}

bool failCall(Channel& ch, int32_t code) {
  echo::EchoClient client(ch);
  auto req = client.failRequest();
  req.params().setCode(code);
  req.params().setMessage("refused on purpose");
  try {
    req.call();
  } catch (const ApplicationError& e) {
    return e.code() == code;
  }
  return false;
}

TEST(ChannelMetrics, CountsCallsErrorsBytesAndLatencyOnBothSides) {
  Fixture f;
  auto ch = f.channel();
  echo::EchoClient client(*ch);
  for (int i = 0; i < 10; ++i) echoCall(*ch, 100);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(failCall(*ch, 40 + i));
  {
    auto req = client.delayRequest();
    req.params().setMicros(2000);
    EXPECT_FALSE(req.call().results().getCancelled());
  }
  {
    auto req = client.sinkRequest();
    req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("abcdefgh"), 8));
    req.sendOneWay();
  }
  ASSERT_TRUE(eventually([&] { return f.impl().sunk() == 8; }));

  MethodSnapshot echoC = clientMethod(*ch, kEcho);
  EXPECT_EQ(echoC.name, "Echo.echo") << "named by the generated client stub";
  EXPECT_EQ(echoC.calls, 10u);
  EXPECT_EQ(echoC.errorCount(), 0u);
  EXPECT_EQ(echoC.latency.count(), 10u);
  EXPECT_GE(echoC.requestBytes, 10u * 100);
  EXPECT_LE(echoC.requestBytes, 10u * (100 + 64));
  EXPECT_GE(echoC.responseBytes, 10u * 100);
  EXPECT_GT(echoC.latency.percentileNanos(0.5), 0.0);

  MethodSnapshot failC = clientMethod(*ch, kFail);
  EXPECT_EQ(failC.calls, 3u);
  EXPECT_EQ(failC.errorsOf(ErrorKind::kApplication), 3u);
  EXPECT_EQ(failC.errorCount(), 3u);
  EXPECT_EQ(failC.responseBytes, 0u) << "error answers are not response bytes";

  MethodSnapshot delayC = clientMethod(*ch, kDelay);
  EXPECT_EQ(delayC.calls, 1u);
  EXPECT_GE(delayC.latency.minNanos(), 1.5e6) << "round trip of a 2 ms deferred call";

  MethodSnapshot sinkC = clientMethod(*ch, kSink);
  EXPECT_EQ(sinkC.calls, 1u);
  EXPECT_EQ(sinkC.latency.count(), 0u) << "a one-way message has no round trip";

  ServerStats stats;
  ASSERT_TRUE(eventually([&] {
    stats = f.server().stats();
    return methodOf(stats.methods, kEchoIface, kSink).latency.count() == 1;
  }));
  ASSERT_EQ(stats.connections.size(), 1u);
  EXPECT_EQ(stats.connections[0].side, MetricsSide::kServer);
  EXPECT_EQ(stats.connectionsOpened, 1u);
  MethodSnapshot echoS = methodOf(stats.methods, kEchoIface, kEcho);
  EXPECT_EQ(echoS.name, "Echo.echo") << "named by the generated service";
  EXPECT_EQ(stats.connections[0].methods.at(0).name, "Echo.echo");
  EXPECT_EQ(echoS.calls, 10u);
  EXPECT_EQ(echoS.requestBytes, echoC.requestBytes) << "the same messages seen from both ends";
  EXPECT_EQ(echoS.responseBytes, echoC.responseBytes);
  EXPECT_EQ(echoS.latency.count(), 10u);
  EXPECT_LE(echoS.latency.percentileNanos(0.5), echoC.latency.maxNanos())
      << "handler time inside the round trip";
  MethodSnapshot failS = methodOf(stats.methods, kEchoIface, kFail);
  EXPECT_EQ(failS.errorsOf(ErrorKind::kApplication), 3u);
  MethodSnapshot delayS = methodOf(stats.methods, kEchoIface, kDelay);
  EXPECT_EQ(delayS.calls, 1u);
  EXPECT_GE(delayS.latency.minNanos(), 1.5e6) << "a deferred call counts until it completes";
  EXPECT_EQ(methodOf(stats.methods, kEchoIface, kSink).requestBytes, sinkC.requestBytes);
}

TEST(ChannelMetrics, BytesIncludeDataGatheredAtSend) {
  // Over tcp, referenceData leaves large data to send(), which gathers it into the frame:
  // both ends count it, and the same amount.
  Fixture f;
  auto ch = f.tcpChannel();
  echo::EchoClient client(*ch);
  const std::string data(20u << 10, 'r');
  for (int i = 0; i < 3; ++i) {
    auto req = client.echoRequest(8);
    req.raw().message().referenceData(
        req.params(), "data",
        capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), data.size()));
    ASSERT_EQ(req.call().results().getData().size(), data.size());
  }
  MethodSnapshot echoC = clientMethod(*ch, kEcho);
  EXPECT_GE(echoC.requestBytes, 3 * data.size());
  EXPECT_LE(echoC.requestBytes, 3 * (data.size() + 64 + 56));
  MethodSnapshot echoS;
  ASSERT_TRUE(eventually([&] {
    echoS = methodOf(f.server().stats().methods, kEchoIface, kEcho);
    return echoS.calls == 3;
  }));
  EXPECT_EQ(echoS.requestBytes, echoC.requestBytes) << "the same messages seen from both ends";
}

TEST(ChannelMetrics, CountsAreExactUnderConcurrentCalls) {
  ServerOptions so;
  so.workerThreads = 2;
  Fixture f(so);
  constexpr int kThreads = 4, kCalls = 1500;
  std::vector<std::unique_ptr<Channel>> channels;
  for (int t = 0; t < kThreads; ++t) channels.push_back(f.channel());
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      Channel& ch = *channels[t];
      for (int i = 0; i < kCalls; ++i) {
        if (i % 10 == 3) {
          if (!failCall(ch, i)) ++wrong;
        } else {
          echoCall(ch, 16 + t);
        }
      }
    });
  for (auto& th : threads) th.join();
  ASSERT_EQ(wrong.load(), 0);

  const uint64_t fails = kCalls / 10, echoes = kCalls - fails;
  uint64_t clientRequestBytes = 0;
  for (auto& ch : channels) {
    MethodSnapshot e = clientMethod(*ch, kEcho), x = clientMethod(*ch, kFail);
    EXPECT_EQ(e.calls, echoes);
    EXPECT_EQ(e.latency.count(), echoes);
    EXPECT_EQ(e.errorCount(), 0u);
    EXPECT_EQ(x.calls, fails);
    EXPECT_EQ(x.errorsOf(ErrorKind::kApplication), fails);
    clientRequestBytes += e.requestBytes + x.requestBytes;
  }
  // The server charges a call just after sending its answer: wait for the last ones.
  ServerStats stats;
  ASSERT_TRUE(eventually([&] {
    stats = f.server().stats();
    return methodOf(stats.methods, kEchoIface, kEcho).latency.count() == kThreads * echoes &&
           methodOf(stats.methods, kEchoIface, kFail).errorCount() == kThreads * fails;
  }));
  ASSERT_EQ(stats.connections.size(), static_cast<size_t>(kThreads));
  for (const auto& c : stats.connections) {
    EXPECT_EQ(c.totals().calls, static_cast<uint64_t>(kCalls)) << c.endpoint;
    EXPECT_EQ(c.totals().errorsOf(ErrorKind::kApplication), fails);
  }
  MethodSnapshot e = methodOf(stats.methods, kEchoIface, kEcho);
  MethodSnapshot x = methodOf(stats.methods, kEchoIface, kFail);
  EXPECT_EQ(e.calls, kThreads * echoes);
  EXPECT_EQ(e.latency.count(), kThreads * echoes);
  EXPECT_EQ(e.errorCount(), 0u);
  EXPECT_EQ(x.calls, kThreads * fails);
  EXPECT_EQ(x.errorsOf(ErrorKind::kApplication), kThreads * fails);
  EXPECT_EQ(x.errorCount(), kThreads * fails);
  EXPECT_EQ(e.requestBytes + x.requestBytes, clientRequestBytes);
}

TEST(ChannelMetrics, OverloadExpiryCancelAndDisconnectAreCountedByKind) {
  Fixture f;
  ChannelOptions co;
  co.window = 1;
  auto ch = f.channel(co);
  echo::EchoClient client(*ch);
  auto slow = [&](uint64_t micros) {
    auto req = client.delayRequest();
    req.params().setMicros(micros);
    return req.callAsync();
  };
  PendingCall p = slow(200'000);
  {
    auto req = client.pingRequest();
    EXPECT_THROW(req.callAsync(), Overloaded);
  }
  p.cancel();
  {
    auto req = client.delayRequest();
    req.params().setMicros(500'000);
    req.setTimeout(20ms);
    EXPECT_THROW(req.call(), DeadlineExceeded);
  }
  PendingCall last = slow(1'000'000);
  f.server().shutdown(deadlineAfter(100ms));
  CallResult r = last.wait();
  EXPECT_EQ(r.errorKind(), ErrorKind::kDisconnected) << r.errorMessage();

  MethodSnapshot ping = clientMethod(*ch, kPing), delay = clientMethod(*ch, kDelay);
  EXPECT_EQ(ping.errorsOf(ErrorKind::kOverloaded), 1u);
  EXPECT_EQ(ping.calls, 1u);
  EXPECT_EQ(delay.calls, 3u);
  EXPECT_EQ(delay.errorsOf(ErrorKind::kCancelled), 1u);
  EXPECT_EQ(delay.errorsOf(ErrorKind::kDeadlineExceeded), 1u);
  EXPECT_EQ(delay.errorsOf(ErrorKind::kDisconnected), 1u);
  EXPECT_EQ(delay.latency.count(), 3u);
}

TEST(ChannelMetrics, SwitchedOffThereAreNone) {
  ServerOptions so;
  so.metrics = false;
  Fixture f(so);
  ChannelOptions co;
  co.metrics = false;
  auto ch = f.channel(co);
  echoCall(*ch, 8);
  EXPECT_EQ(ch->metrics(), nullptr);
  ServerStats s = f.server().stats();
  EXPECT_TRUE(s.connections.empty());
  EXPECT_TRUE(s.methods.empty());
}

// ---------------------------------------------------------------------------------------
// Tracing

TEST(Tracing, SetTraceReachesTheHandlerAlsoWhenDeferred) {
  Fixture f;
  auto ch = f.channel();
  echo::EchoClient client(*ch);
  {
    auto req = client.pingRequest();
    req.setTrace({0x1111, 0x2222});
    req.call();
  }
  EXPECT_EQ(f.impl().lastTrace().traceId, 0x1111u);
  EXPECT_EQ(f.impl().lastTrace().spanId, 0x2222u);
  {
    auto req = client.delayRequest();
    req.params().setMicros(10);
    req.setTrace({0x3333, 0x4444});
    req.call();
  }
  EXPECT_EQ(f.impl().deferredTrace().traceId, 0x3333u);
  EXPECT_EQ(f.impl().deferredTrace().spanId, 0x4444u);
  client.pingRequest().call();
  EXPECT_FALSE(f.impl().lastTrace().valid()) << "a call without a trace carries none";
}

/// Records every callback; the client side starts a span under the caller's trace.
class RecordingTracer final : public Tracer {
 public:
  struct Event {
    char what;  // 'b'egin / 'e'nd
    TracedCall call;
    TracedCallEnd end;
  };
  void onClientCallBegin(TracedCall& call) noexcept override {
    if (!call.trace.valid()) call.trace.traceId = 0xabc;
    call.trace.spanId = ++nextSpan_;
    record(client_, {'b', call, {}});
  }
  void onClientCallEnd(const TracedCall& call, const TracedCallEnd& end) noexcept override {
    record(client_, {'e', call, end});
  }
  void onServerCallBegin(const TracedCall& call) noexcept override { record(server_, {'b', call, {}}); }
  void onServerCallEnd(const TracedCall& call, const TracedCallEnd& end) noexcept override {
    record(server_, {'e', call, end});
  }
  std::vector<Event> client() {
    std::lock_guard lock(mutex_);
    return client_;
  }
  std::vector<Event> server() {
    std::lock_guard lock(mutex_);
    return server_;
  }

 private:
  void record(std::vector<Event>& v, Event e) {
    std::lock_guard lock(mutex_);
    v.push_back(e);
  }
  std::mutex mutex_;
  std::vector<Event> client_, server_;
  uint64_t nextSpan_ = 100;  // client thread only
};

TEST(Tracing, TracerSeesEveryCallBeginAndEndOnBothSides) {
  RecordingTracer tracer;
  Fixture f(tracer);
  auto ch = f.tracedChannel();
  echo::EchoClient client(*ch);
  client.pingRequest().call();  // no trace: the tracer starts one
  EXPECT_EQ(f.impl().lastTrace().traceId, 0xabcu);
  EXPECT_EQ(f.impl().lastTrace().spanId, 101u);
  {
    auto req = client.pingRequest();
    req.setTrace({0x77, 0x1});  // the caller's trace: the tracer makes a child span in it
    req.call();
  }
  EXPECT_EQ(f.impl().lastTrace().traceId, 0x77u);
  EXPECT_EQ(f.impl().lastTrace().spanId, 102u);
  EXPECT_TRUE(failCall(*ch, 9));
  {
    auto req = client.sinkRequest();
    req.sendOneWay();
  }
  ASSERT_TRUE(eventually([&] { return tracer.server().size() == 8; }));

  auto c = tracer.client();
  ASSERT_EQ(c.size(), 8u);
  const char order[] = {'b', 'e', 'b', 'e', 'b', 'e', 'b', 'e'};
  for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(c[i].what, order[i]) << i;
  EXPECT_EQ(c[1].call.trace.spanId, 101u);
  EXPECT_TRUE(c[1].end.ok);
  EXPECT_GT(c[1].end.duration.count(), 0);
  EXPECT_EQ(c[4].call.methodId, kFail);
  EXPECT_EQ(c[4].call.methodName, "Echo.fail");
  EXPECT_FALSE(c[5].end.ok);
  EXPECT_EQ(c[5].end.error, ErrorKind::kApplication);
  EXPECT_TRUE(c[6].call.oneWay);
  EXPECT_TRUE(c[7].end.ok);

  auto s = tracer.server();
  for (size_t i = 0; i < s.size(); ++i) EXPECT_EQ(s[i].what, order[i]) << i;
  EXPECT_EQ(s[0].call.trace.traceId, 0xabcu);
  EXPECT_EQ(s[2].call.trace.traceId, 0x77u);
  EXPECT_EQ(s[2].call.trace.spanId, 102u);
  EXPECT_EQ(s[4].call.callId, c[4].call.callId);
  EXPECT_EQ(s[4].call.methodName, "Echo.fail");
  EXPECT_FALSE(s[5].end.ok);
  EXPECT_EQ(s[5].end.error, ErrorKind::kApplication);
  EXPECT_TRUE(s[6].call.oneWay);
}

// ---------------------------------------------------------------------------------------
// Metadata and the W3C traceparent

TEST(Metadata, KeysValuesAndLimitsAreCheckedWhenSet) {
  Metadata m;
  m.set("tenant", "a");
  m.set("request-id.v2_x", "");
  m.set("tenant", "b");  // replaces
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.get("tenant"), "b");
  EXPECT_EQ(m.get("absent"), std::nullopt);
  EXPECT_TRUE(m.erase("tenant"));
  EXPECT_FALSE(m.erase("tenant"));
  EXPECT_THROW(m.set("", "x"), InvalidArgument);
  EXPECT_THROW(m.set("Tenant", "x"), InvalidArgument);
  EXPECT_THROW(m.set("a b", "x"), InvalidArgument);
  EXPECT_THROW(m.set(std::string(65, 'k'), "x"), InvalidArgument);
  EXPECT_THROW(m.set("big", std::string(1025, 'v')), InvalidArgument);
  Metadata full;
  for (int i = 0; i < 32; ++i) full.set(std::to_string(i), "v");
  EXPECT_THROW(full.set("one-more", "v"), InvalidArgument);
  full.set("3", "replacing is fine");
}

TEST(TraceParent, FormatsAndParsesTheW3cForm) {
  const std::string_view text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  const auto t = TraceParent::parse(text);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->traceId[0], 0x4b);
  EXPECT_EQ(t->traceId[15], 0x36);
  EXPECT_EQ(t->parentId[7], 0xb7);
  EXPECT_EQ(t->flags, 1);
  EXPECT_EQ(t->format(), text);
  // A later version's extra fields are ignored; version 00 has none.
  EXPECT_TRUE(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"));
  for (std::string_view bad : {
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // 00 with more
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // version ff
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",    // uppercase
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // zero parent id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",       // short
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // separator
       })
    EXPECT_FALSE(TraceParent::parse(bad)) << bad;
}

/// Puts a W3C traceparent on every call it sees begin without one: a new trace, span 1.
class W3cTracer final : public Tracer {
 public:
  void onClientCallBegin(TracedCall& call) noexcept override {
    if (!call.metadata || TraceParent::from(*call.metadata)) return;
    TraceParent t;
    t.traceId.fill(0xab);
    t.parentId.fill(0x01);
    t.flags = 1;
    call.metadata->set(TraceParent::kKey, t.format());
  }
  void onServerCallBegin(const TracedCall& call) noexcept override {
    std::lock_guard lock(mutex_);
    if (call.metadata) seen_ = std::string(call.metadata->get(TraceParent::kKey).value_or(""));
  }
  std::string seen() {
    std::lock_guard lock(mutex_);
    return seen_;
  }

 private:
  std::mutex mutex_;
  std::string seen_;
};

TEST(Metadata, ReachesTheHandlerAndTheServersTracerOverLoopbackAndTcp) {
  W3cTracer tracer;
  Fixture f(tracer);
  for (bool tcp : {false, true}) {
    SCOPED_TRACE(tcp ? "tcp" : "loopback");
    auto ch = tcp ? f.tcpChannel() : f.tracedChannel();
    echo::EchoClient client(*ch);
    {
      auto req = client.pingRequest();
      req.metadata().set("tenant", "blue");
      req.metadata().set("blob", std::string("\0\xff binary", 9));
      req.call();
    }
    Metadata got = f.impl().lastPingMetadata();
    EXPECT_EQ(got.get("tenant"), "blue");
    EXPECT_EQ(got.get("blob"), std::string_view("\0\xff binary", 9));
    if (!tcp) {  // this channel has the tracer: it added the traceparent, in order after
      EXPECT_EQ(got.size(), 3u);
      ASSERT_TRUE(TraceParent::from(got));
      EXPECT_EQ(TraceParent::from(got)->traceId[0], 0xab);
      EXPECT_EQ(tracer.seen(), "00-abababababababababababababababab-0101010101010101-01");
    }
    client.pingRequest().call();  // none set: none arrives
    EXPECT_EQ(f.impl().lastPingMetadata().size(), tcp ? 0u : 1u);
  }
}

TEST(Metadata, MoreThanTheConnectionCarriesIsRefusedAtSend) {
  Fixture f;
  ConnectionOptions small;
  auto [client, server] = makeLoopbackPair(small);
  const size_t room = client->maxExtensionBytes();
  f.server().addConnection(std::move(server));
  Channel ch(std::move(client));
  echo::EchoClient echo(ch);
  {
    auto req = echo.pingRequest();
    for (size_t i = 0; i * 1000 < room + 1000 && i < Metadata::kMaxEntries; ++i)
      req.metadata().set(std::to_string(i), std::string(1000, 'v'));
    EXPECT_THAT([&] { req.call(); }, ThrowsMessage<InvalidArgument>(HasSubstr("metadata takes")));
  }
  echo.pingRequest().call();  // the channel goes on
}

// ---------------------------------------------------------------------------------------
// Ping and the stats endpoint

TEST(Ping, MeasuresARoundTripAndFailsOnceTheServerIsGone) {
  Fixture f;
  auto ch = f.channel();
  for (int i = 0; i < 5; ++i) {
    auto rtt = ch->ping();
    EXPECT_GT(rtt.count(), 0);
    EXPECT_LT(rtt, 1s);
  }
  EXPECT_EQ(ch->outstanding(), 0u);
  EXPECT_EQ(clientMethod(*ch, kPing).calls, 0u) << "pings are not calls of Echo.ping";
  f.server().shutdown();
  EXPECT_THROW(ch->ping(deadlineAfter(2s)), Disconnected);
}

TEST(StatsEndpoint, AdminClientReadsTheServersCounters) {
  Fixture f({}, /*stats=*/true);
  EXPECT_NO_THROW(f.server().enableStats()) << "idempotent";
  auto worker = f.channel();
  for (int i = 0; i < 7; ++i) echoCall(*worker, 32);
  EXPECT_TRUE(failCall(*worker, 5));

  auto ch = f.channel();
  admin::AdminClient adminClient(*ch);
  auto req = adminClient.statsRequest();
  req.params().setBuckets(true);
  auto resp = req.call();
  auto r = resp.results();
  EXPECT_EQ(r.getPid(), static_cast<uint32_t>(::getpid()));
  EXPECT_EQ(r.getWorkerThreads(), 1u);
  EXPECT_EQ(r.getConnectionsOpened(), 2u);
  ASSERT_EQ(r.getConnections().size(), 2u);

  std::map<uint16_t, wire::Reader<admin::MethodStats>> totals;
  for (auto m : r.getMethods())
    if (m.getInterfaceId() == kEchoIface) totals.emplace(m.getMethodId(), m);
  ASSERT_EQ(totals.count(kEcho), 1u);
  auto e = totals.at(kEcho);
  EXPECT_EQ(std::string(e.getName().cStr()), "Echo.echo");
  EXPECT_EQ(e.getCalls(), 7u);
  EXPECT_EQ(e.getErrors().size(), 0u);
  EXPECT_GT(e.getRequestBytes(), 7u * 32);
  auto lat = e.getLatency();
  EXPECT_EQ(lat.getCount(), 7u);
  EXPECT_GT(lat.getP50Ns(), 0.0);
  EXPECT_LE(lat.getP50Ns(), lat.getP99Ns());
  EXPECT_LE(lat.getP99Ns(), lat.getMaxNs());
  uint64_t inBuckets = 0;
  for (auto b : lat.getBuckets()) {
    EXPECT_LT(b.getLowNs(), b.getHighNs());
    inBuckets += b.getCount();
  }
  EXPECT_EQ(inBuckets, 7u);
  auto x = totals.at(kFail);
  ASSERT_EQ(x.getErrors().size(), 1u);
  EXPECT_EQ(x.getErrors()[0].getKind(), static_cast<uint8_t>(ErrorKind::kApplication));
  EXPECT_EQ(std::string(x.getErrors()[0].getName().cStr()), errorKindName(ErrorKind::kApplication));
  EXPECT_EQ(x.getErrors()[0].getCount(), 1u);

  // The admin calls are counted too, by their own id: this one when it was dispatched,
  // so the snapshot it answers with shows both.
  auto again = adminClient.statsRequest();
  again.params().setConnections(false);
  auto resp2 = again.call();
  EXPECT_EQ(resp2.results().getConnections().size(), 0u);
  bool sawAdmin = false;
  for (auto m : resp2.results().getMethods())
    sawAdmin |= m.getInterfaceId() == kAdminInterfaceId && m.getCalls() == 2 &&
                m.getName() == "zcrpc.admin.Admin.stats";
  EXPECT_TRUE(sawAdmin);
}

TEST(StatsEndpoint, ClosedConnectionsStayInTheTotals) {
  Fixture f({}, true);
  {
    auto ch = f.channel();
    for (int i = 0; i < 5; ++i) echoCall(*ch, 8);
  }
  ASSERT_TRUE(eventually([&] { return f.server().stats().connectionsClosed == 1; }));
  ServerStats s = f.server().stats();
  EXPECT_TRUE(s.connections.empty());
  EXPECT_EQ(methodOf(s.methods, kEchoIface, kEcho).calls, 5u);
  EXPECT_EQ(methodOf(s.methods, kEchoIface, kEcho).latency.count(), 5u);
}

TEST(StatsEndpoint, NotServedUnlessEnabled) {
  Fixture f;
  EXPECT_THROW(f.server().enableStats(), InvalidArgument) << "after start()";
  auto ch = f.channel();
  admin::AdminClient adminClient(*ch);
  EXPECT_THROW(adminClient.statsRequest().call(), Unimplemented);
}

}  // namespace
}  // namespace zcrpc
