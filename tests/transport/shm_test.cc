// shm:// between two processes: handshake, policy, names, bulk exchange with checksums,
// and what the survivor sees when the peer is SIGKILLed in each wait mode.
// Suites: 'unit' runs everything but ShmStress*; 'stress' runs ShmStress*.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <deque>
#include <set>
#include <fstream>
#include <map>
#include <random>
#include <thread>
#include <tuple>

#include "transport/test_util.h"
#include "zcrpc/shm.h"

namespace zcrpc {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using test::Child;
using test::Pipe;

std::string uniqueName(const std::string& what) {
  static int counter = 0;
  return "test-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

ConnectionOptions connOpts(WaitMode mode, uint32_t ringBytes = 64 * 1024,
                           uint64_t arenaBytes = 4 << 20, uint64_t maxMessageBytes = 2 << 20) {
  ConnectionOptions o;
  o.ringBytes = ringBytes;
  o.arenaBytes = arenaBytes;
  o.maxMessageBytes = maxMessageBytes;
  o.waitMode = mode;
  o.connectTimeout = 3000ms;
  return o;
}

ShmListenOptions listenOpts(WaitMode mode, uint32_t ringBytes = 64 * 1024,
                            uint64_t arenaBytes = 4 << 20, uint64_t maxMessageBytes = 2 << 20) {
  ShmListenOptions lo;
  lo.connection = connOpts(mode, ringBytes, arenaBytes, maxMessageBytes);
  return lo;
}

/// Lines of /proc/self/maps that mention `needle`.
std::vector<std::string> mapsLines(const std::string& needle) {
  std::ifstream maps("/proc/self/maps");
  std::vector<std::string> out;
  for (std::string line; std::getline(maps, line);)
    if (line.find(needle) != std::string::npos) out.push_back(line);
  return out;
}

/// Checks at the end of the program that the shm tests left nothing behind: no files in
/// /dev/shm, no zcrpc mappings, no extra descriptors.
class NoLeftovers : public ::testing::Environment {
 public:
  void SetUp() override {
    devShm_ = test::listDir("/dev/shm");
    fds_ = test::openFdCount();
  }
  void TearDown() override {
    for (const auto& name : test::listDir("/dev/shm")) {
      if (devShm_.count(name)) continue;
      if (name.find("zcrpc") != std::string::npos)
        ADD_FAILURE() << "/dev/shm/" << name << " left behind";
      else
        std::printf("[ note     ] new /dev/shm/%s (not zcrpc's; another process?)\n", name.c_str());
    }
    auto maps = mapsLines("memfd:zcrpc");
    EXPECT_TRUE(maps.empty()) << "zcrpc memory still mapped after every connection closed: "
                              << maps.front();
    EXPECT_EQ(test::openFdCount(), fds_) << "descriptors leaked";
  }

 private:
  std::set<std::string> devShm_;
  size_t fds_ = 0;
};
[[maybe_unused]] const auto* const kNoLeftovers = ::testing::AddGlobalTestEnvironment(new NoLeftovers);

// ---------------------------------------------------------------------------------------
// Handshake and basic exchange (in one process, two threads)

TEST(Shm, HandshakeAndEcho) {
  std::string name = uniqueName("echo");
  auto listener = listenShm(name, listenOpts(WaitMode::kSpinThenSleep));
  EXPECT_EQ(listener->endpoint(), "shm://" + name);
  std::thread server([&] {
    auto conn = listener->accept(deadlineAfter(5s));
    ASSERT_TRUE(conn);
    for (int i = 0; i < 1000; ++i) {
      IncomingMessage in;
      ASSERT_EQ(conn->receive(in, deadlineAfter(5s)), Status::kOk);
      auto req = in.getRoot<bench::Payload>();
      OutgoingMessage out;
      ASSERT_EQ(conn->startMessage(out, 64, deadlineAfter(5s)), Status::kOk);
      auto resp = out.initRoot<bench::Payload>();
      resp.setSeq(req.getSeq() + 1);
      resp.setData(req.getData());
      in.release();
      ASSERT_EQ(conn->send(out), Status::kOk);
    }
  });
  auto conn = connectShm(name, connOpts(WaitMode::kSpinThenSleep));
  EXPECT_THAT(conn->endpoint(), HasSubstr(name));
  for (uint64_t i = 0; i < 1000; ++i) {
    OutgoingMessage out;
    ASSERT_EQ(conn->startMessage(out, 64, deadlineAfter(5s)), Status::kOk);
    auto req = out.initRoot<bench::Payload>();
    req.setSeq(i);
    auto d = req.initData(i % 300);
    std::memset(d.begin(), static_cast<int>(i), d.size());
    ASSERT_EQ(conn->send(out), Status::kOk);
    IncomingMessage in;
    ASSERT_EQ(conn->receive(in, deadlineAfter(5s)), Status::kOk);
    auto resp = in.getRoot<bench::Payload>();
    ASSERT_EQ(resp.getSeq(), i + 1);
    ASSERT_EQ(resp.getData().size(), i % 300);
    if (i % 300) {
      ASSERT_EQ(resp.getData()[0], static_cast<uint8_t>(i));
    }
  }
  server.join();
}

TEST(Shm, LargeMessageGoesThroughArena) {
  std::string name = uniqueName("large");
  auto listener = listenShm(name, listenOpts(WaitMode::kBlocking, 1 << 20, 136 << 20, 64 << 20));
  std::thread server([&] {
    auto conn = listener->accept(deadlineAfter(5s));
    ASSERT_TRUE(conn);
    IncomingMessage in;
    ASSERT_EQ(conn->receive(in, deadlineAfter(10s)), Status::kOk);
    uint64_t seq;
    size_t size;
    ASSERT_TRUE(test::checkPayload(in, &seq, &size));
    EXPECT_EQ(size, 8u << 20);
  });
  auto conn = connectShm(name, connOpts(WaitMode::kBlocking));
  EXPECT_EQ(conn->maxMessageBytes(), 64u << 20) << "sizes come from the server";
  ASSERT_EQ(test::sendPayload(*conn, 1, 8u << 20, 16, deadlineAfter(5s)), Status::kOk);
  server.join();
}

TEST(Shm, PeerMemoryIsMappedReadOnly) {
  // The peer's transmit file arrives as a read-only descriptor: its mapping cannot be made
  // writable, so neither side can scribble on the other's memory.
  std::string name = uniqueName("ro");
  auto listener = listenShm(name, listenOpts(WaitMode::kBusyPoll));
  std::unique_ptr<Connection> server;
  std::thread acceptor([&] { server = listener->accept(deadlineAfter(5s)); });
  auto client = connectShm(name, connOpts(WaitMode::kBusyPoll));
  acceptor.join();
  ASSERT_TRUE(server);
  auto lines = mapsLines("/memfd:zcrpc shm://" + name + " ");
  size_t readOnly = 0;
  for (const auto& line : lines) {
    uintptr_t begin, end;
    char perms[5] = {};
    ASSERT_EQ(std::sscanf(line.c_str(), "%lx-%lx %4s", &begin, &end, perms), 3) << line;
    if (std::string(perms) != "r--s") continue;
    ++readOnly;
    errno = 0;
    EXPECT_NE(::mprotect(reinterpret_cast<void*>(begin), 4096, PROT_READ | PROT_WRITE), 0)
        << "peer mapping could be made writable: " << line;
    EXPECT_EQ(errno, EACCES);
  }
  EXPECT_EQ(readOnly, 2u) << "each side maps the other's file read-only";
}

// ---------------------------------------------------------------------------------------
// Policy and names

TEST(ShmPolicy, RefusedCredentialsThrowNotAdmittedAndAreRecorded) {
  std::string name = uniqueName("policy");
  ShmListenOptions lo = listenOpts(WaitMode::kSpinThenSleep);
  lo.policy.sameUid = false;  // and no uid or gid lists: nobody is admitted
  auto listener = listenShm(name, lo);
  std::thread acceptor([&] { EXPECT_EQ(listener->accept(deadlineAfter(700ms)), nullptr); });
  try {
    auto conn = connectShm(name, connOpts(WaitMode::kSpinThenSleep));
    ADD_FAILURE() << "a client the policy does not admit got a connection";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), HasSubstr("not admitted"));
    EXPECT_THAT(e.what(), HasSubstr(name));
  }
  acceptor.join();
  // Nothing was shared before the check.
  EXPECT_TRUE(mapsLines("shm://" + name).empty());
  auto refusals = listener->refusals();
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_THAT(refusals.back(), HasSubstr("not admitted"));
  EXPECT_THAT(refusals.back(), HasSubstr("uid " + std::to_string(::geteuid())));
}

