// Standard Cap'n Proto peers (zcrpc/capnp.h), both directions, over TCP and unix sockets:
// Cap'n Proto's own C++ client (capnp::EzRpcClient) calling every method of the test schemas
// on a zcrpc::Server through its capnp listener, and zcrpc Channels over capnp:// calling
// Cap'n Proto's own server (capnp::EzRpcServer) and zcrpc's.
// GCC 12 with -fsanitize=address at -O3 reports kj::Maybe<Capability::Client> and
// kj::Maybe<MessageSize> moves inside Cap'n Proto's own headers (capnp::makeRpcClient,
// typelessRequest) as maybe-uninitialized: a false positive of the sanitizer build only,
// which -Werror would turn into a failed build.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <capnp/ez-rpc.h>
#include <kj/async-io.h>
#include <kj/timer.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <capnp/rpc.capnp.h>
#include <capnp/serialize.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <sys/wait.h>

#include "codegen/services_impl.h"
#include "common.capnp.zcrpc.h"
#include "echo.capnp.h"
#include "echo.capnp.zcrpc.h"
#include "metrics/echo_impl.h"
#include "services.capnp.zcrpc.h"
#include "zcrpc/capnp.h"
#include "zcrpc/config.h"
#include "zcrpc/context.h"
#include "zcrpc/rpc.h"

namespace zcrpc::compat_test {
namespace {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------
// The zcrpc side: Echo served by generated zcrpc stubs (testing::EchoImpl).

using testing::EchoImpl;

/// The kj address EzRpcClient / EzRpcServer take for a zcrpc capnp endpoint.
std::string kjAddress(const std::string& endpoint) {
  const std::string tcp = "capnp://", unix = "capnp+unix://";
  if (endpoint.rfind(tcp, 0) == 0) return endpoint.substr(tcp.size());
  if (endpoint.rfind(unix + "@", 0) == 0) return "unix-abstract:" + endpoint.substr(unix.size() + 1);
  if (endpoint.rfind(unix, 0) == 0) return "unix:" + endpoint.substr(unix.size());
  throw std::runtime_error("not a capnp endpoint: " + endpoint);
}

/// A unix socket name or TCP address for one test's listener.
std::string freshAddress(bool unix) {
  static std::atomic<int> next{0};
  if (!unix) return "127.0.0.1:0";
  return "@zcrpc-compat-test-" + std::to_string(::getpid()) + "-" + std::to_string(next++);
}

/// A zcrpc::Server serving EchoImpl through one capnp listener.
class ZcrpcEchoServer final {
 public:
  /// `address`: where to listen (default: freshAddress(), an abstract socket for unix).
  explicit ZcrpcEchoServer(bool unix, CapnpOptions options = {}, ServerOptions serverOptions = {},
                           std::string address = {})
      : server_(serverOptions) {
    server_.addService(echo_);
    if (address.empty()) address = freshAddress(unix);
    auto listener = unix ? listenCapnpUnix(address, options) : listenCapnp(address, options);
    listener_ = listener.get();
    endpoint_ = listener->endpoint();
    server_.addListener(std::move(listener));
    server_.start();
  }
  ~ZcrpcEchoServer() { server_.shutdown(deadlineAfter(2s)); }
  const std::string& endpoint() const { return endpoint_; }
  std::string kj() const { return kjAddress(endpoint_); }
  EchoImpl& echo() { return echo_; }
  Server& server() { return server_; }
  std::vector<std::string> refusals() const { return listener_->refusals(); }

 private:
  EchoImpl echo_;
  Server server_;
  Listener* listener_ = nullptr;  // owned by the server, which outlives its use here
  std::string endpoint_;
};

// ---------------------------------------------------------------------------------------
// The standard side: Cap'n Proto's own server (EzRpcServer) serving the same Echo.

/// Echo as a Cap'n Proto server implements it. delay() waits on the server's timer and
/// allows cancellation; a cancelled one is counted when its promise goes unanswered.
class CapnpEcho final : public echo::Echo::Server {
 public:
  /// `timer` is set once the server (which owns the timer) exists.
  CapnpEcho(kj::Timer*& timer, std::atomic<int>& cancelled, std::atomic<int>& sinks)
      : timer_(timer), cancelled_(cancelled), sinks_(sinks) {}

 protected:
  kj::Promise<void> echo(EchoContext context) override {
    capnp::Data::Reader data = context.getParams().getData();
    context.initResults(capnp::MessageSize{data.size() / 8 + 4, 0}).setData(data);
    return kj::READY_NOW;
  }
  kj::Promise<void> ping(PingContext) override { return kj::READY_NOW; }
  kj::Promise<void> sink(SinkContext) override {
    ++sinks_;
    return kj::READY_NOW;
  }
  kj::Promise<void> delay(DelayContext context) override {
    context.allowCancellation();
    auto answered = std::make_shared<bool>(false);
    return timer_->afterDelay(context.getParams().getMicros() * kj::MICROSECONDS)
        .then([context, answered]() mutable {
          *answered = true;
          context.getResults().setCancelled(false);
        })
        .attach(kj::defer([this, answered] {
          if (!*answered) ++cancelled_;
        }));
  }
  kj::Promise<void> fail(FailContext context) override {
    auto p = context.getParams();
    std::string reason = p.getMessage().cStr();
    if (p.getCode()) reason += " [code " + std::to_string(p.getCode()) + "]";
    return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::str(reason.c_str()));
  }

