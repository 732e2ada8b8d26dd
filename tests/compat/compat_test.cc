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
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/compat/tls.h>
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

#include "callback.capnp.h"
#include "callback.capnp.zcrpc.h"
#include "caps.capnp.h"
#include "caps_impl.h"
#include "codegen/services_impl.h"
#include "common.capnp.zcrpc.h"
#include "echo.capnp.h"
#include "echo.capnp.zcrpc.h"
#include "lobby.capnp.zcrpc.h"
#include "metrics/echo_impl.h"
#include "services.capnp.zcrpc.h"
#include "tls/test_pki.h"
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
// tests/compat/js/client.mjs (Echo) and caps.mjs (capabilities both ways, lobby.capnp). scripts/zcrpc-dev test installs it (npm ci into
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

/// Where a JavaScript client runs: a directory inside ZCRPC_COMPAT_JS_DIR (where Node.js
/// finds the capnp-es package for it: an ES module resolves its imports from where it lies,
/// and the directory's package.json makes them ES modules) holding the scripts of
/// tests/compat/js and the code capnp-es's generator made from `schema`. Removed at its end.
class JavaScriptClient final {
 public:
  /// Empty `missing()` when Node.js and capnp-es are there and the schema compiled.
  JavaScriptClient(const std::string& schema, const std::string& name) {
    const char* dirEnv = std::getenv("ZCRPC_COMPAT_JS_DIR");
    const char* sourceEnv = std::getenv("ZCRPC_COMPAT_JS_SOURCE");
    if (!dirEnv || !sourceEnv) {
      missing_ = "run it through meson test (it sets ZCRPC_COMPAT_JS_*)";
      return;
    }
    const std::string dir = dirEnv;
    if (runCommand("node --version").first != 0) {
      missing_ = "no Node.js (node) on PATH";
      return;
    }
    if (::access((dir + "/node_modules/capnp-es/package.json").c_str(), R_OK) != 0 ||
        ::access((dir + "/node_modules/.bin/capnpc-js").c_str(), X_OK) != 0) {
      missing_ = "capnp-es is not installed in " + dir + " (scripts/zcrpc-dev test runs npm ci there)";
      return;
    }
    where_ = dir + "/generated-" + std::to_string(::getpid()) + "-" + name;
    std::filesystem::create_directories(where_);
    for (const auto& entry : std::filesystem::directory_iterator(sourceEnv))
      if (entry.path().extension() == ".mjs")
        std::filesystem::copy_file(entry.path(), where_ + "/" + entry.path().filename().string());
    const std::string schemaDir = std::filesystem::path(schema).parent_path().string();
    auto [status, output] =
        runCommand("capnp compile -o" + shellQuoted(dir + "/node_modules/.bin/capnpc-js") + ":" +
                   shellQuoted(where_) + " --src-prefix=" + shellQuoted(schemaDir) + " " + shellQuoted(schema));
    if (status != 0) generateError_ = output.empty() ? "capnp compile failed" : output;
  }
  ~JavaScriptClient() {
    if (!where_.empty()) std::filesystem::remove_all(where_);
  }
  /// Why the client cannot run here (skipped, or failed under scripts/zcrpc-dev test).
  const std::string& missing() const { return missing_; }
  /// capnp-es's generator's complaint about the schema (empty: none).
  const std::string& generateError() const { return generateError_; }
  /// A unix socket path inside the directory (Node.js's net module connects to socket
  /// files, not to abstract names).
  std::string socketPath() const { return where_ + "/server.sock"; }
  /// Runs `script` against `kjAddress`: its exit status and output.
  std::pair<int, std::string> run(const std::string& script, const std::string& kjAddress) const {
    return runCommand("timeout 120 node " + shellQuoted(where_ + "/" + script) + " " + shellQuoted(kjAddress) + " " +
                      shellQuoted(where_));
  }

 private:
  std::string where_, missing_, generateError_;
};

/// Skips the test when the JavaScript client cannot run, or fails it when
/// ZCRPC_REQUIRE_JS_CLIENT=1 (scripts/zcrpc-dev test installed it).
#define SKIP_UNLESS_JAVASCRIPT(client)                                           \
  if (!(client).missing().empty()) {                                              \
    const char* required = std::getenv("ZCRPC_REQUIRE_JS_CLIENT");                \
    if (required && std::string(required) == "1") FAIL() << (client).missing();   \
    GTEST_SKIP() << (client).missing();                                           \
  }

TEST_P(StandardClient, JavaScriptClientCallsEchoThroughTheListener) {
  const char* schema = std::getenv("ZCRPC_ECHO_SCHEMA");
  ASSERT_TRUE(schema) << "run it through meson test (it sets ZCRPC_ECHO_SCHEMA)";
  JavaScriptClient js(schema, std::string("echo-") + (unix() ? "unix" : "tcp"));
  SKIP_UNLESS_JAVASCRIPT(js);
  ASSERT_EQ(js.generateError(), "");
  ZcrpcEchoServer server(unix(), {}, {}, unix() ? js.socketPath() : "");
  auto [status, output] = js.run("client.mjs", server.kj());
  EXPECT_EQ(status, 0) << output;
  EXPECT_NE(output.find("echo 1048576 ok"), std::string::npos) << output;
  EXPECT_NE(output.find("fail ok"), std::string::npos) << output;
  EXPECT_NE(output.find("\ndone\n"), std::string::npos) << output;
  EXPECT_EQ(server.echo().sunk(), 100u);
  EXPECT_TRUE(server.refusals().empty()) << server.refusals().front();
}

/// lobby.capnp's Lobby, served to the JavaScript client by zcrpc.
class LobbyImpl final : public lobby::LobbyService {
 public:
  class GreeterImpl final : public lobby::GreeterService {
   public:
    explicit GreeterImpl(std::string name) : name(std::move(name)) {}
    void greet(GreetCall& call) override {
      call.results().setText(std::string(call.params().getGreeting().cStr()) + " from " + name);
    }
    const std::string name;
  };

  void count(CountCall& call) override {
    // Callbacks during the call: synchronous calls from the handler.
    lobby::CounterClient counter(call.params().getCounter());
    const int64_t times = call.params().getTimes();
    int64_t total = 0;
    for (int64_t i = 1; i <= times; ++i) {
      auto add = counter.addRequest();
      add.params().setValue(i);
      total = add.call().results().getTotal();
    }
    call.results().setTotal(total);
  }
  void keep(KeepCall& call) override { kept_ = call.params().getCounter(); }
  void addKept(AddKeptCall& call) override {
    auto add = lobby::CounterClient(kept_).addRequest();
    add.params().setValue(call.params().getValue());
    call.results().setTotal(add.call().results().getTotal());
  }
  void greeter(GreeterCall& call) override {
    auto greeter = std::make_shared<GreeterImpl>(call.params().getName().cStr());
    made_.push_back(greeter);
    call.results().setGreeter(Capability::local(greeter));
  }
  void isMine(IsMineCall& call) override {
    Capability greeter = call.params().getGreeter();
    for (auto& weak : made_) {
      auto mine = weak.lock();
      if (mine && greeter.localObject() == mine) {
        call.results().setMine(true);
        call.results().setName(mine->name);
        return;
      }
    }
    // Not one of ours: the client's own object, which we call.
    auto greet = lobby::GreeterClient(greeter).greetRequest();
    greet.params().setGreeting("who?");
    const std::string text = greet.call().results().getText().cStr();
    call.results().setMine(false);
    call.results().setName(text);
  }