TEST(ShmPolicy, ExplicitUidOrGidIsAdmitted) {
  for (int which = 0; which < 2; ++which) {
    std::string name = uniqueName("admit");
    ShmListenOptions lo = listenOpts(WaitMode::kSpinThenSleep);
    lo.policy.sameUid = false;
    if (which == 0)
      lo.policy.uids = {::geteuid() + 1, ::geteuid()};
    else
      lo.policy.gids = {::getegid()};
    auto listener = listenShm(name, lo);
    std::unique_ptr<Connection> server;
    std::thread acceptor([&] { server = listener->accept(deadlineAfter(5s)); });
    std::unique_ptr<Connection> client;
    EXPECT_NO_THROW(client = connectShm(name, connOpts(WaitMode::kSpinThenSleep)));
    acceptor.join();
    ASSERT_TRUE(server && client) << (which ? "gid" : "uid") << " list";
    EXPECT_TRUE(listener->refusals().empty());
    ASSERT_EQ(test::sendPayload(*client, 5, 100), Status::kOk);
    IncomingMessage in;
    ASSERT_EQ(server->receive(in, deadlineAfter(5s)), Status::kOk);
    EXPECT_TRUE(test::checkPayload(in));
  }
}

TEST(ShmNames, InvalidNamesAreRefusedWithTheName) {
  const std::string tooLong(200, 'x');
  for (const std::string& name : {std::string(), std::string("a/b"), std::string("bad\x01name"),
                                  tooLong}) {
    try {
      auto l = listenShm(name);
      ADD_FAILURE() << "listenShm accepted '" << name << "'";
    } catch (const Error& e) {
      if (!name.empty()) {
        EXPECT_THAT(e.what(), HasSubstr(name.substr(0, 20)));
      }
      EXPECT_THAT(e.what(), ::testing::AnyOf(HasSubstr("empty"), HasSubstr("longer"),
                                             HasSubstr("'/'"), HasSubstr("control")));
    }
    EXPECT_THROW(connectShm(name), Error) << "'" << name << "'";
  }
}

