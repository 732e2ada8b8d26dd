// Calls across hosts (suite 'netns'): two network namespaces joined by a veth pair stand
// in for two hosts. A zcrpc::Server runs over tcp in one, clients in the other; then the
// link goes down in the middle of a call. Calls must end (DeadlineExceeded or
// Disconnected) within their timeouts, nothing may hang, and the server must keep serving
// other clients. Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN); skips with the reason
// otherwise. Only addresses inside the test's own namespaces (198.18.7.0/24, RFC 2544
// benchmarking space) and loopback are used.
//
// Clean-up on every path: the fixture's TearDown kills the children and deletes the
// namespaces; a detached guard process deletes them too when this process ends in any
// way (even SIGKILL or a runner's timeout), because it waits for a pipe from us to close.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/mount.h>

#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "conformance/support.h"
#include "zcrpc/balancer.h"
#include "zcrpc/health.h"
#include "zcrpc/tcp.h"

namespace zcrpc::conformance {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

struct CommandResult {
  int code = -1;  // exit code; -1 if it could not run or was killed at the timeout
  std::string output;
};

/// Runs argv (no shell) with stdout+stderr captured, killed at `timeout`.
CommandResult run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = 10s) {
  CommandResult result;
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return result;
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out[0]);
    ::close(out[1]);
    return result;
  }
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  ::close(out[1]);
  auto deadline = deadlineAfter(timeout);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd p{out[0], POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    char buf[512];
    ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.output.append(buf, static_cast<size_t>(n));
  }
  ::close(out[0]);
  int status = 0;
  for (Bound b(10'000, std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::max(deadline - Clock::now(), Clock::duration(0))) + 100ms);
       b.next();) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return result;
    }
    std::this_thread::sleep_for(2ms);
  }
  ::kill(pid, SIGKILL);
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.output += " (killed after " + std::to_string(timeout.count()) + " ms)";
  return result;
}

std::string describe(const CommandResult& r, const std::vector<std::string>& argv) {
  std::string s;
  for (auto& a : argv) s += a + " ";
  return s + "-> exit " + std::to_string(r.code) + ": " + r.output;
}

