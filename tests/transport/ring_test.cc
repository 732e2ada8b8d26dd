// Ring behaviour through the loopback transport, which runs the same ring code as shm
// (src/transport/ring) over private memory. Fast tests are in suite 'unit'; the
// *Stress* ones (threaded exchanges per wait mode) run in suite 'stress'.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <capnp/orphan.h>

#include "test.capnp.h"
#include "transport/ring/layout.h"
#include "transport/test_util.h"
#include "zcrpc/loopback.h"

namespace zcrpc {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using test::checkPayload;
using test::sendPayload;

ConnectionOptions opts(uint32_t ringBytes = 4096, uint64_t arenaBytes = 1 << 20,
                       uint64_t maxMessageBytes = 1 << 20, WaitMode mode = WaitMode::kBusyPoll,
                       uint32_t maxLeases = 256) {
  ConnectionOptions o;
  o.ringBytes = ringBytes;
  o.arenaBytes = arenaBytes;
  o.maxMessageBytes = maxMessageBytes;
  o.waitMode = mode;
  o.maxLeases = maxLeases;
  // Bounds every internal wait for arena space (it throws Overloaded after this).
  o.connectTimeout = std::chrono::milliseconds(2000);
  return o;
}

/// Receives one message now and checks it is the intact payload `expectSeq`.
::testing::AssertionResult receiveSeq(Connection& c, uint64_t expectSeq,
                                      IncomingMessage* keep = nullptr) {
  IncomingMessage in;
  Status s = c.tryReceive(in);
  if (s != Status::kOk)
    return ::testing::AssertionFailure() << "tryReceive: " << statusName(s) << " expecting seq "
                                         << expectSeq << " (" << c.lastError() << ")";
  uint64_t seq = 0;
  auto r = checkPayload(in, &seq);
  if (!r) return r;
  if (seq != expectSeq)
    return ::testing::AssertionFailure() << "got seq " << seq << ", expected " << expectSeq;
  if (keep) *keep = std::move(in);
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------
// Record tags

TEST(RingLayout, AZeroWordNeverPassesForARecord) {
  // The consumer polls the word where the next record will start; it often holds zeros
  // (fresh pages, the unused end of the previous record's first segment). For every
  // position, including those where (p >> 3) equals the tag constant in its low 32 bits,
  // the tag must differ from zero, or that word reads as a record of length 0.
  const uint64_t zeroAtVersion1 = uint64_t{0xA5C3'5A3Cu} << 3;
  for (uint64_t lap = 0; lap < 4; ++lap)
    for (uint64_t p : {zeroAtVersion1, zeroAtVersion1 + 8, zeroAtVersion1 - 8})
      EXPECT_NE(ring::recordTag(p + (lap << 35)), 0u) << "position " << p + (lap << 35);
  std::mt19937_64 rng(7);
  for (int i = 0; i < 100'000; ++i) {
    const uint64_t p = rng() & ~uint64_t{7};
    ASSERT_NE(ring::recordTag(p), 0u) << "position " << p;
  }
}

TEST(RingLayout, RecordsALapApartHaveDifferentTags) {
  // A stale record from an earlier lap at the same offset must never pass for a new one.
  std::mt19937_64 rng(11);
  for (uint64_t ringBytes = 4096; ringBytes <= (uint64_t{1} << 30); ringBytes <<= 1)
    for (int i = 0; i < 2000; ++i) {
      const uint64_t p = (rng() & ((uint64_t{1} << 40) - 1)) & ~uint64_t{7};
      for (uint64_t laps = 1; laps <= 3; ++laps)
        ASSERT_NE(ring::recordTag(p), ring::recordTag(p + laps * ringBytes))
            << "position " << p << ", ring of " << ringBytes << " bytes, " << laps << " laps on";
    }
}

// ---------------------------------------------------------------------------------------
// Empty, full, wrap, sizes

TEST(Ring, EmptyReceiveWouldBlock) {
  auto [a, b] = makeLoopbackPair(opts());
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);
  EXPECT_FALSE(in.valid());
  EXPECT_EQ(a->tryReceive(in), Status::kWouldBlock);
}

TEST(Ring, RoundTripInPlace) {
  auto [a, b] = makeLoopbackPair(opts());
  ASSERT_EQ(sendPayload(*a, 7, 100), Status::kOk);
  IncomingMessage in;
  ASSERT_EQ(b->tryReceive(in), Status::kOk);
  EXPECT_TRUE(checkPayload(in));
  EXPECT_EQ(in.getRoot<bench::Payload>().getSeq(), 7u);
  EXPECT_EQ(in.header().kind, static_cast<uint8_t>(FrameKind::kData));
  // Both directions are independent rings.
  ASSERT_EQ(sendPayload(*b, 8, 10), Status::kOk);
  EXPECT_TRUE(receiveSeq(*a, 8));
}

/// A Payload sent with sendMore() (a burst's message), waiting for room until `deadline`.
Status sendMorePayload(Connection& c, uint64_t seq, size_t size, Deadline deadline = deadlineAfter(5s)) {
  OutgoingMessage msg;
  Status s = c.startMessage(msg, test::payloadWords(size), deadline);
  if (s != Status::kOk) return s;
  test::buildPayload(msg, seq, size);
  return c.sendMore(msg);
}

TEST(Ring, ABurstArrivesWholeAtFlush) {
  // The first record of a burst keeps its record word until flush(): a consumer that keeps
  // up then does not take each record's cache line while the producer still writes it.
  auto [a, b] = makeLoopbackPair(opts());
  for (uint64_t seq = 0; seq < 5; ++seq) ASSERT_EQ(sendMorePayload(*a, seq, 40), Status::kOk);
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);
  ASSERT_EQ(a->flush(), Status::kOk);
  for (uint64_t seq = 0; seq < 5; ++seq) ASSERT_TRUE(receiveSeq(*b, seq));
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);
  // A message sent with flush publishes the burst before it too; one sent with send(msg,
  // false) is published at once (only its wake-up waits).
  ASSERT_EQ(sendMorePayload(*a, 5, 40), Status::kOk);
  ASSERT_EQ(sendPayload(*a, 6, 40), Status::kOk);
  ASSERT_TRUE(receiveSeq(*b, 5));
  ASSERT_TRUE(receiveSeq(*b, 6));
  ASSERT_EQ(sendPayload(*a, 7, 40, 0, Deadline::min(), /*flush=*/false), Status::kOk);
  ASSERT_TRUE(receiveSeq(*b, 7));
  // close() publishes what it holds: nothing sent is lost.
  ASSERT_EQ(sendMorePayload(*a, 8, 40), Status::kOk);
  a->close();
  ASSERT_TRUE(receiveSeq(*b, 8));
}