 private:
  kj::Timer*& timer_;
  std::atomic<int>& cancelled_;
  std::atomic<int>& sinks_;
};

/// capnp::EzRpcServer serving `main` (by default CapnpEcho) on a thread of its own (its
/// own KJ event loop).
class CapnpServer final {
 public:
  explicit CapnpServer(bool unix, kj::Own<capnp::Capability::Server> main = {}) : main_(kj::mv(main)) {
    std::string bind = unix ? "unix-abstract:zcrpc-compat-ez-" + std::to_string(::getpid()) + "-" +
                                  std::to_string(next_++)
                            : "127.0.0.1:0";
    thread_ = std::thread([this, bind, unix] {
      kj::Timer* timer = nullptr;
      if (main_.get() == nullptr) main_ = kj::heap<CapnpEcho>(timer, cancelled_, sinks_);
      capnp::EzRpcServer server(kj::mv(main_), bind);
      timer = &server.getIoProvider().getTimer();
      auto& ws = server.getWaitScope();
      const unsigned port = server.getPort().wait(ws);
      auto stop = kj::newPromiseAndCrossThreadFulfiller<void>();
      {
        std::lock_guard lock(mutex_);
        endpoint_ = unix ? "capnp+unix://@" + bind.substr(std::string("unix-abstract:").size())
                         : "capnp://127.0.0.1:" + std::to_string(port);
        stop_ = kj::mv(stop.fulfiller);
      }
      ready_.notify_all();
      stop.promise.wait(ws);
    });
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [this] { return stop_.get() != nullptr; });
  }
  ~CapnpServer() {
    {
      std::lock_guard lock(mutex_);
      stop_->fulfill();
    }
    thread_.join();
  }
  std::string endpoint() const {
    std::lock_guard lock(mutex_);
    return endpoint_;
  }
  int cancelled() const { return cancelled_.load(); }
  int sinks() const { return sinks_.load(); }

 private:
  static inline std::atomic<int> next_{0};
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::string endpoint_;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop_;
  kj::Own<capnp::Capability::Server> main_;  // until the server's thread takes it
  std::atomic<int> cancelled_{0};
  std::atomic<int> sinks_{0};
  std::thread thread_;
};

/// Connects a zcrpc connection to a capnp endpoint.
std::unique_ptr<Connection> connectTo(const std::string& endpoint, CapnpOptions o = {}) {
  const std::string tcp = "capnp://", unix = "capnp+unix://";
  if (endpoint.rfind(tcp, 0) == 0) return connectCapnp(endpoint.substr(tcp.size()), o);
  return connectCapnpUnix(endpoint.substr(unix.size()), o);
}

kj::Array<kj::byte> pattern(size_t n, uint8_t seed) {
  auto out = kj::heapArray<kj::byte>(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<kj::byte>(i * 131 + seed);
  return out;
}

/// Bounds every wait loop of these tests in rounds and time.
class Bound final {
 public:
  Bound(int rounds, std::chrono::milliseconds time) : left_(rounds), until_(Clock::now() + time) {}
  bool next() {
    if (left_ <= 0 || Clock::now() >= until_) return false;
    --left_;
    return true;
  }

 private:
  int left_;
  Clock::time_point until_;
};

/// The exception the call `promise` ends with. A call that returns instead is a test
/// failure saying "`what` returned", and gives an exception without a description.
template <typename Promise>
kj::Exception failureOf(Promise&& promise, kj::WaitScope& ws, const std::string& what) {
  try {
    promise.wait(ws);
  } catch (const kj::Exception& e) {
    return e;
  }
  ADD_FAILURE() << what << " returned";
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__);
}

std::string describe(const kj::Exception& e) { return e.getDescription().cStr(); }

/// A test run over TCP (parameter false) and over a unix socket (true).
class OverSockets : public ::testing::TestWithParam<bool> {
 protected:
  bool unix() const { return GetParam(); }
};

std::string socketName(const ::testing::TestParamInfo<bool>& info) { return info.param ? "unix" : "tcp"; }

class StandardClient : public OverSockets {};
INSTANTIATE_TEST_SUITE_P(Sockets, StandardClient, ::testing::Bool(), socketName);

TEST_P(StandardClient, CallsEveryEchoMethod) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto echo = client.getMain<echo::Echo>();

  for (size_t size : {size_t{0}, size_t{1}, size_t{64}, size_t{4096}, size_t{1} << 20}) {
    auto bytes = pattern(size, 7);
    auto req = echo.echoRequest();
    req.setData(bytes);
    auto resp = req.send().wait(ws);
    ASSERT_EQ(resp.getData().size(), size);
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), resp.getData().begin())) << size;
  }
  echo.pingRequest().send().wait(ws);
  EXPECT_EQ(server.echo().pings(), 1);
  {
    auto req = echo.sinkRequest();
    req.setData(pattern(100, 1));
    req.send().wait(ws);
    EXPECT_EQ(server.echo().sunk(), 100u);
  }
  {
    auto req = echo.delayRequest();
    req.setMicros(2000);
    auto t0 = Clock::now();
    auto resp = req.send().wait(ws);
    EXPECT_FALSE(resp.getCancelled());
    EXPECT_GE(Clock::now() - t0, 2ms);
  }
}

TEST_P(StandardClient, ApplicationErrorsArriveWithMessageAndCode) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto echo = client.getMain<echo::Echo>();
  auto req = echo.failRequest();
  req.setCode(42);
  req.setMessage("no such key");
  const kj::Exception e = failureOf(req.send(), ws, "fail()");
  EXPECT_EQ(e.getType(), kj::Exception::Type::FAILED);
  EXPECT_EQ(describe(e), "remote exception: no such key [code 42]");
  // The connection goes on.
  echo.pingRequest().send().wait(ws);
}

TEST_P(StandardClient, UnknownInterfaceIsUnimplemented) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto cap = client.getMain();
  auto req = cap.typelessRequest(0x1234'5678'9abc'def0ull, 3, nullptr);
  const kj::Exception e = failureOf(req.send(), ws, "a call on an interface nobody serves");
  EXPECT_EQ(e.getType(), kj::Exception::Type::UNIMPLEMENTED);
  EXPECT_NE(describe(e).find("interface 0x123456789abcdef0 is not served"), std::string::npos) << describe(e);
}

TEST_P(StandardClient, ApplicationErrorWithoutCodeIsTheMessageAlone) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto req = client.getMain<echo::Echo>().failRequest();
  req.setMessage("plain");
  EXPECT_EQ(describe(failureOf(req.send(), ws, "fail()")), "remote exception: plain");
}

TEST_P(StandardClient, UnknownMethodIsUnimplemented) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto req = client.getMain().typelessRequest(capnp::typeId<echo::Echo>(), 77, nullptr);
  const kj::Exception e = failureOf(req.send(), ws, "method 77");
  EXPECT_EQ(e.getType(), kj::Exception::Type::UNIMPLEMENTED);
  EXPECT_NE(describe(e).find("method 77 of interface"), std::string::npos) << describe(e);
}