/// A process outside our process group that deletes the namespaces once our end of its
/// pipe closes, i.e. when this process exits for any reason.
class NetnsGuard final {
 public:
  explicit NetnsGuard(std::vector<std::string> names) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setsid();  // a runner killing our process group must not take the guard along
      // The pipe's read end may be fd 0, 1 or 2 (started with standard input closed, as CI
      // may start us): move it above them before they become /dev/null, or the guard reads
      // end-of-file at once and deletes the namespaces while the test uses them.
      const int readEnd = ::fcntl(fds[0], F_DUPFD, 3);
      int devnull = ::open("/dev/null", O_RDWR);
      ::dup2(devnull, 0);
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);  // and it must not hold the runner's output pipes open
      for (int fd = 3; fd < 1024; ++fd)
        if (fd != readEnd) ::close(fd);
      char c;
      for (;;) {  // nobody writes: read returns 0 when the last writer (us) is gone
        ssize_t n = ::read(readEnd, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
      }
      for (auto& name : names) {
        pid_t p = ::fork();
        if (p == 0) {
          ::execlp("ip", "ip", "netns", "del", name.c_str(), nullptr);
          ::_exit(127);
        }
        int st;
        if (p > 0) ::waitpid(p, &st, 0);
      }
      ::_exit(0);
    }
    ::close(fds[0]);
    if (pid_ > 0) writeEnd_ = fds[1];
    else ::close(fds[1]);
  }
  ~NetnsGuard() {
    if (writeEnd_ >= 0) ::close(writeEnd_);
    if (pid_ <= 0) return;
    int st;
    for (Bound b(5000, 10s); b.next();) {
      if (::waitpid(pid_, &st, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(2ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &st, 0);
  }
  NetnsGuard(const NetnsGuard&) = delete;
  NetnsGuard& operator=(const NetnsGuard&) = delete;

 private:
  pid_t pid_ = -1;
  int writeEnd_ = -1;
};

/// Moves the calling (single-threaded, forked) process into namespace `name`.
bool enterNetns(const std::string& name) {
  int fd = ::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  int r = ::setns(fd, CLONE_NEWNET);
  ::close(fd);
  return r == 0;
}

TcpOptions netOptions() {
  TcpOptions t;
  t.connection = tcpTransport().options;
  t.connection.connectTimeout = 2000ms;
  return t;
}

/// The kind of error a call ended with, "ok", and how long it took: "<kind> <ms>"; with
/// `why`, then " | " and the error's message.
std::string timedCall(Channel& ch, uint16_t method, uint64_t seq, std::chrono::milliseconds timeout,
                      bool why = false) {
  auto start = Clock::now();
  std::string outcome = "ok";
  std::string message;
  try {
    auto req = ch.newRequest(kEchoInterface, method, 16);
    req.setTimeout(timeout);
    buildPayload(req.message(), seq, 0);
    (void)req.call();
  } catch (const Error& e) {
    outcome = std::string(errorKindName(e.kind()));
    message = e.what();
  }
  outcome += " " + std::to_string(static_cast<int>(msSince(start)));
  return why ? outcome + " | " + message : outcome;
}

class Netns : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces";
    const std::string id = std::to_string(::getpid());
    nsServer_ = "zcrpcA" + id;
    nsClient_ = "zcrpcB" + id;
    vethServer_ = "zva" + id;
    vethClient_ = "zvb" + id;
    guard_.emplace(std::vector<std::string>{nsServer_, nsClient_});
    auto probe = run({"ip", "netns", "add", nsServer_});
    if (probe.code != 0)
      GTEST_SKIP() << "'ip netns add' is not permitted here: "
                   << describe(probe, {"ip", "netns", "add", nsServer_});
    created_.push_back(nsServer_);
    ASSERT_TRUE(must({"ip", "netns", "add", nsClient_}));
    created_.push_back(nsClient_);
    // Created directly inside the namespaces, so nothing is left in ours if we die here.
    ASSERT_TRUE(must({"ip", "link", "add", vethServer_, "netns", nsServer_, "type", "veth", "peer", "name",
          vethClient_, "netns", nsClient_}));
    ASSERT_TRUE(must({"ip", "-n", nsServer_, "addr", "add", std::string(kServerAddress) + "/24", "dev",
          vethServer_}));
    ASSERT_TRUE(must({"ip", "-n", nsClient_, "addr", "add", std::string(kClientAddress) + "/24", "dev",
          vethClient_}));
    for (auto& [ns, dev] : {std::pair{nsServer_, vethServer_}, std::pair{nsClient_, vethClient_}}) {
      ASSERT_TRUE(must({"ip", "-n", ns, "link", "set", "lo", "up"}));
      ASSERT_TRUE(must({"ip", "-n", ns, "link", "set", dev, "up"}));
    }
  }

  void TearDown() override {
    children_.clear();  // kills and reaps
    for (auto& ns : created_) {
      auto r = run({"ip", "netns", "del", ns});
      EXPECT_EQ(r.code, 0) << describe(r, {"ip", "netns", "del", ns});
    }
    created_.clear();
    guard_.reset();  // the guard finds nothing left and exits
    for (auto& ns : {nsServer_, nsClient_}) {
      if (!ns.empty()) {
        EXPECT_NE(::access(("/run/netns/" + ns).c_str(), F_OK), 0) << ns << " left behind";
      }
    }
  }

  /// Runs a set-up command; a failure is recorded with its output.
  [[nodiscard]] bool must(const std::vector<std::string>& argv) {
    auto r = run(argv);
    EXPECT_EQ(r.code, 0) << describe(r, argv);
    return r.code == 0;
  }

  Child& spawn(const std::function<int()>& body) {
    children_.push_back(std::make_unique<Child>(body));
    return *children_.back();
  }

  static constexpr const char* kServerAddress = "198.18.7.1";
  static constexpr const char* kClientAddress = "198.18.7.2";
  std::string nsServer_, nsClient_, vethServer_, vethClient_;
  std::vector<std::string> created_;
  std::optional<NetnsGuard> guard_;
  std::vector<std::unique_ptr<Child>> children_;
};