TEST(Ring, AProducerWaitingForRoomPublishesTheBurstItHolds) {
  // Bursts longer than the ring: the producer must publish what it holds before it waits
  // for the consumer to free space (else both would wait for each other).
  auto [a, b] = makeLoopbackPair(opts(4096));
  constexpr uint64_t kCount = 400;  // ~40 laps of a 4 KiB ring
  std::atomic<bool> failed{false};
  std::thread consumer([&, &b = b] {
    for (uint64_t seq = 0; seq < kCount && !failed; ++seq) {
      IncomingMessage in;
      if (b->receive(in, deadlineAfter(5s)) != Status::kOk) {
        failed = true;
        return;
      }
      uint64_t got = UINT64_MAX;
      if (!checkPayload(in, &got) || got != seq) failed = true;
    }
  });
  for (uint64_t seq = 0; seq < kCount && !failed; ++seq)
    ASSERT_EQ(sendMorePayload(*a, seq, 200), Status::kOk);
  ASSERT_EQ(a->flush(), Status::kOk);
  consumer.join();
  EXPECT_FALSE(failed);
}

TEST(Ring, HeaderFieldsArrive) {
  auto [a, b] = makeLoopbackPair(opts());
  OutgoingMessage msg;
  ASSERT_EQ(a->tryStartMessage(msg, 8), Status::kOk);
  msg.header().kind = static_cast<uint8_t>(FrameKind::kRequest);
  msg.header().callId = 0x0102030405060708ull;
  msg.header().interfaceId = 0xfedcba9876543210ull;
  msg.header().methodId = 17;
  test::buildPayload(msg, 1, 5);
  ASSERT_EQ(a->send(msg), Status::kOk);
  IncomingMessage in;
  ASSERT_EQ(b->tryReceive(in), Status::kOk);
  EXPECT_EQ(in.header().kind, static_cast<uint8_t>(FrameKind::kRequest));
  EXPECT_EQ(in.header().callId, 0x0102030405060708ull);
  EXPECT_EQ(in.header().interfaceId, 0xfedcba9876543210ull);
  EXPECT_EQ(in.header().methodId, 17);
  EXPECT_TRUE(checkPayload(in));
}

TEST(Ring, FullRingStartWouldBlockThenRoomAfterRelease) {
  auto [a, b] = makeLoopbackPair(opts());
  uint64_t sent = 0;
  // Fill with 200-byte messages, then top up with the smallest ones.
  for (size_t size : {200, 0}) {
    Status s;
    while ((s = sendPayload(*a, sent, size)) == Status::kOk) {
      ++sent;
      ASSERT_LT(sent, 1000u) << "a 4 KiB ring never filled up";
    }
    ASSERT_EQ(s, Status::kWouldBlock);
  }
  EXPECT_GT(sent, 10u);
  OutgoingMessage msg;
  EXPECT_EQ(a->tryStartMessage(msg, 1), Status::kWouldBlock);
  EXPECT_FALSE(msg.isOpen());
  auto t0 = Clock::now();
  EXPECT_EQ(a->startMessage(msg, 1, deadlineAfter(30ms)), Status::kTimedOut);
  EXPECT_GE(test::msSince(t0), 29.0);
  EXPECT_LT(test::msSince(t0), 1000.0);
  EXPECT_FALSE(msg.isOpen());
  // One release makes room again.
  ASSERT_TRUE(receiveSeq(*b, 0));
  ASSERT_EQ(sendPayload(*a, sent, 0), Status::kOk);
  ++sent;
  for (uint64_t i = 1; i < sent; ++i) ASSERT_TRUE(receiveSeq(*b, i));
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);
}

TEST(Ring, FullThenDrainAndWrapManyLaps) {
  auto [a, b] = makeLoopbackPair(opts());
  uint64_t sent = 0, received = 0;
  while (sendPayload(*a, sent, 200) == Status::kOk) ++sent;
  EXPECT_GT(sent, 5u);
  // Many laps of odd sizes: every message arrives once, in order, intact.
  for (int round = 0; round < 2000; ++round) {
    size_t size = 1 + (round * 37) % 700;
    Status s;
    int tries = 0;
    while ((s = sendPayload(*a, sent, size)) == Status::kWouldBlock) {
      ASSERT_TRUE(receiveSeq(*b, received++));
      ASSERT_LT(++tries, 100);
    }
    ASSERT_EQ(s, Status::kOk);
    ++sent;
  }
  while (received < sent) ASSERT_TRUE(receiveSeq(*b, received++));
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);
}

TEST(Ring, EveryPayloadSizeFromZeroPastTheRingShare) {
  // Sizes 0..2100 bytes: small ones sit in the ring, ones past a quarter of the ring get
  // their first segment from the arena; every byte must arrive.
  auto [a, b] = makeLoopbackPair(opts());
  for (uint64_t size = 0; size <= 2100; ++size) {
    ASSERT_EQ(sendPayload(*a, size, size), Status::kOk) << size;
    ASSERT_TRUE(receiveSeq(*b, size));
  }
}

TEST(Ring, WrapAtEveryOffset) {
  // Before each large message, a filler moves the tail by a different multiple of 8, so
  // the large message starts at (nearly) every offset and wraps whenever it does not fit.
  auto [a, b] = makeLoopbackPair(opts());
  uint64_t seq = 0;
  for (int i = 0; i < 1200; ++i) {
    ASSERT_EQ(sendPayload(*a, seq, (i % 97) * 8), Status::kOk);
    ASSERT_TRUE(receiveSeq(*b, seq++));
    ASSERT_EQ(sendPayload(*a, seq, 900 - (i % 5)), Status::kOk) << "iteration " << i;
    ASSERT_TRUE(receiveSeq(*b, seq++));
  }
}

// ---------------------------------------------------------------------------------------
// Leases

TEST(Ring, OutOfOrderReleaseReclaimsInOrder) {
  // 4 KiB ring filled with records of ~850 bytes: a handful fit, then the ring is full.
  auto [a, b] = makeLoopbackPair(opts());
  uint64_t n = 0;
  while (sendPayload(*a, n, 850) == Status::kOk) ASSERT_LT(++n, 10u);
  ASSERT_GE(n, 3u);
  std::vector<IncomingMessage> l(n);
  for (uint64_t i = 0; i < n; ++i) ASSERT_TRUE(receiveSeq(*b, i, &l[i]));
  // Release every lease but the oldest, newest first: the oldest still holds the ring's
  // first space, so nothing is reclaimed.
  for (uint64_t i = n - 1; i >= 1; --i) {
    l[i].release();
    EXPECT_FALSE(l[i].valid());
    ASSERT_EQ(sendPayload(*a, 99, 850), Status::kWouldBlock) << "after releasing lease " << i;
  }
  EXPECT_TRUE(checkPayload(l[0])) << "the oldest lease must still read intact";
  // Releasing the oldest frees them all at once: as many fit again, minus at most one
  // for the pad before the wrap.
  l[0].release();
  for (uint64_t i = n; i < 2 * n - 1; ++i) ASSERT_EQ(sendPayload(*a, i, 850), Status::kOk) << i;
  for (uint64_t i = n; i < 2 * n - 1; ++i) ASSERT_TRUE(receiveSeq(*b, i));
}

