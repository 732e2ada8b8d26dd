// BalancedChannel: round-robin spreads calls evenly, least-outstanding prefers the idle
// server, and when a server process is SIGKILLed calls continue on the others while the
// dead one is retried with bounded back-off and used again once it is restarted.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "metrics/echo_impl.h"
#include "zcrpc/balancer.h"
#include "zcrpc/context.h"

extern char** environ;

namespace zcrpc {
namespace {

using namespace std::chrono_literals;
using testing::EchoImpl;

constexpr uint64_t kEchoIface = echo::EchoClient::kInterfaceId;

std::string uniqueName(const std::string& what) {
  static int n = 0;
  return "baltest-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

uint64_t echoCallsOf(const ServerStats& s, uint16_t method = 0) {
  for (const auto& m : s.methods)
    if (m.interfaceId == kEchoIface && m.methodId == method) return m.calls;
  return 0;
}

void echoOnce(Channel& ch) {
  echo::EchoClient client(ch);
  auto req = client.echoRequest();
  req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("12345678"), 8));
  if (req.call().results().getData().size() != 8) throw Failed("echo came back wrong");
}

/// An in-process Echo server on its own shm endpoint.
class LocalServer final {
 public:
  explicit LocalServer(const Context& context) : endpoint_("shm://" + uniqueName("local")) {
    server_.addService(impl_);
    server_.addListener(context.listen(endpoint_));
    server_.start();
  }
  const std::string& endpoint() const { return endpoint_; }
  Server& server() { return server_; }

 private:
  std::string endpoint_;
  EchoImpl impl_;
  Server server_;
};

Config testConfig() {
  Config c;
  c.set("transports", "shm,tcp", SettingSource::kCode, "test");
  c.set("connect_timeout", "1s", SettingSource::kCode, "test");
  return c;
}

TEST(BalancedChannel, RoundRobinSpreadsCallsEvenly) {
  Context context(testConfig());
  std::vector<std::unique_ptr<LocalServer>> servers;
  std::vector<std::string> endpoints;
  for (int i = 0; i < 3; ++i) {
    servers.push_back(std::make_unique<LocalServer>(context));
    endpoints.push_back(servers.back()->endpoint());
  }
  BalancedChannel balanced(context, endpoints);
  ASSERT_EQ(balanced.connectedCount(), 3u);
  for (int i = 0; i < 300; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });
  for (size_t i = 0; i < servers.size(); ++i) {
    EXPECT_EQ(echoCallsOf(servers[i]->server().stats()), 100u) << "server " << i;
    EXPECT_EQ(balanced.servers()[i].picks, 100u);
    EXPECT_EQ(balanced.servers()[i].endpoint, endpoints[i]);
  }
}