TEST_F(Netns, CallsAcrossHostsSurviveALinkGoingDownMidCall) {
  LinePipe serverReport, serverControl;
  Child& server = spawn([&] {
    if (!enterNetns(nsServer_)) return 10;
    EchoService service;
    Server srv(ServerOptions{.workerThreads = 2});
    srv.addService(service);
    auto overNet = listenTcp(std::string(kServerAddress) + ":0", netOptions());
    auto overLoopback = listenTcp("127.0.0.1:0", netOptions());
    serverReport.put(overNet->endpoint() + " " + overLoopback->endpoint());
    srv.addListener(std::move(overNet));
    srv.addListener(std::move(overLoopback));
    srv.start();
    std::string command = serverControl.get(60s);  // "stop", or give up after a minute
    srv.shutdown(deadlineAfter(2s));
    serverReport.put("stopped after '" + command + "'");
    return 0;
  });
  serverReport.closeWrite();  // only the child writes: its death ends our reads at once
  std::istringstream endpoints(serverReport.get(10s));
  std::string netEndpoint, loopbackEndpoint;
  endpoints >> netEndpoint >> loopbackEndpoint;
  ASSERT_THAT(netEndpoint, StartsWith(std::string("tcp://") + kServerAddress + ":"));
  ASSERT_THAT(loopbackEndpoint, StartsWith("tcp://127.0.0.1:"));

  // A client on the other host: calls work, then one is in flight when the link drops.
  LinePipe clientReport;
  Child& client = spawn([&] {
    if (!enterNetns(nsClient_)) return 10;
    Channel ch(connectTcp(netEndpoint, netOptions()));
    for (uint64_t i = 0; i < 20; ++i)
      if (!echoCall(ch, i, i * 1000, 2s)) return 11;
    clientReport.put("calls ok");
    auto req = ch.newRequest(kEchoInterface, kSleep, 16);
    req.setTimeout(1500ms);
    buildPayload(req.message(), /*server sleeps ms=*/800, 0);
    auto start = Clock::now();
    PendingCall call = req.callAsync();
    clientReport.put("in flight");
    CallResult r = call.wait();
    clientReport.put("slow " + std::string(r.ok() ? "ok" : errorKindName(r.errorKind())) + " " +
                     std::to_string(static_cast<int>(msSince(start))));
    for (uint64_t i = 0; i < 3; ++i) clientReport.put("after " + timedCall(ch, kEcho, 100 + i, 500ms));
    // A new connection over the dead link fails within its connect timeout.
    auto o = netOptions();
    o.connection.connectTimeout = 500ms;
    start = Clock::now();
    std::string outcome = "connected";
    try {
      (void)connectTcp(netEndpoint, o);
    } catch (const Error& e) {
      outcome = std::string(errorKindName(e.kind()));
    }
    clientReport.put("connect " + outcome + " " + std::to_string(static_cast<int>(msSince(start))));
    return 0;
  });
  clientReport.closeWrite();  // only the child writes: its death ends our reads at once
  ASSERT_EQ(clientReport.get(15s), "calls ok");
  ASSERT_EQ(clientReport.get(5s), "in flight");
  std::this_thread::sleep_for(100ms);  // the request is in the server's handler now
  ASSERT_TRUE(must({"ip", "-n", nsServer_, "link", "set", vethServer_, "down"}));

  auto outcome = [](const std::string& line, const std::string& prefix, int limitMs) {
    std::istringstream in(line.substr(std::min(line.size(), prefix.size())));
    std::string kind;
    int ms = -1;
    in >> kind >> ms;
    EXPECT_THAT(line, StartsWith(prefix));
    EXPECT_THAT(kind, AnyOf("DeadlineExceeded", "Disconnected")) << line;
    EXPECT_GE(ms, 0) << line;
    EXPECT_LT(ms, limitMs) << line;
  };
  outcome(clientReport.get(5s), "slow ", 1500 + 1000);
  for (int i = 0; i < 3; ++i) outcome(clientReport.get(5s), "after ", 500 + 1000);
  std::string connect = clientReport.get(5s);
  EXPECT_THAT(connect, StartsWith("connect "));
  EXPECT_THAT(connect, Not(HasSubstr("connected"))) << connect;
  {
    std::istringstream in(connect.substr(std::min<size_t>(connect.size(), 8)));
    std::string kind;
    int ms = -1;
    in >> kind >> ms;
    EXPECT_LT(ms, 1500) << connect;
  }
  int clientExit = client.wait(10s);
  EXPECT_EQ(clientExit, 0) << "client: " << describeExit(clientExit);
  ASSERT_FALSE(server.ended()) << "the server process died: " << describeExit(server.wait(0ms));

  // The server still serves: a client on its own host, over loopback.
  LinePipe localReport;
  Child& local = spawn([&] {
    if (!enterNetns(nsServer_)) return 10;
    Channel ch(connectTcp(loopbackEndpoint, netOptions()));
    for (uint64_t i = 0; i < 10; ++i)
      if (!echoCall(ch, i, 500, 2s)) return 11;
    localReport.put("local ok");
    return 0;
  });
  localReport.closeWrite();  // only the child writes: its death ends our reads at once
  EXPECT_EQ(localReport.get(10s), "local ok");
  int localExit = local.wait(10s);
  EXPECT_EQ(localExit, 0) << "local client: " << describeExit(localExit);
  ASSERT_FALSE(server.ended()) << "the server process died: " << describeExit(server.wait(0ms));

  // With the link back, a client on the other host gets through again.
  ASSERT_TRUE(must({"ip", "-n", nsServer_, "link", "set", vethServer_, "up"}));
  LinePipe againReport;
  Child& again = spawn([&] {
    if (!enterNetns(nsClient_)) return 10;
    for (Bound b(20, 10s); b.next();) {  // the carrier takes a moment to come back
      try {
        auto o = netOptions();
        o.connection.connectTimeout = 500ms;
        Channel ch(connectTcp(netEndpoint, o));
        if (echoCall(ch, 1, 100, 2s)) {
          againReport.put("again ok");
          return 0;
        }
      } catch (const Error&) {
      }
      std::this_thread::sleep_for(100ms);
    }
    return 11;
  });
  againReport.closeWrite();  // only the child writes: its death ends our reads at once
  std::string againLine = againReport.get(12s);
  int againExit = again.wait(5s);
  if (server.ended())
    FAIL() << "the server process died once the link was back (the first client's late "
              "frames arrived): "
           << describeExit(server.wait(0ms));
  EXPECT_EQ(againLine, "again ok");
  EXPECT_EQ(againExit, 0) << "client after the link returned: " << describeExit(againExit);

  serverControl.put("stop");
  EXPECT_THAT(serverReport.get(10s), StartsWith("stopped"));
  int serverExit = server.wait(10s);
  EXPECT_EQ(serverExit, 0) << "server: " << describeExit(serverExit);
}

