// Standard Cap'n Proto peers (zcrpc/capnp.h), both directions, over TCP and unix sockets:
// Cap'n Proto's own C++ client (capnp::EzRpcClient) calling every method of the test schemas
// on a zcrpc::Server through its capnp listener, and zcrpc Channels over capnp:// calling
// Cap'n Proto's own server (capnp::EzRpcServer) and zcrpc's.
#include <capnp/ez-rpc.h>
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

#include "echo.capnp.h"
#include "echo.capnp.zcrpc.h"
#include "zcrpc/capnp.h"
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

kj::Array<kj::byte> pattern(size_t n, uint8_t seed) {
  auto out = kj::heapArray<kj::byte>(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<kj::byte>(i * 131 + seed);
  return out;
}

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

}  // namespace
}  // namespace zcrpc::compat_test
