// Helpers for the RPC core tests: a hand-written test service (until capnpc-zcrpc
// generates service bases), a deferred-answer executor, a harness that serves it over
// loopback or shm, and checked echo payloads. Header-only, test code only.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench.capnp.h"
#include "transport/test_util.h"
#include "zcrpc/loopback.h"
#include "zcrpc/rpc.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"

namespace zcrpc::rpctest {

using namespace std::chrono_literals;
using bench::Payload;
using test::checksum;
using test::fillPattern;

/// The test interface. Every method takes and returns bench::Payload.
inline constexpr uint64_t kTestIface = 0xb5e7c0de5e7f1ce1ull;
/// An interface nobody serves.
inline constexpr uint64_t kUnknownIface = 0xdeadbeefdeadbeefull;

enum Method : uint16_t {
  /// {seq, checksum(data), data} -> {seq + 1, checksum(data), data}; a request whose
  /// checksum does not match its data fails with ApplicationError(kBadChecksum).
  kEcho = 0,
  /// Throws ApplicationError(1000 + seq, "application refused seq <seq>").
  kFailApp = 1,
  /// Throws std::runtime_error("handler blew up on seq <seq>").
  kFailStd = 2,
  /// Deferred: {seq = token, checksum = delay in ms}. The executor answers {token + 1}
  /// after the delay, or fails the call with kCancelled as soon as it sees the
  /// cancellation (and records the token in cancelSeen()).
  kSlow = 3,
  /// One-way: records seq.
  kOneWay = 4,
  /// As kEcho, but deferred and completed from the executor thread.
  kDeferredEcho = 5,
  /// Starts the response, writes `seq` data bytes into it, then throws
  /// ApplicationError(kHalfwayCode, "failed after starting the response").
  kFailHalfway = 6,
  /// Deferred; the executor answers with fail(kApplication, "deferred failure of token
  /// <seq>", kDeferredFailCode).
  kDeferredFail = 7,
  /// Deferred; the executor completes it with a fill that throws
  /// ApplicationError(kFillThrowsCode, "fill of token <seq> threw").
  kDeferredFillThrows = 8,
  /// Defers and drops the DeferredReply unanswered.
  kDropDeferred = 9,
  /// Throws zcrpc::Overloaded("service is busy: try later").
  kThrowOverloaded = 10,
  /// Defers and parks the DeferredReply in the service (takeParked()).
  kPark = 11,
  /// As kEcho, but the answer's data is the request's, given to
  /// OutgoingMessage::referenceData (over tcp written from the request where it lies).
  kEchoReferencing = 12,
  kUnknownMethod = 99,
};

inline constexpr int32_t kBadChecksum = 77;
inline constexpr int32_t kHalfwayCode = 66;
inline constexpr int32_t kDeferredFailCode = 1234;
inline constexpr int32_t kFillThrowsCode = 55;

inline uint32_t payloadWords(size_t size) { return static_cast<uint32_t>(8 + (size + 7) / 8); }

/// Fills a request payload whose data derives from `seq` (see test::fillPattern).
inline void fillPayload(Payload::Builder p, uint64_t seq, size_t size) {
  p.setSeq(seq);
  auto d = p.initData(static_cast<capnp::uint>(size));
  fillPattern(d.begin(), size, seq);
  p.setChecksum(checksum(d.begin(), size));
}

/// The checksum of the data a request with `seq` and `size` carries.
inline uint64_t expectedChecksum(uint64_t seq, size_t size) {
  std::vector<uint8_t> d(size);
  fillPattern(d.data(), size, seq);
  return checksum(d.data(), size);
}

/// Empty when `r` is the echo of the request (seq, size), else what is wrong with it.
/// Usable where gtest assertions are not (child processes).
inline std::string echoProblem(Payload::Reader r, uint64_t seq, size_t size) {
  auto d = r.getData();
  if (r.getSeq() != seq + 1)
    return "seq " + std::to_string(r.getSeq()) + ", expected " + std::to_string(seq + 1);
  if (d.size() != size)
    return "seq " + std::to_string(seq) + ": " + std::to_string(d.size()) + " data bytes, expected " +
           std::to_string(size);
  uint64_t sum = checksum(d.begin(), d.size());
  if (sum != r.getChecksum()) return "seq " + std::to_string(seq) + ": checksum does not match data";
  if (sum != expectedChecksum(seq, size))
    return "seq " + std::to_string(seq) + ": data is not the request's";
  return {};
}

inline ::testing::AssertionResult isEcho(Payload::Reader r, uint64_t seq, size_t size) {
  std::string why = echoProblem(r, seq, size);
  if (why.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << why;
}

using EchoRequest = Request<Payload, Payload>;

/// Waits (polling) until `pred` holds or `timeout` passes; returns pred().
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5000ms) {
  auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(200us);
  }
  return true;
}