TEST_F(Netns, PeersThatGoSilentAreDroppedAfterTheDeadPeerTimeout) {
  // Both sides idle when the link goes down: no call is waiting to time out. The server
  // must drop its connection from the vanished host by itself, and the client's next call
  // must fail at once as Disconnected rather than wait out its timeout.
  constexpr auto kDeadPeer = 2000ms;
  auto options = [&] {
    auto o = netOptions();
    o.deadPeerTimeout = kDeadPeer;
    return o;
  };
  LinePipe serverReport, serverControl;
  Child& server = spawn([&] {
    if (!enterNetns(nsServer_)) return 10;
    EchoService service;
    Server srv(ServerOptions{.workerThreads = 1});
    srv.addService(service);
    auto overNet = listenTcp(std::string(kServerAddress) + ":0", options());
    serverReport.put(overNet->endpoint());
    srv.addListener(std::move(overNet));
    srv.start();
    for (Bound b(1000, 60s); b.next();) {
      std::string command = serverControl.get(60s);
      if (command == "count") {
        serverReport.put(std::to_string(srv.connectionCount()));
        continue;
      }
      break;  // "stop", or the test is gone
    }
    srv.shutdown(deadlineAfter(2s));
    return 0;
  });
  serverReport.closeWrite();  // only the child writes: its death ends our reads at once
  std::string endpoint = serverReport.get(10s);
  ASSERT_THAT(endpoint, StartsWith(std::string("tcp://") + kServerAddress + ":"));
  auto connections = [&] {
    serverControl.put("count");
    return serverReport.get(5s);
  };

  LinePipe clientReport, clientControl;
  Child& client = spawn([&] {
    if (!enterNetns(nsClient_)) return 10;
    Channel ch(connectTcp(endpoint, options()));
    for (uint64_t i = 0; i < 5; ++i)
      if (!echoCall(ch, i, 100, 2s)) return 11;
    clientReport.put("idle");
    if (clientControl.get(30s) != "call") return 12;
    clientReport.put(timedCall(ch, kEcho, 7, 4000ms, /*why=*/true));
    return 0;
  });
  clientReport.closeWrite();
  ASSERT_EQ(clientReport.get(15s), "idle");
  ASSERT_EQ(connections(), "1");

  ASSERT_TRUE(must({"ip", "-n", nsServer_, "link", "set", vethServer_, "down"}));
  const auto down = Clock::now();
  std::string count = "1";
  for (Bound b(100, 10s); b.next() && count != "0";) {
    std::this_thread::sleep_for(100ms);
    count = connections();
  }
  const int droppedAfterMs = static_cast<int>(msSince(down));
  std::printf("server's connection count %s after %d ms\n", count.c_str(), droppedAfterMs);
  EXPECT_EQ(count, "0") << "the server still holds the connection from the vanished host "
                        << droppedAfterMs << " ms after the link went down";
  // About the timeout (the kernel's keepalive timer ticks once a second at this setting).
  EXPECT_LT(droppedAfterMs, 6000);
  EXPECT_GE(droppedAfterMs, 1000) << "dropped before any probe could have gone unanswered";

  // The client's side has given up on its own by now too.
  std::this_thread::sleep_for(std::max(0ms, 4000ms - std::chrono::duration_cast<std::chrono::milliseconds>(
                                                         Clock::now() - down)));
  clientControl.put("call");
  std::string line = clientReport.get(10s);
  std::istringstream in(line);
  std::string kind;
  int ms = -1;
  in >> kind >> ms;
  EXPECT_EQ(kind, "Disconnected") << line;
  EXPECT_GE(ms, 0) << line;
  EXPECT_LT(ms, 1000) << "the call waited instead of failing at once: " << line;
  EXPECT_THAT(line, HasSubstr("dead-peer timeout of 2000 ms")) << line;
  std::printf("client after the timeout: %s\n", line.c_str());
  int clientExit = client.wait(10s);
  EXPECT_EQ(clientExit, 0) << "client: " << describeExit(clientExit);

  ASSERT_FALSE(server.ended()) << "the server process died: " << describeExit(server.wait(0ms));
  serverControl.put("stop");
  int serverExit = server.wait(10s);
  EXPECT_EQ(serverExit, 0) << "server: " << describeExit(serverExit);
}