TEST_P(StandardClient, CancellationReachesTheHandler) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto echo = client.getMain<echo::Echo>();
  {
    auto req = echo.delayRequest();
    req.setMicros(10'000'000);
    auto pending = req.send();
    // Calls arrive in order: once a later ping is answered, the delay has been deferred.
    echo.pingRequest().send().wait(ws);
  }  // dropping the promise sends Finish: Cap'n Proto's cancellation
  for (Bound b(2000, 5s); b.next() && server.echo().cancelled() == 0;) {
    echo.pingRequest().send().wait(ws);
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(server.echo().cancelled(), 1) << "the handler never saw isCancelled()";
}

TEST_P(StandardClient, SixteenMebibyteMessagesBothWays) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto echo = client.getMain<echo::Echo>();
  const size_t size = size_t{16} << 20;
  auto bytes = pattern(size, 3);
  auto req = echo.echoRequest(capnp::MessageSize{size / 8 + 8, 0});
  req.setData(bytes);
  auto resp = req.send().wait(ws);
  ASSERT_EQ(resp.getData().size(), size);
  EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), resp.getData().begin()));
}

TEST_P(StandardClient, ManyConcurrentCallsFromOneClientAndFromSeveral) {
  ZcrpcEchoServer server(unix());
  {
    capnp::EzRpcClient client(server.kj());
    auto& ws = client.getWaitScope();
    auto echo = client.getMain<echo::Echo>();
    std::vector<capnp::RemotePromise<echo::Echo::EchoResults>> calls;
    constexpr size_t kCalls = 1000;
    for (size_t i = 0; i < kCalls; ++i) {
      auto req = echo.echoRequest();
      req.setData(pattern(i % 700, static_cast<uint8_t>(i)));
      calls.push_back(req.send());
    }
    for (size_t i = 0; i < kCalls; ++i) {
      auto resp = calls[i].wait(ws);
      auto want = pattern(i % 700, static_cast<uint8_t>(i));
      ASSERT_EQ(resp.getData().size(), want.size()) << i;
      ASSERT_TRUE(std::equal(want.begin(), want.end(), resp.getData().begin())) << i;
    }
  }
  std::atomic<int> ok{0};
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        capnp::EzRpcClient client(server.kj());
        auto& ws = client.getWaitScope();
        auto echo = client.getMain<echo::Echo>();
        for (int i = 0; i < 200; ++i) {
          auto req = echo.echoRequest();
          req.setData(pattern(64, static_cast<uint8_t>(t * 7 + i)));
          if (req.send().wait(ws).getData().size() == 64) ++ok;
        }
      });
  }
  EXPECT_EQ(ok.load(), 800);
}

TEST_P(StandardClient, ClientGoneMidCallLeavesTheServerServing) {
  ZcrpcEchoServer server(unix());
  {
    capnp::EzRpcClient client(server.kj());
    auto& ws = client.getWaitScope();
    auto echo = client.getMain<echo::Echo>();
    auto req = echo.delayRequest();
    req.setMicros(10'000'000);
    auto pending = req.send();
    echo.pingRequest().send().wait(ws);  // the delay is with the handler now
    (void)pending;
  }  // the client's connection closes with the call open
  for (Bound b(2000, 5s); b.next() && server.echo().cancelled() == 0;) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(server.echo().cancelled(), 1) << "the open call was not cancelled when its client went";
  for (Bound b(2000, 5s); b.next() && server.server().connectionCount() != 0;)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ(server.server().connectionCount(), 0u) << "the gone client's connection was kept";
  capnp::EzRpcClient again(server.kj());
  auto req = again.getMain<echo::Echo>().echoRequest();
  req.setData(pattern(10, 1));
  EXPECT_EQ(req.send().wait(again.getWaitScope()).getData().size(), 10u);
  EXPECT_TRUE(server.refusals().empty()) << server.refusals().front();
}

// ---------------------------------------------------------------------------------------
// Every shape of the codegen test schemas, through one bootstrap: own and inherited
// methods (two levels across files), explicit and empty params and results, nested
// interfaces, an interface without methods extended, escaped handler names.

namespace cg = zcrpc::codegen_test;
using cg::DerivedImpl, cg::InnerImpl, cg::NestedImpl, cg::TaggedImpl;

TEST_P(StandardClient, EveryShapeOfTheCodegenSchemasThroughOneBootstrap) {
  DerivedImpl derived;
  NestedImpl nested;
  InnerImpl inner;
  TaggedImpl tagged;
  Server server;
  server.addService(derived);
  server.addService(nested);
  server.addService(inner);
  server.addService(tagged);
  auto listener = unix() ? listenCapnpUnix(freshAddress(true)) : listenCapnp(freshAddress(false));
  const std::string endpoint = listener->endpoint();
  server.addListener(std::move(listener));
  server.start();

  capnp::EzRpcClient client(kjAddress(endpoint));
  auto& ws = client.getWaitScope();
  auto d = client.getMain<cg::Derived>();
  {
    auto req = d.mirrorRequest();
    req.setX(3);
    req.setY(-4);
    auto r = req.send().wait(ws);
    EXPECT_EQ(r.getX(), -3);
    EXPECT_EQ(r.getY(), 4);
  }
  {
    auto req = d.scaleRequest();
    req.setX(2);
    req.setY(5);
    auto r = req.send().wait(ws);
    EXPECT_EQ(r.getFactor(), 3);
    EXPECT_EQ(r.getPoint().getX(), 6);
    EXPECT_EQ(r.getPoint().getY(), 15);
  }
  d.nothingRequest().send().wait(ws);
  EXPECT_EQ(derived.nothingCalls.load(), 1);
  {
    auto req = d.deleteRequest();
    req.setKey("present");
    EXPECT_TRUE(req.send().wait(ws).getDeleted());
  }
  {
    auto req = d.dispatchRequest();
    req.setN(41);
    EXPECT_EQ(req.send().wait(ws).getN(), 42u);
  }
  {
    auto req = d.shoutRequest();  // inherited from Middle
    req.setText("quiet");
    EXPECT_EQ(std::string(req.send().wait(ws).getText().cStr()), "QUIET");
  }
  {
    auto req = d.greetRequest();  // inherited from common.Greeter, two levels up, another file
    req.setName("capnp");
    EXPECT_EQ(std::string(req.send().wait(ws).getGreeting().cStr()), "hello capnp from derived");
  }
  // Other interfaces of the same server, through the same bootstrap.
  EXPECT_EQ(client.getMain<cg::Holder::Nested>().getRequest().send().wait(ws).getValue(), 42);
  {
    auto req = client.getMain<cg::Outer::Inner>().innerRequest();
    req.setX(21);
    EXPECT_EQ(req.send().wait(ws).getX(), 42);
  }
  client.getMain<cg::Tagged>().tagRequest().send().wait(ws);
  EXPECT_EQ(tagged.calls.load(), 1);
  // Outer itself is not served here.
  EXPECT_EQ(failureOf(client.getMain<cg::Outer>().outerRequest().send(), ws, "Outer").getType(),
            kj::Exception::Type::UNIMPLEMENTED);
  server.shutdown(deadlineAfter(2s));
}