/// Polls `ch` until no call is outstanding or `timeout` passes. Returns true if none is.
inline bool drainChannel(Channel& ch, std::chrono::milliseconds timeout = 5000ms) {
  auto deadline = Clock::now() + timeout;
  for (int i = 0; i < 1'000'000 && ch.outstanding() && Clock::now() < deadline; ++i)
    ch.pollUntil(std::min(deadline, deadlineAfter(20ms)));
  return ch.outstanding() == 0;
}

// ---------------------------------------------------------------------------------------
// Deferred answers: one thread that holds DeferredReplies and answers them when due, or
// fails them as soon as it sees their cancellation.

class DeferredExecutor final {
 public:
  enum class Mode { kAnswer, kFail, kFillThrows };
  struct Task {
    Mode mode = Mode::kAnswer;
    DeferredReply reply;
    Clock::time_point due;
    uint64_t token = 0;
    uint64_t seqOut = 0;
    std::vector<uint8_t> data;
  };
  /// `onCancelSeen` runs on the executor thread for every cancellation it sees.
  explicit DeferredExecutor(std::function<void(uint64_t)> onCancelSeen)
      : onCancelSeen_(std::move(onCancelSeen)), thread_([this] { run(); }) {}
  ~DeferredExecutor() { stop(); }

  void push(Task task) {
    {
      std::lock_guard lock(mutex_);
      inbox_.push_back(std::move(task));
    }
    cv_.notify_one();
  }
  /// Stops the thread; tasks still held are dropped (DeferredReply fails them unanswered).
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }
  /// complete() calls refused (the server had already answered the call, e.g. at shutdown).
  uint64_t refusedCompletions() const { return refused_.load(); }

 private:
  void run() {
    std::vector<Task> tasks;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        if (tasks.empty() && inbox_.empty() && !stopping_) cv_.wait_for(lock, 50ms);
        else if (!stopping_ && inbox_.empty()) cv_.wait_for(lock, 300us);
        if (stopping_) break;
        for (auto& t : inbox_) tasks.push_back(std::move(t));
        inbox_.clear();
      }
      auto now = Clock::now();
      for (auto it = tasks.begin(); it != tasks.end();) {
        if (it->reply.isCancelled()) {
          onCancelSeen_(it->token);
          it->reply.fail(ErrorKind::kCancelled,
                         "handler saw the cancellation of token " + std::to_string(it->token));
          it = tasks.erase(it);
        } else if (now >= it->due) {
          try {
            if (it->mode == Mode::kFail) {
              it->reply.fail(ErrorKind::kApplication,
                             "deferred failure of token " + std::to_string(it->token),
                             kDeferredFailCode);
            } else if (it->mode == Mode::kFillThrows) {
              it->reply.complete([token = it->token](OutgoingMessage& m) {
                m.initRoot<Payload>().setSeq(token);
                throw ApplicationError(kFillThrowsCode,
                                       "fill of token " + std::to_string(token) + " threw");
              });
            } else {
              it->reply.complete([seq = it->seqOut, data = std::move(it->data)](OutgoingMessage& m) {
                auto r = m.initRoot<Payload>();
                r.setSeq(seq);
                r.setData(kj::arrayPtr(data.data(), data.size()));
                r.setChecksum(checksum(data.data(), data.size()));
              });
            }
          } catch (const Error&) {
            ++refused_;
          }
          it = tasks.erase(it);
        } else {
          ++it;
        }
      }
    }
    tasks.clear();
    std::lock_guard lock(mutex_);
    inbox_.clear();
  }

  std::function<void(uint64_t)> onCancelSeen_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Task> inbox_;
  bool stopping_ = false;
  std::atomic<uint64_t> refused_{0};
  std::thread thread_;  // last: starts after everything it uses
};

// ---------------------------------------------------------------------------------------
// The test service, implemented by hand against zcrpc::Service.

class TestService final : public Service {
 public:
  TestService() : executor_([this](uint64_t token) { noteCancel(token); }) {}

  std::span<const uint64_t> interfaceIds() const noexcept override { return ids_; }