TEST(Ring, HeldLeasesStayIntactWhileTheProducerKeepsSending) {
  // The producer must never reuse space a lease still covers.
  auto [a, b] = makeLoopbackPair(opts(16384));
  std::deque<IncomingMessage> held;
  std::mt19937_64 rng(1);
  uint64_t sent = 0, received = 0;
  for (int step = 0; step < 20000; ++step) {
    size_t size = rng() % 1500;
    if (sendPayload(*a, sent, size) == Status::kOk) ++sent;
    IncomingMessage in;
    if (b->tryReceive(in) == Status::kOk) {
      uint64_t seq;
      ASSERT_TRUE(checkPayload(in, &seq));
      ASSERT_EQ(seq, received++);
      held.push_back(std::move(in));
    }
    // Release a random held lease (not necessarily the oldest) now and then, after
    // re-checking it was not overwritten while held.
    if (held.size() > 6 || (!held.empty() && rng() % 3 == 0)) {
      size_t k = rng() % held.size();
      ASSERT_TRUE(checkPayload(held[k])) << "lease overwritten while held";
      held.erase(held.begin() + static_cast<long>(k));
    }
  }
  held.clear();
  EXPECT_GT(received, 1000u);
}

TEST(Ring, LeasesReleasedFromAnotherThread) {
  auto [a, b] = makeLoopbackPair(opts(65536));
  std::vector<IncomingMessage> leases;
  uint64_t sent = 0;
  while (sendPayload(*a, sent, 1000) == Status::kOk) ++sent;
  ASSERT_GT(sent, 20u);
  for (uint64_t i = 0; i < sent; ++i) {
    leases.emplace_back();
    ASSERT_TRUE(receiveSeq(*b, i, &leases.back()));
  }
  ASSERT_EQ(sendPayload(*a, sent, 1000), Status::kWouldBlock);
  std::thread releaser([&] {
    for (auto& l : leases) {
      EXPECT_TRUE(checkPayload(l));
      l.release();
    }
  });
  releaser.join();
  // All the space is back: as many again fit (less one for the pad before the wrap).
  for (uint64_t i = 0; i + 1 < sent; ++i)
    ASSERT_EQ(sendPayload(*a, sent + i, 1000), Status::kOk) << i;
}

TEST(Ring, ConcurrentReleaseThreadWhileReceiving) {
  // Receiving thread hands every lease to a releasing thread; the producer thread keeps
  // the ring full. Space comes back only through the releasing thread.
  auto [a, b] = makeLoopbackPair(opts(16384, 1 << 20, 1 << 20, WaitMode::kSpinThenSleep, 64));
  constexpr uint64_t kCount = 30000;
  const auto deadline = Clock::now() + 30s;
  std::mutex m;
  std::condition_variable cv;
  std::deque<IncomingMessage> queue;
  bool done = false;
  std::atomic<uint64_t> released{0};
  std::atomic<bool> failed{false};
  std::thread producer([&] {
    for (uint64_t i = 0; i < kCount && !failed; ++i) {
      Status s = sendPayload(*a, i, (i * 131) % 3000, 0, Clock::now() + 5s);
      if (s != Status::kOk || Clock::now() > deadline) {
        ADD_FAILURE() << "send " << i << ": " << statusName(s);
        failed = true;
      }
    }
  });
  std::thread releaser([&] {
    for (;;) {
      IncomingMessage l;
      {
        std::unique_lock lock(m);
        if (!cv.wait_until(lock, deadline, [&] { return done || !queue.empty(); })) break;
        if (queue.empty()) break;
        l = std::move(queue.front());
        queue.pop_front();
      }
      if (!checkPayload(l)) {
        ADD_FAILURE() << "lease corrupted before release";
        failed = true;
      }
      l.release();
      released++;
    }
  });
  uint64_t next = 0;
  while (next < kCount && !failed && Clock::now() < deadline) {
    IncomingMessage in;
    Status s = b->receive(in, Clock::now() + 5s);
    if (s != Status::kOk) {
      ADD_FAILURE() << "receive: " << statusName(s) << " " << b->lastError();
      failed = true;
      break;
    }
    uint64_t seq;
    if (!checkPayload(in, &seq) || seq != next) {
      ADD_FAILURE() << "bad message at " << next;
      failed = true;
      break;
    }
    ++next;
    std::lock_guard lock(m);
    queue.push_back(std::move(in));
    cv.notify_one();
  }
  {
    std::lock_guard lock(m);
    done = true;
    cv.notify_one();
  }
  releaser.join();
  if (failed) a->close();  // unblock the producer
  producer.join();
  EXPECT_EQ(next, kCount);
  EXPECT_EQ(released.load(), next);
}

TEST(Ring, MaxLeasesReachedThenReleaseUnblocks) {
  auto [a, b] = makeLoopbackPair(opts(65536, 1 << 20, 1 << 20, WaitMode::kBusyPoll, 4));
  for (uint64_t i = 0; i < 6; ++i) ASSERT_EQ(sendPayload(*a, i, 10), Status::kOk);
  IncomingMessage l[4];
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(receiveSeq(*b, i, &l[i]));
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock) << "a fifth lease with maxLeases 4";
  EXPECT_FALSE(in.valid());
  EXPECT_EQ(b->receive(in, deadlineAfter(20ms)), Status::kTimedOut);
  l[0].release();
  ASSERT_TRUE(receiveSeq(*b, 4));  // released at once (scope), slot back
  l[1].release();
  ASSERT_TRUE(receiveSeq(*b, 5));
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);  // nothing left
}

TEST(Ring, MovedLeaseReleasesOnce) {
  auto [a, b] = makeLoopbackPair(opts(65536, 1 << 20, 1 << 20, WaitMode::kBusyPoll, 2));
  for (uint64_t i = 0; i < 4; ++i) ASSERT_EQ(sendPayload(*a, i, 10), Status::kOk);
  IncomingMessage x;
  ASSERT_TRUE(receiveSeq(*b, 0, &x));
  IncomingMessage y(std::move(x));
  EXPECT_FALSE(x.valid());
  x.release();  // no-op on a moved-from lease
  EXPECT_TRUE(checkPayload(y));
  IncomingMessage z;
  ASSERT_TRUE(receiveSeq(*b, 1, &z));
  IncomingMessage w;
  EXPECT_EQ(b->tryReceive(w), Status::kWouldBlock);  // both leases held
  y = std::move(z);  // releases seq 0, takes seq 1
  EXPECT_FALSE(z.valid());
  EXPECT_EQ(y.getRoot<bench::Payload>().getSeq(), 1u);
  EXPECT_TRUE(checkPayload(y));
  ASSERT_TRUE(receiveSeq(*b, 2, &w));  // seq 0's slot is free again
  EXPECT_EQ(b->tryReceive(z), Status::kWouldBlock);
  y.release();
  y.release();  // twice is harmless
  ASSERT_TRUE(receiveSeq(*b, 3));
}

// ---------------------------------------------------------------------------------------
// Sizes: oversize, abandoned, multi-segment, external data

