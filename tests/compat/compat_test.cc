// Standard Cap'n Proto peers (zcrpc/capnp.h), both directions, over TCP and unix sockets:
// Cap'n Proto's own C++ client (capnp::EzRpcClient) calling every method of the test schemas
// on a zcrpc::Server through its capnp listener, and zcrpc Channels over capnp:// calling
// Cap'n Proto's own server (capnp::EzRpcServer) and zcrpc's.
#include <capnp/ez-rpc.h>
#include <kj/async-io.h>
#include <kj/timer.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <capnp/rpc.capnp.h>
#include <capnp/serialize.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.capnp.zcrpc.h"
#include "echo.capnp.h"
#include "echo.capnp.zcrpc.h"
#include "services.capnp.zcrpc.h"
#include "zcrpc/capnp.h"
#include "zcrpc/context.h"
#include "zcrpc/rpc.h"

namespace zcrpc::compat_test {
namespace {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------
// The zcrpc side: Echo served by generated zcrpc stubs.

/// Answers deferred calls from a thread of its own (DeferredReply::complete from another
/// thread), noticing cancellation. Threads: add() from handlers.
class Delayer final {
 public:
  Delayer() : thread_([this] { run(); }) {}
  ~Delayer() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  void add(DeferredReply reply, Clock::time_point due) {
    {
      std::lock_guard lock(mutex_);
      pending_.push_back({std::move(reply), due});
    }
    wake_.notify_one();
  }
  /// Calls answered as cancelled so far.
  int cancelled() const { return cancelled_.load(); }