TEST_P(StandardClient, CredentialPolicyRefusesUnixClients) {
  if (!unix()) GTEST_SKIP() << "credentials are a unix socket's (capnp:// has no such check)";
  CapnpOptions o;
  o.policy.sameUid = false;  // nobody
  ZcrpcEchoServer server(true, o);
  capnp::EzRpcClient client(server.kj());
  auto req = client.getMain<echo::Echo>().pingRequest();
  const kj::Exception e = failureOf(req.send(), client.getWaitScope(), "a refused client's call");
  EXPECT_EQ(e.getType(), kj::Exception::Type::DISCONNECTED) << describe(e);
  auto refusals = server.refusals();
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_NE(refusals[0].find("not admitted by the credential policy"), std::string::npos) << refusals[0];
  EXPECT_EQ(server.echo().pings(), 0);
}

/// A Cap'n Proto capability of the test's own (any call on it is unimplemented).
class Nothing final : public capnp::Capability::Server {
 public:
  DispatchCallResult dispatchCall(uint64_t, uint16_t,
                                  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer>) override {
    return {KJ_EXCEPTION(UNIMPLEMENTED, "nothing here"), false};
  }
};

TEST_P(StandardClient, CapabilityInParamsIsUnimplementedAndTheConnectionGoesOn) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  // Echo.echo's params with a capability where the data pointer goes: what a client of a
  // schema passing capabilities sends. zcrpc's frames carry no capabilities yet (issue 18).
  auto req = client.getMain().typelessRequest(capnp::typeId<echo::Echo>(), 0, nullptr);
  req.initAsAnyStruct(0, 1).getPointerSection()[0].setAs<capnp::Capability>(
      capnp::Capability::Client(kj::heap<Nothing>()));
  const kj::Exception e = failureOf(req.send(), ws, "a call carrying a capability");
  EXPECT_EQ(e.getType(), kj::Exception::Type::UNIMPLEMENTED) << describe(e);
  EXPECT_NE(describe(e).find("1 capability in the message"), std::string::npos) << describe(e);
  auto echo = client.getMain<echo::Echo>();
  auto ok = echo.echoRequest();
  ok.setData(pattern(16, 2));
  EXPECT_EQ(ok.send().wait(ws).getData().size(), 16u);
  EXPECT_TRUE(server.refusals().empty()) << server.refusals().front();
}