TEST(ShmNames, NameInUseIsAClearFailureAndFreedOnClose) {
  std::string name = uniqueName("taken");
  auto first = listenShm(name);
  try {
    auto second = listenShm(name);
    ADD_FAILURE() << "two listeners on one name";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), HasSubstr("shm://" + name));
    EXPECT_THAT(e.what(), HasSubstr("in use"));
  }
  first.reset();
  EXPECT_NO_THROW(first = listenShm(name)) << "the name must be free once its listener is gone";
}

TEST(ShmNames, ConnectingToNobodyFailsFast) {
  std::string name = uniqueName("nobody");
  auto t0 = Clock::now();
  try {
    auto c = connectShm(name, connOpts(WaitMode::kSpinThenSleep));
    ADD_FAILURE() << "connected to a name nobody listens on";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), HasSubstr("shm://" + name));
  }
  EXPECT_LT(test::msSince(t0), 1000.0);
}

/// Connects a raw unix socket to the listener's abstract address (a misbehaving client).
int rawConnect(const std::string& name) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string path = "zcrpc/" + name;
  std::memcpy(addr.sun_path + 1, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + path.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TEST(ShmListener, GarbageClientIsSkippedAndRecorded) {
  std::string name = uniqueName("garbage");
  auto listener = listenShm(name, listenOpts(WaitMode::kSpinThenSleep));
  int bad = rawConnect(name);
  ASSERT_GE(bad, 0);
  char junk[300];
  std::memset(junk, 0x5A, sizeof junk);
  ASSERT_EQ(::send(bad, junk, sizeof junk, 0), static_cast<ssize_t>(sizeof junk));
  std::unique_ptr<Connection> server;
  std::thread acceptor([&] { server = listener->accept(deadlineAfter(5s)); });
  auto client = connectShm(name, connOpts(WaitMode::kSpinThenSleep));
  acceptor.join();
  ::close(bad);
  ASSERT_TRUE(server) << "a garbage client must not end or block the listener";
  auto refusals = listener->refusals();
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_THAT(refusals[0], HasSubstr("handshake"));
  ASSERT_EQ(test::sendPayload(*client, 1, 10), Status::kOk);
  IncomingMessage in;
  EXPECT_EQ(server->receive(in, deadlineAfter(5s)), Status::kOk);
}

// SRC BUG: ShmListener::accept() runs the handshake with the full connectTimeout whatever
// its own deadline, so one client that connects and stays silent holds accept() (and
// every client queued behind it) past the caller's deadline.
TEST(ShmBug, SilentClientDoesNotHoldAcceptPastItsDeadline) {
  std::string name = uniqueName("silent");
  auto listener = listenShm(name, listenOpts(WaitMode::kSpinThenSleep));  // 3 s handshake timeout
  int silent = rawConnect(name);
  ASSERT_GE(silent, 0);
  auto t0 = Clock::now();
  auto conn = listener->accept(deadlineAfter(200ms));
  double ms = test::msSince(t0);
  ::close(silent);
  EXPECT_EQ(conn, nullptr);
  std::printf("[ measured ] accept(deadline 200 ms) with a silent client returned after %.0f ms\n", ms);
  EXPECT_LT(ms, 1000.0);
}

// ---------------------------------------------------------------------------------------
// Peer killed: what the survivor sees, per wait mode

enum class Victim { kClient, kServer };
enum class Blocked { kInReceive, kInSend };

struct KillCase {
  Victim victim;
  WaitMode mode;
  Blocked blocked;
};

std::string caseName(const ::testing::TestParamInfo<KillCase>& info) {
  return std::string(info.param.victim == Victim::kClient ? "KillClient" : "KillServer") + "_" +
         test::modeName(info.param.mode) + "_" +
         (info.param.blocked == Blocked::kInReceive ? "SurvivorInReceive" : "SurvivorInSend");
}

class ShmPeerKilled : public ::testing::TestWithParam<KillCase> {};

/// Child body: stream payloads until killed (the survivor waits in receive).
int streamUntilKilled(Connection& conn) {
  auto stopAt = Clock::now() + 30s;
  for (uint64_t i = 0; Clock::now() < stopAt; ++i) {
    if (test::sendPayload(conn, i, (i * 37) % 500, 0, deadlineAfter(5s)) != Status::kOk) return 3;
    std::this_thread::sleep_for(200us);
  }
  return 4;
}

/// Child body: take a few messages, then stop reading (the survivor fills the ring and
/// waits for space).
int readSomeThenStall(Connection& conn) {
  for (int i = 0; i < 10; ++i) {
    IncomingMessage in;
    if (conn.receive(in, deadlineAfter(5s)) != Status::kOk) return 3;
  }
  std::this_thread::sleep_for(30s);
  return 4;
}

TEST_P(ShmPeerKilled, SurvivorSeesDisconnectedPromptly) {
  const KillCase c = GetParam();
  const std::string name = uniqueName("kill");
  auto body = [&](Connection& conn) {
    return c.blocked == Blocked::kInReceive ? streamUntilKilled(conn) : readSomeThenStall(conn);
  };
  std::unique_ptr<Listener> listener;
  std::unique_ptr<Child> child;
  std::unique_ptr<Connection> conn;
  if (c.victim == Victim::kClient) {
    listener = listenShm(name, listenOpts(c.mode));
    child = std::make_unique<Child>([&] {
      auto conn = connectShm(name, connOpts(c.mode));
      return body(*conn);
    });
    conn = listener->accept(deadlineAfter(5s));
  } else {
    Pipe ready;
    child = std::make_unique<Child>([&] {
      auto l = listenShm(name, listenOpts(c.mode));
      ready.put('L');
      auto conn = l->accept(deadlineAfter(5s));
      return conn ? body(*conn) : 2;
    });
    ASSERT_EQ(ready.get(5s), 'L');
    conn = connectShm(name, connOpts(c.mode));
  }
  ASSERT_TRUE(conn);

  std::atomic<int64_t> killedAt{0};
  std::thread killer;
  auto killSoon = [&](std::chrono::milliseconds after) {
    killer = std::thread([&, after] {
      std::this_thread::sleep_for(after);
      killedAt = Clock::now().time_since_epoch().count();
      child->kill();
    });
  };
  Status s = Status::kOk;
  uint64_t count = 0;
  if (c.blocked == Blocked::kInReceive) {
    for (; count < 1'000'000; ++count) {
      IncomingMessage in;
      s = conn->receive(in, deadlineAfter(5s));
      if (s != Status::kOk) break;
      ASSERT_TRUE(test::checkPayload(in));
      if (count == 100) killSoon(20ms);  // mid-stream
    }
  } else {
    killSoon(150ms);  // by then the ring is full and the sender waits for space
    for (; count < 1'000'000; ++count) {
      s = test::sendPayload(*conn, count, 1000, 0, deadlineAfter(5s));
      if (s != Status::kOk) break;
    }
  }
  auto detectedAt = Clock::now().time_since_epoch().count();
  if (killer.joinable()) killer.join();
  ASSERT_NE(killedAt.load(), 0) << "the stream stopped before the kill: " << statusName(s) << " "
                                << conn->lastError();
  double ms = std::chrono::duration<double, std::milli>(Clock::duration(detectedAt - killedAt.load()))
                  .count();
  std::printf("[ measured ] %s: disconnect seen %.2f ms after SIGKILL (%llu messages before)\n",
              caseName({c, 0}).c_str(), ms, static_cast<unsigned long long>(count));
  EXPECT_EQ(s, Status::kDisconnected);
  EXPECT_LT(ms, 1000.0);
  EXPECT_THAT(conn->lastError(), HasSubstr("peer"));
  // And it stays disconnected, at once, for both directions.
  IncomingMessage in;
  auto t0 = Clock::now();
  EXPECT_EQ(conn->receive(in, deadlineAfter(5s)), Status::kDisconnected);
  EXPECT_EQ(test::sendPayload(*conn, 0, 10, 0, deadlineAfter(5s)), Status::kDisconnected);
  EXPECT_LT(test::msSince(t0), 100.0);
}

std::vector<KillCase> allKillCases() {
  std::vector<KillCase> cases;
  for (Victim v : {Victim::kClient, Victim::kServer})
    for (WaitMode m : {WaitMode::kBusyPoll, WaitMode::kSpinThenSleep, WaitMode::kBlocking})
      for (Blocked b : {Blocked::kInReceive, Blocked::kInSend}) cases.push_back({v, m, b});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Matrix, ShmPeerKilled, ::testing::ValuesIn(allKillCases()), caseName);

TEST(Shm, FreshConnectionAfterAPeerDied) {
  // The listener outlives a client that was killed; the next client works.
  std::string name = uniqueName("again");
  auto listener = listenShm(name, listenOpts(WaitMode::kSpinThenSleep));
  for (int round = 0; round < 3; ++round) {
    Child child([&] {
      auto conn = connectShm(name, connOpts(WaitMode::kSpinThenSleep));
      if (test::sendPayload(*conn, round, 100, 0, deadlineAfter(5s)) != Status::kOk) return 3;
      std::this_thread::sleep_for(30s);
      return 0;
    });
    auto conn = listener->accept(deadlineAfter(5s));
    ASSERT_TRUE(conn) << "round " << round;
    IncomingMessage in;
    ASSERT_EQ(conn->receive(in, deadlineAfter(5s)), Status::kOk);
    uint64_t seq;
    ASSERT_TRUE(test::checkPayload(in, &seq));
    EXPECT_EQ(seq, static_cast<uint64_t>(round));
    in.release();
    child.kill();
    EXPECT_EQ(conn->receive(in, deadlineAfter(2s)), Status::kDisconnected);
  }
}

// ---------------------------------------------------------------------------------------
// Stress: two processes, random sizes, checksums both ways

struct StressCase {
  WaitMode mode;
  bool childIsServer;  // the child is always the producer
  std::chrono::seconds budget;
};

/// Sizes: mostly small, some up to 8 KiB, now and then 1..1.5 MiB through the arena.
size_t stressSize(std::mt19937_64& rng) {
  uint64_t r = rng();
  if (r % 2000 == 0) return (1 << 20) + (r >> 12) % (512 << 10);
  switch ((r >> 8) % 20) {
    case 0: case 1: case 2: return (r >> 16) % 8193;
    case 3: case 4: case 5: case 6: case 7: case 8: case 9: return (r >> 16) % 513;
    default: return (r >> 16) % 65;
  }
}

constexpr uint64_t kStressMaxMessages = 2'000'000;
constexpr uint64_t kAckEvery = 4096;
constexpr uint64_t kEndSeq = ~uint64_t{0};

/// Child: sends until the count or the time budget runs out, then an end marker whose
/// checksum is the count. Every kAckEvery messages the parent answers with the running
/// hash of what it received; the child compares it with its own.
int stressProducer(Connection& conn, std::chrono::seconds budget) {
  std::mt19937_64 rng(2024);
  std::map<uint64_t, uint64_t> expectAck;
  uint64_t running = 0, acksChecked = 0;
  const auto stopAt = Clock::now() + budget;
  auto pollAcks = [&] {
    for (int k = 0; k < 4; ++k) {
      IncomingMessage in;
      if (conn.tryReceive(in) != Status::kOk) return true;
      auto p = in.getRoot<bench::Payload>();
      auto it = expectAck.find(p.getSeq());
      if (it == expectAck.end() || it->second != p.getChecksum()) {
        std::fprintf(stderr, "producer: ack for %llu does not match\n",
                     static_cast<unsigned long long>(p.getSeq()));
        return false;
      }
      expectAck.erase(it);
      ++acksChecked;
    }
    return true;
  };
  uint64_t seq = 0;
  for (; seq < kStressMaxMessages && (seq % 256 || Clock::now() < stopAt); ++seq) {
    size_t size = stressSize(rng);
    OutgoingMessage msg;
    if (conn.startMessage(msg, test::payloadWords(std::min<size_t>(size, 4096)),
                          deadlineAfter(10s)) != Status::kOk) {
      std::fprintf(stderr, "producer: start %llu: %s\n", static_cast<unsigned long long>(seq),
                   conn.lastError().c_str());
      return 3;
    }
    test::buildPayload(msg, seq, size);
    uint64_t sum = msg.getRoot<bench::Payload>().getChecksum();
    if (conn.send(msg) != Status::kOk) return 3;
    running = test::mix64(running ^ sum);
    if ((seq + 1) % kAckEvery == 0) expectAck[seq + 1] = running;
    if (!pollAcks()) return 5;
  }
  OutgoingMessage end;
  if (conn.startMessage(end, 8, deadlineAfter(10s)) != Status::kOk) return 3;
  auto p = end.initRoot<bench::Payload>();
  p.setSeq(kEndSeq);
  p.setChecksum(seq);
  if (conn.send(end) != Status::kOk) return 3;
  // Wait for the last acks (bounded).
  auto until = Clock::now() + 10s;
  while (!expectAck.empty() && Clock::now() < until) {
    IncomingMessage in;
    Status s = conn.receive(in, deadlineAfter(1s));
    if (s == Status::kDisconnected) break;
    if (s != Status::kOk) continue;
    auto a = in.getRoot<bench::Payload>();
    auto it = expectAck.find(a.getSeq());
    if (it == expectAck.end() || it->second != a.getChecksum()) return 5;
    expectAck.erase(it);
    ++acksChecked;
  }
  if (!expectAck.empty()) {
    std::fprintf(stderr, "producer: %zu acks missing\n", expectAck.size());
    return 6;
  }
  return acksChecked > 0 || seq < kAckEvery ? 0 : 7;
}

class ShmStress : public ::testing::TestWithParam<StressCase> {};

TEST_P(ShmStress, TwoProcessesRandomSizesWithChecksums) {
  const StressCase c = GetParam();
  const std::string name = uniqueName("stress");
  // 256 KiB ring (records up to 64 KiB stay in it), 16 MiB arena for the big ones.
  const auto lo = listenOpts(c.mode, 256 << 10, 16 << 20, 4 << 20);
  const auto co = connOpts(c.mode);
  std::unique_ptr<Listener> listener;
  std::unique_ptr<Child> child;
  std::unique_ptr<Connection> conn;
  if (!c.childIsServer) {
    listener = listenShm(name, lo);
    child = std::make_unique<Child>([&] {
      auto conn = connectShm(name, co);
      return stressProducer(*conn, c.budget);
    });
    conn = listener->accept(deadlineAfter(5s));
  } else {
    Pipe ready;
    child = std::make_unique<Child>([&] {
      auto l = listenShm(name, lo);
      ready.put('L');
      auto conn = l->accept(deadlineAfter(5s));
      return conn ? stressProducer(*conn, c.budget) : 2;
    });
    ASSERT_EQ(ready.get(5s), 'L');
    conn = connectShm(name, co);
  }
  ASSERT_TRUE(conn);

  const auto t0 = Clock::now();
  const auto giveUpAt = t0 + c.budget + 30s;
  std::deque<IncomingMessage> window;
  uint64_t received = 0, bytes = 0, running = 0, big = 0;
  bool ended = false;
  while (Clock::now() < giveUpAt) {
    IncomingMessage in;
    Status s = conn->receive(in, deadlineAfter(10s));
    ASSERT_EQ(s, Status::kOk) << "after " << received << " messages: " << conn->lastError();
    auto p = in.getRoot<bench::Payload>();
    if (p.getSeq() == kEndSeq) {
      EXPECT_EQ(p.getChecksum(), received) << "the producer sent a different number";
      ended = true;
      break;
    }
    uint64_t seq;
    size_t size;
    if (received % 64 == 0) {
      ASSERT_TRUE(test::checkPayload(in, &seq, &size));
    } else {
      ASSERT_TRUE(test::payloadIntact(in, seq, size)) << "checksum mismatch at " << received;
    }
    ASSERT_EQ(seq, received) << "lost, duplicated or reordered";
    bytes += size;
    big += size >= (1 << 20);
    running = test::mix64(running ^ p.getChecksum());
    ++received;
    window.push_back(std::move(in));
    if (window.size() > 4) window.pop_front();  // hold a few leases, as a server would
    if (received % kAckEvery == 0) {
      OutgoingMessage ack;
      ASSERT_EQ(conn->startMessage(ack, 8, deadlineAfter(10s)), Status::kOk);
      auto a = ack.initRoot<bench::Payload>();
      a.setSeq(received);
      a.setChecksum(running);
      ASSERT_EQ(conn->send(ack), Status::kOk);
    }
  }
  window.clear();
  double secs = test::msSince(t0) / 1000;
  EXPECT_TRUE(ended) << "no end marker within the time limit";
  int code = child->wait(20s);
  EXPECT_EQ(code, 0) << "producer child failed (3 send, 5 ack mismatch, 6 acks missing)";
  std::printf("[ measured ] %s, child is %s: %llu messages (%llu of them >= 1 MiB), %.1f MB "
              "in %.1f s\n",
              test::modeName(c.mode), c.childIsServer ? "server" : "client",
              static_cast<unsigned long long>(received), static_cast<unsigned long long>(big),
              bytes / 1e6, secs);
  EXPECT_GE(received, 10'000u) << "too few messages went through to mean anything";
}

INSTANTIATE_TEST_SUITE_P(
    Modes, ShmStress,
    ::testing::Values(StressCase{WaitMode::kSpinThenSleep, false, 12s},
                      StressCase{WaitMode::kBusyPoll, false, 5s},
                      StressCase{WaitMode::kBlocking, true, 5s}),
    [](const auto& info) {
      return std::string(test::modeName(info.param.mode)) +
             (info.param.childIsServer ? "_ChildServer" : "_ChildClient");
    });

}  // namespace
}  // namespace zcrpc
