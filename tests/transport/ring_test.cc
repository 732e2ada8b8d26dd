// Ring behaviour through the loopback transport (same ring code as shm).
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "bench.capnp.h"
#include "zcrpc/loopback.h"

namespace zcrpc {
namespace {

ConnectionOptions smallRing(uint32_t ringBytes = 4096) {
  ConnectionOptions o;
  o.ringBytes = ringBytes;
  o.arenaBytes = 1 << 20;
  o.maxMessageBytes = 1 << 20;
  o.waitMode = WaitMode::kBusyPoll;
  return o;
}

Status sendPayload(Connection& c, uint64_t seq, size_t size, uint8_t fill) {
  OutgoingMessage msg;
  Status s = c.tryStartMessage(msg, static_cast<uint32_t>(4 + size / 8));
  if (s != Status::kOk) return s;
  auto p = msg.initRoot<bench::Payload>();
  p.setSeq(seq);
  auto d = p.initData(size);
  std::memset(d.begin(), fill, size);
  return c.send(msg);
}

TEST(Ring, EmptyReceiveWouldBlock) {
  auto [a, b] = makeLoopbackPair(smallRing());
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);
  EXPECT_FALSE(in.valid());
}

TEST(Ring, RoundTripInPlace) {
  auto [a, b] = makeLoopbackPair(smallRing());
  ASSERT_EQ(sendPayload(*a, 7, 100, 0xab), Status::kOk);
  IncomingMessage in;
  ASSERT_EQ(b->tryReceive(in), Status::kOk);
  auto p = in.getRoot<bench::Payload>();
  EXPECT_EQ(p.getSeq(), 7u);
  ASSERT_EQ(p.getData().size(), 100u);
  EXPECT_EQ(p.getData()[99], 0xab);
  EXPECT_EQ(in.header().kind, static_cast<uint8_t>(FrameKind::kData));
}

TEST(Ring, FullThenDrainAndWrap) {
  auto [a, b] = makeLoopbackPair(smallRing());
  uint64_t sent = 0, received = 0;
  while (sendPayload(*a, sent, 200, static_cast<uint8_t>(sent)) == Status::kOk) ++sent;
  EXPECT_GT(sent, 5u);
  auto receiveOne = [&] {
    IncomingMessage in;
    ASSERT_EQ(b->tryReceive(in), Status::kOk);
    auto p = in.getRoot<bench::Payload>();
    ASSERT_EQ(p.getSeq(), received);
    ASSERT_EQ(p.getData()[0], static_cast<uint8_t>(received));
    ++received;
  };
  // Many laps of odd sizes: every message arrives once, in order, intact.
  for (int round = 0; round < 500; ++round) {
    size_t size = 1 + (round * 37) % 700;
    Status s;
    while ((s = sendPayload(*a, sent, size, static_cast<uint8_t>(sent))) == Status::kWouldBlock)
      receiveOne();
    ASSERT_EQ(s, Status::kOk);
    ++sent;
  }
  while (received < sent) receiveOne();
  IncomingMessage in;
  EXPECT_EQ(b->tryReceive(in), Status::kWouldBlock);
}

}  // namespace
}  // namespace zcrpc