TEST(Ring, OversizeMessageIsInvalidArgumentAndConnectionSurvives) {
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 64 * 1024));
  EXPECT_EQ(a->maxMessageBytes(), 64u * 1024);
  {
    OutgoingMessage msg;
    EXPECT_THROW((void)a->tryStartMessage(msg, 64 * 1024 / 8 + 1), InvalidArgument);
    EXPECT_FALSE(msg.isOpen());
    EXPECT_THROW((void)a->startMessage(msg, 1u << 30, deadlineAfter(10ms)), InvalidArgument);
  }
  {
    // Growing past the maximum while building.
    OutgoingMessage msg;
    ASSERT_EQ(a->tryStartMessage(msg, 16), Status::kOk);
    auto p = msg.initRoot<bench::Payload>();
    EXPECT_THROW(p.initData(70000), InvalidArgument);
  }
  {
    // Many small pieces adding up past the maximum.
    OutgoingMessage msg;
    ASSERT_EQ(a->tryStartMessage(msg, 16), Status::kOk);
    auto note = msg.initRoot<Note>();
    auto blobs = note.initBlobs(40);
    EXPECT_THROW(
        {
          for (unsigned i = 0; i < 40; ++i) blobs.init(i, 4000);
        },
        InvalidArgument);
  }
  {
    // External data past the maximum is refused at send.
    std::vector<capnp::word> big(80 * 1024 / 8);
    OutgoingMessage msg;
    ASSERT_EQ(a->tryStartMessage(msg, 16), Status::kOk);
    auto p = msg.initRoot<bench::Payload>();
    p.adoptData(msg.getOrphanage().referenceExternalData(
        capnp::Data::Reader(reinterpret_cast<const kj::byte*>(big.data()), big.size() * 8)));
    EXPECT_THROW((void)a->send(msg), InvalidArgument);
  }
  // Nothing of the refused messages arrives, and the connection still works both ways.
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);
  EXPECT_EQ(a->lastError(), "");
  for (uint64_t i = 0; i < 50; ++i) {
    ASSERT_EQ(sendPayload(*a, i, 60000 * (i % 2)), Status::kOk);  // up to the limit
    ASSERT_TRUE(receiveSeq(*b, i));
  }
  ASSERT_EQ(sendPayload(*b, 1, 10), Status::kOk);
  EXPECT_TRUE(receiveSeq(*a, 1));
}

TEST(Ring, AbandonedMessagesGiveTheirSpaceBack) {
  auto [a, b] = makeLoopbackPair(opts(4096, 64 * 1024, 32 * 1024));
  uint64_t seq = 0, received = 0;
  for (int i = 0; i < 2000; ++i) {
    {
      OutgoingMessage msg;  // in the ring, destroyed unsent
      ASSERT_EQ(a->tryStartMessage(msg, 100), Status::kOk) << "iteration " << i;
      test::buildPayload(msg, 1u << 20, 700);
    }
    {
      OutgoingMessage msg;  // first segment in the ring, the rest in the arena
      ASSERT_EQ(a->tryStartMessage(msg, 8), Status::kOk) << "iteration " << i;
      test::buildPayload(msg, 1u << 20, 20000);
    }
    {
      OutgoingMessage msg;  // first segment in the arena
      ASSERT_EQ(a->tryStartMessage(msg, 3000), Status::kOk) << "iteration " << i;
    }
    if (i % 7 == 0) {  // keep the ring and arena moving so abandoned space is reused
      ASSERT_EQ(sendPayload(*a, seq++, (i * 53) % 20000), Status::kOk) << "iteration " << i;
      ASSERT_TRUE(receiveSeq(*b, received++));
    }
  }
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock) << "an abandoned message was delivered";
}

TEST(Ring, SpaceClearedAheadIsClearedAgainAfterAnAbandonedMessage) {
  // A record of 2 KiB or more clears ring space ahead of itself once published, and the
  // next message there skips clearing it (zeroAhead). A message abandoned in that space
  // has written into it: the next one must find it zeroed again, or the fields it leaves
  // unset read the abandoned message's bytes.
  auto [a, b] = makeLoopbackPair(opts(64 * 1024, 1 << 20, 1 << 20));
  constexpr uint32_t kWords = 500;  // a 4000-byte first segment: in the ring
  for (uint64_t i = 0; i < 300; ++i) {
    ASSERT_EQ(sendPayload(*a, i, 4096), Status::kOk) << "iteration " << i;
    ASSERT_TRUE(receiveSeq(*b, i)) << "iteration " << i;
    {
      OutgoingMessage dirty;  // fills its first segment, then is destroyed unsent
      ASSERT_EQ(a->tryStartMessage(dirty, kWords), Status::kOk) << "iteration " << i;
      dirty.initRoot<bench::Payload>().initData(3900);
      // Scribble over everything it wrote but a null root pointer: bytes no pointer of
      // the next message reaches, so Cap'n Proto will not clear them for it.
      auto first = dirty.getSegmentsForOutput()[0];
      auto* bytes = reinterpret_cast<std::byte*>(const_cast<capnp::word*>(first.begin()));
      std::memset(bytes, 0xff, first.size() * sizeof(capnp::word));
      std::memset(bytes, 0, sizeof(capnp::word));
    }
    {
      OutgoingMessage clean;  // sets only seq: everything else must read as unset
      ASSERT_EQ(a->tryStartMessage(clean, kWords), Status::kOk) << "iteration " << i;
      clean.initRoot<bench::Payload>().setSeq(i);
      ASSERT_EQ(a->send(clean), Status::kOk);
    }
    IncomingMessage in;
    ASSERT_EQ(b->tryReceive(in), Status::kOk) << "iteration " << i;
    auto p = in.getRoot<bench::Payload>();
    EXPECT_EQ(p.getSeq(), i);
    EXPECT_EQ(p.getChecksum(), 0u) << "iteration " << i << ": unset field holds old bytes";
    EXPECT_FALSE(p.hasData()) << "iteration " << i << ": unset pointer holds old bytes";
    if (::testing::Test::HasFailure()) break;
  }
}

TEST(Ring, RandomSizesAndAbandonedMessagesNeverShowStaleBytes) {
  // Records of every size around the zero-ahead threshold, wrapping often, with abandoned
  // scribbled messages in between: every unset field must read as unset.
  auto [a, b] = makeLoopbackPair(opts(32 * 1024, 1 << 20, 1 << 20));
  std::mt19937 rng(5);
  uint64_t seq = 0;
  for (int i = 0; i < 5000; ++i) {
    const uint32_t words = 1 + rng() % 1500;
    if (rng() % 3 == 0) {
      OutgoingMessage dirty;
      ASSERT_EQ(a->tryStartMessage(dirty, words), Status::kOk) << "iteration " << i;
      if (words > 8) dirty.initRoot<bench::Payload>().initData((words - 5) * 8);
      auto first = dirty.segmentsForSend()[0];
      auto* bytes = reinterpret_cast<std::byte*>(const_cast<capnp::word*>(first.begin()));
      std::memset(bytes, 0xa5, first.size() * sizeof(capnp::word));
      std::memset(bytes, 0, sizeof(capnp::word));
      continue;
    }
    const size_t dataBytes = rng() % 2 ? (words > 5 ? (words - 5) * 8 : 0) : 0;
    {
      OutgoingMessage clean;
      ASSERT_EQ(a->tryStartMessage(clean, words), Status::kOk) << "iteration " << i;
      auto p = clean.initRoot<bench::Payload>();
      p.setSeq(seq);
      if (dataBytes) p.initData(static_cast<capnp::uint>(dataBytes));  // left all zero
      ASSERT_EQ(a->send(clean), Status::kOk);
    }
    IncomingMessage in;
    ASSERT_EQ(b->tryReceive(in), Status::kOk) << "iteration " << i;
    auto p = in.getRoot<bench::Payload>();
    ASSERT_EQ(p.getSeq(), seq) << "iteration " << i;
    ASSERT_EQ(p.getChecksum(), 0u) << "iteration " << i;
    ASSERT_EQ(p.getData().size(), dataBytes) << "iteration " << i;
    for (kj::byte x : p.getData()) ASSERT_EQ(x, 0) << "iteration " << i << ": stale data";
    ++seq;
  }
}

