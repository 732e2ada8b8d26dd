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
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "metrics/echo_impl.h"
#include "zcrpc/balancer.h"
#include "zcrpc/context.h"
#include "zcrpc/health.h"

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
// Health checks

/// An in-process Echo server with the health service, on a listener of its own.
class HealthyServer final {
 public:
  HealthyServer(const Context& context, const std::string& endpoint) {
    server_.addService(impl_);
    health_ = &server_.enableHealth();
    health_->set("Echo", ServingStatus::kServing);
    server_.addListener(context.listen(endpoint));
    server_.start();
    endpoint_ = server_.endpoints().at(0);
  }
  const std::string& endpoint() const { return endpoint_; }
  Server& server() { return server_; }
  HealthStatus& health() { return *health_; }

 private:
  std::string endpoint_;
  EchoImpl impl_;
  Server server_;
  HealthStatus* health_ = nullptr;
};

/// Polls `balanced` until `done()` holds (at most 5 s).
template <typename F>
bool pollUntil(BalancedChannel& balanced, F&& done) {
  for (int i = 0; i < 2500; ++i) {
    if (done()) return true;
    balanced.poll();
    std::this_thread::sleep_for(2ms);
  }
  return done();
}

TEST(BalancedChannel, SkipsAServerThatIsUpButNotServingAndUsesItOnceItServesAgain) {
  Context context(testConfig());
  HealthyServer a(context, "shm://" + uniqueName("healthy-a"));
  HealthyServer b(context, "shm://" + uniqueName("healthy-b"));
  BalancerOptions options;
  options.healthService = "Echo";
  options.healthEvery = 20ms;
  std::vector<std::string> endpoints{a.endpoint(), b.endpoint()};
  BalancedChannel balanced(context, endpoints, options);
  ASSERT_EQ(balanced.connectedCount(), 2u);
  EXPECT_EQ(balanced.servers()[0].health, ServingStatus::kServing);

  b.health().set("Echo", ServingStatus::kNotServing);  // up, but draining
  ASSERT_TRUE(pollUntil(balanced, [&] { return balanced.connectedCount() == 1; }));
  const auto down = balanced.servers()[1];
  EXPECT_TRUE(down.connected) << "still connected: only not serving";
  EXPECT_FALSE(down.usable);
  EXPECT_EQ(down.health, ServingStatus::kNotServing);
  EXPECT_EQ(down.lastError, "health: not serving");
  const uint64_t before = echoCallsOf(b.server().stats());
  for (int i = 0; i < 50; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });
  EXPECT_EQ(echoCallsOf(b.server().stats()), before) << "a server that is not serving got calls";
  EXPECT_EQ(echoCallsOf(a.server().stats()), 50u);

  b.health().set("Echo", ServingStatus::kServing);
  ASSERT_TRUE(pollUntil(balanced, [&] { return balanced.connectedCount() == 2; }));
  for (int i = 0; i < 50; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });
  EXPECT_GT(echoCallsOf(b.server().stats()), before) << "serving again, used again";

  // An unknown service name is not serving anywhere.
  BalancerOptions unknown = options;
  unknown.healthService = "Inventory";
  BalancedChannel nobody(context, endpoints, unknown);
  EXPECT_EQ(nobody.connectedCount(), 0u);
  EXPECT_EQ(nobody.servers()[0].health, ServingStatus::kServiceUnknown);
  try {
    nobody.pick();
    ADD_FAILURE() << "picked a server that does not serve Inventory";
  } catch (const Disconnected& e) {
    EXPECT_NE(std::string(e.what()).find("health: service unknown"), std::string::npos) << e.what();
  }
}

TEST(BalancedChannel, AServerWithoutTheHealthServiceCountsAsServing) {
  Context context(testConfig());
  LocalServer plain(context);
  BalancerOptions options;
  options.healthService = "";
  BalancedChannel balanced(context, std::vector<std::string>{plain.endpoint()}, options);
  EXPECT_EQ(balanced.connectedCount(), 1u);
  balanced.call([](Channel& ch) { echoOnce(ch); });
}

// ---------------------------------------------------------------------------------------
// Names: every address a name resolves to, SRV records, re-resolution