  bool dispatch(uint64_t interfaceId, uint16_t methodId, CallContext& ctx) override {
    if (interfaceId != kTestIface) return false;
    switch (methodId) {
      case kEcho: {
        ServerCall<Payload, Payload> call(ctx);
        auto p = call.params();
        auto d = p.getData();
        uint64_t sum = checksum(d.begin(), d.size());
        if (sum != p.getChecksum())
          throw ApplicationError(kBadChecksum, "request seq " + std::to_string(p.getSeq()) +
                                                   " arrived with a bad checksum");
        auto r = call.results(payloadWords(d.size()));
        r.setSeq(p.getSeq() + 1);
        r.setData(d);
        r.setChecksum(sum);
        echoes.fetch_add(1, std::memory_order_relaxed);
        return true;
      }
      case kEchoReferencing: {
        ServerCall<Payload, Payload> call(ctx);
        auto p = call.params();
        auto d = p.getData();
        auto r = call.results(payloadWords(0));
        r.setSeq(p.getSeq() + 1);
        r.setChecksum(p.getChecksum());
        ctx.response().referenceData(r, "data", d);
        echoes.fetch_add(1, std::memory_order_relaxed);
        return true;
      }
      case kFailApp: {
        uint64_t seq = ctx.request().getRoot<Payload>().getSeq();
        throw ApplicationError(static_cast<int32_t>(1000 + seq),
                               "application refused seq " + std::to_string(seq));
      }
      case kFailStd: {
        uint64_t seq = ctx.request().getRoot<Payload>().getSeq();
        throw std::runtime_error("handler blew up on seq " + std::to_string(seq));
      }
      case kSlow: {
        auto p = ctx.request().getRoot<Payload>();
        DeferredExecutor::Task t;
        t.token = p.getSeq();
        t.seqOut = t.token + 1;
        t.due = Clock::now() + std::chrono::milliseconds(p.getChecksum());
        t.reply = ctx.defer();
        executor_.push(std::move(t));
        noteDeferred(p.getSeq());
        return true;
      }
      case kOneWay: {
        uint64_t seq = ctx.request().getRoot<Payload>().getSeq();
        std::lock_guard lock(mutex_);
        oneWaySeqs_.push_back(seq);
        oneWayWasOneWay_ &= ctx.isOneWay();
        return true;
      }
      case kDeferredEcho: {
        auto p = ctx.request().getRoot<Payload>();
        auto d = p.getData();
        if (checksum(d.begin(), d.size()) != p.getChecksum())
          throw ApplicationError(kBadChecksum, "bad checksum");
        DeferredExecutor::Task t;
        t.token = p.getSeq();
        t.seqOut = t.token + 1;
        t.data.assign(d.begin(), d.end());
        t.due = Clock::now();
        t.reply = ctx.defer();
        executor_.push(std::move(t));
        return true;
      }
      case kFailHalfway: {
        ServerCall<Payload, Payload> call(ctx);
        uint64_t size = call.params().getSeq();
        auto r = call.results(4);  // the data goes into further segments (ring or arena)
        auto d = r.initData(static_cast<capnp::uint>(size));
        std::memset(d.begin(), 0xab, d.size());
        throw ApplicationError(kHalfwayCode, "failed after starting the response");
      }
      case kDeferredFail:
      case kDeferredFillThrows: {
        DeferredExecutor::Task t;
        t.mode = methodId == kDeferredFail ? DeferredExecutor::Mode::kFail
                                           : DeferredExecutor::Mode::kFillThrows;
        t.token = ctx.request().getRoot<Payload>().getSeq();
        t.due = Clock::now();
        t.reply = ctx.defer();
        executor_.push(std::move(t));
        return true;
      }
      case kDropDeferred: {
        DeferredReply dropped = ctx.defer();
        return true;
      }
      case kThrowOverloaded:
        throw Overloaded("service is busy: try later");
      case kPark: {
        DeferredReply r = ctx.defer();
        std::lock_guard lock(mutex_);
        parked_.push_back(std::move(r));
        return true;
      }
      default:
        return false;
    }
  }

  /// Replies parked by kPark so far (the caller now owns them).
  std::vector<DeferredReply> takeParked() {
    std::lock_guard lock(mutex_);
    return std::move(parked_);
  }
  size_t parkedCount() {
    std::lock_guard lock(mutex_);
    return parked_.size();
  }

  /// Stops the executor (its held calls fail unanswered). Call after Server::shutdown and
  /// before the Server is destroyed.
  void stopExecutor() { executor_.stop(); }
  uint64_t refusedCompletions() const { return executor_.refusedCompletions(); }

