#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include <unistd.h>

#include "bench.capnp.h"
#include "zcrpc/shm.h"

namespace zcrpc {
namespace {

std::string uniqueName(const char* what) {
  return std::string("smoke-") + what + "-" + std::to_string(::getpid());
}

TEST(ShmSmoke, HandshakeAndEcho) {
  std::string name = uniqueName("echo");
  auto listener = listenShm(name);
  std::thread server([&] {
    auto conn = listener->accept(deadlineAfter(std::chrono::seconds(5)));
    ASSERT_TRUE(conn);
    for (int i = 0; i < 1000; ++i) {
      IncomingMessage in;
      ASSERT_EQ(conn->receive(in, deadlineAfter(std::chrono::seconds(5))), Status::kOk);
      auto req = in.getRoot<bench::Payload>();
      OutgoingMessage out;
      ASSERT_EQ(conn->startMessage(out, 64, kNoDeadline), Status::kOk);
      auto resp = out.initRoot<bench::Payload>();
      resp.setSeq(req.getSeq() + 1);
      resp.setData(req.getData());
      in.release();
      ASSERT_EQ(conn->send(out), Status::kOk);
    }
  });
  auto conn = connectShm(name);
  for (uint64_t i = 0; i < 1000; ++i) {
    OutgoingMessage out;
    ASSERT_EQ(conn->startMessage(out, 64, kNoDeadline), Status::kOk);
    auto req = out.initRoot<bench::Payload>();
    req.setSeq(i);
    auto d = req.initData(i % 300);
    std::memset(d.begin(), static_cast<int>(i), d.size());
    ASSERT_EQ(conn->send(out), Status::kOk);
    IncomingMessage in;
    ASSERT_EQ(conn->receive(in, deadlineAfter(std::chrono::seconds(5))), Status::kOk);
    auto resp = in.getRoot<bench::Payload>();
    ASSERT_EQ(resp.getSeq(), i + 1);
    ASSERT_EQ(resp.getData().size(), i % 300);
  }
  server.join();
}

TEST(ShmSmoke, LargeMessageGoesThroughArena) {
  std::string name = uniqueName("large");
  auto listener = listenShm(name);
  std::thread server([&] {
    auto conn = listener->accept(deadlineAfter(std::chrono::seconds(5)));
    ASSERT_TRUE(conn);
    IncomingMessage in;
    ASSERT_EQ(conn->receive(in, deadlineAfter(std::chrono::seconds(5))), Status::kOk);
    auto req = in.getRoot<bench::Payload>();
    ASSERT_EQ(req.getData().size(), 8u << 20);
    uint64_t sum = 0;
    for (auto b : req.getData()) sum += b;
    EXPECT_EQ(sum, req.getChecksum());
  });
  auto conn = connectShm(name);
  OutgoingMessage out;
  ASSERT_EQ(conn->startMessage(out, 16, kNoDeadline), Status::kOk);
  auto req = out.initRoot<bench::Payload>();
  auto d = req.initData(8u << 20);
  uint64_t sum = 0;
  for (size_t i = 0; i < d.size(); ++i) sum += (d[i] = static_cast<uint8_t>(i * 7));
  req.setChecksum(sum);
  ASSERT_EQ(conn->send(out), Status::kOk);
  server.join();
}

}  // namespace
}  // namespace zcrpc