TEST_P(StandardClient, ReaderLimitsBoundWhatTheServerReads) {
  CapnpOptions o;
  o.connection.readerLimits.traversalLimitWords = 4096;  // 32 KiB
  o.connection.readerLimits.nestingLimit = 16;
  ZcrpcEchoServer server(unix(), o);
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto echo = client.getMain<echo::Echo>();
  {
    auto req = echo.echoRequest();
    req.setData(pattern(64 * 1024, 1));  // over the traversal limit
    const std::string what = describe(failureOf(req.send(), ws, "a request over the traversal limit"));
    EXPECT_NE(what.find("server could not read the request (traversal_limit_words 4096, nesting_limit 16)"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("traversal limit"), std::string::npos) << what;
  }
  {
    // Params 40 structs deep (over the nesting limit of 16).
    auto req = client.getMain().typelessRequest(capnp::typeId<echo::Echo>(), 0, nullptr);
    auto s = req.initAsAnyStruct(0, 1);
    for (int depth = 0; depth < 40; ++depth) s = s.getPointerSection()[0].initAsAnyStruct(0, 1);
    const std::string what = describe(failureOf(req.send(), ws, "a request nested over the limit"));
    EXPECT_NE(what.find("too deeply-nested"), std::string::npos) << what;
  }
  // Within the limits the connection goes on.
  auto req = echo.echoRequest();
  req.setData(pattern(1024, 3));
  EXPECT_EQ(req.send().wait(ws).getData().size(), 1024u);
}

TEST(CapnpAccess, AServerWithATokenServesStandardTcpClientsOnlyWhenTheEndpointSaysSo) {
  Config config;
  config.loadTomlString("token = \"s3cret\"\n", "server.toml");
  Context context(config);
  try {
    context.listen("capnp://127.0.0.1:0");
    ADD_FAILURE() << "a capnp:// listener started on a server with a token";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("standard Cap'n Proto clients cannot present one"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("capnp://127.0.0.1:0?token="), std::string::npos) << e.what();
  }
  // Said explicitly on the endpoint, or on a unix socket (the credential policy applies).
  EXPECT_NE(context.listen("capnp://127.0.0.1:0?token="), nullptr);
  EXPECT_NE(context.listen("capnp+unix://" + freshAddress(true)), nullptr);
}

// ---------------------------------------------------------------------------------------
// A client in another language: capnp-es (JavaScript, from npm) on Node.js, running
// tests/compat/js/client.mjs. scripts/zcrpc-dev test installs it (npm ci into
// <build>/compat-js) and then requires it (ZCRPC_REQUIRE_JS_CLIENT=1); elsewhere a missing
// Node.js or capnp-es skips the test, saying what is missing.

/// `text` quoted for the shell.
std::string shellQuoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// Runs `command` with /bin/sh: its exit status and what it printed (stdout and stderr).
std::pair<int, std::string> runCommand(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) output.append(buf, n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST_P(StandardClient, JavaScriptClientCallsEchoThroughTheListener) {
  const char* dirEnv = std::getenv("ZCRPC_COMPAT_JS_DIR");
  const char* clientEnv = std::getenv("ZCRPC_COMPAT_JS_CLIENT");
  const char* schemaEnv = std::getenv("ZCRPC_ECHO_SCHEMA");
  ASSERT_TRUE(dirEnv && clientEnv && schemaEnv) << "run it through meson test (it sets ZCRPC_COMPAT_JS_*)";
  const std::string dir = dirEnv, client = clientEnv, schema = schemaEnv;
  const char* requiredEnv = std::getenv("ZCRPC_REQUIRE_JS_CLIENT");
  const bool required = requiredEnv && std::string(requiredEnv) == "1";
  std::string missing;
  if (runCommand("node --version").first != 0)
    missing = "no Node.js (node) on PATH";
  else if (::access((dir + "/node_modules/capnp-es/package.json").c_str(), R_OK) != 0 ||
           ::access((dir + "/node_modules/.bin/capnpc-js").c_str(), X_OK) != 0)
    missing = "capnp-es is not installed in " + dir + " (scripts/zcrpc-dev test runs npm ci there)";
  if (!missing.empty()) {
    if (required) FAIL() << missing;
    GTEST_SKIP() << missing;
  }
  // The client and echo.js (from schemas/echo.capnp by capnp-es's generator) go inside
  // `dir`, where Node.js finds the capnp-es package for them (an ES module resolves its
  // imports from where it lies) and dir's package.json makes them ES modules.
  const std::string generated =
      dir + "/generated-" + std::to_string(::getpid()) + "-" + (unix() ? "unix" : "tcp");
  std::filesystem::create_directories(generated);
  struct Remove {
    std::string path;
    ~Remove() { std::filesystem::remove_all(path); }
  } remove{generated};
  std::filesystem::copy_file(client, generated + "/client.mjs");
  const std::string schemaDir = std::filesystem::path(schema).parent_path().string();
  auto [genStatus, genOutput] =
      runCommand("capnp compile -o" + shellQuoted(dir + "/node_modules/.bin/capnpc-js") + ":" +
                 shellQuoted(generated) + " --src-prefix=" + shellQuoted(schemaDir) + " " + shellQuoted(schema));
  ASSERT_EQ(genStatus, 0) << genOutput;

  // A socket file for unix: Node.js's net module connects to those (not to abstract names).
  ZcrpcEchoServer server(unix(), {}, {}, unix() ? generated + "/echo.sock" : "");
  auto [status, output] = runCommand("timeout 120 node " + shellQuoted(generated + "/client.mjs") + " " +
                                     shellQuoted(server.kj()) + " " + shellQuoted(generated));
  EXPECT_EQ(status, 0) << output;
  EXPECT_NE(output.find("echo 1048576 ok"), std::string::npos) << output;
  EXPECT_NE(output.find("fail ok"), std::string::npos) << output;
  EXPECT_NE(output.find("\ndone\n"), std::string::npos) << output;
  EXPECT_EQ(server.echo().sunk(), 100u);
  EXPECT_TRUE(server.refusals().empty()) << server.refusals().front();
}

// ---------------------------------------------------------------------------------------
// zcrpc clients calling Cap'n Proto's own server.

class ZcrpcClient : public OverSockets {};
INSTANTIATE_TEST_SUITE_P(Sockets, ZcrpcClient, ::testing::Bool(), socketName);

TEST_P(ZcrpcClient, CallsEveryMethodOfACapnpServer) {
  CapnpServer server(unix());
  Channel channel(connectTo(server.endpoint()));
  echo::EchoClient echo(channel);
  for (size_t size : {size_t{0}, size_t{64}, size_t{100'000}, size_t{16} << 20}) {
    auto bytes = pattern(size, 9);
    auto req = echo.echoRequest();
    req.params().setData(bytes);
    auto resp = req.call();
    ASSERT_EQ(resp.results().getData().size(), size);
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), resp.results().getData().begin())) << size;
  }
  echo.pingRequest().call();
  {
    auto req = echo.sinkRequest();
    req.params().setData(pattern(10, 1));
    req.sendOneWay();  // a call whose answer nobody waits for
  }
  {
    auto req = echo.delayRequest();
    req.params().setMicros(1000);
    EXPECT_FALSE(req.call().results().getCancelled());
  }
  try {
    auto req = echo.failRequest();
    req.params().setCode(42);
    req.params().setMessage("no such key");
    req.call();
    FAIL() << "fail() returned";
  } catch (const ApplicationError& e) {
    EXPECT_EQ(e.code(), 42);
    EXPECT_EQ(std::string(e.what()), "no such key");
  }
  try {
    channel.newRequest(capnp::typeId<echo::Echo>(), 77).call();
    FAIL() << "method 77 returned";
  } catch (const Unimplemented& e) {
    EXPECT_NE(std::string(e.what()).find("77"), std::string::npos) << e.what();
  }
  EXPECT_GT(channel.ping().count(), 0);
  EXPECT_TRUE(channel.connected());
}

TEST_P(ZcrpcClient, DeadlineCancelsTheCallOnTheCapnpServer) {
  CapnpServer server(unix());
  Channel channel(connectTo(server.endpoint()));
  echo::EchoClient echo(channel);
  auto req = echo.delayRequest();
  req.params().setMicros(10'000'000);
  req.setTimeout(50ms);
  const auto start = Clock::now();
  EXPECT_THROW(req.call(), DeadlineExceeded);
  EXPECT_LT(Clock::now() - start, 2s);
  // The channel told the server (Finish): its delay was cancelled.
  for (Bound b(2000, 5s); b.next() && server.cancelled() == 0;) {
    channel.pollUntil(deadlineAfter(1ms));
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(server.cancelled(), 1);
  echo.pingRequest().call();  // and goes on
}

TEST_P(ZcrpcClient, CancelledCallIsCancelledOnTheCapnpServer) {
  CapnpServer server(unix());
  Channel channel(connectTo(server.endpoint()));
  echo::EchoClient echo(channel);
  auto req = echo.delayRequest();
  req.params().setMicros(10'000'000);
  PendingCall call = req.callAsync();
  echo.pingRequest().call();  // the delay is with the server now
  call.cancel();
  EXPECT_EQ(call.wait().errorKind(), ErrorKind::kCancelled);
  for (Bound b(2000, 5s); b.next() && server.cancelled() == 0;) {
    channel.pollUntil(deadlineAfter(1ms));
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(server.cancelled(), 1);
}

TEST_P(ZcrpcClient, ManyAsyncCallsWithinTheWindow) {
  CapnpServer server(unix());
  Channel channel(connectTo(server.endpoint()));
  echo::EchoClient echo(channel);
  constexpr int kCalls = 2000;
  int answered = 0, sent = 0;
  for (Bound b(100'000, 30s); b.next() && answered < kCalls;) {
    while (sent < kCalls && channel.outstanding() < channel.options().window) {
      auto req = echo.echoRequest();
      const auto want = pattern(sent % 300, static_cast<uint8_t>(sent));
      req.params().setData(want);
      req.callAsync([&answered, n = want.size(), seed = static_cast<uint8_t>(sent)](CallResult&& r) {
        ASSERT_TRUE(r.ok()) << r.errorMessage();
        auto got = r.results<echo::Echo::EchoResults>().getData();
        auto want = pattern(n, seed);
        ASSERT_EQ(got.size(), n);
        EXPECT_TRUE(std::equal(want.begin(), want.end(), got.begin()));
        ++answered;
      });
      ++sent;
    }
    channel.pollUntil(deadlineAfter(10ms));
  }
  EXPECT_EQ(answered, kCalls);
}

TEST_P(ZcrpcClient, CapnpServerGoneFailsTheCallWithDisconnected) {
  std::unique_ptr<Channel> channel;
  PendingCall call;
  {
    CapnpServer server(unix());
    channel = std::make_unique<Channel>(connectTo(server.endpoint()));
    echo::EchoClient echo(*channel);
    echo.pingRequest().call();
    auto req = echo.delayRequest();
    req.params().setMicros(10'000'000);
    call = req.callAsync();
  }  // the server goes with the call open
  CallResult r = call.wait();
  EXPECT_EQ(r.errorKind(), ErrorKind::kDisconnected) << r.errorMessage();
  EXPECT_FALSE(channel->connected());
}

TEST_P(ZcrpcClient, ThroughContextConnectToZcrpcsOwnListener) {
  // Context::connect("capnp://...") gives a Channel to either kind of server; here zcrpc's
  // own capnp listener, so both ends of the bridge are in one call.
  ZcrpcEchoServer server(unix());
  Context context;
  Channel channel(context.connect(server.endpoint()));
  echo::EchoClient echo(channel);
  auto req = echo.echoRequest();
  req.params().setData(pattern(64, 5));
  EXPECT_EQ(req.call().results().getData().size(), 64u);
  try {
    auto f = echo.failRequest();
    f.params().setCode(-7);
    f.params().setMessage("negative");
    f.call();
    FAIL() << "fail() returned";
  } catch (const ApplicationError& e) {
    EXPECT_EQ(e.code(), -7);
    EXPECT_EQ(std::string(e.what()), "negative");
  }
}

TEST_P(ZcrpcClient, OneWayCallsReachBothKindsOfServer) {
  // Over zcrpc's own capnp listener: the handler runs, and no answer is left waiting.
  ZcrpcEchoServer ours(unix());
  Channel channel(connectTo(ours.endpoint()));
  echo::EchoClient echo(channel);
  for (int i = 0; i < 10; ++i) {
    auto req = echo.sinkRequest();
    req.params().setData(pattern(100, static_cast<uint8_t>(i)));
    req.sendOneWay();
  }
  // Nothing is polled for them: sendOneWay() itself put them on the socket.
  for (Bound b(5000, 5s); b.next() && ours.echo().sunk() < 1000;) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(ours.echo().sunk(), 1000u);
  EXPECT_EQ(channel.outstanding(), 0u);
  echo.pingRequest().call();  // the channel goes on
  // Over Cap'n Proto's own server: its Returns are dropped when they come.
  CapnpServer theirs(unix());
  Channel other(connectTo(theirs.endpoint()));
  echo::EchoClient echo2(other);
  for (int i = 0; i < 10; ++i) {
    auto req = echo2.sinkRequest();
    req.params().setData(pattern(100, static_cast<uint8_t>(i)));
    req.sendOneWay();
  }
  for (Bound b(5000, 5s); b.next() && theirs.sinks() < 10;) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(theirs.sinks(), 10);
  EXPECT_EQ(other.outstanding(), 0u);
  echo2.pingRequest().call();
}

/// A standard server whose every answer holds a capability.
class GivesCapabilities final : public capnp::Capability::Server {
 public:
  DispatchCallResult dispatchCall(uint64_t, uint16_t,
                                  capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
    context.getResults().initAsAnyStruct(0, 1).getPointerSection()[0].setAs<capnp::Capability>(
        capnp::Capability::Client(kj::heap<Nothing>()));
    return {kj::READY_NOW, false};
  }
};

TEST_P(ZcrpcClient, CapabilityInResultsIsUnimplementedAndTheChannelGoesOn) {
  CapnpServer server(unix(), kj::heap<GivesCapabilities>());
  Channel channel(connectTo(server.endpoint()));
  echo::EchoClient echo(channel);
  for (int i = 0; i < 2; ++i) {
    try {
      echo.pingRequest().call();
      ADD_FAILURE() << "results holding a capability were taken";
    } catch (const Unimplemented& e) {
      EXPECT_NE(std::string(e.what()).find("1 capability in the message"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(channel.connected());
}

TEST_P(ZcrpcClient, ExtensionRecordsAreRefusedByNameAndTheConnectionStaysUsable) {
  // zcrpc's frame extension records (capabilities) are not translated to rpc.capnp: a
  // message with any is refused before it is sent, rather than sent without them.
  ZcrpcEchoServer server(unix());
  Channel channel(connectTo(server.endpoint()));
  EXPECT_EQ(channel.connection().maxExtensionBytes(), 0u);
  echo::EchoClient echo(channel);
  // One record: a `target` header {type 1, 0, 16 bytes} and its payload (export 0).
  capnp::word words[2] = {};
  const ExtensionHeader h{extension::kTarget, 0, 16};
  std::memcpy(static_cast<void*>(&words[0]), &h, sizeof h);
  {
    auto req = echo.echoRequest();
    req.params().setData(pattern(8, 1));
    req.raw().message().setExtensions(kj::arrayPtr(words, 2));
    try {
      req.call();
      FAIL() << "a request with extension records was sent";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("extension records"), std::string::npos) << e.what();
    }
  }
  auto req = echo.echoRequest();
  req.params().setData(pattern(64, 5));
  EXPECT_EQ(req.call().results().getData().size(), 64u);
}

// ---------------------------------------------------------------------------------------
// Bad input from a raw socket: the listener closes what breaks the rules, with the reason
// in refusals(), and goes on serving honest clients.

/// A client that writes whatever a test wants on a raw socket to a capnp endpoint.
class RawPeer final {
 public:
  explicit RawPeer(const std::string& endpoint) {
    const std::string tcp = "capnp://", unix = "capnp+unix://";
    if (endpoint.rfind(tcp, 0) == 0) {
      const std::string hostPort = endpoint.substr(tcp.size());
      const auto colon = hostPort.rfind(':');
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(std::stoi(hostPort.substr(colon + 1))));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        throw std::runtime_error("raw connect failed");
    } else {
      const std::string name = endpoint.substr(unix.size() + 1);  // "@name"
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::memcpy(a.sun_path + 1, name.data(), name.size());
      fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (::connect(fd_, reinterpret_cast<sockaddr*>(&a),
                    static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size())) != 0)
        throw std::runtime_error("raw connect failed");
    }
  }
  ~RawPeer() { ::close(fd_); }
  int fd() const { return fd_; }

  /// Writes all of `bytes` (blocking); false when the server closed meanwhile.
  bool write(kj::ArrayPtr<const kj::byte> bytes) {
    while (bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.begin(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes = bytes.slice(static_cast<size_t>(n), bytes.size());
    }
    return true;
  }
  bool send(capnp::MessageBuilder& message) {
    auto flat = capnp::messageToFlatArray(message);
    return write(flat.asBytes());
  }

  /// What the server sent until it closed the connection (or `timeout`).
  struct Seen {
    bool closed = false;
    std::string abort;                   // the reason of an Abort message
    std::vector<capnp::rpc::Message::Which> kinds;
    std::vector<std::string> exceptions;  // reasons of Returns that are exceptions
  };
  Seen readUntilClosed(std::chrono::milliseconds timeout) {
    Seen seen;
    std::vector<capnp::word> buf;
    size_t have = 0;  // bytes
    const auto until = Clock::now() + timeout;
    for (;;) {
      // Every whole message received so far.
      for (;;) {
        auto words = kj::arrayPtr(buf.data(), have / 8);
        if (words.size() == 0) break;
        const size_t need = capnp::expectedSizeInWordsFromPrefix(words);
        if (words.size() < need) break;
        capnp::FlatArrayMessageReader reader(words.slice(0, need));
        auto m = reader.getRoot<capnp::rpc::Message>();
        seen.kinds.push_back(m.which());
        if (m.isAbort()) seen.abort = m.getAbort().getReason().cStr();
        if (m.isReturn() && m.getReturn().isException())
          seen.exceptions.push_back(m.getReturn().getException().getReason().cStr());
        std::memmove(buf.data(), buf.data() + need, have - need * 8);
        have -= need * 8;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      if (left.count() <= 0) return seen;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return seen;
      if (buf.size() * 8 < have + 65536) buf.resize((have + 65536) / 8 + 1);
      const ssize_t n = ::recv(fd_, reinterpret_cast<char*>(buf.data()) + have, buf.size() * 8 - have, 0);
      if (n <= 0) {
        seen.closed = true;
        return seen;
      }
      have += static_cast<size_t>(n);
    }
  }

 private:
  int fd_ = -1;
};

bool anyContains(const std::vector<std::string>& list, const std::string& part) {
  for (const auto& s : list)
    if (s.find(part) != std::string::npos) return true;
  return false;
}

/// Whether the listener lists a refusal containing `part` within a few seconds (the client
/// may see its connection end before the server's worker has written the reason down).
::testing::AssertionResult refused(const ZcrpcEchoServer& server, const std::string& part) {
  for (Bound b(5000, 5s); b.next();) {
    if (anyContains(server.refusals(), part)) return ::testing::AssertionSuccess();
    std::this_thread::sleep_for(1ms);
  }
  return ::testing::AssertionFailure() << "no refusal with '" << part
                                       << "': " << ::testing::PrintToString(server.refusals());
}

/// An honest client's echo round trip still works.
void expectServing(const std::string& kj) {
  capnp::EzRpcClient client(kj);
  auto req = client.getMain<echo::Echo>().echoRequest();
  req.setData(pattern(32, 4));
  EXPECT_EQ(req.send().wait(client.getWaitScope()).getData().size(), 32u);
}

class BadInput : public OverSockets {};
INSTANTIATE_TEST_SUITE_P(Sockets, BadInput, ::testing::Bool(), socketName);

TEST_P(BadInput, GarbageBytesCloseTheConnectionWithTheReason) {
  ZcrpcEchoServer server(unix());
  {
    RawPeer raw(server.endpoint());
    // A first word claiming 2^31 segments: Cap'n Proto's framing allows 512.
    const uint32_t words[4] = {0x7fffffffu, 1, 0xdeadbeefu, 0x12345678u};
    raw.write(kj::arrayPtr(reinterpret_cast<const kj::byte*>(words), sizeof words));
    EXPECT_TRUE(raw.readUntilClosed(5s).closed);
  }
  {
    // Framing that holds, around a message that is not an RPC message.
    RawPeer raw(server.endpoint());
    uint64_t message[4] = {0, 0, 0, 0};
    const uint32_t table[2] = {0, 3};
    std::memcpy(message, table, sizeof table);
    message[1] = 0xffff'ffff'ffff'fff1ull;  // a far pointer into a segment that is not there
    raw.write(kj::arrayPtr(reinterpret_cast<const kj::byte*>(message), sizeof message));
    auto seen = raw.readUntilClosed(5s);
    EXPECT_TRUE(seen.closed);
    EXPECT_FALSE(seen.abort.empty()) << "no Abort telling the client why";
  }
  EXPECT_TRUE(refused(server, "segments (at most 512)"));
  EXPECT_TRUE(refused(server, "broke Cap'n Proto's RPC protocol"));
  expectServing(server.kj());
}

TEST_P(BadInput, UnknownQuestionAndImportIdsAreRefused) {
  ZcrpcEchoServer server(unix());
  struct Case {
    const char* what;
    std::function<void(capnp::rpc::Message::Builder)> build;
  };
  const std::vector<Case> cases = {
      {"Finish of a question never asked",
       [](auto m) { m.initFinish().setQuestionId(99); }},
      {"Release of an import never given",
       [](auto m) {
         auto r = m.initRelease();
         r.setId(55);
         r.setReferenceCount(1);
       }},
      {"Call on an import never given",
       [](auto m) {
         auto c = m.initCall();
         c.setQuestionId(1);
         c.initTarget().setImportedCap(77);
         c.setInterfaceId(capnp::typeId<echo::Echo>());
         c.initParams();
       }},
      {"Call pipelined on a question never asked",
       [](auto m) {
         auto c = m.initCall();
         c.setQuestionId(2);
         c.initTarget().initPromisedAnswer().setQuestionId(1234);
         c.setInterfaceId(capnp::typeId<echo::Echo>());
         c.initParams();
       }},
      {"Disembargo naming nothing",
       [](auto m) {
         auto d = m.initDisembargo();
         d.initTarget().setImportedCap(66);
         d.getContext().setReceiverLoopback(5);
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    RawPeer raw(server.endpoint());
    capnp::MallocMessageBuilder message;
    c.build(message.initRoot<capnp::rpc::Message>());
    raw.send(message);
    auto seen = raw.readUntilClosed(3s);
    // Either the connection is aborted with a reason, or the call fails with one.
    EXPECT_TRUE((seen.closed && !seen.abort.empty()) || !seen.exceptions.empty())
        << "closed " << seen.closed << ", abort '" << seen.abort << "', " << seen.exceptions.size()
        << " exceptions";
  }
  EXPECT_TRUE(refused(server, "'Finish' for invalid question ID"));
  EXPECT_TRUE(refused(server, "Tried to release invalid export ID"));
  EXPECT_TRUE(refused(server, "Message target is not a current export ID"));
  EXPECT_TRUE(refused(server, "PromisedAnswer.questionId is not a current question"));
  EXPECT_TRUE(refused(server, "Invalid embargo ID"));
  expectServing(server.kj());
}

TEST_P(BadInput, MessageOverTheSizeLimitIsRefusedBeforeItArrives) {
  CapnpOptions o;
  o.connection.maxMessageBytes = 1 << 20;
  ZcrpcEchoServer server(unix(), o);
  {
    RawPeer raw(server.endpoint());
    // A table announcing one segment of 2 MiB; the bytes themselves never come.
    const uint32_t table[2] = {0, (2u << 20) / 8};
    raw.write(kj::arrayPtr(reinterpret_cast<const kj::byte*>(table), sizeof table));
    EXPECT_TRUE(raw.readUntilClosed(5s).closed) << "the server waited for 2 MiB it will not take";
  }
  EXPECT_TRUE(refused(server, "over the maximum message size of 1048576"));
  {
    // A standard client's call over the limit: its connection goes, the next one works.
    capnp::EzRpcClient client(server.kj());
    auto req = client.getMain<echo::Echo>().echoRequest();
    req.setData(pattern(2 << 20, 1));
    EXPECT_THROW(req.send().wait(client.getWaitScope()), kj::Exception);
  }
  expectServing(server.kj());
}

TEST_P(BadInput, SlowClientDoesNotHoldUpOthers) {
  // One worker serves both clients: the slow one must not stall it.
  CapnpOptions o;
  o.connection.ringBytes = 256 << 10;
  ZcrpcEchoServer server(unix(), o);
  RawPeer slow(server.endpoint());
  {
    // Bootstrap, then pipelined 256 KiB echo calls it never reads the answers of, until
    // the server stops reading them (the socket fills) or 64 MiB went.
    capnp::MallocMessageBuilder boot;
    boot.initRoot<capnp::rpc::Message>().initBootstrap().setQuestionId(0);
    ASSERT_TRUE(slow.send(boot));
    const int flags = ::fcntl(slow.fd(), F_GETFL);
    ::fcntl(slow.fd(), F_SETFL, flags | O_NONBLOCK);
    auto payload = pattern(256 << 10, 2);
    size_t sent = 0;
    for (uint32_t q = 1; q <= 256; ++q) {
      capnp::MallocMessageBuilder message;
      auto call = message.initRoot<capnp::rpc::Message>().initCall();
      call.setQuestionId(q);
      call.initTarget().initPromisedAnswer().setQuestionId(0);
      call.setInterfaceId(capnp::typeId<echo::Echo>());
      call.setMethodId(0);
      call.initParams().getContent().initAs<echo::Echo::EchoParams>().setData(payload);
      auto flat = capnp::messageToFlatArray(message);
      auto bytes = flat.asBytes();
      size_t off = 0;
      const auto until = Clock::now() + 200ms;
      while (off < bytes.size() && Clock::now() < until) {
        const ssize_t n = ::send(slow.fd(), bytes.begin() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (n > 0) off += static_cast<size_t>(n);
        else std::this_thread::sleep_for(1ms);
      }
      if (off < bytes.size()) break;  // the server no longer reads us
      sent += bytes.size();
    }
    EXPECT_LT(sent, size_t{64} << 20) << "the server kept reading from a client that reads nothing";
  }
  // Meanwhile an honest client is served promptly.
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto echo = client.getMain<echo::Echo>();
  for (int i = 0; i < 50; ++i) {
    const auto t0 = Clock::now();
    auto req = echo.echoRequest();
    req.setData(pattern(64, static_cast<uint8_t>(i)));
    EXPECT_EQ(req.send().wait(ws).getData().size(), 64u);
    EXPECT_LT(Clock::now() - t0, 1s) << "call " << i << " waited behind the slow client";
  }
}

}  // namespace
}  // namespace zcrpc::compat_test