TEST(BalancedChannel, LeastOutstandingPrefersTheIdleServer) {
  Context context(testConfig());
  LocalServer a(context), b(context);
  BalancerOptions options;
  options.policy = BalancePolicy::kLeastOutstanding;
  options.seed = 42;
  std::vector<std::string> endpoints{a.endpoint(), b.endpoint()};
  BalancedChannel balanced(context, endpoints, options);

  // Occupy whichever server comes first with a slow call...
  Channel& busy = balanced.pick();
  echo::EchoClient slowClient(busy);
  auto slow = slowClient.delayRequest();
  slow.params().setMicros(300'000);
  PendingCall pending = slow.callAsync();
  // ...then every quick call goes to the other, idle one.
  for (int i = 0; i < 40; ++i) {
    Channel& ch = balanced.pick();
    EXPECT_NE(&ch, &busy) << "pick " << i << " chose the server with a call outstanding";
    echoOnce(ch);
  }
  EXPECT_TRUE(pending.wait().ok());
  const bool aBusy = balanced.channel(0) == &busy;
  EXPECT_EQ(echoCallsOf((aBusy ? a : b).server().stats()), 0u);
  EXPECT_EQ(echoCallsOf((aBusy ? b : a).server().stats()), 40u);

  // With nothing outstanding anywhere, ties are broken at random: both get work.
  for (int i = 0; i < 200; ++i) echoOnce(balanced.pick());
  uint64_t ea = echoCallsOf(a.server().stats()), eb = echoCallsOf(b.server().stats());
  EXPECT_EQ(ea + eb, 240u);
  EXPECT_GT(aBusy ? ea : eb, 50u) << "ties always went the same way";
}

TEST(BalancedChannel, NoServerReachableNamesEach) {
  Context context(testConfig());
  std::vector<std::string> endpoints{"shm://" + uniqueName("none-a"), "shm://" + uniqueName("none-b")};
  BalancedChannel balanced(context, endpoints);
  EXPECT_EQ(balanced.connectedCount(), 0u);
  try {
    balanced.pick();
    ADD_FAILURE() << "pick() with every server down returned";
  } catch (const Disconnected& e) {
    EXPECT_NE(std::string(e.what()).find(endpoints[0]), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(endpoints[1]), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no shm listener"), std::string::npos) << e.what();
  }
  EXPECT_EQ(balanced.servers()[0].failedAttempts, 1u);
}

TEST(BalancedChannel, RefusesBadArguments) {
  Context context(testConfig());
  EXPECT_THROW(BalancedChannel(context, std::vector<std::string>{}), InvalidArgument);
  EXPECT_THROW(BalancedChannel(context, std::vector<std::string>{"nonsense"}), InvalidArgument);
  BalancerOptions bad;
  bad.maxBackoff = 1ms;
  bad.initialBackoff = 10ms;
  EXPECT_THROW(BalancedChannel(context, std::vector<std::string>{"shm://x"}, bad), InvalidArgument);
  EXPECT_EQ(parseBalancePolicy("least-outstanding"), BalancePolicy::kLeastOutstanding);
  EXPECT_EQ(balancePolicyName(BalancePolicy::kRoundRobin), "round-robin");
  EXPECT_THROW(parseBalancePolicy("random"), InvalidArgument);
}

// ---------------------------------------------------------------------------------------
// Failover across processes

/// zcrpc-test-server in a child process on one shm endpoint; SIGKILLed on destruction.
class ServerProcess final {
 public:
  explicit ServerProcess(const std::string& endpoint) { start(endpoint); }
  ~ServerProcess() { kill(); }

  void start(const std::string& endpoint) {
    const char* path = std::getenv("ZCRPC_TEST_SERVER");
    if (!path) throw std::runtime_error("ZCRPC_TEST_SERVER is not set (run through meson test)");
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    std::vector<char*> argv{const_cast<char*>(path), const_cast<char*>(endpoint.c_str()), nullptr};
    int r = ::posix_spawn(&pid_, path, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    if (r != 0) {
      ::close(fds[0]);
      throw std::runtime_error("posix_spawn failed");
    }
    std::string line;
    char c;
    while (::read(fds[0], &c, 1) == 1 && c != '\n') line += c;
    ::close(fds[0]);
    if (line.rfind("ready", 0) != 0) throw std::runtime_error("server did not start: " + line);
  }

  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

TEST(BalancedChannel, FailsOverWhenAServerDiesAndUsesItAgainAfterRestart) {
  Context context(testConfig());
  std::vector<std::string> endpoints;
  std::vector<std::unique_ptr<ServerProcess>> procs;
  for (int i = 0; i < 3; ++i) {
    endpoints.push_back("shm://" + uniqueName("proc"));
    procs.push_back(std::make_unique<ServerProcess>(endpoints.back()));
  }
  BalancerOptions options;
  options.initialBackoff = 50ms;
  options.maxBackoff = 400ms;
  BalancedChannel balanced(context, endpoints, options);
  ASSERT_EQ(balanced.connectedCount(), 3u);
  for (int i = 0; i < 60; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });

  procs[1]->kill();
  // Every call still succeeds: one that meets the dead server fails over to another.
  for (int i = 0; i < 90; ++i) {
    ASSERT_NO_THROW(balanced.call([](Channel& ch) { echoOnce(ch); })) << "call " << i;
    balanced.poll();
  }
  auto state = balanced.servers();
  EXPECT_FALSE(state[1].connected);
  EXPECT_TRUE(state[0].connected && state[2].connected);
  EXPECT_FALSE(state[1].lastError.empty());

  // Retried with back-off: 50, 100, 200, 400, 400 ms ... not on every poll.
  auto until = Clock::now() + 1200ms;
  while (Clock::now() < until) {
    balanced.poll();
    std::this_thread::sleep_for(5ms);
  }
  state = balanced.servers();
  EXPECT_FALSE(state[1].connected);
  EXPECT_GE(state[1].failedAttempts, 3u);
  EXPECT_LE(state[1].failedAttempts, 8u) << "retried faster than the back-off allows";
  EXPECT_LE(state[1].retryIn, 400ms) << "back-off beyond its bound";
  EXPECT_NE(state[1].lastError.find("no shm listener"), std::string::npos) << state[1].lastError;

  procs[1]->start(endpoints[1]);
  auto deadline = Clock::now() + 3s;
  while (!balanced.servers()[1].connected && Clock::now() < deadline) {
    balanced.poll();
    std::this_thread::sleep_for(5ms);
  }
  state = balanced.servers();
  ASSERT_TRUE(state[1].connected) << state[1].lastError;
  EXPECT_EQ(state[1].connects, 2u);
  EXPECT_EQ(state[1].failedAttempts, 0u);
  for (int i = 0; i < 90; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });
  const ConnectionMetrics* restarted = balanced.channel(1)->metrics();
  ASSERT_NE(restarted, nullptr);
  uint64_t calls = 0;
  for (const auto& m : restarted->snapshot().methods) calls += m.calls;
  EXPECT_EQ(calls, 30u) << "the restarted server takes its turn again";
}

}  // namespace
}  // namespace zcrpc
