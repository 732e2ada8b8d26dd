// A hostile shm peer: a child process connects normally, sends a few valid messages, then
// writes garbage straight into its own transmit memory (which only it can write; it finds
// the mapping in /proc/self/maps as "/memfd:zcrpc shm://<name> (deleted)", rw-s). The
// parent must see kDisconnected with lastError() naming the problem, never crash, never
// hang, and stay healthy: no leaked descriptors or mappings, and new connections work.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <thread>

#include "test.capnp.h"
#include "transport/ring/layout.h"
#include "transport/test_util.h"
#include "zcrpc/frame.h"
#include "zcrpc/shm.h"

namespace zcrpc {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using test::Child;
using test::Pipe;

constexpr uint32_t kRingBytes = 64 * 1024;
constexpr uint64_t kArenaBytes = 1 << 20;
constexpr int kValidMessages = 3;

std::string uniqueName(const std::string& what) {
  static int counter = 0;
  return "hostile-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

ConnectionOptions connOpts() {
  ConnectionOptions o;
  o.ringBytes = kRingBytes;
  o.arenaBytes = kArenaBytes;
  o.maxMessageBytes = 512 * 1024;
  o.waitMode = WaitMode::kSpinThenSleep;
  o.connectTimeout = 2000ms;
  return o;
}

/// The child's view of its own transmit file, found through /proc/self/maps.
class TxFile {
 public:
  explicit TxFile(const std::string& name) {
    const std::string suffix = "/memfd:zcrpc shm://" + name + " (deleted)";
    std::ifstream maps("/proc/self/maps");
    for (std::string line; std::getline(maps, line);) {
      if (line.size() < suffix.size() ||
          line.compare(line.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      uintptr_t begin, end;
      char perms[5] = {};
      if (std::sscanf(line.c_str(), "%lx-%lx %4s", &begin, &end, perms) != 3) continue;
      if (std::string(perms) != "rw-s") continue;
      base_ = reinterpret_cast<std::byte*>(begin);
      size_ = end - begin;
    }
    if (!base_) throw std::runtime_error("own transmit file not found in /proc/self/maps");
    std::memcpy(&header_, base_, sizeof header_);
    if (header_.magic != ring::kMagic || header_.ringBytes != kRingBytes)
      throw std::runtime_error("unexpected transmit file header");
    ring_ = base_ + ring::kDataOffset;
    arena_ = ring_ + header_.ringBytes;
    // Walk the published records from the start to find the tail (the next record the
    // parent will read) and the arena end the last record announced.
    uint64_t pos = 0;
    for (int i = 0; i < 10000; ++i) {
      uint64_t w = load(pos & mask());
      if ((w >> 32) != ring::recordTag(pos)) break;
      uint32_t len = static_cast<uint32_t>(w);
      if (len & ring::kWrapBit) {
        pos += len & ~ring::kWrapBit;
        continue;
      }
      arenaEnd_ = load((pos & mask()) + 8);
      pos += len;
    }
    tail_ = pos;
  }

  uint64_t mask() const { return header_.ringBytes - 1; }
  uint64_t tail() const { return tail_; }
  uint64_t tailOffset() const { return tail_ & mask(); }
  uint64_t arenaEnd() const { return arenaEnd_; }
  uint64_t arenaWords() const { return header_.arenaBytes / 8; }
  std::byte* ring() { return ring_; }
  ring::FileControl& control() { return *reinterpret_cast<ring::FileControl*>(base_); }

  uint64_t load(uint64_t offset) const {
    return __atomic_load_n(reinterpret_cast<const uint64_t*>(ring_ + offset), __ATOMIC_ACQUIRE);
  }
  /// Writes the record word at the tail last, with release, as a producer publishes.
  void publish(uint32_t lowWord) {
    uint64_t w = (uint64_t{ring::recordTag(tail_)} << 32) | lowWord;
    __atomic_store_n(reinterpret_cast<uint64_t*>(ring_ + tailOffset()), w, __ATOMIC_RELEASE);
  }
  /// Lays out a record at the tail (everything but word 0): word 1, the frame header, the
  /// inline segment words and the table. Returns the record length.
  uint32_t writeRecord(FrameHeader h, const std::vector<uint64_t>& inlineWords,
                       const std::vector<SegmentEntry>& table, uint64_t arenaEnd) {
    std::byte* r = ring_ + tailOffset();
    uint32_t inlineBytes = static_cast<uint32_t>(inlineWords.size() * 8);
    uint32_t len = static_cast<uint32_t>(ring::kRecordHeaderBytes + kFrameHeaderBytes +
                                         inlineBytes + table.size() * sizeof(SegmentEntry));
    std::memcpy(r + 8, &arenaEnd, 8);
    std::memcpy(r + 16, &h, sizeof h);
    std::memcpy(r + 48, inlineWords.data(), inlineBytes);
    std::memcpy(r + 48 + inlineBytes, table.data(), table.size() * sizeof(SegmentEntry));
    return len;
  }

 private:
  std::byte* base_ = nullptr;
  size_t size_ = 0;
  ring::FileHeader header_{};
  std::byte* ring_ = nullptr;
  std::byte* arena_ = nullptr;
  uint64_t tail_ = 0;
  uint64_t arenaEnd_ = 0;
};

/// A well-formed frame header for `segments` segments and `inlineWords` inline words.
FrameHeader frameHeader(uint16_t segments, uint32_t inlineWords) {
  FrameHeader h{};
  h.kind = static_cast<uint8_t>(FrameKind::kData);
  h.segmentCount = segments;
  h.tableOffset = kFrameHeaderBytes + inlineWords * 8;
  h.frameBytes = h.tableOffset + segments * sizeof(SegmentEntry);
  return h;
}

/// A valid one-segment record (null root pointer) written by hand, optionally spoiled.
uint32_t writeSmallRecord(TxFile& f, FrameHeader h) {
  return f.writeRecord(h, {0}, {{1, kFrameHeaderBytes / 8}}, f.arenaEnd());
}

using Scribble = std::function<void(TxFile&)>;

struct Outcome {
  Status status = Status::kOk;
  bool threwDisconnected = false;
  std::string error;
  double ms = 0;
};

/// What the parent does to meet the corruption.
using Probe = std::function<Outcome(Connection&)>;

Outcome receiveProbe(Connection& conn) {
  Outcome o;
  auto t0 = Clock::now();
  IncomingMessage in;
  o.status = conn.receive(in, deadlineAfter(3s));
  o.ms = test::msSince(t0);
  o.error = conn.lastError();
  return o;
}

/// Sends until the send fails (the ring or arena fills and the corrupt index is read).
Outcome sendProbe(Connection& conn, size_t payloadBytes) {
  Outcome o;
  auto t0 = Clock::now();
  try {
    for (uint64_t i = 0; i < 100000 && test::msSince(t0) < 5000; ++i) {
      o.status = test::sendPayload(conn, i, payloadBytes, 16, deadlineAfter(3s));
      if (o.status != Status::kOk) break;
    }
  } catch (const Disconnected&) {
    o.threwDisconnected = true;
    o.status = Status::kDisconnected;
  }
  o.ms = test::msSince(t0);
  o.error = conn.lastError();
  return o;
}

class HostilePeer : public ::testing::Test {
 protected:
  /// Runs one hostile child that applies `scribble` after its valid messages, meets it
  /// with `probe`, and checks the parent's health afterwards.
  Outcome run(const Scribble& scribble, const Probe& probe) {
    const size_t fdsBefore = test::openFdCount();
    const std::string name = uniqueName(::testing::UnitTest::GetInstance()->current_test_info()->name());
    Outcome o;
    {  // everything of this round is gone at the end of the block
      ShmListenOptions lo;
      lo.connection = connOpts();
      auto listener = listenShm(name, lo);
      Pipe toChild, toParent;
      Child child([&] {
        auto conn = connectShm(name, connOpts());
        for (int i = 0; i < kValidMessages; ++i)
          if (test::sendPayload(*conn, i, 10 * (i + 1) * (i + 1), 0, deadlineAfter(2s)) != Status::kOk)
            return 3;
        if (toChild.get(10s) != 'g') return 4;
        TxFile file(name);
        scribble(file);
        toParent.put('d');
        toChild.get(20s);  // stay alive (the parent must see corruption, not a hang-up)
        return 0;
      });
      {
        auto conn = listener->accept(deadlineAfter(5s));
        if (!conn) {
          ADD_FAILURE() << "no connection from the child";
          return o;
        }
        for (int i = 0; i < kValidMessages; ++i) {
          IncomingMessage in;
          EXPECT_EQ(conn->receive(in, deadlineAfter(5s)), Status::kOk) << conn->lastError();
          uint64_t seq;
          EXPECT_TRUE(test::checkPayload(in, &seq));
        }
        toChild.put('g');
        if (toParent.get(10s) != 'd') {
          ADD_FAILURE() << "child did not scribble (exit " << child.wait(1s) << ")";
          return o;
        }
        o = probe(*conn);
        std::printf("[ hostile  ] %s: %s after %.1f ms: %s\n",
                    ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                    o.threwDisconnected ? "threw Disconnected" : std::string(statusName(o.status)).c_str(),
                    o.ms, o.error.c_str());
        EXPECT_LT(o.ms, 2000.0) << "took too long to notice";
        // Once faulted, it stays closed and answers at once.
        if (o.status == Status::kDisconnected) {
          IncomingMessage in;
          auto t0 = Clock::now();
          EXPECT_EQ(conn->receive(in, deadlineAfter(2s)), Status::kDisconnected);
          EXPECT_LT(test::msSince(t0), 100.0);
        }
      }
      toChild.put('q');
      EXPECT_EQ(child.wait(5s), 0) << "the hostile child itself failed";
      listener.reset();
    }
    // The parent is healthy: nothing leaked, and a fresh connection works both ways.
    EXPECT_EQ(test::openFdCount(), fdsBefore) << "descriptors leaked";
    checkFreshConnection();
    return o;
  }

  void checkFreshConnection() {
    const std::string name = uniqueName("fresh");
    ShmListenOptions lo;
    lo.connection = connOpts();
    auto listener = listenShm(name, lo);
    std::unique_ptr<Connection> server;
    std::thread acceptor([&] { server = listener->accept(deadlineAfter(5s)); });
    auto client = connectShm(name, connOpts());
    acceptor.join();
    ASSERT_TRUE(server);
    ASSERT_EQ(test::sendPayload(*client, 1, 5000), Status::kOk);
    ASSERT_EQ(test::sendPayload(*server, 2, 100000, 16), Status::kOk);
    IncomingMessage in;
    ASSERT_EQ(server->receive(in, deadlineAfter(5s)), Status::kOk);
    EXPECT_TRUE(test::checkPayload(in));
    ASSERT_EQ(client->receive(in, deadlineAfter(5s)), Status::kOk);
    EXPECT_TRUE(test::checkPayload(in));
  }

  void expectFault(const Outcome& o, const std::string& reason) {
    EXPECT_EQ(o.status, Status::kDisconnected);
    EXPECT_FALSE(o.error.empty()) << "lastError() must say what was wrong";
    EXPECT_THAT(o.error, HasSubstr(reason));
  }
};

// Control: the hand-built record is well-formed, so the failures below come from the
// corruption each one adds, not from the test's own record layout.
TEST_F(HostilePeer, ControlHandBuiltValidRecordIsAccepted) {
  Outcome o = run(
      [](TxFile& f) { f.publish(writeSmallRecord(f, frameHeader(1, 1))); },
      [](Connection& conn) {
        Outcome o;
        IncomingMessage in;
        o.status = conn.receive(in, deadlineAfter(3s));
        o.error = conn.lastError();
        if (o.status == Status::kOk) {
          EXPECT_EQ(in.segmentCount(), 1u);
          EXPECT_EQ(in.getRoot<bench::Payload>().getSeq(), 0u);  // null root: defaults
        }
        return o;
      });
  EXPECT_EQ(o.status, Status::kOk) << o.error;
}

TEST_F(HostilePeer, RandomBytesOverTheRing) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Outcome o = run(
        [seed](TxFile& f) {
          std::mt19937_64 rng(seed);
          for (uint64_t off = 0; off < kRingBytes; off += 8) {
            uint64_t v = rng();
            std::memcpy(f.ring() + off, &v, 8);
          }
          // A matching tag at the tail, so the parent reads the garbage as a record.
          f.publish(static_cast<uint32_t>(rng()));
        },
        receiveProbe);
    expectFault(o, "ring position");
  }
}

TEST_F(HostilePeer, RandomBytesWithoutAValidTagAreJustNoData) {
  // Garbage that never forms a record the parent expects is indistinguishable from "no
  // message yet": the parent must time out cleanly, not crash or fault.
  Outcome o = run(
      [](TxFile& f) {
        std::mt19937_64 rng(99);
        for (uint64_t off = 0; off < kRingBytes; off += 8) {
          uint64_t v = rng();
          if (off == f.tailOffset()) v = ~(uint64_t{ring::recordTag(f.tail())} << 32);
          std::memcpy(f.ring() + off, &v, 8);
        }
      },
      [](Connection& conn) {
        Outcome o;
        IncomingMessage in;
        auto t0 = Clock::now();
        o.status = conn.receive(in, deadlineAfter(200ms));
        o.ms = test::msSince(t0);
        o.error = conn.lastError();
        return o;
      });
  EXPECT_EQ(o.status, Status::kTimedOut);
  EXPECT_EQ(o.error, "");
}

TEST_F(HostilePeer, CorrectTagWithAbsurdLength) {
  Outcome o = run([](TxFile& f) { f.publish(0xFFFFFFF0u); }, receiveProbe);
  expectFault(o, "bad record length 4294967280");
}

TEST_F(HostilePeer, LengthPastTheEndOfTheRing) {
  Outcome o = run([](TxFile& f) { f.publish(static_cast<uint32_t>(kRingBytes - f.tailOffset() + 8)); },
                  receiveProbe);
  expectFault(o, "bad record length");
}

TEST_F(HostilePeer, ValidRecordWithHugeSegmentCount) {
  Outcome o = run(
      [](TxFile& f) {
        FrameHeader h = frameHeader(1, 1);
        h.segmentCount = 0xFFFF;
        f.publish(writeSmallRecord(f, h));
      },
      receiveProbe);
  expectFault(o, "malformed frame");
  EXPECT_THAT(o.error, HasSubstr("segment count 65535"));
}

TEST_F(HostilePeer, ArenaSegmentOffsetBeyondTheArena) {
  Outcome o = run(
      [](TxFile& f) {
        uint32_t beyond = static_cast<uint32_t>(f.arenaWords() + 16);
        uint32_t len = f.writeRecord(frameHeader(2, 1), {0},
                                     {{1, kFrameHeaderBytes / 8}, {8, kArenaBit | beyond}},
                                     f.arenaEnd());
        f.publish(len);
      },
      receiveProbe);
  expectFault(o, "outside the arena");
}

TEST_F(HostilePeer, ArenaSegmentStraddlingTheArenaEnd) {
  Outcome o = run(
      [](TxFile& f) {
        uint32_t last = static_cast<uint32_t>(f.arenaWords() - 4);
        uint32_t len = f.writeRecord(frameHeader(2, 1), {0},
                                     {{1, kFrameHeaderBytes / 8}, {8, kArenaBit | last}},
                                     f.arenaEnd());
        f.publish(len);
      },
      receiveProbe);
  expectFault(o, "outside the arena");
}

TEST_F(HostilePeer, InlineSegmentPointingOutsideItsRecord) {
  Outcome o = run(
      [](TxFile& f) {
        uint32_t len = f.writeRecord(frameHeader(1, 1), {0}, {{4000, kFrameHeaderBytes / 8}},
                                     f.arenaEnd());
        f.publish(len);
      },
      receiveProbe);
  expectFault(o, "overlaps");
}

TEST_F(HostilePeer, FrameLongerThanItsRecord) {
  Outcome o = run(
      [](TxFile& f) {
        FrameHeader h = frameHeader(1, 1);
        h.frameBytes += 4096;
        f.publish(writeSmallRecord(f, h));
      },
      receiveProbe);
  expectFault(o, "malformed frame");
}

TEST_F(HostilePeer, WrapMarkerWithWrongLength) {
  Outcome o = run([](TxFile& f) { f.publish(16 | ring::kWrapBit); }, receiveProbe);
  expectFault(o, "bad wrap marker");
}

TEST_F(HostilePeer, ArenaEndGoingBackwardsOrTooFar) {
  Outcome o = run(
      [](TxFile& f) {
        uint32_t len = f.writeRecord(frameHeader(1, 1), {0}, {{1, kFrameHeaderBytes / 8}},
                                     f.arenaEnd() + 2 * kArenaBytes + 8);
        f.publish(len);
      },
      receiveProbe);
  expectFault(o, "bad arena position");
}

TEST_F(HostilePeer, GarbageConsumerHead) {
  // The child never consumes, then claims to have consumed far more than was ever sent:
  // the parent, filling its ring, refreshes the head and must refuse it.
  Outcome o = run(
      [](TxFile& f) {
        f.control().consumer.head.store(0xDEADBEEFDEADBEE8ull, std::memory_order_release);
      },
      [](Connection& conn) { return sendProbe(conn, 1000); });
  expectFault(o, "invalid ring head");
}

TEST_F(HostilePeer, GarbageConsumerArenaHead) {
  Outcome o = run(
      [](TxFile& f) {
        f.control().consumer.arenaHead.store(0x7FFFFFFFFFFF0000ull, std::memory_order_release);
      },
      [](Connection& conn) { return sendProbe(conn, 200 * 1024); });  // arena messages
  expectFault(o, "invalid arena head");
}

TEST_F(HostilePeer, ConsumerHeadBeyondWhatWasSent) {
  // A plausible-looking head just past the producer's tail is as invalid as garbage.
  Outcome o = run(
      [](TxFile& f) { f.control().consumer.head.store(kRingBytes * 3, std::memory_order_release); },
      [](Connection& conn) { return sendProbe(conn, 1000); });
  expectFault(o, "invalid ring head");
}

TEST_F(HostilePeer, PeerRewritesSegmentsWhileTheParentReadsThem) {
  // The one thing validation cannot freeze: segment bytes are read in place, and the peer
  // may change them while our Cap'n Proto reader walks them. The reader must only ever
  // see wrong values or throw; the process must not crash. Runs in a child of the test so
  // a crash fails this test alone.
  EXPECT_TRUE(test::isolated([] {
    const std::string name = uniqueName("rewrite");
    ShmListenOptions lo;
    lo.connection = connOpts();
    auto listener = listenShm(name, lo);
    Pipe toChild, toParent;
    Child child([&] {
      auto conn = connectShm(name, connOpts());
      OutgoingMessage msg;
      if (conn->startMessage(msg, 512, deadlineAfter(2s)) != Status::kOk) return 3;
      auto note = msg.initRoot<Note>();
      note.setId(7);
      note.setText("a text the peer will trample");
      auto blobs = note.initBlobs(12);
      for (unsigned i = 0; i < 12; ++i) blobs.init(i, 40 + i * 30);
      if (conn->send(msg) != Status::kOk) return 3;
      if (toChild.get(10s) != 'g') return 4;
      // Find our record (the only one) and trample its segment words for 400 ms.
      TxFile f(name);
      uint64_t w0 = f.load(0);
      uint32_t len = static_cast<uint32_t>(w0);
      FrameHeader h;
      std::memcpy(&h, f.ring() + 16, sizeof h);
      std::byte* seg = f.ring() + 48;
      size_t words = (h.tableOffset - kFrameHeaderBytes) / 8;
      if (words == 0 || len < 64) return 5;
      toParent.put('d');
      std::vector<uint64_t> original(words);
      std::memcpy(original.data(), seg, words * 8);
      std::mt19937_64 rng(5);
      auto until = Clock::now() + 400ms;
      while (Clock::now() < until) {
        // Flip words between their real value and a plausible pointer (small offset,
        // struct/list tag, sizes) or noise, so the reader keeps meeting structures that
        // change between its checks and its uses. The root pointer (word 0) stays.
        size_t k = 1 + rng() % (words - 1);
        uint64_t v = rng();
        if (v % 3 == 0) v = original[k];
        else if (v % 3 == 1) v = (v & 0xFFFF'FFFF'0000'0003ull) | ((v >> 40) & 0x3FC);
        __atomic_store_n(reinterpret_cast<uint64_t*>(seg + 8 * k), v, __ATOMIC_RELAXED);
      }
      toChild.get(10s);
      return 0;
    });
    auto conn = listener->accept(deadlineAfter(5s));
    ASSERT_TRUE(conn);
    IncomingMessage in;
    ASSERT_EQ(conn->receive(in, deadlineAfter(5s)), Status::kOk);
    ASSERT_EQ(in.getRoot<Note>().getId(), 7u);
    toChild.put('g');
    ASSERT_EQ(toParent.get(10s), 'd');
    uint64_t reads = 0, threw = 0, sink = 0;
    auto until = Clock::now() + 400ms;
    while (Clock::now() < until) {
      try {
        auto n = in.getRoot<Note>();
        sink += n.getId() + n.getText().size();
        for (auto b : n.getBlobs()) {
          sink += b.size();
          for (auto byte : b) sink += byte;
        }
        ++reads;
      } catch (const kj::Exception&) {
        ++threw;
      }
    }
    std::printf("[ hostile  ] rewrite race: %llu reads completed, %llu threw (sink %llu)\n",
                static_cast<unsigned long long>(reads), static_cast<unsigned long long>(threw),
                static_cast<unsigned long long>(sink & 1));
    EXPECT_GT(reads + threw, 100u);
    in.release();
    toChild.put('q');
    EXPECT_EQ(child.wait(5s), 0);
  }));
}

}  // namespace
}  // namespace zcrpc