/// A resolver whose answers the test sets. Threads: the balancer calls it from its own
/// resolving thread while the test changes the answers, so a mutex guards them.
class FakeResolver final : public Resolver {
 public:
  void setHost(const std::string& host, std::vector<std::string> addresses) {
    std::lock_guard lock(mutex_);
    hosts_[host] = std::move(addresses);
  }
  void setSrv(const std::string& name, std::vector<SrvTarget> targets) {
    std::lock_guard lock(mutex_);
    srv_[name] = std::move(targets);
  }
  int lookups() const {
    std::lock_guard lock(mutex_);
    return lookups_;
  }
  std::vector<std::string> addresses(const std::string& host) override {
    std::lock_guard lock(mutex_);
    ++lookups_;
    auto it = hosts_.find(host);
    if (it == hosts_.end()) throw Failed("host " + host + " does not resolve: no such name (test)");
    return it->second;
  }
  std::vector<SrvTarget> srv(const std::string& name) override {
    std::lock_guard lock(mutex_);
    ++lookups_;
    auto it = srv_.find(name);
    if (it == srv_.end()) throw Failed("SRV " + name + " does not resolve: no such name (test)");
    return it->second;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::vector<std::string>> hosts_;
  std::map<std::string, std::vector<SrvTarget>> srv_;
  int lookups_ = 0;
};

/// An Echo server on tcp://<address>:<port> (port 0: any).
std::unique_ptr<HealthyServer> tcpServer(const Context& context, const std::string& address,
                                         uint16_t port = 0) {
  return std::make_unique<HealthyServer>(context, "tcp://" + address + ":" + std::to_string(port));
}

uint16_t portOf(const std::string& endpoint) {
  return static_cast<uint16_t>(std::stoul(endpoint.substr(endpoint.rfind(':') + 1)));
}

TEST(BalancedChannel, ANameStandsForEveryAddressItResolvesToAndFollowsItsChanges) {
  Context context(testConfig());
  // Three "hosts" on one port: 127.0.0.2-4 all reach this host's loopback.
  auto first = tcpServer(context, "127.0.0.2");
  const uint16_t port = portOf(first->endpoint());
  std::unique_ptr<HealthyServer> second, third;
  try {
    second = tcpServer(context, "127.0.0.3", port);
    third = tcpServer(context, "127.0.0.4", port);
  } catch (const Error& e) {
    GTEST_SKIP() << "port " << port << " is taken on 127.0.0.3 or .4: " << e.what();
  }
  FakeResolver resolver;
  resolver.setHost("kv.test", {"127.0.0.2", "127.0.0.3"});
  BalancerOptions options;
  options.resolver = &resolver;
  options.resolveEvery = 30ms;
  const std::string name = "tcp://kv.test:" + std::to_string(port);
  BalancedChannel balanced(context, std::vector<std::string>{name}, options);
  ASSERT_EQ(balanced.size(), 2u);
  EXPECT_EQ(balanced.connectedCount(), 2u);
  EXPECT_EQ(balanced.servers()[0].name, "kv.test");
  EXPECT_EQ(balanced.servers()[0].endpoint, "tcp://127.0.0.2:" + std::to_string(port));
  for (int i = 0; i < 40; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });
  EXPECT_EQ(echoCallsOf(first->server().stats()), 20u);
  EXPECT_EQ(echoCallsOf(second->server().stats()), 20u);

  // The service scales out: the name gains an address, and the balancer finds it without
  // being made again.
  resolver.setHost("kv.test", {"127.0.0.2", "127.0.0.3", "127.0.0.4"});
  ASSERT_TRUE(pollUntil(balanced, [&] { return balanced.connectedCount() == 3; }));
  for (int i = 0; i < 30; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });
  EXPECT_EQ(echoCallsOf(third->server().stats()), 10u);

  // ... and shrinks: a vanished address is dropped; a channel picked before stays valid.
  Channel* kept = balanced.channel(0);
  ASSERT_NE(kept, nullptr);
  resolver.setHost("kv.test", {"127.0.0.3", "127.0.0.4"});
  ASSERT_TRUE(pollUntil(balanced, [&] { return balanced.size() == 2; }));
  for (const auto& s : balanced.servers())
    EXPECT_EQ(s.endpoints.at(0).find("127.0.0.2:"), std::string::npos) << s.endpoints.at(0);
  EXPECT_TRUE(kept->connected()) << "a dropped server's channel stays usable for calls in flight";
  const uint64_t firstCalls = echoCallsOf(first->server().stats());
  for (int i = 0; i < 20; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });
  EXPECT_EQ(echoCallsOf(first->server().stats()), firstCalls) << "a dropped server got calls";

  // A name that stops resolving keeps the servers it had: DNS trouble is not an outage.
  resolver.setHost("kv.test", {});
  const int lookups = resolver.lookups();
  ASSERT_TRUE(pollUntil(balanced, [&] { return resolver.lookups() > lookups + 1; }));
  EXPECT_EQ(balanced.size(), 2u);
  balanced.call([](Channel& ch) { echoOnce(ch); });
}

TEST(BalancedChannel, SrvRecordsNameTheServersOfTheLowestPriority) {
  Context context(testConfig());
  auto a = tcpServer(context, "127.0.0.2");
  auto b = tcpServer(context, "127.0.0.3");
  auto backup = tcpServer(context, "127.0.0.4");
  FakeResolver resolver;
  resolver.setHost("a.test", {"127.0.0.2"});
  resolver.setHost("b.test", {"127.0.0.3"});
  resolver.setHost("backup.test", {"127.0.0.4"});
  resolver.setSrv("_kv._tcp.test", {{"a.test", portOf(a->endpoint()), 10, 1},
                                    {"b.test", portOf(b->endpoint()), 10, 1},
                                    {"backup.test", portOf(backup->endpoint()), 20, 1}});
  BalancerOptions options;
  options.resolver = &resolver;
  options.resolveEvery = 0ms;  // resolved once
  BalancedChannel balanced(context, std::vector<std::string>{"tcp://_kv._tcp.test"}, options);
  ASSERT_EQ(balanced.size(), 2u);
  EXPECT_EQ(balanced.connectedCount(), 2u);
  for (int i = 0; i < 20; ++i) balanced.call([](Channel& ch) { echoOnce(ch); });
  EXPECT_EQ(echoCallsOf(a->server().stats()), 10u);
  EXPECT_EQ(echoCallsOf(b->server().stats()), 10u);
  EXPECT_EQ(echoCallsOf(backup->server().stats()), 0u);
  EXPECT_EQ(balanced.servers()[0].name, "_kv._tcp.test");
}

TEST(BalancedChannel, ANameThatDoesNotResolveIsNamedWhenNothingIsUsable) {
  Context context(testConfig());
  FakeResolver resolver;
  BalancerOptions options;
  options.resolver = &resolver;
  BalancedChannel balanced(context, std::vector<std::string>{"tcp://nowhere.test:7000"}, options);
  EXPECT_EQ(balanced.size(), 0u);
  try {
    balanced.pick();
    ADD_FAILURE() << "pick() returned with no server";
  } catch (const Disconnected& e) {
    EXPECT_NE(std::string(e.what()).find("tcp://nowhere.test: host nowhere.test does not resolve"),
              std::string::npos)
        << e.what();
  }
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
