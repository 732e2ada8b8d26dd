// No peer can starve the others: a server out of descriptors backs off instead of
// spinning, says why it refuses, and recovers by itself; listeners keep to their
// connection limits. Servers run in child processes, so their descriptor limit and
// their CPU time and log lines can be set and measured apart from the test's.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "conformance/support.h"
#include "os/os.h"
#include "transport/accept_gate.h"
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
  /// Waits up to `timeout` for a line that holds `needle`; true when one came.
  bool logsWithin(std::string_view needle, std::chrono::milliseconds timeout) {
    for (auto until = Clock::now() + timeout; Clock::now() < until; std::this_thread::sleep_for(10ms))
      for (auto& l : newLogLines())
        if (l.find(needle) != std::string::npos) return true;
    return false;
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

/// Connects, trying again while refused, for up to 5 s; nullptr (the last error in
/// `error`) when every try failed.
std::unique_ptr<Connection> connectWithin5s(
    const std::function<std::unique_ptr<Connection>()>& connect, std::string& error) {
  std::unique_ptr<Connection> c;
  for (auto until = Clock::now() + 5s; !c && Clock::now() < until;) {
    c = tryConnect(connect, error);
    if (!c) std::this_thread::sleep_for(20ms);
  }
  return c;
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
  std::unique_ptr<Connection> honest = connectWithin5s(connect, error);
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

/// The gate's back-off itself (the test above drains one waiting client at a time, which
/// the spare descriptor alone handles): with more clients waiting than one batch, the gate
/// refuses a batch, then neither accepts nor refuses until its back-off ends, then refuses
/// the rest. Without the back-off a listener whose clients outrun its refusals would try
/// again on every round. In a child process: it uses up its own descriptors.
TEST(Limits, AnAcceptGateOutOfDescriptorsRefusesABatchThenRests) {
  Child child([] {
    rlimit r{64, 64};
    if (::setrlimit(RLIMIT_NOFILE, &r) != 0) return 10;
    const std::string name = uniqueName("gate");
    os::Fd listener = os::listenAbstract(name);
    AcceptGate gate("shm://" + name);
    constexpr int kWaiting = AcceptGate::kRefuseBatch + 4;
    std::vector<os::Fd> clients;
    for (int i = 0; i < kWaiting; ++i) clients.push_back(os::connectAbstract(name, 1000ms));
    std::vector<os::Fd> filler;  // every descriptor left
    for (os::Fd f; (f = os::Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)));) filler.push_back(std::move(f));
    int refused = 0;
    auto refuse = [&](int, const std::string&) { ++refused; };
    if (gate.accept(listener.get(), refuse)) return 1;
    if (refused != AcceptGate::kRefuseBatch) return 2;
    if (!gate.backingOff(Clock::now())) return 3;
    if (gate.accept(listener.get(), refuse) || refused != AcceptGate::kRefuseBatch) return 4;
    std::this_thread::sleep_until(gate.retryAt());
    if (gate.accept(listener.get(), refuse)) return 5;
    return refused == kWaiting ? 0 : 6;
  });
  EXPECT_EQ(child.wait(10s), 0) << "see the return codes in the test";
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
  EXPECT_TRUE(server.logsWithin("limit of 3 connections", 2s)) << "the refusal was not logged";
  // A place frees up when a connection goes.
  held.pop_back();
  std::string error;
  std::unique_ptr<Connection> again = connectWithin5s([&] { return connectShm(name); }, error);
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
  EXPECT_TRUE(server.logsWithin("is not admitted by the credential policy", 2s))
      << "the refusal was not logged";
}

/// Resident and virtual size of a process, in bytes.
struct ProcessMemory {
  uint64_t resident = 0;
  uint64_t virtualBytes = 0;
};
ProcessMemory memoryOf(pid_t pid) {
  std::ifstream statm("/proc/" + std::to_string(pid) + "/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return {resident * page, size * page};
}

TcpOptions plainTcp() {
  TcpOptions o;
  o.connection.connectTimeout = 5000ms;
  return o;
}

/// The server's resident size once it is at most `goal`, or after 8 s: its workers reap
/// closed connections as their hang-ups arrive and give the memory back at most once a
/// second. (3 s was too short on a loaded machine: a round stayed 14% over once, and the
/// next round was back where it started.)
uint64_t residentAfterReaping(pid_t pid, uint64_t goal) {
  uint64_t now = memoryOf(pid).resident;
  for (auto until = Clock::now() + 8s; now > goal && Clock::now() < until; now = memoryOf(pid).resident)
    std::this_thread::sleep_for(50ms);
  return now;
}

/// Why the server's resident size says nothing about zcrpc in this build (empty: it does).
/// The sanitizers replace malloc with an allocator of their own, which keeps freed memory
/// (ASan's quarantine holds up to 256 MiB of it to catch use after free; TSan's keeps its
/// pages) and which malloc_trim does not reach: there the server stays 27% (ASan without
/// quarantine) to 190% (TSan) above where it started, and ASan's grows 13 MB a round.
constexpr std::string_view residentSizeCaveat() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return "a sanitizer's allocator holds freed memory and ignores malloc_trim";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return "a sanitizer's allocator holds freed memory and ignores malloc_trim";
#endif
#endif
  return {};
}

