// The logging hook: every message zcrpc prints goes through it.
#include "zcrpc/log.h"

#include <gtest/gtest.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "os/os.h"
#include "zcrpc/tcp.h"

namespace zcrpc {
namespace {

struct Captured {
  std::mutex mutex;
  std::vector<std::pair<LogLevel, std::string>> lines;
};

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setLogSink([this](LogLevel level, std::string_view text) {
      std::lock_guard lock(captured_.mutex);
      captured_.lines.emplace_back(level, std::string(text));
    });
  }
  void TearDown() override {
    setLogSink({});
    setLogLevel(LogLevel::kInfo);
  }
  std::vector<std::pair<LogLevel, std::string>> lines() {
    std::lock_guard lock(captured_.mutex);
    return captured_.lines;
  }
  Captured captured_;
};

TEST_F(LogTest, ARefusedTcpClientIsReportedThroughTheSinkNotStderr) {
  TcpOptions server;
  server.token = "right";
  server.allowPlaintextToken = true;  // a refusal over plain tcp is what is logged here
  auto listener = listenTcp("127.0.0.1:0", server);
  TcpOptions client;
  client.token = "wrong";
  client.allowPlaintextToken = true;
  client.connection.connectTimeout = std::chrono::milliseconds(2000);
  testing::internal::CaptureStderr();
  std::thread t([&] { (void)listener->accept(deadlineAfter(std::chrono::seconds(1))); });
  EXPECT_THROW(connectTcp(listener->endpoint(), client), Failed);
  t.join();
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  auto got = lines();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].first, LogLevel::kWarning);
  EXPECT_EQ(got[0].second.rfind(listener->endpoint() + ": refused 127.0.0.1:", 0), 0u) << got[0].second;
  EXPECT_NE(got[0].second.find("access token does not match"), std::string::npos) << got[0].second;
  ASSERT_EQ(listener->refusals().size(), 1u);
}

TEST_F(LogTest, MessagesBelowTheLevelAreDropped) {
  setLogLevel(LogLevel::kError);
  EXPECT_FALSE(logEnabled(LogLevel::kWarning));
  EXPECT_TRUE(logEnabled(LogLevel::kError));
  logMessage(LogLevel::kWarning, "dropped");
  logMessage(LogLevel::kError, "kept");
  auto got = lines();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].second, "kept");
}

TEST_F(LogTest, ASinkThatThrowsLosesOnlyItsMessage) {
  setLogSink([](LogLevel, std::string_view) { throw std::runtime_error("sink down"); });
  EXPECT_NO_THROW(logMessage(LogLevel::kError, "lost"));
}

TEST(LogDefault, TheDefaultSinkWritesOneLineToStderr) {
  setLogSink({});
  testing::internal::CaptureStderr();
  logMessage(LogLevel::kWarning, "tcp://h:1: something happened");
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "zcrpc: tcp://h:1: something happened\n");
  EXPECT_EQ(logLevelName(LogLevel::kWarning), "warning");
}

TEST(LogDefault, CallsFromManyThreadsReachTheSinkOneAtATime) {
  std::atomic<int> inside{0}, most{0}, count{0};
  setLogSink([&](LogLevel, std::string_view) {
    int now = inside.fetch_add(1) + 1;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::yield();
    inside.fetch_sub(1);
    count.fetch_add(1);
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([] {
      for (int i = 0; i < 200; ++i) logMessage(LogLevel::kInfo, "x");
    });
  for (auto& t : threads) t.join();
  setLogSink({});
  EXPECT_EQ(count.load(), 800);
  EXPECT_EQ(most.load(), 1);
}

}  // namespace
}  // namespace zcrpc