TEST_F(Netns, ConnectToAnAddressThatDropsPacketsTimesOut) {
  // The server side's link is down: SYNs from the client host go nowhere.
  ASSERT_TRUE(must({"ip", "-n", nsServer_, "link", "set", vethServer_, "down"}));
  LinePipe report;
  Child& client = spawn([&] {
    if (!enterNetns(nsClient_)) return 10;
    auto o = netOptions();
    o.connection.connectTimeout = 400ms;
    auto start = Clock::now();
    std::string outcome = "connected";
    try {
      (void)connectTcp(std::string(kServerAddress) + ":7", o);
    } catch (const Error& e) {
      outcome = std::string(errorKindName(e.kind())) + " (" + e.what() + ")";
    }
    report.put(std::to_string(static_cast<int>(msSince(start))) + " " + outcome);
    return 0;
  });
  std::istringstream line(report.get(5s));
  int ms = -1;
  std::string rest;
  line >> ms;
  std::getline(line, rest);
  EXPECT_GE(ms, 0);
  EXPECT_LT(ms, 1500) << rest;
  EXPECT_THAT(rest, StartsWith(" Failed")) << "expected Failed";
  EXPECT_EQ(client.wait(5s), 0);
}

// ---------------------------------------------------------------------------------------
// Names across hosts: a BalancedChannel given a DNS name spreads over every address the
// name resolves to (A records and SRV), follows the service as it scales out, and skips a
// host that is up but not serving. The DNS server is dnsmasq on the server host; the
// client host's resolver (getaddrinfo, res_nquery) reads a resolv.conf naming it, bound
// over /etc/resolv.conf in the client's own mount namespace.