TEST(Ring, LargeMessagesReuseTheArenaMemoryTheLastOnesLeftInCache) {
  // When the peer has released everything we put in the arena, the next large message
  // starts again at the arena's beginning instead of walking on through it (every large
  // message of a ping-pong would land in cold memory).
  // (It goes back once it got four such messages past the beginning.)
  auto [a, b] = makeLoopbackPair(opts(64 * 1024, 16 << 20, 1 << 20));
  constexpr size_t kBytes = 256 * 1024;  // beyond a quarter of the ring: in the arena
  std::set<const kj::byte*> places;
  for (uint64_t i = 0; i < 60; ++i) {
    ASSERT_EQ(sendPayload(*a, i, kBytes), Status::kOk) << "message " << i;
    IncomingMessage in;
    ASSERT_EQ(b->tryReceive(in), Status::kOk) << "message " << i;
    ASSERT_TRUE(checkPayload(in)) << "message " << i;
    places.insert(in.getRoot<bench::Payload>().getData().begin());
  }
  EXPECT_LE(places.size(), 10u) << "60 messages of 256 KiB used " << places.size()
                                << " places in a 16 MiB arena";
  // Going back takes nothing from the arena: as many messages as it holds can be held at
  // once (16 MiB / 256 KiB, less the slack a record may need), and arrive intact.
  std::vector<IncomingMessage> held(60);
  for (uint64_t i = 0; i < held.size(); ++i) {
    ASSERT_EQ(sendPayload(*a, 100 + i, kBytes), Status::kOk);
    ASSERT_EQ(b->tryReceive(held[i]), Status::kOk);
  }
  for (auto& in : held) EXPECT_TRUE(checkPayload(in));
  EXPECT_NE(held[0].getRoot<bench::Payload>().getData().begin(),
            held[1].getRoot<bench::Payload>().getData().begin());
}

/// Builds a Note whose blobs force many segments: first segment of one word, then
/// growing allocations that land in the ring and, past a quarter of it, in the arena.
void buildManySegmentNote(OutgoingMessage& msg, const std::vector<uint32_t>& sizes) {
  auto note = msg.initRoot<Note>();
  note.setId(sizes.size());
  auto blobs = note.initBlobs(static_cast<capnp::uint>(sizes.size()));
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto d = blobs.init(static_cast<capnp::uint>(i), sizes[i]);
    test::fillPattern(d.begin(), d.size(), i * 1000 + sizes[i]);
  }
}

::testing::AssertionResult checkManySegmentNote(IncomingMessage& in,
                                                const std::vector<uint32_t>& sizes) {
  auto note = in.getRoot<Note>();
  if (note.getId() != sizes.size()) return ::testing::AssertionFailure() << "wrong id";
  auto blobs = note.getBlobs();
  if (blobs.size() != sizes.size()) return ::testing::AssertionFailure() << "wrong blob count";
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto d = blobs[static_cast<capnp::uint>(i)];
    std::vector<uint8_t> expect(sizes[i]);
    test::fillPattern(expect.data(), expect.size(), i * 1000 + sizes[i]);
    if (d.size() != sizes[i] || std::memcmp(d.begin(), expect.data(), sizes[i]) != 0)
      return ::testing::AssertionFailure() << "blob " << i << " damaged";
  }
  return ::testing::AssertionSuccess();
}

TEST(Ring, MultiSegmentMessageGrowsIntoRingAndArena) {
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20));
  const std::vector<uint32_t> sizes = {8, 16, 64, 200, 500, 900, 1500, 3000, 10000, 30000, 100000, 300000};
  for (int round = 0; round < 20; ++round) {
    OutgoingMessage msg;
    ASSERT_EQ(a->startMessage(msg, 1, deadlineAfter(1s)), Status::kOk);
    buildManySegmentNote(msg, sizes);
    size_t segments = msg.getSegmentsForOutput().size();
    EXPECT_GE(segments, 3u);
    ASSERT_EQ(a->send(msg), Status::kOk) << "round " << round;
    IncomingMessage in;
    ASSERT_EQ(b->tryReceive(in), Status::kOk) << b->lastError();
    EXPECT_EQ(in.segmentCount(), segments);
    EXPECT_GE(in.payloadBytes(), 445000u);
    EXPECT_TRUE(checkManySegmentNote(in, sizes));
  }
}

// SRC BUG: fails while RingConnection::allocateMore()/send() cannot grow a record's segment
// table past the end of the ring (throws Overloaded "no ring room ... for the segment
// table" on an otherwise empty ring when the record starts near the ring's end).
TEST(RingBug, ManySegmentMessageAtEveryRingOffset) {
  // A message that grows past the four table entries reserved up front must be sendable
  // wherever its record starts, including just before the end of the ring.
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20));
  const std::vector<uint32_t> sizes = {8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
  uint64_t seq = 0;
  for (int i = 0; i < 1500; ++i) {
    ASSERT_EQ(sendPayload(*a, seq, (i % 61) * 8), Status::kOk);
    ASSERT_TRUE(receiveSeq(*b, seq++));
    OutgoingMessage msg;
    ASSERT_EQ(a->startMessage(msg, 1, deadlineAfter(1s)), Status::kOk);
    try {
      buildManySegmentNote(msg, sizes);
      ASSERT_EQ(a->send(msg), Status::kOk);
    } catch (const Error& e) {
      FAIL() << "iteration " << i << ": " << errorKindName(e.kind()) << ": " << e.what();
    }
    IncomingMessage in;
    ASSERT_EQ(b->tryReceive(in), Status::kOk) << b->lastError();
    ASSERT_TRUE(checkManySegmentNote(in, sizes));
  }
}

TEST(Ring, ExternalDataArrivesIntact) {
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20));
  std::vector<capnp::word> buffer(100000 / 8 + 1);
  auto* bytes = reinterpret_cast<kj::byte*>(buffer.data());
  for (int round = 0; round < 20; ++round) {
    size_t size = 1 + round * 4999;
    test::fillPattern(bytes, size, round);
    OutgoingMessage msg;
    ASSERT_EQ(a->startMessage(msg, 8, deadlineAfter(1s)), Status::kOk);
    auto p = msg.initRoot<bench::Payload>();
    p.setSeq(round);
    p.setChecksum(test::checksum(bytes, size));
    p.adoptData(msg.getOrphanage().referenceExternalData(capnp::Data::Reader(bytes, size)));
    ASSERT_EQ(a->send(msg), Status::kOk);
    // The user buffer is the user's again once send returns.
    std::memset(bytes, 0xEE, size);
    IncomingMessage in;
    ASSERT_EQ(b->tryReceive(in), Status::kOk) << b->lastError();
    uint64_t seq;
    EXPECT_TRUE(checkPayload(in, &seq)) << "round " << round;
    EXPECT_EQ(seq, static_cast<uint64_t>(round));
  }
}

