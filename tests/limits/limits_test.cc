// No peer can starve the others: a server out of descriptors backs off instead of
// spinning, says why it refuses, and recovers by itself; listeners keep to their
// connection limits. Servers run in child processes, so their descriptor limit and
// their CPU time and log lines can be set and measured apart from the test's.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "conformance/support.h"
#include "zcrpc/rpc.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"

namespace zcrpc::conformance {
namespace {

using namespace std::chrono_literals;

/// CPU time (user + system, all threads) a process has used so far.
std::chrono::milliseconds cpuTime(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces) start after the last ')'.
  std::istringstream rest(text.substr(text.rfind(')') + 2));
  std::string field;
  uint64_t utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  long hz = ::sysconf(_SC_CLK_TCK);
  return std::chrono::milliseconds((utime + stime) * 1000 / static_cast<uint64_t>(hz));
}

/// A Server with one listener in a child process whose stderr comes back through a pipe.
/// `descriptors` sets the child's RLIMIT_NOFILE (0: unchanged).
class ServerProcess final {
 public:
  using MakeListener = std::function<std::unique_ptr<Listener>()>;

  ServerProcess(MakeListener make, rlim_t descriptors) {
    if (::pipe2(err_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    child_ = std::make_unique<Child>([&, make] {
      ::dup2(err_[1], 2);
      if (descriptors) {
        rlimit r{descriptors, descriptors};
        if (::setrlimit(RLIMIT_NOFILE, &r) != 0) return 3;
      }
      EchoService echo;
      ServerOptions options;
      options.workerThreads = 1;
      Server server(options);
      server.addService(echo);
      auto listener = make();
      ready_.put(listener->endpoint());
      server.addListener(std::move(listener));
      server.start();
      for (;;) ::pause();
    });
    ::close(err_[1]);
    err_[1] = -1;
    ready_.closeWrite();
    endpoint_ = ready_.get(10s);
    ::fcntl(err_[0], F_SETFL, O_NONBLOCK);
    if (endpoint_.empty()) {
      std::string why;
      for (auto& l : newLogLines()) why += l + "\n";
      throw std::runtime_error("the server process did not start: " + why);
    }
  }
  ~ServerProcess() {
    child_.reset();
    if (err_[0] >= 0) ::close(err_[0]);
    if (err_[1] >= 0) ::close(err_[1]);
  }

  const std::string& endpoint() const { return endpoint_; }
  pid_t pid() const { return child_->pid(); }
  /// The lines the server wrote to stderr since the last call.
  std::vector<std::string> newLogLines() {
    char buf[65536];
    ssize_t n;
    while ((n = ::read(err_[0], buf, sizeof buf)) > 0) log_.append(buf, static_cast<size_t>(n));
    std::vector<std::string> lines;
    size_t nl;
    while ((nl = log_.find('\n')) != std::string::npos) {
      lines.push_back(log_.substr(0, nl));
      log_.erase(0, nl + 1);
    }
    return lines;
  }

 private:
  LinePipe ready_;
  int err_[2] = {-1, -1};
  std::unique_ptr<Child> child_;
  std::string endpoint_;
  std::string log_;
};

std::string uniqueName(const char* what) {
  return std::string("limits-") + what + "-" + std::to_string(::getpid());
}

/// Connects, or returns the error's text.
std::unique_ptr<Connection> tryConnect(const std::function<std::unique_ptr<Connection>()>& connect,
                                       std::string& error) {
  try {
    return connect();
  } catch (const std::exception& e) {
    error = e.what();
    return nullptr;
  }
}

bool namesDescriptorExhaustion(const std::string& error) {
  return error.find("out of file descriptors") != std::string::npos ||
         error.find("Too many open files") != std::string::npos;
}

/// Out of descriptors: clients are refused at once with the reason, the server spends
/// (almost) no CPU and logs about once a second, and once connections go it serves
/// again by itself. Before the accept gate it took a core and logged ~150,000 lines a
/// second, and clients timed out after 5 s.
void outOfDescriptorsBacksOffAndRecovers(ServerProcess& server,
                                         const std::function<std::unique_ptr<Connection>()>& connect) {
  std::vector<std::unique_ptr<Connection>> held;
  std::string error;
  for (int i = 0; i < 200; ++i) {
    auto start = Clock::now();
    auto c = tryConnect(connect, error);
    if (!c) {
      EXPECT_LT(Clock::now() - start, 2500ms) << "refused only after a timeout: " << error;
      break;
    }
    held.push_back(std::move(c));
  }
  ASSERT_TRUE(namesDescriptorExhaustion(error)) << error;
  ASSERT_GT(held.size(), 5u);

  // Let the gate settle into its back-off, then measure a quiet second.
  std::this_thread::sleep_for(300ms);
  (void)server.newLogLines();
  auto cpuBefore = cpuTime(server.pid());
  auto t0 = Clock::now();
  std::this_thread::sleep_for(1s);
  auto cpu = cpuTime(server.pid()) - cpuBefore;
  auto wall = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
  auto lines = server.newLogLines();
  EXPECT_LE(lines.size(), 3u) << "first: " << (lines.empty() ? "" : lines.front());
  EXPECT_LT(cpu.count(), wall.count() / 5) << "the server spun: " << cpu.count() << " ms CPU in "
                                           << wall.count() << " ms";

  // Another client is told why, within a back-off interval.
  auto start = Clock::now();
  error.clear();
  EXPECT_EQ(tryConnect(connect, error), nullptr);
  EXPECT_TRUE(namesDescriptorExhaustion(error)) << error;
  EXPECT_LT(Clock::now() - start, 2500ms);

  // Descriptors come back: the server serves again without anyone's help.
  held.resize(held.size() - 5);
  std::unique_ptr<Connection> honest;
  for (auto until = Clock::now() + 5s; !honest && Clock::now() < until;) {
    honest = tryConnect(connect, error);
    if (!honest) std::this_thread::sleep_for(50ms);
  }
  ASSERT_NE(honest, nullptr) << error;
  Channel channel(std::move(honest));
  EXPECT_TRUE(echoCall(channel, 1, 100));
}

TEST(Limits, ShmServerOutOfDescriptorsBacksOffRefusesWithTheReasonAndRecovers) {
  std::string name = uniqueName("shm-emfile");
  ServerProcess server(
      [name] {
        ShmListenOptions o;
        o.maxConnections = 10000;  // the descriptors run out first
        o.connection.ringBytes = 64 << 10;
        o.connection.arenaBytes = 1 << 20;
        o.connection.maxMessageBytes = 512 << 10;
        return listenShm(name, o);
      },
      48);
  outOfDescriptorsBacksOffAndRecovers(server, [&] { return connectShm(name); });
}

TEST(Limits, ShmListenerRefusesClientsBeyondItsConnectionLimitAndSaysWhy) {
  std::string name = uniqueName("shm-limit");
  ServerProcess server(
      [name] {
        ShmListenOptions o;
        o.maxConnections = 3;
        o.connection.ringBytes = 64 << 10;
        o.connection.arenaBytes = 1 << 20;
        o.connection.maxMessageBytes = 512 << 10;
        return listenShm(name, o);
      },
      0);
  std::vector<std::unique_ptr<Connection>> held;
  for (int i = 0; i < 3; ++i) held.push_back(connectShm(name));
  try {
    connectShm(name);
    FAIL() << "a fourth connection was admitted";
  } catch (const Failed& e) {
    EXPECT_NE(std::string(e.what()).find("has reached its limit of 3 connections (max_connections)"),
              std::string::npos)
        << e.what();
  }
  bool logged = false;
  for (auto until = Clock::now() + 2s; !logged && Clock::now() < until;) {
    for (auto& l : server.newLogLines()) logged |= l.find("limit of 3 connections") != std::string::npos;
    if (!logged) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(logged) << "the refusal was not logged";
  // A place frees up when a connection goes.
  held.pop_back();
  std::unique_ptr<Connection> again;
  std::string error;
  for (auto until = Clock::now() + 5s; !again && Clock::now() < until;) {
    again = tryConnect([&] { return connectShm(name); }, error);
    if (!again) std::this_thread::sleep_for(20ms);
  }
  ASSERT_NE(again, nullptr) << error;
  Channel channel(std::move(again));
  EXPECT_TRUE(echoCall(channel, 1, 64));
}

TEST(Limits, ShmCredentialRefusalsAreLogged) {
  std::string name = uniqueName("shm-creds");
  ServerProcess server(
      [name] {
        ShmListenOptions o;
        o.policy.sameUid = false;  // admits nobody
        return listenShm(name, o);
      },
      0);
  EXPECT_THROW(connectShm(name), Failed);
  std::vector<std::string> lines;
  for (auto until = Clock::now() + 2s; lines.empty() && Clock::now() < until;) {
    lines = server.newLogLines();
    if (lines.empty()) std::this_thread::sleep_for(10ms);
  }
  ASSERT_FALSE(lines.empty()) << "the refusal was not logged";
  EXPECT_NE(lines[0].find("is not admitted by the credential policy"), std::string::npos) << lines[0];
}

}  // namespace
}  // namespace zcrpc::conformance