 private:
  // The handlers run on the server's one worker thread.
  Capability kept_;
  std::vector<std::weak_ptr<GreeterImpl>> made_;
};

TEST_P(StandardClient, JavaScriptClientPassesAndReceivesCapabilities) {
  const char* schema = std::getenv("ZCRPC_LOBBY_SCHEMA");
  ASSERT_TRUE(schema) << "run it through meson test (it sets ZCRPC_LOBBY_SCHEMA)";
  JavaScriptClient js(schema, std::string("lobby-") + (unix() ? "unix" : "tcp"));
  SKIP_UNLESS_JAVASCRIPT(js);
  ASSERT_EQ(js.generateError(), "");
  LobbyImpl lobby;
  Server server;
  server.addService(lobby);
  auto listener = unix() ? listenCapnpUnix(js.socketPath(), {}) : listenCapnp("127.0.0.1:0", {});
  const std::string address = kjAddress(listener->endpoint());
  Listener& l = *listener;
  server.addListener(std::move(listener));
  server.start();
  auto [status, output] = js.run("caps.mjs", address);
  EXPECT_EQ(status, 0) << output;
  for (const char* check : {"count total ok", "callbacks run ok", "kept callback total ok", "returned object ok",
                            "pipelined object ok", "own object handed back ok", "own object's name ok",
                            "the client's object called by the server ok", "\ndone\n"})
    EXPECT_NE(output.find(check), std::string::npos) << check << " missing from:\n" << output;
  EXPECT_TRUE(l.refusals().empty()) << l.refusals().front();
  server.shutdown(deadlineAfter(2s));
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
  RawPeer(const RawPeer&) = delete;
  RawPeer& operator=(const RawPeer&) = delete;
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

  /// The next message the server sends, its words copied into `out`; false when none came
  /// within `timeout` (or the connection ended).
  bool readMessage(kj::Array<capnp::word>& out, std::chrono::milliseconds timeout) {
    const auto until = Clock::now() + timeout;
    for (;;) {
      auto words = kj::arrayPtr(pending_.data(), pendingBytes_ / 8);
      if (words.size() != 0) {
        const size_t need = capnp::expectedSizeInWordsFromPrefix(words);
        if (words.size() >= need) {
          out = kj::heapArray<capnp::word>(words.slice(0, need));
          std::memmove(pending_.data(), pending_.data() + need, pendingBytes_ - need * 8);
          pendingBytes_ -= need * 8;
          return true;
        }
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
      if (pending_.size() * 8 < pendingBytes_ + 65536) pending_.resize((pendingBytes_ + 65536) / 8 + 1);
      const ssize_t n =
          ::recv(fd_, reinterpret_cast<char*>(pending_.data()) + pendingBytes_, pending_.size() * 8 - pendingBytes_, 0);
      if (n <= 0) return false;
      pendingBytes_ += static_cast<size_t>(n);
    }
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
  std::vector<capnp::word> pending_;  // readMessage()'s bytes not read yet
  size_t pendingBytes_ = 0;
};

bool anyContains(const std::vector<std::string>& list, const std::string& part) {
  for (const auto& s : list)
    if (s.find(part) != std::string::npos) return true;
  return false;
}

/// Whether the listener lists a refusal containing `part` within a few seconds (the client
/// may see its connection end before the server's worker has written the reason down).
template <typename AnyServer>
::testing::AssertionResult refused(const AnyServer& server, const std::string& part) {
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

// ---------------------------------------------------------------------------------------
// Capabilities and streams (tests/caps/caps.capnp) over the standard protocol, both ways.

/// Waits (bounded) until `done()`, running `pump` between looks.
template <typename Done, typename Pump>
bool waitFor(Done&& done, Pump&& pump) {
  for (Bound b(20000, 10s); b.next();) {
    if (done()) return true;
    pump();
    std::this_thread::sleep_for(1ms);
  }
  return done();
}

/// A zcrpc::Server serving caps_test::HubImpl (tests/caps/caps_impl.h) through one capnp
/// listener.
class ZcrpcHubServer final {
 public:
  /// `also`: more services for the bootstrap (borrowed; they must outlive the server).
  explicit ZcrpcHubServer(bool unix, ServerOptions options = {}, std::vector<Service*> also = {})
      : server_(options) {
    server_.addService(hub_);
    for (Service* s : also) server_.addService(*s);
    auto listener = unix ? listenCapnpUnix(freshAddress(true), {}) : listenCapnp("127.0.0.1:0", {});
    endpoint_ = listener->endpoint();
    listener_ = listener.get();
    server_.addListener(std::move(listener));
    server_.start();
  }
  ~ZcrpcHubServer() { server_.shutdown(deadlineAfter(2s)); }
  std::string kj() const { return kjAddress(endpoint_); }
  const std::string& endpoint() const { return endpoint_; }
  std::vector<std::string> refusals() const { return listener_->refusals(); }

 private:
  caps_test::HubImpl hub_;
  Server server_;
  Listener* listener_ = nullptr;
  std::string endpoint_;
};

/// A standard client's callback: adds what it is pushed; counts the live ones.
class CapnpSink final : public caps_test::Sink::Server {
 public:
  explicit CapnpSink(std::atomic<int>& live) : live_(live) { ++live_; }
  ~CapnpSink() { --live_; }

 protected:
  kj::Promise<void> push(PushContext context) override {
    total_ += context.getParams().getValue();
    context.getResults().setTotal(total_);
    return kj::READY_NOW;
  }

 private:
  std::atomic<int>& live_;
  int64_t total_ = 0;
};

/// A standard client's end of a price feed.
class CapnpTicker final : public caps_test::Ticker::Server {
 public:
  uint32_t ticks = 0;
  bool inOrder = true;
  bool ended = false;

 protected:
  kj::Promise<void> tick(TickContext context) override {
    inOrder &= context.getParams().getSeq() == ticks;
    ++ticks;
    return kj::READY_NOW;
  }
  kj::Promise<void> end(EndContext) override {
    ended = true;
    return kj::READY_NOW;
  }
};

int64_t push(caps_test::Sink::Client& sink, int64_t value, kj::WaitScope& ws) {
  auto req = sink.pushRequest();
  req.setValue(value);
  return req.send().wait(ws).getTotal();
}

TEST_P(StandardClient, PassesACallbackThatTheHandlerCallsThenAndLater) {
  ZcrpcHubServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  std::atomic<int> sinks{0};
  {
    caps_test::Sink::Client sink = kj::heap<CapnpSink>(sinks);
    auto sub = hub.subscribeRequest();
    sub.setSink(sink);
    sub.setCount(5);
    EXPECT_EQ(sub.send().wait(ws).getLast(), 15);  // pushed 1..5 from the handler
    auto keep = hub.keepRequest();
    keep.setSink(sink);
    keep.send().wait(ws);
    auto fire = hub.fireRequest();
    fire.setCount(3);
    EXPECT_EQ(fire.send().wait(ws).getLast(), 21);  // 1..3 more, from a later call
    auto same = hub.sameRequest();
    same.setA(sink);
    same.setB(sink);
    EXPECT_TRUE(same.send().wait(ws).getSame()) << "one object passed twice is one import";
    EXPECT_EQ(push(sink, 100, ws), 121);
  }
  EXPECT_EQ(sinks.load(), 1) << "the server keeps the sink";
  hub.dropRequest().send().wait(ws);
  EXPECT_TRUE(waitFor([&] { return sinks.load() == 0; }, [&] { ws.poll(); }))
      << "the server's drop of the sink did not release it";
  {
    // A call on a dropped import: the handler's call fails, and says so.
    auto fire = hub.fireRequest();
    fire.setCount(1);
    const kj::Exception e = failureOf(fire.send(), ws, "fire after drop");
    EXPECT_NE(describe(e).find("null"), std::string::npos) << describe(e);
  }
}

TEST_P(StandardClient, LoginObjectIsCalledAfterwardsPassedBackAndReleased) {
  ZcrpcHubServer server(unix());
  const int before = caps_test::liveAccounts.load();
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  {
    auto login = hub.loginRequest();
    login.setName("alice");
    caps_test::Account::Client account = login.send().wait(ws).getAccount();
    EXPECT_EQ(caps_test::liveAccounts.load(), before + 1);
    EXPECT_EQ(std::string(account.whoamiRequest().send().wait(ws).getName().cStr()), "alice");
    auto mine = hub.isMineRequest();
    mine.setAccount(account);
    EXPECT_TRUE(mine.send().wait(ws).getMine()) << "the server's own object, passed back, is not its own";
    // A list of them in results.
    auto many = hub.accountsRequest();
    auto names = many.initNames(3);
    names.set(0, "a");
    names.set(1, "b");
    names.set(2, "c");
    auto response = many.send().wait(ws);  // its capabilities live as long as it does
    auto accounts = response.getAccounts();
    ASSERT_EQ(accounts.size(), 3u);
    EXPECT_EQ(std::string(accounts[2].whoamiRequest().send().wait(ws).getName().cStr()), "c");
  }
  EXPECT_TRUE(waitFor([&] { return caps_test::liveAccounts.load() == before; }, [&] { ws.poll(); }))
      << caps_test::liveAccounts.load() - before << " accounts not released after the client dropped them";
  {
    // Released on disconnect: a client holding an account goes away.
    capnp::EzRpcClient other(server.kj());
    auto login = other.getMain<caps_test::Hub>().loginRequest();
    login.setName("bob");
    auto account = login.send().wait(other.getWaitScope()).getAccount();
    EXPECT_EQ(caps_test::liveAccounts.load(), before + 1);
  }
  EXPECT_TRUE(waitFor([&] { return caps_test::liveAccounts.load() == before; }, [] {}))
      << "an account of a client gone was not released";
}

TEST_P(StandardClient, OwnCapabilitiesComeBackAsThemselves) {
  ZcrpcHubServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  std::atomic<int> sinks{0};
  {
    caps_test::Sink::Client sink = kj::heap<CapnpSink>(sinks);
    caps_test::Sink::Client other = kj::heap<CapnpSink>(sinks);
    capnp::CapabilityServerSet<caps_test::Sink> set;  // to tell our own objects
    caps_test::Sink::Client mineA = set.add(kj::heap<CapnpSink>(sinks));
    auto echo = hub.echoRequest();
    auto holder = echo.initHolder();
    holder.setLabel("h");
    holder.setSink(mineA);
    holder.getChoice().setOther(other);
    holder.getGroup().setInner(sink);
    auto list = holder.initSinks(2);
    list.set(0, sink);
    list.set(1, mineA);
    auto response = echo.send().wait(ws);
    auto back = response.getHolder();
    EXPECT_EQ(std::string(back.getLabel().cStr()), "h");
    // The server handed our objects back: the RPC system gives us our own, not a proxy.
    caps_test::Sink::Client returned = back.getSink();
    auto local = set.getLocalServer(returned).wait(ws);
    EXPECT_TRUE(local != nullptr) << "the capability passed back is a proxy";
    EXPECT_EQ(push(sink, 1, ws), 1);
    caps_test::Sink::Client inner = back.getGroup().getInner();
    EXPECT_EQ(push(inner, 2, ws), 3) << "the object handed back is not the same object";
    caps_test::Sink::Client fromList = back.getSinks()[1];
    EXPECT_TRUE(set.getLocalServer(fromList).wait(ws) != nullptr);
    caps_test::Sink::Client choice = back.getChoice().getOther();
    EXPECT_EQ(push(choice, 5, ws), 5);
  }
  EXPECT_TRUE(waitFor([&] { return sinks.load() == 0; }, [&] { ws.poll(); }))
      << sinks.load() << " sinks still held after the call";
}

TEST_P(StandardClient, StreamsBothWays) {
  ZcrpcHubServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  {
    // Client to server: chunks as Cap'n Proto streams them, then one ordinary call.
    auto up = hub.uploadRequest();
    up.setFailAt(0);
    caps_test::Upload::Client upload = up.send().wait(ws).getUpload();
    auto chunk = pattern(1000, 3);
    for (uint32_t i = 0; i < 200; ++i) {
      auto w = upload.writeRequest();
      w.setSeq(i);
      w.setChunk(chunk);
      w.send().wait(ws);  // returns when Cap'n Proto's flow control lets the next go
    }
    auto done = upload.doneRequest().send().wait(ws);
    EXPECT_EQ(done.getCount(), 200u);
    EXPECT_EQ(done.getBytes(), 200'000u);
    EXPECT_TRUE(done.getInOrder());
  }
  {
    // An error mid-stream: chunk 5 fails; Cap'n Proto fails a later send with it.
    auto up = hub.uploadRequest();
    up.setFailAt(5);
    caps_test::Upload::Client upload = up.send().wait(ws).getUpload();
    bool failed = false;
    for (uint32_t i = 0; i < 6 + 50 && !failed; ++i) {
      auto w = upload.writeRequest();
      w.setSeq(i);
      try {
        w.send().wait(ws);
      } catch (const kj::Exception& e) {
        failed = true;
        EXPECT_GT(i, 5u) << "a chunk before the failing one failed: " << describe(e);
        EXPECT_NE(describe(e).find("chunk 5 is refused"), std::string::npos) << describe(e);
      }
      if (i == 5) hub.dropRequest().send().wait(ws);  // a round trip, for chunk 5's answer to come
    }
    EXPECT_TRUE(failed) << "no send failed after chunk 5 did";
  }
  {
    // Server to client: the handler streams ticks into the client's object.
    auto ticker = kj::heap<CapnpTicker>();
    CapnpTicker& t = *ticker;
    auto feed = hub.feedRequest();
    feed.setTicker(kj::mv(ticker));
    feed.setCount(300);
    EXPECT_EQ(feed.send().wait(ws).getSent(), 300u);
    EXPECT_EQ(t.ticks, 300u);
    EXPECT_TRUE(t.inOrder);
    EXPECT_TRUE(t.ended) << "end() was answered before it ran";
  }
}

/// Sends chunk `seq` of `upload`'s stream and waits until Cap'n Proto's flow control lets
/// the next go (which is not its answer): the exception of an earlier chunk, if one came.
kj::Maybe<kj::Exception> sendChunk(caps_test::Upload::Client& upload, uint32_t seq, kj::WaitScope& ws) {
  auto w = upload.writeRequest();
  w.setSeq(seq);
  w.setChunk(pattern(100, static_cast<uint8_t>(seq)));
  try {
    w.send().wait(ws);
  } catch (const kj::Exception& e) {
    return e;
  }
  return nullptr;
}

/// Opens an Upload whose chunk `failAt` fails (0: none).
caps_test::Upload::Client openUpload(caps_test::Hub::Client& hub, uint32_t failAt, kj::WaitScope& ws) {
  auto up = hub.uploadRequest();
  up.setFailAt(failAt);
  return up.send().wait(ws).getUpload();
}

TEST_P(StandardClient, AFailedChunkFailsEveryLaterCallOfItsObject) {
  // Cap'n Proto's own server: once a streaming call of an object failed, every later call
  // of that object fails with the same exception, whatever the method.
  ZcrpcHubServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  caps_test::Upload::Client upload = openUpload(hub, 3, ws);
  for (uint32_t i = 0; i < 3; ++i) {
    KJ_IF_MAYBE(e, sendChunk(upload, i, ws)) ADD_FAILURE() << "chunk " << i << " failed early: " << describe(*e);
  }
  kj::Maybe<kj::Exception> failure = sendChunk(upload, 3, ws);
  // A later send reports the chunk's failure (Cap'n Proto's client flow control), once its
  // answer is in: the server runs the object's chunks one at a time, so a round trip on
  // another object says nothing of it.
  for (uint32_t i = 4; failure == nullptr && i < 200; ++i) {
    hub.dropRequest().send().wait(ws);
    failure = sendChunk(upload, i, ws);
  }
  KJ_IF_MAYBE(e, failure) {
    EXPECT_EQ(e->getType(), kj::Exception::Type::FAILED);
    EXPECT_EQ(describe(*e), "remote exception: chunk 3 is refused [code 7]");
  } else {
    ADD_FAILURE() << "no send failed after chunk 3 did";
  }
  // ...and the ordinary call after it fails with the same exception: the object is broken.
  const kj::Exception done = failureOf(upload.doneRequest().send(), ws, "done() after a failed chunk");
  EXPECT_EQ(done.getType(), kj::Exception::Type::FAILED);
  EXPECT_EQ(describe(done), "remote exception: chunk 3 is refused [code 7]");
  // So does every call after that, streaming or not.
  KJ_IF_MAYBE(e, sendChunk(upload, 5, ws)) {
    EXPECT_EQ(describe(*e), "remote exception: chunk 3 is refused [code 7]");
  }
  EXPECT_EQ(describe(failureOf(upload.doneRequest().send(), ws, "a second done()")),
            "remote exception: chunk 3 is refused [code 7]");
  // Only that object: the bootstrap serves on.
  auto login = hub.loginRequest();
  login.setName("after");
  EXPECT_EQ(std::string(login.send().wait(ws).getAccount().whoamiRequest().send().wait(ws).getName().cStr()),
            "after");
}

TEST_P(StandardClient, CallsQueuedBehindAFailedChunkFailWithIt) {
  // Cap'n Proto's server runs an object's streaming call alone: the calls behind it wait
  // until it is done, and fail with its exception when it failed.
  ZcrpcHubServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  caps_test::Upload::Client upload = openUpload(hub, 2, ws);
  // Chunks 0..9 and done() leave together, none waited for: chunk 2 fails on the server
  // while the rest are queued behind it.
  auto chunks = kj::heapArrayBuilder<kj::Promise<void>>(10);
  for (uint32_t i = 0; i < 10; ++i) {
    auto w = upload.writeRequest();
    w.setSeq(i);
    chunks.add(w.send());
  }
  auto done = upload.doneRequest().send();
  const kj::Exception e = failureOf(kj::mv(done), ws, "done() queued behind a failed chunk");
  EXPECT_EQ(describe(e), "remote exception: chunk 2 is refused [code 7]");
  for (auto& c : chunks) {
    try {
      c.wait(ws);
    } catch (const kj::Exception&) {
      // Cap'n Proto's client may report the failure on any send after chunk 2's.
    }
  }
}

TEST_P(StandardClient, ANonStreamingFailureAndAnotherObjectsFailedStreamBreakNothingElse) {
  ZcrpcHubServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  // An ordinary method failing does not break its object: fire() with no sink kept fails...
  auto fire = hub.fireRequest();
  fire.setCount(1);
  (void)failureOf(fire.send(), ws, "fire() with no sink kept");
  // ...and the hub goes on (here, giving out two uploads).
  caps_test::Upload::Client broken = openUpload(hub, 2, ws);
  caps_test::Upload::Client fine = openUpload(hub, 0, ws);
  // Two objects streaming at once: one fails at chunk 2, the other is unaffected.
  for (uint32_t i = 0; i < 6; ++i) {
    (void)sendChunk(broken, i, ws);
    KJ_IF_MAYBE(e, sendChunk(fine, i, ws)) ADD_FAILURE() << "the fine stream's chunk " << i << ": " << describe(*e);
  }
  EXPECT_EQ(describe(failureOf(broken.doneRequest().send(), ws, "the broken upload's done()")),
            "remote exception: chunk 2 is refused [code 7]");
  auto done = fine.doneRequest().send().wait(ws);
  EXPECT_EQ(done.getCount(), 6u);
  EXPECT_EQ(done.getBytes(), 600u);
  EXPECT_TRUE(done.getInOrder());
  caps_test::Upload::Client again = openUpload(hub, 0, ws);
  EXPECT_EQ(again.doneRequest().send().wait(ws).getCount(), 0u);
}

/// callback.capnp's Chunks: `put` throws at chunk `failAt` (counting from 1; 0: never).
class FailingChunks final : public callback::ChunksService {
 public:
  explicit FailingChunks(uint64_t failAt) : failAt_(failAt) {}
  void put(PutCall&) override {
    if (++count_ == failAt_) throw Failed("put " + std::to_string(count_) + " refused");
  }
  void flush(FlushCall& call) override { call.results().setCount(count_); }

 private:
  const uint64_t failAt_;
  uint64_t count_ = 0;
};

TEST_P(StandardClient, AFailedChunkOnTheBootstrapFailsItsLaterCalls) {
  // The capnp listener's bootstrap is one capability for every service it serves (one
  // object to Cap'n Proto): a failed streaming call through it fails its later calls, of
  // every service, on that connection. Another connection's bootstrap is another object.
  FailingChunks chunks(2);
  ZcrpcHubServer server(unix(), {}, {&chunks});
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto stream = client.getMain<callback::Chunks>();
  for (int i = 1; i <= 2; ++i) {
    auto put = stream.putRequest();
    put.setData(pattern(10, 1));
    try {
      put.send().wait(ws);
    } catch (const kj::Exception& e) {
      // Cap'n Proto's send() on a bootstrap capability still being resolved waits for the
      // call's answer.
      EXPECT_EQ(i, 2) << describe(e);
      EXPECT_EQ(describe(e), "remote exception: put 2 refused");
    }
  }
  const kj::Exception e = failureOf(stream.flushRequest().send(), ws, "flush() after a failed put");
  EXPECT_EQ(e.getType(), kj::Exception::Type::FAILED);
  EXPECT_EQ(describe(e), "remote exception: put 2 refused");
  auto login = client.getMain<caps_test::Hub>().loginRequest();
  login.setName("x");
  EXPECT_EQ(describe(failureOf(login.send(), ws, "another service through the broken bootstrap")),
            "remote exception: put 2 refused");
  capnp::EzRpcClient other(server.kj());
  EXPECT_EQ(other.getMain<callback::Chunks>().flushRequest().send().wait(other.getWaitScope()).getCount(), 2u);
}

// The same schema served by Cap'n Proto's own server, called by a zcrpc Channel.

/// Accounts a CapnpHub made, alive.
std::atomic<int> capnpAccounts{0};

class CapnpAccount final : public caps_test::Account::Server {
 public:
  explicit CapnpAccount(std::string name) : name_(std::move(name)) { ++capnpAccounts; }
  ~CapnpAccount() { --capnpAccounts; }

 protected:
  kj::Promise<void> whoami(WhoamiContext context) override {
    context.getResults().setName(name_);
    return kj::READY_NOW;
  }

 private:
  std::string name_;
};

class CapnpUpload final : public caps_test::Upload::Server {
 public:
  explicit CapnpUpload(uint32_t failAt) : failAt_(failAt) {}

 protected:
  kj::Promise<void> write(WriteContext context) override {
    const uint32_t seq = context.getParams().getSeq();
    if (failAt_ != 0 && seq == failAt_) return KJ_EXCEPTION(FAILED, "chunk refused", seq);
    inOrder_ &= seq == count_;
    ++count_;
    bytes_ += context.getParams().getChunk().size();
    return kj::READY_NOW;
  }
  kj::Promise<void> done(DoneContext context) override {
    auto r = context.getResults();
    r.setCount(count_);
    r.setBytes(bytes_);
    r.setInOrder(inOrder_);
    return kj::READY_NOW;
  }

 private:
  uint32_t failAt_;
  uint32_t count_ = 0;
  uint64_t bytes_ = 0;
  bool inOrder_ = true;
};

/// caps.capnp's Hub as a Cap'n Proto server writes it.
class CapnpHub final : public caps_test::Hub::Server {
 protected:
  kj::Promise<void> login(LoginContext context) override {
    context.getResults().setAccount(accounts_.add(kj::heap<CapnpAccount>(context.getParams().getName().cStr())));
    return kj::READY_NOW;
  }
  kj::Promise<void> subscribe(SubscribeContext context) override {
    return pushAll(context.getParams().getSink(), 1, context.getParams().getCount(), 0)
        .then([context](int64_t last) mutable { context.getResults().setLast(last); });
  }
  kj::Promise<void> keep(KeepContext context) override {
    kept_ = context.getParams().getSink();
    return kj::READY_NOW;
  }
  kj::Promise<void> fire(FireContext context) override {
    return pushAll(kept_, 1, context.getParams().getCount(), 0).then([context](int64_t last) mutable {
      context.getResults().setLast(last);
    });
  }
  kj::Promise<void> drop(DropContext) override {
    kept_ = nullptr;
    return kj::READY_NOW;
  }
  kj::Promise<void> echo(EchoContext context) override {
    context.getResults().setHolder(context.getParams().getHolder());
    return kj::READY_NOW;
  }
  kj::Promise<void> isMine(IsMineContext context) override {
    caps_test::Account::Client account = context.getParams().getAccount();
    return accounts_.getLocalServer(account)
        .then([context](kj::Maybe<caps_test::Account::Server&> local) mutable {
          context.getResults().setMine(local != nullptr);
        });
  }
  kj::Promise<void> upload(UploadContext context) override {
    context.getResults().setUpload(kj::heap<CapnpUpload>(context.getParams().getFailAt()));
    return kj::READY_NOW;
  }
  kj::Promise<void> feed(FeedContext context) override {
    const uint32_t count = context.getParams().getCount();
    return tick(context.getParams().getTicker(), 0, count).then([context, count]() mutable {
      context.getResults().setSent(count);
    });
  }

 private:
  static kj::Promise<int64_t> pushAll(caps_test::Sink::Client sink, int64_t i, int64_t count, int64_t last) {
    if (i > count) return last;
    auto req = sink.pushRequest();
    req.setValue(i);
    return req.send().then([sink, i, count](capnp::Response<caps_test::Sink::PushResults>&& r) mutable {
      return pushAll(sink, i + 1, count, r.getTotal());
    });
  }
  /// Streams ticks i..count-1 (each send waits for Cap'n Proto's flow control), then end().
  static kj::Promise<void> tick(caps_test::Ticker::Client ticker, uint32_t i, uint32_t count) {
    if (i == count) return ticker.endRequest().send().ignoreResult();
    auto req = ticker.tickRequest();
    req.setSeq(i);
    req.setPrice(100.0 + i);
    return req.send().then([ticker, i, count]() mutable { return tick(ticker, i + 1, count); });
  }

  capnp::CapabilityServerSet<caps_test::Account> accounts_;
  caps_test::Sink::Client kept_ = nullptr;
};

TEST_P(ZcrpcClient, PassesACallbackThatACapnpServerCallsThenAndLater) {
  CapnpServer server(unix(), kj::heap<CapnpHub>());
  Channel channel(connectTo(server.endpoint()));
  caps_test::HubClient hub(channel);
  auto sink = std::make_shared<caps_test::SinkImpl>();
  {
    auto sub = hub.subscribeRequest();
    sub.params().setSink(Capability::local(sink));
    sub.params().setCount(5);
    EXPECT_EQ(sub.call().results().getLast(), 15);
  }
  EXPECT_EQ(sink->total, 15);
  {
    auto keep = hub.keepRequest();
    keep.params().setSink(Capability::local(sink));
    keep.call();
    auto fire = hub.fireRequest();
    fire.params().setCount(3);
    EXPECT_EQ(fire.call().results().getLast(), 21);
  }
  EXPECT_GT(sink.use_count(), 1) << "the export was released while the server keeps it";
  hub.dropRequest().call();
  EXPECT_TRUE(waitFor([&] { return sink.use_count() == 1; }, [&] { channel.poll(); }))
      << "the server dropped the sink, the export is still held (" << sink.use_count() << ")";
}

TEST_P(ZcrpcClient, LoginObjectOfACapnpServerIsCalledPassedBackAndReleased) {
  CapnpServer server(unix(), kj::heap<CapnpHub>());
  const int before = capnpAccounts.load();
  {
    Channel channel(connectTo(server.endpoint()));
    caps_test::HubClient hub(channel);
    {
      auto login = hub.loginRequest();
      login.params().setName("alice");
      Capability account = login.call().results().getAccount();
      ASSERT_TRUE(account.isImport());
      caps_test::AccountClient alice(account);
      EXPECT_EQ(std::string(alice.whoamiRequest().call().results().getName().cStr()), "alice");
      auto mine = hub.isMineRequest();
      mine.params().setAccount(account);
      EXPECT_TRUE(mine.call().results().getMine()) << "the server's own object, passed back, is not its own";
      EXPECT_EQ(capnpAccounts.load(), before + 1);
    }
    EXPECT_TRUE(waitFor([&] { return capnpAccounts.load() == before; }, [&] { channel.poll(); }))
        << "the channel dropped the account; the server still has it";
    {
      // The server's objects handed back in a struct: the same objects there.
      auto sink = std::make_shared<caps_test::SinkImpl>();
      auto echo = hub.echoRequest();
      auto holder = echo.params().initHolder();
      holder.setLabel("x");
      holder.setSink(Capability::local(sink));
      auto back = echo.call();
      Capability returned = back.results().getHolder().getSink();
      EXPECT_EQ(returned.localObject(), sink) << "our own object came back as a proxy";
    }
    // Kept across the channel's end: released on disconnect.
    auto login = hub.loginRequest();
    login.params().setName("bob");
    Capability kept = login.call().results().getAccount();
    EXPECT_EQ(capnpAccounts.load(), before + 1);
  }
  EXPECT_TRUE(waitFor([&] { return capnpAccounts.load() == before; }, [] {}))
      << "an account held by a channel that closed was not released";
}

TEST_P(ZcrpcClient, StreamsBothWaysWithACapnpServer) {
  CapnpServer server(unix(), kj::heap<CapnpHub>());
  Channel channel(connectTo(server.endpoint()));
  caps_test::HubClient hub(channel);
  auto chunk = pattern(1000, 4);
  {
    auto up = hub.uploadRequest();
    up.params().setFailAt(0);
    caps_test::UploadClient upload(up.call().results().getUpload());
    for (uint32_t i = 0; i < 500; ++i) {
      auto w = upload.writeRequest();
      w.params().setSeq(i);
      w.params().setChunk(chunk);
      w.send();
    }
    auto done = upload.doneRequest().call();
    EXPECT_EQ(done.results().getCount(), 500u);
    EXPECT_EQ(done.results().getBytes(), 500'000u);
    EXPECT_TRUE(done.results().getInOrder());
  }
  {
    auto up = hub.uploadRequest();
    up.params().setFailAt(7);
    caps_test::UploadClient upload(up.call().results().getUpload());
    try {
      for (uint32_t i = 0; i < 100; ++i) {
        auto w = upload.writeRequest();
        w.params().setSeq(i);
        w.send();
      }
      upload.doneRequest().call();
      ADD_FAILURE() << "a stream whose chunk 7 failed went on";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("chunk refused"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(channel.connected());
  }
  {
    // The failed chunk is the stream's last: the ordinary call after it reports it.
    auto up = hub.uploadRequest();
    up.params().setFailAt(3);
    caps_test::UploadClient upload(up.call().results().getUpload());
    for (uint32_t i = 0; i <= 3; ++i) {
      auto w = upload.writeRequest();
      w.params().setSeq(i);
      w.send();
    }
    try {
      upload.doneRequest().call();
      ADD_FAILURE() << "done() after a failed chunk succeeded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("chunk refused"), std::string::npos) << e.what();
    }
    // The hub is another object: unaffected.
    auto login = hub.loginRequest();
    login.params().setName("z");
    EXPECT_TRUE(login.call().results().getAccount().isImport());
  }
  {
    auto ticker = std::make_shared<caps_test::TickerImpl>();
    auto feed = hub.feedRequest();
    feed.params().setTicker(Capability::local(ticker));
    feed.params().setCount(300);
    EXPECT_EQ(feed.call().results().getSent(), 300u);
    EXPECT_EQ(ticker->ticks, 300u);
    EXPECT_TRUE(ticker->inOrder);
    EXPECT_TRUE(ticker->ended);
  }
}


TEST_P(ZcrpcClient, StreamsIntoAZcrpcServerThroughItsCapnpListener) {
  // Both halves of the translation: the Channel's chunks and marks become Cap'n Proto calls,
  // which the listener's LocalClient runs one at a time into the server's session.
  ZcrpcHubServer server(unix());
  Channel channel(connectTo(server.endpoint()));
  caps_test::HubClient hub(channel);
  auto chunk = pattern(100, 5);
  {
    auto up = hub.uploadRequest();
    up.params().setFailAt(0);
    caps_test::UploadClient upload(up.call().results().getUpload());
    for (uint32_t i = 0; i < 2000; ++i) {  // several windows: marks and waits for room
      auto w = upload.writeRequest();
      w.params().setSeq(i);
      w.params().setChunk(chunk);
      w.send();
    }
    auto done = upload.doneRequest().call();
    EXPECT_EQ(done.results().getCount(), 2000u);
    EXPECT_EQ(done.results().getBytes(), 200'000u);
    EXPECT_TRUE(done.results().getInOrder());
  }
  {
    auto up = hub.uploadRequest();
    up.params().setFailAt(700);
    caps_test::UploadClient upload(up.call().results().getUpload());
    uint32_t sent = 0;
    try {
      for (; sent < 1000; ++sent) {
        auto w = upload.writeRequest();
        w.params().setSeq(sent);
        w.send();
      }
      upload.doneRequest().call();
      ADD_FAILURE() << "a stream whose chunk 700 failed went on";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("chunk 700 is refused"), std::string::npos) << e.what();
      EXPECT_GT(sent, 700u) << "a send failed before chunk 700 was sent";
    }
    EXPECT_TRUE(channel.connected());
  }
  auto login = hub.loginRequest();
  login.params().setName("after");
  caps_test::AccountClient account(login.call().results().getAccount());
  EXPECT_EQ(std::string(account.whoamiRequest().call().results().getName().cStr()), "after");
}

TEST_P(StandardClient, ManyCapabilitiesMadeAndDroppedLeaveNothingBehind) {
  // Bounded churn both ways on one connection: objects the server makes (logins) and
  // objects the client passes (sinks), each called and dropped; nothing stays alive.
  ZcrpcHubServer server(unix());
  const int before = caps_test::liveAccounts.load();
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  std::atomic<int> sinks{0};
  constexpr int kRounds = 2000;
  for (int i = 0; i < kRounds; ++i) {
    auto login = hub.loginRequest();
    login.setName("u");
    caps_test::Account::Client account = login.send().wait(ws).getAccount();
    EXPECT_EQ(account.whoamiRequest().send().wait(ws).getName().size(), 1u);
    auto sub = hub.subscribeRequest();
    sub.setSink(kj::heap<CapnpSink>(sinks));
    sub.setCount(1);
    EXPECT_EQ(sub.send().wait(ws).getLast(), 1);
  }
  EXPECT_TRUE(waitFor([&] { return caps_test::liveAccounts.load() == before && sinks.load() == 0; },
                      [&] { ws.poll(); }))
      << caps_test::liveAccounts.load() - before << " accounts and " << sinks.load() << " sinks of " << kRounds
      << " still alive";
}

TEST_P(ZcrpcClient, ManyCapabilitiesMadeAndDroppedLeaveNothingBehind) {
  CapnpServer server(unix(), kj::heap<CapnpHub>());
  const int before = capnpAccounts.load();
  Channel channel(connectTo(server.endpoint()));
  caps_test::HubClient hub(channel);
  std::vector<std::weak_ptr<caps_test::SinkImpl>> passed;
  constexpr int kRounds = 2000;
  for (int i = 0; i < kRounds; ++i) {
    auto login = hub.loginRequest();
    login.params().setName("u");
    caps_test::AccountClient account(login.call().results().getAccount());
    EXPECT_EQ(account.whoamiRequest().call().results().getName().size(), 1u);
    auto sink = std::make_shared<caps_test::SinkImpl>();
    passed.push_back(sink);
    auto sub = hub.subscribeRequest();
    sub.params().setSink(Capability::local(sink));
    sub.params().setCount(1);
    EXPECT_EQ(sub.call().results().getLast(), 1);
  }
  auto held = [&] {
    return static_cast<int>(std::count_if(passed.begin(), passed.end(), [](auto& w) { return !w.expired(); }));
  };
  EXPECT_TRUE(waitFor([&] { return capnpAccounts.load() == before && held() == 0; }, [&] { channel.poll(); }))
      << capnpAccounts.load() - before << " accounts and " << held() << " sinks of " << kRounds << " still alive";
}


TEST_P(BadInput, MoreCapabilitiesThanTheServerImportsAreRefusedAndGivenBack) {
  ServerOptions o;
  o.maxImportsPerConnection = 8;
  ZcrpcHubServer server(unix(), o);
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto hub = client.getMain<caps_test::Hub>();
  std::atomic<int> sinks{0};
  {
    auto fan = hub.fanOutRequest();
    auto list = fan.initSinks(12);
    for (uint32_t i = 0; i < 12; ++i) list.set(i, kj::heap<CapnpSink>(sinks));
    fan.setValue(1);
    const kj::Exception e = failureOf(fan.send(), ws, "a call with more capabilities than max_imports");
    EXPECT_NE(describe(e).find("max_imports"), std::string::npos) << describe(e);
  }
  EXPECT_TRUE(waitFor([&] { return sinks.load() == 0; }, [&] { ws.poll(); }))
      << sinks.load() << " sinks of a refused call still held";
  {
    // More than one zcrpc frame can name (its extension area is 16 KiB): refused before
    // the session sees it.
    auto fan = hub.fanOutRequest();
    auto list = fan.initSinks(2100);
    for (uint32_t i = 0; i < 2100; ++i) list.set(i, kj::heap<CapnpSink>(sinks));
    const kj::Exception e = failureOf(fan.send(), ws, "a call with 2100 capabilities");
    EXPECT_NE(describe(e).find("zcrpc frames carry at most 2044"), std::string::npos) << describe(e);
  }
  EXPECT_TRUE(waitFor([&] { return sinks.load() == 0; }, [&] { ws.poll(); }))
      << sinks.load() << " sinks of a refused call still held";
  // Within the limit the same call works.
  auto fan = hub.fanOutRequest();
  auto list = fan.initSinks(4);
  for (uint32_t i = 0; i < 4; ++i) list.set(i, kj::heap<CapnpSink>(sinks));
  fan.setValue(5);
  auto response = fan.send().wait(ws);
  ASSERT_EQ(response.getTotals().size(), 4u);
  EXPECT_EQ(response.getTotals()[3], 5);
}

/// A raw client's first steps: its Bootstrap, then Hub.login("raw"); the id of the
/// account the server exported to it.
uint32_t rawLogin(RawPeer& raw) {
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<capnp::rpc::Message>().initBootstrap().setQuestionId(0);
    raw.send(m);
  }
  uint32_t hub = UINT32_MAX;
  kj::Array<capnp::word> in;
  if (!raw.readMessage(in, 5s)) return UINT32_MAX;
  capnp::FlatArrayMessageReader inReader(in);
  auto ret = inReader.getRoot<capnp::rpc::Message>();
  if (!ret.isReturn() || !ret.getReturn().isResults() || ret.getReturn().getResults().getCapTable().size() != 1)
    return UINT32_MAX;
  hub = ret.getReturn().getResults().getCapTable()[0].getSenderHosted();
  {
    capnp::MallocMessageBuilder m;
    auto call = m.initRoot<capnp::rpc::Message>().initCall();
    call.setQuestionId(1);
    call.initTarget().setImportedCap(hub);
    call.setInterfaceId(capnp::typeId<caps_test::Hub>());
    call.setMethodId(0);  // login
    call.initParams().getContent().initAs<caps_test::Hub::LoginParams>().setName("raw");
    raw.send(m);
  }
  for (int i = 0; i < 4; ++i) {
    kj::Array<capnp::word> answer;
    if (!raw.readMessage(answer, 5s)) return UINT32_MAX;
    capnp::FlatArrayMessageReader reader(answer);
    auto r = reader.getRoot<capnp::rpc::Message>();
    if (!r.isReturn() || r.getReturn().getAnswerId() != 1) continue;
    if (!r.getReturn().isResults() || r.getReturn().getResults().getCapTable().size() != 1) return UINT32_MAX;
    for (uint32_t question : {0u, 1u}) {  // done with both answers: only the imports remain
      capnp::MallocMessageBuilder m;
      m.initRoot<capnp::rpc::Message>().initFinish().setQuestionId(question);
      raw.send(m);
    }
    return r.getReturn().getResults().getCapTable()[0].getSenderHosted();
  }
  return UINT32_MAX;
}

TEST_P(BadInput, CapabilitiesNeverGivenReleasedTwiceOrCalledAfterRelease) {
  ZcrpcHubServer server(unix());
  const int before = caps_test::liveAccounts.load();
  auto release = [](RawPeer& raw, uint32_t id) {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<capnp::rpc::Message>().initRelease();
    r.setId(id);
    r.setReferenceCount(1);
    raw.send(m);
  };
  auto whoami = [](RawPeer& raw, uint32_t id) {
    capnp::MallocMessageBuilder m;
    auto call = m.initRoot<capnp::rpc::Message>().initCall();
    call.setQuestionId(2);
    call.initTarget().setImportedCap(id);
    call.setInterfaceId(capnp::typeId<caps_test::Account>());
    call.initParams();
    raw.send(m);
  };
  {
    SCOPED_TRACE("released twice");
    RawPeer raw(server.endpoint());
    const uint32_t account = rawLogin(raw);
    ASSERT_NE(account, UINT32_MAX);
    EXPECT_EQ(caps_test::liveAccounts.load(), before + 1);
    release(raw, account);
    EXPECT_TRUE(waitFor([&] { return caps_test::liveAccounts.load() == before; }, [] {}))
        << "a released account is still alive";
    release(raw, account);
    auto seen = raw.readUntilClosed(5s);
    EXPECT_TRUE(seen.closed && !seen.abort.empty()) << "a second release was taken";
  }
  {
    SCOPED_TRACE("called after release");
    RawPeer raw(server.endpoint());
    const uint32_t account = rawLogin(raw);
    ASSERT_NE(account, UINT32_MAX);
    release(raw, account);
    whoami(raw, account);
    auto seen = raw.readUntilClosed(5s);
    EXPECT_TRUE((seen.closed && !seen.abort.empty()) || !seen.exceptions.empty()) << "a call after release was taken";
  }
  {
    SCOPED_TRACE("never given, with one held");
    RawPeer raw(server.endpoint());
    const uint32_t account = rawLogin(raw);
    ASSERT_NE(account, UINT32_MAX);
    whoami(raw, account + 100);
    auto seen = raw.readUntilClosed(5s);
    EXPECT_TRUE(seen.closed && !seen.abort.empty()) << "a call on an id never given was taken";
  }
  EXPECT_TRUE(waitFor([&] { return caps_test::liveAccounts.load() == before; }, [] {}))
      << "accounts of refused clients were not released";
  EXPECT_TRUE(refused(server, "Tried to release invalid export ID"));
  EXPECT_TRUE(refused(server, "Message target is not a current export ID"));
  capnp::EzRpcClient client(server.kj());
  auto login = client.getMain<caps_test::Hub>().loginRequest();
  login.setName("honest");
  auto account = login.send().wait(client.getWaitScope()).getAccount();
  EXPECT_EQ(std::string(account.whoamiRequest().send().wait(client.getWaitScope()).getName().cStr()), "honest");
}


/// Says who called it, as its call context tells (CallContext::peer()).
class WhoCalls final : public caps_test::AccountService {
 public:
  void whoami(WhoamiCall& call) override {
    const PeerIdentity& p = call.peer();
    call.results().setName(p.transport + " " + (p.hasCredentials ? "credentials" : "none") + " pid " +
                           std::to_string(p.pid) + " uid " + std::to_string(p.uid) + " gid " +
                           std::to_string(p.gid));
  }
};

TEST(CapnpUnix, BothEndsKnowThePeersCredentials) {
  WhoCalls who;
  Server server;
  server.addService(who);
  auto listener = listenCapnpUnix(freshAddress(true), {});
  const std::string endpoint = listener->endpoint();
  server.addListener(std::move(listener));
  server.start();
  const std::string me = "credentials pid " + std::to_string(::getpid()) + " uid " + std::to_string(::getuid()) +
                         " gid " + std::to_string(::getgid());
  {
    capnp::EzRpcClient client(kjAddress(endpoint));
    auto response = client.getMain<caps_test::Account>().whoamiRequest().send().wait(client.getWaitScope());
    EXPECT_EQ(std::string(response.getName().cStr()), "capnp+unix " + me);
  }
  {
    Channel channel(connectTo(endpoint));
    const PeerIdentity& p = channel.connection().peer();
    EXPECT_EQ(p.transport, "capnp+unix");
    EXPECT_TRUE(p.hasCredentials);
    EXPECT_EQ(p.pid, ::getpid());
    EXPECT_EQ(p.uid, ::getuid());
    caps_test::AccountClient account(channel);
    EXPECT_EQ(std::string(account.whoamiRequest().call().results().getName().cStr()), "capnp+unix " + me);
  }
  server.shutdown(deadlineAfter(2s));
}


/// A standard client over TLS: kj's TlsContext (libkj-tls) trusting the test CA, under
/// Cap'n Proto's TwoPartyClient, on its own event loop.
class CapnpTlsClient final {
 public:
  CapnpTlsClient(const std::string& caFile, uint16_t port) : io_(kj::setupAsyncIo()) {
    std::string pem;
    {
      FILE* f = std::fopen(caFile.c_str(), "r");
      char buf[4096];
      size_t n;
      while (f && (n = std::fread(buf, 1, sizeof buf, f)) > 0) pem.append(buf, n);
      if (f) std::fclose(f);
    }
    ca_ = kj::heap<kj::TlsCertificate>(kj::StringPtr(pem.c_str()));
    kj::TlsContext::Options o;
    o.useSystemTrustStore = false;
    o.trustedCertificates = kj::arrayPtr(ca_.get(), 1);
    tls_ = kj::heap<kj::TlsContext>(kj::mv(o));
    auto address = io_.provider->getNetwork().parseAddress("127.0.0.1", port).wait(io_.waitScope);
    auto plain = address->connect().wait(io_.waitScope);
    stream_ = tls_->wrapClient(kj::mv(plain), "localhost").wait(io_.waitScope);
    client_ = kj::heap<capnp::TwoPartyClient>(*stream_);
  }
  template <typename T>
  typename T::Client main() { return client_->bootstrap().castAs<T>(); }
  kj::WaitScope& ws() { return io_.waitScope; }

 private:
  kj::AsyncIoContext io_;
  kj::Own<kj::TlsCertificate> ca_;
  kj::Own<kj::TlsContext> tls_;
  kj::Own<kj::AsyncIoStream> stream_;
  kj::Own<capnp::TwoPartyClient> client_;
};

TEST(CapnpTls, StandardAndZcrpcClientsOverTlsAndAPlainOneRefused) {
  test::TestPki pki;
  CapnpOptions o;
  o.tls.enabled = true;
  o.tls.certFile = pki.server().cert;
  o.tls.keyFile = pki.server().key;
  caps_test::HubImpl hub;
  EchoImpl echo;
  Server server;
  server.addService(hub);
  server.addService(echo);
  auto listener = listenCapnp("127.0.0.1:0", o);
  Listener* l = listener.get();
  const std::string endpoint = listener->endpoint();
  const auto port = static_cast<uint16_t>(std::stoi(endpoint.substr(endpoint.rfind(':') + 1)));
  server.addListener(std::move(listener));
  server.start();
  {
    // Cap'n Proto's own client over kj's TLS, with a callback: capabilities go through too.
    CapnpTlsClient client(pki.caFile(), port);
    auto req = client.main<echo::Echo>().echoRequest();
    req.setData(pattern(100'000, 6));
    EXPECT_EQ(req.send().wait(client.ws()).getData().size(), 100'000u);
    std::atomic<int> sinks{0};
    auto sub = client.main<caps_test::Hub>().subscribeRequest();
    sub.setSink(kj::heap<CapnpSink>(sinks));
    sub.setCount(4);
    EXPECT_EQ(sub.send().wait(client.ws()).getLast(), 10);
  }
  {
    // A zcrpc Channel with TLS: it checks the server's certificate against the CA.
    CapnpOptions co;
    co.tls.enabled = true;
    co.tls.caFile = pki.caFile();
    co.tls.serverName = "localhost";
    Channel channel(connectCapnp("127.0.0.1:" + std::to_string(port), co));
    EXPECT_EQ(channel.connection().peer().tlsProtocol, "TLSv1.3");
    EXPECT_NE(channel.connection().peer().certificateSubject.find("zcrpc-test-server"), std::string::npos);
    echo::EchoClient e(channel);
    for (size_t size : {size_t{5000}, size_t{16} << 20}) {  // records the TLS layer buffers
      auto bytes = pattern(size, 2);
      auto req = e.echoRequest();
      req.params().setData(bytes);
      auto resp = req.call();
      ASSERT_EQ(resp.results().getData().size(), size);
      EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), resp.results().getData().begin())) << size;
    }
    std::vector<PendingCall> calls;  // many small ones at once
    for (int i = 0; i < 64; ++i) {
      auto req = e.echoRequest();
      req.params().setData(pattern(64, static_cast<uint8_t>(i)));
      calls.push_back(req.callAsync());
    }
    for (auto& c : calls) EXPECT_TRUE(c.wait().ok());
  }
  {
    // A client without TLS: refused, and the listener says why; the server goes on.
    capnp::EzRpcClient plain("127.0.0.1:" + std::to_string(port));
    auto req = plain.getMain<echo::Echo>().echoRequest();
    req.setData(pattern(8, 1));
    const kj::Exception e = failureOf(req.send(), plain.getWaitScope(), "a plain client's call on a TLS listener");
    EXPECT_EQ(e.getType(), kj::Exception::Type::DISCONNECTED) << describe(e);
    bool listed = false;
    for (Bound b(5000, 5s); b.next() && !listed;) {
      listed = anyContains(l->refusals(), "refused 127.0.0.1");
      if (!listed) std::this_thread::sleep_for(1ms);
    }
    EXPECT_TRUE(listed) << ::testing::PrintToString(l->refusals());
  }
  {
    // A zcrpc client that trusts another CA refuses the server.
    CapnpOptions co;
    co.tls.enabled = true;
    co.tls.caFile = pki.otherCaFile();
    EXPECT_THROW(connectCapnp("127.0.0.1:" + std::to_string(port), co), Error);
  }
  server.shutdown(deadlineAfter(2s));
}

}  // namespace
}  // namespace zcrpc::compat_test