// SRC BUG: same cause as RingBug.ManySegmentMessageAtEveryRingOffset, reached from send().
TEST(RingBug, SeveralExternalBlobsAtEveryRingOffset) {
  // Each referenced blob is its own segment; with six of them the table outgrows what
  // was reserved when the message started, wherever in the ring that was.
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20));
  std::vector<std::vector<capnp::word>> blobs(6);
  std::vector<uint32_t> sizes;
  for (size_t k = 0; k < blobs.size(); ++k) {
    sizes.push_back(static_cast<uint32_t>(8 * (k + 1) + k));
    blobs[k].resize(sizes[k] / 8 + 1);
    test::fillPattern(reinterpret_cast<uint8_t*>(blobs[k].data()), sizes[k], k * 1000 + sizes[k]);
  }
  uint64_t seq = 0;
  for (int i = 0; i < 1500; ++i) {
    ASSERT_EQ(sendPayload(*a, seq, (i % 61) * 8), Status::kOk);
    ASSERT_TRUE(receiveSeq(*b, seq++));
    OutgoingMessage msg;
    // Exactly the words of the root: pointer, Note (1 data + 2 pointer words), blob list.
    const uint32_t rootWords = 1 + 3 + static_cast<uint32_t>(blobs.size());
    ASSERT_EQ(a->startMessage(msg, rootWords, deadlineAfter(1s)), Status::kOk);
    try {
      auto note = msg.initRoot<Note>();
      note.setId(sizes.size());
      auto list = note.initBlobs(static_cast<capnp::uint>(blobs.size()));
      for (size_t k = 0; k < blobs.size(); ++k)
        list.adopt(static_cast<capnp::uint>(k),
                   msg.getOrphanage().referenceExternalData(capnp::Data::Reader(
                       reinterpret_cast<const kj::byte*>(blobs[k].data()), sizes[k])));
      ASSERT_EQ(a->send(msg), Status::kOk);
    } catch (const Error& e) {
      FAIL() << "iteration " << i << ": " << errorKindName(e.kind()) << ": " << e.what();
    }
    IncomingMessage in;
    ASSERT_EQ(b->tryReceive(in), Status::kOk) << b->lastError();
    ASSERT_TRUE(checkManySegmentNote(in, sizes)) << "iteration " << i;
    ASSERT_GE(in.segmentCount(), 1 + blobs.size());
  }
}

// ---------------------------------------------------------------------------------------
// Close, deadlines

TEST(Ring, CloseDrainsThenDisconnected) {
  auto [a, b] = makeLoopbackPair(opts());
  for (uint64_t i = 0; i < 10; ++i) ASSERT_EQ(sendPayload(*a, i, i * 20), Status::kOk);
  IncomingMessage held;
  ASSERT_TRUE(receiveSeq(*b, 0, &held));
  a->close();
  a->close();  // idempotent
  EXPECT_EQ(a->lastError(), "") << "a clean close is not an error";
  OutgoingMessage msg;
  EXPECT_EQ(a->tryStartMessage(msg, 1), Status::kDisconnected);
  IncomingMessage in;
  EXPECT_EQ(a->tryReceive(in), Status::kDisconnected);
  // Everything sent before the close still arrives, then the end.
  for (uint64_t i = 1; i < 10; ++i) ASSERT_TRUE(receiveSeq(*b, i));
  EXPECT_EQ(b->tryReceive(in), Status::kDisconnected);
  auto t0 = Clock::now();
  EXPECT_EQ(b->receive(in, deadlineAfter(5s)), Status::kDisconnected);
  EXPECT_LT(test::msSince(t0), 100.0);
  EXPECT_EQ(sendPayload(*b, 0, 1), Status::kDisconnected);
  EXPECT_TRUE(checkPayload(held)) << "a lease stays readable after the peer closed";
}

TEST(Ring, SendOnMessageStartedBeforeCloseIsDisconnected) {
  auto [a, b] = makeLoopbackPair(opts());
  OutgoingMessage msg;
  ASSERT_EQ(a->tryStartMessage(msg, 8), Status::kOk);
  test::buildPayload(msg, 1, 10);
  a->close();
  EXPECT_EQ(a->send(msg), Status::kDisconnected);
  EXPECT_FALSE(msg.isOpen());
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kDisconnected);
}

class RingWaitMode : public ::testing::TestWithParam<WaitMode> {};

TEST_P(RingWaitMode, ReceiveDeadlineTimesOut) {
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20, GetParam()));
  IncomingMessage in;
  for (auto wait : {0ms, 1ms, 50ms}) {
    auto t0 = Clock::now();
    EXPECT_EQ(b->receive(in, deadlineAfter(wait)), Status::kTimedOut);
    double ms = test::msSince(t0);
    EXPECT_GE(ms, wait.count() * 0.99);
    EXPECT_LT(ms, wait.count() + 500.0);
  }
  EXPECT_FALSE(in.valid());
  // Still usable after timing out.
  ASSERT_EQ(sendPayload(*a, 5, 5), Status::kOk);
  ASSERT_EQ(b->receive(in, deadlineAfter(1s)), Status::kOk);
  EXPECT_TRUE(checkPayload(in));
}

TEST_P(RingWaitMode, StartMessageDeadlineTimesOutWhenFull) {
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20, GetParam()));
  uint64_t sent = 0;
  while (sendPayload(*a, sent, 0) == Status::kOk) ASSERT_LT(++sent, 1000u);
  OutgoingMessage msg;
  auto t0 = Clock::now();
  // The same size sendPayload(…, 0) asks for: full for it means full for this one.
  EXPECT_EQ(a->startMessage(msg, 4, deadlineAfter(50ms)), Status::kTimedOut);
  double ms = test::msSince(t0);
  EXPECT_GE(ms, 49.0);
  EXPECT_LT(ms, 550.0);
  EXPECT_FALSE(msg.isOpen());
}

TEST_P(RingWaitMode, BlockedReceiveWakesForAMessage) {
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20, GetParam()));
  std::atomic<double> wokeMs{-1};
  Clock::time_point sentAt;
  std::atomic<bool> sent{false};
  std::thread consumer([&] {
    IncomingMessage in;
    Status s = b->receive(in, deadlineAfter(5s));
    while (!sent.load()) std::this_thread::yield();  // (bounded by the send below)
    wokeMs = test::msSince(sentAt);
    EXPECT_EQ(s, Status::kOk);
    EXPECT_TRUE(checkPayload(in));
  });
  std::this_thread::sleep_for(30ms);  // let it go to sleep
  sentAt = Clock::now();
  sent = true;
  ASSERT_EQ(sendPayload(*a, 1, 10), Status::kOk);
  consumer.join();
  std::printf("[ measured ] %s: receive woke %.3f ms after send\n", test::modeName(GetParam()),
              wokeMs.load());
  EXPECT_LT(wokeMs.load(), 100.0);
}