 private:
  struct Pending {
    DeferredReply reply;
    Clock::time_point due;
  };
  void run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      const auto now = Clock::now();
      for (auto it = pending_.begin(); it != pending_.end();) {
        const bool cancelled = it->reply.isCancelled();
        if (cancelled || now >= it->due) {
          if (cancelled) ++cancelled_;
          it->reply.complete([cancelled](OutgoingMessage& out) {
            out.initRoot<echo::Echo::DelayResults>().setCancelled(cancelled);
          });
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      if (pending_.empty())
        wake_.wait(lock);
      else
        wake_.wait_for(lock, 1ms);
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending> pending_;
  bool stopping_ = false;
  std::atomic<int> cancelled_{0};
  std::thread thread_;
};

class EchoImpl final : public echo::EchoService {
 public:
  void echo(EchoCall& call) override {
    capnp::Data::Reader data = call.params().getData();
    call.results(static_cast<uint32_t>(data.size() / 8 + 4)).setData(data);
  }
  void ping(PingCall&) override { ++pings_; }
  void sink(SinkCall& call) override { sunk_ += call.params().getData().size(); }
  void delay(DelayCall& call) override {
    delayer_.add(call.defer(), Clock::now() + std::chrono::microseconds(call.params().getMicros()));
  }
  void fail(FailCall& call) override {
    auto params = call.params();
    throw ApplicationError(params.getCode(), params.getMessage().cStr());
  }
  int pings() const { return pings_.load(); }
  size_t sunk() const { return sunk_.load(); }
  int cancelled() const { return delayer_.cancelled(); }

 private:
  std::atomic<int> pings_{0};
  std::atomic<size_t> sunk_{0};
  Delayer delayer_;
};

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
  explicit ZcrpcEchoServer(bool unix, CapnpOptions options = {}, ServerOptions serverOptions = {})
      : server_(serverOptions) {
    server_.addService(echo_);
    auto listener = unix ? listenCapnpUnix(freshAddress(true), options)
                         : listenCapnp(freshAddress(false), options);
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
  CapnpEcho(kj::Timer*& timer, std::atomic<int>& cancelled) : timer_(timer), cancelled_(cancelled) {}

 protected:
  kj::Promise<void> echo(EchoContext context) override {
    capnp::Data::Reader data = context.getParams().getData();
    context.initResults(capnp::MessageSize{data.size() / 8 + 4, 0}).setData(data);
    return kj::READY_NOW;
  }
  kj::Promise<void> ping(PingContext) override { return kj::READY_NOW; }
  kj::Promise<void> sink(SinkContext) override { return kj::READY_NOW; }
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
};

/// capnp::EzRpcServer serving CapnpEcho on a thread of its own (its own KJ event loop).
class CapnpEchoServer final {
 public:
  explicit CapnpEchoServer(bool unix) {
    std::string bind = unix ? "unix-abstract:zcrpc-compat-ez-" + std::to_string(::getpid()) + "-" +
                                  std::to_string(next_++)
                            : "127.0.0.1:0";
    thread_ = std::thread([this, bind, unix] {
      kj::Timer* timer = nullptr;
      capnp::EzRpcServer server(kj::heap<CapnpEcho>(timer, cancelled_), bind);
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
  ~CapnpEchoServer() {
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

 private:
  static inline std::atomic<int> next_{0};
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::string endpoint_;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop_;
  std::atomic<int> cancelled_{0};
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

class StandardClient : public ::testing::TestWithParam<bool> {
 protected:
  bool unix() const { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Sockets, StandardClient, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "unix" : "tcp"; });

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
  try {
    req.send().wait(ws);
    FAIL() << "fail() returned";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::FAILED);
    EXPECT_EQ(std::string(e.getDescription().cStr()), "remote exception: no such key [code 42]");
  }
  // The connection goes on.
  echo.pingRequest().send().wait(ws);
}

TEST_P(StandardClient, UnknownInterfaceIsUnimplemented) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto cap = client.getMain();
  auto req = cap.typelessRequest(0x1234'5678'9abc'def0ull, 3, nullptr);
  try {
    req.send().wait(ws);
    FAIL() << "a call on an interface nobody serves returned";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::UNIMPLEMENTED);
    EXPECT_NE(std::string(e.getDescription().cStr()).find("interface 0x123456789abcdef0 is not served"),
              std::string::npos)
        << e.getDescription().cStr();
  }
}

TEST_P(StandardClient, ApplicationErrorWithoutCodeIsTheMessageAlone) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto req = client.getMain<echo::Echo>().failRequest();
  req.setMessage("plain");
  try {
    req.send().wait(ws);
    FAIL() << "fail() returned";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(std::string(e.getDescription().cStr()), "remote exception: plain");
  }
}

TEST_P(StandardClient, UnknownMethodIsUnimplemented) {
  ZcrpcEchoServer server(unix());
  capnp::EzRpcClient client(server.kj());
  auto& ws = client.getWaitScope();
  auto req = client.getMain().typelessRequest(capnp::typeId<echo::Echo>(), 77, nullptr);
  try {
    req.send().wait(ws);
    FAIL() << "method 77 returned";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::UNIMPLEMENTED);
    EXPECT_NE(std::string(e.getDescription().cStr()).find("method 77 of interface"), std::string::npos)
        << e.getDescription().cStr();
  }
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

class DerivedImpl final : public cg::DerivedService {
 public:
  void mirror(MirrorCall& call) override {
    call.results().setX(-call.params().getX());
    call.results().setY(-call.params().getY());
  }
  void scale(ScaleCall& call) override {
    auto out = call.results();
    out.setFactor(3);
    out.initPoint().setX(call.params().getX() * 3);
    out.getPoint().setY(call.params().getY() * 3);
  }
  void nothing(NothingCall&) override { ++nothings; }
  void delete_(DeleteCall& call) override { call.results().setDeleted(call.params().getKey() == "present"); }
  void dispatch_(DispatchCall& call) override { call.results().setN(call.params().getN() + 1); }
  void shout(ShoutCall& call) override {
    std::string text = call.params().getText().cStr();
    for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    call.results().setText(text);
  }
  void greet(GreetCall& call) override {
    call.results().setGreeting(std::string("hello ") + call.params().getName().cStr());
  }
  std::atomic<int> nothings{0};
};
class NestedImpl final : public cg::Holder_NestedService {
  void get(GetCall& call) override { call.results().setValue(42); }
};
class InnerImpl final : public cg::Outer_InnerService {
  void inner(InnerCall& call) override { call.results().setX(call.params().getX() * 2); }
};
class TaggedImpl final : public cg::TaggedService {
 public:
  void tag(TagCall&) override { ++tags; }
  std::atomic<int> tags{0};
};

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
  EXPECT_EQ(derived.nothings.load(), 1);
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
    EXPECT_EQ(std::string(req.send().wait(ws).getGreeting().cStr()), "hello capnp");
  }
  // Other interfaces of the same server, through the same bootstrap.
  EXPECT_EQ(client.getMain<cg::Holder::Nested>().getRequest().send().wait(ws).getValue(), 42);
  {
    auto req = client.getMain<cg::Outer::Inner>().innerRequest();
    req.setX(21);
    EXPECT_EQ(req.send().wait(ws).getX(), 42);
  }
  client.getMain<cg::Tagged>().tagRequest().send().wait(ws);
  EXPECT_EQ(tagged.tags.load(), 1);
  // Outer itself is not served here.
  try {
    client.getMain<cg::Outer>().outerRequest().send().wait(ws);
    ADD_FAILURE() << "Outer answered";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::UNIMPLEMENTED);
  }
  server.shutdown(deadlineAfter(2s));
}

TEST_P(StandardClient, CredentialPolicyRefusesUnixClients) {
  if (!unix()) GTEST_SKIP() << "credentials are a unix socket's (capnp:// has no such check)";
  CapnpOptions o;
  o.policy.sameUid = false;  // nobody
  ZcrpcEchoServer server(true, o);
  capnp::EzRpcClient client(server.kj());
  auto req = client.getMain<echo::Echo>().pingRequest();
  try {
    req.send().wait(client.getWaitScope());
    ADD_FAILURE() << "a refused client's call returned";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::DISCONNECTED) << e.getDescription().cStr();
  }
  auto refusals = server.refusals();
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_NE(refusals[0].find("not admitted by the credential policy"), std::string::npos) << refusals[0];
  EXPECT_EQ(server.echo().pings(), 0);
}

// ---------------------------------------------------------------------------------------
// zcrpc clients calling Cap'n Proto's own server.

class ZcrpcClient : public ::testing::TestWithParam<bool> {
 protected:
  bool unix() const { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Sockets, ZcrpcClient, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "unix" : "tcp"; });

TEST_P(ZcrpcClient, CallsEveryMethodOfACapnpServer) {
  CapnpEchoServer server(unix());
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
  CapnpEchoServer server(unix());
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
  CapnpEchoServer server(unix());
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
  CapnpEchoServer server(unix());
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
    CapnpEchoServer server(unix());
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

}  // namespace
}  // namespace zcrpc::compat_test