  bool cancelSeen(uint64_t token) {
    std::lock_guard lock(mutex_);
    return cancelled_.count(token) != 0;
  }
  bool deferredSeen(uint64_t token) {
    std::lock_guard lock(mutex_);
    return deferred_.count(token) != 0;
  }
  std::vector<uint64_t> oneWaySeqs() {
    std::lock_guard lock(mutex_);
    return oneWaySeqs_;
  }
  bool oneWaysWereOneWay() {
    std::lock_guard lock(mutex_);
    return oneWayWasOneWay_;
  }
  /// Runs on the worker thread for every kSlow call deferred (child processes use it to
  /// tell the parent).
  std::function<void(uint64_t)> onDeferred;

  std::atomic<uint64_t> echoes{0};

 private:
  void noteCancel(uint64_t token) {
    std::lock_guard lock(mutex_);
    cancelled_.insert(token);
  }
  void noteDeferred(uint64_t token) {
    {
      std::lock_guard lock(mutex_);
      deferred_.insert(token);
    }
    if (onDeferred) onDeferred(token);
  }

  static constexpr std::array<uint64_t, 1> ids_{kTestIface};
  std::mutex mutex_;
  std::set<uint64_t> cancelled_;
  std::set<uint64_t> deferred_;
  std::vector<uint64_t> oneWaySeqs_;
  bool oneWayWasOneWay_ = true;
  std::vector<DeferredReply> parked_;
  DeferredExecutor executor_;  // last: its thread calls back into the members above
};

/// Starts a kSlow call: the server answers {token + 1} after `delay` unless cancelled.
inline void fillSlow(Payload::Builder p, uint64_t token, std::chrono::milliseconds delay) {
  p.setSeq(token);
  p.setChecksum(static_cast<uint64_t>(delay.count()));
}

// ---------------------------------------------------------------------------------------
// Serving the test service over one transport.

enum class Transport { kLoopback, kShm, kTcp };

inline const char* transportName(Transport t) {
  return t == Transport::kLoopback ? "Loopback" : t == Transport::kShm ? "Shm" : "Tcp";
}

inline std::string uniqueName(const std::string& what) {
  static std::atomic<int> counter{0};
  return "rpctest-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

inline ConnectionOptions testConnOpts(WaitMode mode = WaitMode::kSpinThenSleep) {
  ConnectionOptions o;
  o.ringBytes = 256 * 1024;
  o.arenaBytes = 8 << 20;
  o.maxMessageBytes = 4 << 20;
  o.waitMode = mode;
  o.connectTimeout = 3000ms;
  return o;
}

/// A Server with a TestService on one transport; `connect()` makes client connections.
/// Tear-down order: server shut down, executor stopped, server destroyed, service last.
class Harness final {
 public:
  /// `also`: services served beside `service` (they must outlive the harness).
  Harness(Transport transport, ServerOptions serverOptions = {},
          ConnectionOptions connOptions = testConnOpts(), std::vector<Service*> also = {})
      : transport_(transport), connOptions_(connOptions),
        server_(std::make_unique<Server>(serverOptions)) {
    server_->addService(service);
    for (Service* s : also) server_->addService(*s);
    if (transport_ == Transport::kShm) {
      name_ = uniqueName("h");
      ShmListenOptions lo;
      lo.connection = connOptions_;
      server_->addListener(listenShm(name_, lo));
    } else if (transport_ == Transport::kTcp) {
      auto listener = listenTcp("127.0.0.1:0", tcpOptions(connOptions_));
      name_ = listener->endpoint();
      server_->addListener(std::move(listener));
    }
    server_->start();
  }
  ~Harness() { stop(); }
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  /// A new client connection to the server. Any thread.
  std::unique_ptr<Connection> connect() { return connect(connOptions_); }
  std::unique_ptr<Connection> connect(const ConnectionOptions& o) {
    if (transport_ == Transport::kShm) return connectShm(name_, o);
    if (transport_ == Transport::kTcp) return connectTcp(name_, tcpOptions(o));
    auto [client, server] = makeLoopbackPair(o);
    server_->addConnection(std::move(server));
    return std::move(client);
  }
  std::unique_ptr<Channel> channel(ChannelOptions o = {}) {
    return std::make_unique<Channel>(connect(), o);
  }
  Server& server() { return *server_; }
  /// The shm name or the tcp endpoint.
  const std::string& name() const { return name_; }
  Transport transport() const { return transport_; }

  void stop() {
    if (!server_) return;
    server_->shutdown(deadlineAfter(2s));
    service.stopExecutor();
    server_.reset();
  }

  TestService service;  // first: outlives the server

 private:
  static TcpOptions tcpOptions(const ConnectionOptions& o) {
    TcpOptions t;
    t.connection = o;
    return t;
  }
  Transport transport_;
  ConnectionOptions connOptions_;
  std::string name_;
  std::unique_ptr<Server> server_;
};

}  // namespace zcrpc::rpctest