TEST_P(RingWaitMode, BlockedSenderWakesWhenSpaceIsReleased) {
  auto [a, b] = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20, GetParam()));
  uint64_t sent = 0;
  while (sendPayload(*a, sent, 300) == Status::kOk) ASSERT_LT(++sent, 1000u);
  ASSERT_GE(sent, 4u);
  // Take the three oldest (one record alone may be smaller than the next reservation).
  IncomingMessage l[3];
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(receiveSeq(*b, i, &l[i]));
  std::atomic<int64_t> releasedAt{0};
  std::atomic<double> wokeMs{-1};
  std::thread producer([&, &a = a] {
    Status s = sendPayload(*a, sent, 300, 0, deadlineAfter(5s));
    auto now = Clock::now().time_since_epoch().count();
    wokeMs = std::chrono::duration<double, std::milli>(Clock::duration(now - releasedAt.load()))
                 .count();
    EXPECT_EQ(s, Status::kOk);
  });
  std::this_thread::sleep_for(30ms);  // let it wait for space
  releasedAt = Clock::now().time_since_epoch().count();
  l[2].release();  // out of order: nothing reclaimed yet
  l[1].release();
  l[0].release();
  producer.join();
  std::printf("[ measured ] %s: sender woke %.3f ms after release\n", test::modeName(GetParam()),
              wokeMs.load());
  EXPECT_LT(wokeMs.load(), 100.0);
  for (uint64_t i = 3; i <= sent; ++i) ASSERT_TRUE(receiveSeq(*b, i));
}

/// Milliseconds from another thread releasing the oldest lease to receive() (blocked
/// because maxLeases are held while a message waits) returning that message.
double leaseWakeLatencyMs(WaitMode mode) {
  auto [a, b] = makeLoopbackPair(opts(65536, 1 << 20, 1 << 20, mode, 2));
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(sendPayload(*a, i, 10), Status::kOk);
  IncomingMessage l0, l1;
  EXPECT_TRUE(receiveSeq(*b, 0, &l0));
  EXPECT_TRUE(receiveSeq(*b, 1, &l1));
  std::atomic<int64_t> releasedAt{0};
  std::thread releaser([&] {
    std::this_thread::sleep_for(30ms);
    releasedAt = Clock::now().time_since_epoch().count();
    l0.release();
  });
  IncomingMessage in;
  Status s = b->receive(in, deadlineAfter(5s));
  auto now = Clock::now().time_since_epoch().count();
  releaser.join();
  double ms = std::chrono::duration<double, std::milli>(Clock::duration(now - releasedAt.load())).count();
  std::printf("[ measured ] %s: receive got the lease %.3f ms after the release\n",
              test::modeName(mode), ms);
  EXPECT_EQ(s, Status::kOk);
  EXPECT_TRUE(checkPayload(in));
  return ms;
}

TEST_P(RingWaitMode, ReceiveBlockedOnFullLeasesReturnsAfterARelease) {
  EXPECT_LT(leaseWakeLatencyMs(GetParam()), 1000.0);
}

// SRC BUG: a consumer that sleeps because all maxLeases are held is not woken when another
// thread releases one: in kBlocking mode it sleeps on the link for up to 500 ms with a
// message waiting (spin-then-sleep: up to one 20 ms futex slice).
TEST(RingBug, BlockingReceiveOnFullLeasesWakesPromptlyOnRelease) {
  EXPECT_LT(leaseWakeLatencyMs(WaitMode::kBlocking), 100.0);
}

TEST_P(RingWaitMode, DestroyingOneEndWakesTheOther) {
  auto pair = makeLoopbackPair(opts(4096, 1 << 20, 1 << 20, GetParam()));
  auto& b = pair.second;
  std::atomic<int64_t> closedAt{0};
  Status s = Status::kOk;
  double ms = -1;
  std::thread consumer([&] {
    IncomingMessage in;
    s = b->receive(in, deadlineAfter(5s));
    ms = std::chrono::duration<double, std::milli>(
             Clock::duration(Clock::now().time_since_epoch().count() - closedAt.load()))
             .count();
  });
  std::this_thread::sleep_for(30ms);
  closedAt = Clock::now().time_since_epoch().count();
  pair.first.reset();
  consumer.join();
  std::printf("[ measured ] %s: receive saw the close after %.3f ms\n", test::modeName(GetParam()),
              ms);
  EXPECT_EQ(s, Status::kDisconnected);
  EXPECT_LT(ms, 100.0);
}

// SRC BUG (race): fails when the consumer sees the peer's `closed` flag before a record
// published just before it; the record is then dropped. Seen mostly in busy-poll, where
// the producer's close follows its last publish by nanoseconds.
class RingBugCloseRace : public ::testing::TestWithParam<WaitMode> {};