/// Rounds of 1,000 tcp connections opened (each makes a call) and closed: the server's
/// memory with no connection open comes back to within 20% (at least 4 MiB) of where it
/// started. Before, the connections' buffers stayed with the allocator: 13.7, 187, 339,
/// 468, ... MB. (Without the 4 MiB the allocator's own slack failed a round now and then
/// on a loaded machine: 1.6 MB over 7.8 MB, the next round back at the start.)
TEST(Limits, TcpConnectionChurnGivesItsMemoryBack) {
  if (!residentSizeCaveat().empty()) GTEST_SKIP() << residentSizeCaveat();
  ServerProcess server([] { return listenTcp("127.0.0.1:0", plainTcp()); }, 0);
  {
    Channel warm(connectTcp(server.endpoint(), plainTcp()));
    ASSERT_TRUE(echoCall(warm, 1, 100));
  }
  std::this_thread::sleep_for(200ms);
  const uint64_t start = memoryOf(server.pid()).resident;
  const uint64_t limit = start + std::max<uint64_t>(start / 5, uint64_t{4} << 20);
  for (int round = 0; round < 4; ++round) {
    std::vector<std::unique_ptr<Channel>> open;
    for (int i = 0; i < 1000; ++i) {
      open.push_back(std::make_unique<Channel>(connectTcp(server.endpoint(), plainTcp())));
      if (i % 50 == 0) {
        ASSERT_TRUE(echoCall(*open.back(), static_cast<uint64_t>(i), 1000));
      }
    }
    const uint64_t busy = memoryOf(server.pid()).resident;
    open.clear();
    const uint64_t after = residentAfterReaping(server.pid(), limit);
    std::cout << "[ measured ] round " << round << ": server RSS " << start / 1024 << " KiB at start, "
              << busy / 1024 << " KiB with 1000 connections, " << after / 1024 << " KiB after\n";
    EXPECT_LE(after, limit) << "round " << round;
  }
}

/// Frames that claim 60 MiB and bring 1 KiB: memory comes as bytes do, so 40 of them
/// cost the server a few MiB, not 2.4 GB of address space, and calls go on meanwhile.
TEST(Limits, TcpMemoryIsCommittedForBytesThatArriveNotForClaims) {
  ServerProcess server([] { return listenTcp("127.0.0.1:0", plainTcp()); }, 0);
  {
    // A connection that comes and goes: the server reaps it and trims its heap (which
    // the child inherited from this process), so `before` is a settled figure.
    Channel once(connectTcp(server.endpoint(), plainTcp()));
    ASSERT_TRUE(echoCall(once, 1, 100));
  }
  std::this_thread::sleep_for(300ms);
  (void)server.newLogLines();  // its close
  Channel honest(connectTcp(server.endpoint(), plainTcp()));
  ASSERT_TRUE(echoCall(honest, 1, 100));
  const ProcessMemory before = memoryOf(server.pid());
  std::vector<OwnedFd> claims;
  for (int i = 0; i < 40; ++i) {
    OwnedFd c = rawConnect(portOf(server.endpoint()));
    ASSERT_TRUE(c);
    ASSERT_TRUE(sendHello(c.get(), {}, uint64_t{64} << 20));  // a client that accepts 64 MiB
    TcpAnswer answer;
    ASSERT_TRUE(readExactly(c.get(), &answer, sizeof answer));
    ASSERT_EQ(answer.accepted, 1u) << answer.reason;
    FrameHeader h{};
    h.frameBytes = 60u << 20;
    h.kind = static_cast<uint8_t>(FrameKind::kRequest);
    h.segmentCount = 1;
    h.tableOffset = h.frameBytes - 8;
    std::vector<std::byte> bytes(1024);
    std::memcpy(bytes.data(), &h, sizeof h);
    ASSERT_TRUE(writeExactly(c.get(), bytes.data(), bytes.size()));
    claims.push_back(std::move(c));
  }
  std::this_thread::sleep_for(300ms);  // the worker has read what came
  ASSERT_TRUE(echoCall(honest, 2, 100));
  const ProcessMemory during = memoryOf(server.pid());
  EXPECT_TRUE(server.newLogLines().empty()) << "the server closed connections it should hold";
  const int64_t virtualGrowth = static_cast<int64_t>(during.virtualBytes) - static_cast<int64_t>(before.virtualBytes);
  const int64_t residentGrowth = static_cast<int64_t>(during.resident) - static_cast<int64_t>(before.resident);
  std::cout << "[ measured ] 40 claims of 60 MiB: server virtual size " << virtualGrowth / 1024
            << " KiB, resident " << residentGrowth / 1024 << " KiB more than before\n";
  EXPECT_LT(virtualGrowth, int64_t{256} << 20);
  EXPECT_LT(residentGrowth, int64_t{64} << 20);
}

}  // namespace
}  // namespace zcrpc::conformance