/// A directory of this test's, removed with everything in it on destruction.
class TempDir final {
 public:
  TempDir() {
    char pattern[] = "/tmp/zcrpc-netns-dns.XXXXXX";
    if (::mkdtemp(pattern)) path_ = pattern;
  }
  ~TempDir() {
    if (!path_.empty()) (void)run({"rm", "-rf", path_});
  }
  const std::string& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ + "/" + name) << text;
  }

 private:
  std::string path_;
};

/// In a forked child: a mount namespace of its own in which /etc/resolv.conf is `file`.
bool useResolvConf(const std::string& file) {
  return ::unshare(CLONE_NEWNS) == 0 &&
         ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0 &&
         ::mount(file.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) == 0;
}

/// "198.18.7.1:12 198.18.7.3:12": each server's address (its endpoint without "tcp://")
/// and how often pick() chose it, ordered by address; only servers pick() may choose.
std::string picksOf(const BalancedChannel& balanced) {
  std::map<std::string, uint64_t> picks;
  for (const auto& s : balanced.servers())
    if (s.usable) picks[s.endpoints.at(0).substr(6)] = s.picks;
  std::string out;
  for (const auto& [address, n] : picks) out += (out.empty() ? "" : " ") + address + "=" + std::to_string(n);
  return out;
}