TEST_P(RingBugCloseRace, CloseAfterSendAlwaysDrainsFirst) {
  // A producer thread sends a burst and closes at once while the consumer thread is
  // waiting: every message sent before the close must be received, then kDisconnected.
  const auto stopAt = Clock::now() + 3s;
  int iterations = 0;
  for (; iterations < 3000 && Clock::now() < stopAt; ++iterations) {
    auto [a, b] = makeLoopbackPair(opts(65536, 1 << 20, 1 << 20, GetParam()));
    const uint64_t n = 1 + iterations % 5;
    std::thread producer([&, &a = a] {
      for (uint64_t i = 0; i < n; ++i) EXPECT_EQ(sendPayload(*a, i, 8), Status::kOk);
      a->close();
    });
    uint64_t got = 0;
    Status s;
    for (;;) {
      IncomingMessage in;
      s = b->receive(in, deadlineAfter(5s));
      if (s != Status::kOk) break;
      uint64_t seq;
      ASSERT_TRUE(checkPayload(in, &seq));
      EXPECT_EQ(seq, got);
      ++got;
    }
    producer.join();
    ASSERT_EQ(s, Status::kDisconnected);
    ASSERT_EQ(got, n) << "iteration " << iterations << ": messages lost at close";
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, RingWaitMode,
                         ::testing::Values(WaitMode::kBusyPoll, WaitMode::kSpinThenSleep,
                                           WaitMode::kBlocking),
                         [](const auto& info) { return test::modeName(info.param); });
INSTANTIATE_TEST_SUITE_P(Modes, RingBugCloseRace,
                         ::testing::Values(WaitMode::kBusyPoll, WaitMode::kSpinThenSleep,
                                           WaitMode::kBlocking),
                         [](const auto& info) { return test::modeName(info.param); });

// ---------------------------------------------------------------------------------------
// Stress: a producer thread and a consumer thread per wait mode, checksummed.

class RingStress : public ::testing::TestWithParam<WaitMode> {};

TEST_P(RingStress, ThreadedExchangeWithChecksums) {
  constexpr uint64_t kTarget = 200000;
  const auto stopAt = Clock::now() + 25s;
  auto [a, b] = makeLoopbackPair(opts(64 * 1024, 8 << 20, 4 << 20, GetParam(), 64));
  std::atomic<bool> failed{false};
  uint64_t sent = 0;
  std::thread producer([&, &a = a] {
    std::mt19937_64 rng(42);
    for (; sent < kTarget && Clock::now() < stopAt && !failed; ++sent) {
      uint64_t r = rng();
      size_t size = (r % 1024 == 0) ? (1 << 20) + r % 50000  // arena
                    : (r % 16 == 0) ? r % 8192
                                    : r % 300;
      bool flush = (r >> 20) % 4 != 0;  // some sends batch their wake-up
      Status s = sendPayload(*a, sent, size, 0, Clock::now() + 10s, flush);
      if (s != Status::kOk) {
        ADD_FAILURE() << "send " << sent << ": " << statusName(s) << " " << a->lastError();
        failed = true;
        break;
      }
    }
    EXPECT_EQ(a->flush(), Status::kOk);
    // Terminator: seq ~0.
    OutgoingMessage end;
    if (!failed && a->startMessage(end, 8, Clock::now() + 10s) == Status::kOk) {
      end.initRoot<bench::Payload>().setSeq(~uint64_t{0});
      EXPECT_EQ(a->send(end), Status::kOk);
    }
  });
  std::mt19937_64 rng(7);
  std::deque<IncomingMessage> window;
  uint64_t received = 0;
  for (;;) {
    IncomingMessage in;
    Status s = b->receive(in, Clock::now() + 15s);
    if (s != Status::kOk) {
      ADD_FAILURE() << "receive after " << received << ": " << statusName(s) << " "
                    << b->lastError();
      failed = true;
      break;
    }
    uint64_t seq;
    size_t size;
    if (in.getRoot<bench::Payload>().getSeq() == ~uint64_t{0}) break;
    if (!test::payloadIntact(in, seq, size) || seq != received) {
      ADD_FAILURE() << "message " << received << " damaged or out of order (seq " << seq << ")";
      failed = true;
      break;
    }
    ++received;
    window.push_back(std::move(in));
    // Release out of order, re-verifying first. The oldest lease goes once eight are
    // held: leases and ring space are reclaimed in order, so holding it longer would
    // stall the exchange by design.
    if (window.size() > 8 || rng() % 2) {
      size_t k = window.size() > 8 ? 0 : rng() % window.size();
      if (!test::payloadIntact(window[k], seq, size)) {
        ADD_FAILURE() << "lease " << seq << " overwritten while held";
        failed = true;
        break;
      }
      window.erase(window.begin() + static_cast<long>(k));
    }
  }
  window.clear();
  if (failed) b->close();
  producer.join();
  std::printf("[ measured ] %s: %llu messages exchanged\n", test::modeName(GetParam()),
              static_cast<unsigned long long>(received));
  EXPECT_EQ(received, sent);
  EXPECT_GE(received, 10000u) << "too few messages went through to mean anything";
}

INSTANTIATE_TEST_SUITE_P(Modes, RingStress,
                         ::testing::Values(WaitMode::kBusyPoll, WaitMode::kSpinThenSleep,
                                           WaitMode::kBlocking),
                         [](const auto& info) { return test::modeName(info.param); });

// ---------------------------------------------------------------------------------------
// Edge cases a user can reach through the public API

TEST(RingEdge, MessageSentWithoutARootIsHarmless) {
  // Sending a started message without ever initialising a root: the sender may refuse it
  // (InvalidArgument) or deliver an empty message, but must not break the connection.
  auto [a, b] = makeLoopbackPair(opts());
  {
    OutgoingMessage msg;
    ASSERT_EQ(a->tryStartMessage(msg, 4), Status::kOk);
    try {
      EXPECT_EQ(a->send(msg), Status::kOk);
      IncomingMessage in;
      ASSERT_EQ(b->tryReceive(in), Status::kOk) << b->lastError();
    } catch (const InvalidArgument&) {
    }
  }
  ASSERT_EQ(sendPayload(*a, 1, 10), Status::kOk);
  EXPECT_TRUE(receiveSeq(*b, 1)) << "connection broken by an empty message";
  EXPECT_EQ(b->lastError(), "");
}

// SRC BUG: tryStartMessage() sends a first segment that does not fit a quarter of the
// ring to the arena; with no (or too small an) arena it returns kWouldBlock forever.
TEST(RingBug, LargeFirstSegmentWithoutArenaIsNotRingFull) {
  // Ring-only configuration (no arena): a first segment within maxMessageBytes must not
  // report "ring full" forever on an empty ring.
  auto [a, b] = makeLoopbackPair(opts(4096, 0, 1024));
  OutgoingMessage msg;
  Status s = Status::kOk;
  bool refused = false;
  try {
    s = a->startMessage(msg, 1024 / 8, deadlineAfter(50ms));
  } catch (const InvalidArgument&) {
    refused = true;
  }
  if (!refused) {
    EXPECT_EQ(s, Status::kOk) << "empty ring reported " << statusName(s);
  }
}

// SRC BUG: an empty external blob on a connection without arena reaches
// arenaAllocate(0 bytes) and divides by arenaBytes_ == 0 (SIGFPE). Run in a child.
TEST(RingBug, EmptyExternalBlobWithoutArenaDoesNotCrash) {
  EXPECT_TRUE(test::isolated([] {
    auto [a, b] = makeLoopbackPair(opts(4096, 0, 1024));
    OutgoingMessage msg;
    ASSERT_EQ(a->tryStartMessage(msg, 8), Status::kOk);
    auto p = msg.initRoot<bench::Payload>();
    p.setSeq(3);
    alignas(8) static const kj::byte nothing[8] = {};
    p.adoptData(msg.getOrphanage().referenceExternalData(capnp::Data::Reader(nothing, 0)));
    try {
      ASSERT_EQ(a->send(msg), Status::kOk);
      IncomingMessage in;
      ASSERT_EQ(b->tryReceive(in), Status::kOk) << b->lastError();
      EXPECT_EQ(in.getRoot<bench::Payload>().getSeq(), 3u);
      EXPECT_EQ(in.getRoot<bench::Payload>().getData().size(), 0u);
    } catch (const Overloaded&) {
      // Acceptable: no arena to copy external data into.
    }
  }));
}

TEST(RingEdge, InvalidOptionsAreRefused) {
  EXPECT_THROW(makeLoopbackPair(opts(5000)), InvalidArgument);
  EXPECT_THROW(makeLoopbackPair(opts(2048)), InvalidArgument);
  EXPECT_THROW(makeLoopbackPair(opts(4096, 1000)), InvalidArgument);
  EXPECT_THROW(makeLoopbackPair(opts(4096, 4096, 1 << 20)), InvalidArgument);  // arena too small
  EXPECT_THROW(makeLoopbackPair(opts(4096, 1 << 20, 1 << 20, WaitMode::kBusyPoll, 3)),
               InvalidArgument);
}

}  // namespace
}  // namespace zcrpc
