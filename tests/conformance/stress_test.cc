// Longer runs of the conformance contract (suite 'stress'): bulk traffic both ways with
// random sizes, many connections on their own threads, many callers of one server.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "conformance/fixture.h"

namespace zcrpc::conformance {
namespace {

/// Sends `count` Payloads of random sizes (below `top`) and checks `count` coming back the
/// other way, on two threads. Returns how many it received intact, in order.
uint64_t bulkOneWay(Connection& from, Connection& to, uint64_t count, size_t top, uint64_t seed,
                    std::chrono::milliseconds limit, std::string& failure) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> received{0};
  std::jthread sender([&] {
    std::mt19937_64 rng(seed);
    Bound bound(count, limit);
    for (uint64_t seq = 0; seq < count && bound.next() && !stop; ++seq) {
      size_t size = rng() % top;
      if (sendPayload(from, seq, size, deadlineAfter(10s), rng() % 8 != 0,
                      rng() % 4 == 0 ? 4 : 0) != Status::kOk)
        return;
    }
    flushUntil(from, [&] { return stop.load(); }, limit);
  });
  Bound bound(count, limit);
  for (uint64_t seq = 0; seq < count && bound.next(); ++seq) {
    auto r = receivePayload(to, seq, kAnySize, 10s);
    if (!r) {
      failure = r.message();
      break;
    }
    ++received;
  }
  stop = true;
  return received;
}

TEST_P(Conformance, StressBulkBothWays) {
  auto p = connectPair();
  constexpr uint64_t kCount = 20'000;
  std::string f1, f2;
  uint64_t r1 = 0, r2 = 0;
  {
    std::jthread a([&] { r1 = bulkOneWay(*p.client, *p.server, kCount, 64 << 10, 1, 40s, f1); });
    std::jthread b([&] { r2 = bulkOneWay(*p.server, *p.client, kCount, 16 << 10, 2, 40s, f2); });
  }
  EXPECT_EQ(r1, kCount) << f1;
  EXPECT_EQ(r2, kCount) << f2;
}

TEST_P(Conformance, StressManyConnectionsOnTheirOwnThreads) {
  constexpr size_t kConnections = 16;
  constexpr uint64_t kCount = 1000;
  auto o = options();
  o.ringBytes = 64 << 10;
  o.arenaBytes = 1 << 20;
  o.maxMessageBytes = 512 << 10;
  std::vector<ConnectionPair> pairs;
  for (size_t i = 0; i < kConnections; ++i) pairs.push_back(connectPair(o));
  std::vector<uint64_t> received(kConnections);
  std::vector<std::string> failures(kConnections);
  {
    std::vector<std::jthread> threads;
    for (size_t i = 0; i < kConnections; ++i)
      threads.emplace_back([&, i] {
        received[i] = bulkOneWay(*pairs[i].client, *pairs[i].server, kCount, 8000, i, 40s,
                                 failures[i]);
      });
  }
  for (size_t i = 0; i < kConnections; ++i)
    EXPECT_EQ(received[i], kCount) << "connection " << i << ": " << failures[i];
}

TEST_P(Conformance, StressManyCallersOfOneServer) {
  auto o = options();
  EchoService service;
  Server server(ServerOptions{.workerThreads = 2});
  server.addService(service);
  server.start();
  constexpr int kThreads = 6, kCalls = 1500;
  std::atomic<int> ok{0};
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      auto pair = connectPair(o);
      server.addConnection(std::move(pair.server));
      threads.emplace_back([&ok, t, client = std::move(pair.client)]() mutable {
        Channel ch(std::move(client));
        Bound bound(kCalls, 60s);
        for (int i = 0; i < kCalls && bound.next(); ++i) {
          if (i % 3 == 0) {
            // A burst of async calls, then wait for them all.
            std::vector<PendingCall> calls;
            for (int k = 0; k < 8; ++k) {
              auto req = ch.newRequest(kEchoInterface, kEcho, payloadWords(k * 100));
              buildPayload(req.message(), uint64_t(t) << 32 | (i * 8 + k), k * 100);
              calls.push_back(req.callAsync());
            }
            bool all = true;
            for (int k = 0; k < 8; ++k) {
              CallResult r = calls[k].wait();
              all = all && r.ok() &&
                    checkPayload(r.response(), uint64_t(t) << 32 | (i * 8 + k), k * 100);
            }
            if (all) ++ok;
          } else if (echoCall(ch, uint64_t(t) << 32 | i, (i * 89) % 20'000)) {
            ++ok;
          }
        }
      });
    }
  }
  EXPECT_EQ(ok.load(), kThreads * kCalls);
}

}  // namespace
}  // namespace zcrpc::conformance