TEST_F(Netns, ABalancedChannelFollowsADnsNameAcrossHostsAndSkipsOnesNotServing) {
  if (::access("/usr/sbin/dnsmasq", X_OK) != 0)
    GTEST_SKIP() << "dnsmasq is not installed (Debian: dnsmasq-base; scripts/zcrpc-dev installs it)";
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  // Three hosts' addresses on the server side; a zcrpc server on port 7000 of each.
  for (const char* a : {"198.18.7.3", "198.18.7.4"})
    ASSERT_TRUE(must({"ip", "-n", nsServer_, "addr", "add", std::string(a) + "/24", "dev", vethServer_}));
  const std::vector<std::string> hosts{"198.18.7.1", "198.18.7.3", "198.18.7.4"};
  std::vector<std::unique_ptr<LinePipe>> reports, controls;
  for (const auto& host : hosts) {
    reports.push_back(std::make_unique<LinePipe>());
    controls.push_back(std::make_unique<LinePipe>());
    LinePipe& report = *reports.back();
    LinePipe& control = *controls.back();
    spawn([&, host] {
      if (!enterNetns(nsServer_)) return 10;
      EchoService service;
      Server srv(ServerOptions{.workerThreads = 1});
      srv.addService(service);
      HealthStatus& health = srv.enableHealth();
      health.set("Echo", ServingStatus::kServing);
      srv.addListener(listenTcp(host + ":7000", netOptions()));
      srv.start();
      report.put("ready");
      for (Bound b(100, 60s); b.next();) {
        std::string command = control.get(60s);
        if (command == "drain") {
          health.set("Echo", ServingStatus::kNotServing);
          report.put("draining");
          continue;
        }
        break;  // "stop", or the test is gone
      }
      srv.shutdown(deadlineAfter(1s));
      return 0;
    });
    report.closeWrite();
    ASSERT_EQ(report.get(10s), "ready") << host;
  }

  // The name's first two hosts, and an SRV name for two of them.
  dir.write("hosts", "198.18.7.1 svc.zcrpc.test\n198.18.7.3 svc.zcrpc.test\n"
                     "198.18.7.1 a.zcrpc.test\n198.18.7.3 b.zcrpc.test\n");
  dir.write("resolv.conf", "nameserver 198.18.7.1\noptions timeout:1 attempts:2\n");
  Child& dns = spawn([&] {
    if (!enterNetns(nsServer_)) return 10;
    int log = ::open((dir.path() + "/dnsmasq.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log >= 0) {
      ::dup2(log, 1);
      ::dup2(log, 2);
    }
    const std::string hostsFile = "--addn-hosts=" + dir.path() + "/hosts";
    ::execl("/usr/sbin/dnsmasq", "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--user=root",
            "--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=198.18.7.1",
            "--port=53", "--pid-file=", hostsFile.c_str(),
            "--srv-host=_kv._tcp.zcrpc.test,a.zcrpc.test,7000,10",
            "--srv-host=_kv._tcp.zcrpc.test,b.zcrpc.test,7000,10", nullptr);
    ::_exit(127);
  });

  LinePipe clientReport, clientControl;
  Child& client = spawn([&] {
    if (!enterNetns(nsClient_)) return 10;
    if (!useResolvConf(dir.path() + "/resolv.conf")) {
      clientReport.put("no private /etc/resolv.conf: " + std::string(std::strerror(errno)));
      return 11;
    }
    try {
      Config config;
      config.set("transports", "tcp", SettingSource::kCode, "test");
      config.set("connect_timeout", "2s", SettingSource::kCode, "test");
      Context context(config);
      BalancerOptions options;
      options.resolveEvery = 100ms;
      options.maxBackoff = 200ms;
      options.healthService = "Echo";
      options.healthEvery = 50ms;
      BalancedChannel balanced(context, std::vector<std::string>{"tcp://svc.zcrpc.test:7000"}, options);
      auto settle = [&](size_t usable) {
        for (Bound b(2000, 8s); b.next() && balanced.connectedCount() != usable;) {
          balanced.poll();
          std::this_thread::sleep_for(5ms);
        }
        return balanced.connectedCount() == usable;
      };
      auto calls = [&](int n) {
        for (int i = 0; i < n; ++i)
          balanced.call([&](Channel& ch) {
            if (!echoCall(ch, static_cast<uint64_t>(i), 64, 2s)) throw Failed("echo failed");
          });
      };
      if (!settle(2)) clientReport.put("two hosts never came up");
      calls(40);
      clientReport.put(picksOf(balanced));
      if (clientControl.get(10s) != "grown") return 12;
      if (!settle(3)) clientReport.put("the third host never came up");
      calls(30);
      clientReport.put(picksOf(balanced));
      if (clientControl.get(10s) != "drained") return 13;
      if (!settle(2)) clientReport.put("the draining host was never skipped");
      calls(20);
      clientReport.put(picksOf(balanced));

      BalancerOptions srvOptions;
      srvOptions.resolveEvery = 0ms;
      BalancedChannel bySrv(context, std::vector<std::string>{"tcp://_kv._tcp.zcrpc.test"}, srvOptions);
      std::set<std::string> targets;  // the DNS server may answer in any order
      for (const auto& s : bySrv.servers()) targets.insert(s.endpoints.at(0));
      std::string srv = std::to_string(bySrv.connectedCount()) + ":";
      for (const auto& t : targets) srv += " " + t;
      clientReport.put(srv);
    } catch (const std::exception& e) {
      clientReport.put(std::string("error: ") + e.what());
      return 14;
    }
    return 0;
  });
  clientReport.closeWrite();
  auto dnsLog = [&] {
    std::ifstream in(dir.path() + "/dnsmasq.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(clientReport.get(15s), "198.18.7.1:7000=20 198.18.7.3:7000=20") << dnsLog();

  // Scale out: a third host joins the name, and the running client finds it.
  dir.write("hosts", "198.18.7.1 svc.zcrpc.test\n198.18.7.3 svc.zcrpc.test\n198.18.7.4 svc.zcrpc.test\n"
                     "198.18.7.1 a.zcrpc.test\n198.18.7.3 b.zcrpc.test\n");
  ASSERT_EQ(::kill(dns.pid(), SIGHUP), 0);  // dnsmasq reads its hosts files again
  clientControl.put("grown");
  EXPECT_EQ(clientReport.get(15s), "198.18.7.1:7000=30 198.18.7.3:7000=30 198.18.7.4:7000=10") << dnsLog();

  // The middle host stays up but stops serving: the client skips it.
  controls[1]->put("drain");
  EXPECT_EQ(reports[1]->get(5s), "draining");
  clientControl.put("drained");
  EXPECT_EQ(clientReport.get(15s), "198.18.7.1:7000=40 198.18.7.4:7000=20") << dnsLog();

  // SRV: the two targets of _kv._tcp, each by its own name.
  EXPECT_EQ(clientReport.get(15s), "2: tcp://198.18.7.1:7000 tcp://198.18.7.3:7000") << dnsLog();
  EXPECT_EQ(client.wait(10s), 0);
  for (auto& c : controls) c->put("stop");
}

}  // namespace
}  // namespace zcrpc::conformance
