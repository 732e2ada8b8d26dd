// The Echo service (schemas/echo.capnp) as the metrics, balancer, tool and compat tests
// serve it: echo, ping and sink answer at once, fail throws ApplicationError, delay is
// deferred and answered from a timer thread (at once when the caller cancelled it). Counts
// pings, sunk bytes and cancelled delays; records what handlers saw of tracing. Test code
// only.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "echo.capnp.zcrpc.h"
#include "zcrpc/rpc.h"

namespace zcrpc::testing {

class EchoImpl final : public echo::EchoService {
 public:
  EchoImpl() : timer_([this] { run(); }) {}
  ~EchoImpl() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    timer_.join();
  }

  void echo(EchoCall& call) override {
    noteTrace(call.trace());
    if (capnpAccessors) [[unlikely]]
      call.resultsCapnp(payloadHint_).setData(call.paramsCapnp().getData());
    else
      call.results(payloadHint_).setData(call.params().getData());
  }
  void ping(PingCall& call) override {
    noteTrace(call.trace());
    {
      std::lock_guard lock(traceMutex_);
      lastPingMetadata_ = call.context().metadata();
    }
    pings_.fetch_add(1, std::memory_order_relaxed);
  }
  void sink(SinkCall& call) override {
    noteTrace(call.trace());
    sunk_.fetch_add(call.params().getData().size(), std::memory_order_relaxed);
  }
  void delay(DelayCall& call) override {
    noteTrace(call.trace());
    auto due = std::chrono::steady_clock::now() + std::chrono::microseconds(call.params().getMicros());
    DeferredReply reply = call.defer();
    {
      std::lock_guard lock(traceMutex_);
      deferredTrace_ = reply.trace();
    }
    {
      std::lock_guard lock(mutex_);
      pending_.push_back({std::move(reply), due});
    }
    wake_.notify_one();
  }
  void fail(FailCall& call) override {
    noteTrace(call.trace());
    auto p = call.params();
    throw ApplicationError(p.getCode(), p.getMessage().cStr());
  }

  /// The trace context the last handler saw (any handler thread wrote it last).
  TraceContext lastTrace() const {
    std::lock_guard lock(traceMutex_);
    return lastTrace_;
  }
  /// What DeferredReply::trace() said in the last delay call.
  TraceContext deferredTrace() const {
    std::lock_guard lock(traceMutex_);
    return deferredTrace_;
  }
  /// The metadata the last ping carried.
  Metadata lastPingMetadata() const {
    std::lock_guard lock(traceMutex_);
    return lastPingMetadata_;
  }
  uint64_t sunk() const { return sunk_.load(); }
  int pings() const { return pings_.load(); }
  /// Delay calls answered as cancelled (the handler saw isCancelled()).
  int cancelled() const { return cancelled_.load(); }

  /// echo reads and writes through Cap'n Proto's own accessors (paramsCapnp(),
  /// resultsCapnp()) instead of zcrpc's: metrics_cost compares the two. Set before serving.
  bool capnpAccessors = false;

 private:
  struct Pending {
    DeferredReply reply;
    std::chrono::steady_clock::time_point due;
  };

  void noteTrace(const TraceContext& t) {
    std::lock_guard lock(traceMutex_);
    lastTrace_ = t;
  }

  void run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      auto now = std::chrono::steady_clock::now();
      for (auto it = pending_.begin(); it != pending_.end();) {
        bool cancelled = it->reply.isCancelled();
        if (cancelled || now >= it->due) {
          if (cancelled) cancelled_.fetch_add(1, std::memory_order_relaxed);
          it->reply.complete([cancelled](OutgoingMessage& out) {
            out.initRoot<echo::Echo::DelayResults>().setCancelled(cancelled);
          });
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      if (pending_.empty())
        wake_.wait(lock);
      else
        wake_.wait_for(lock, std::chrono::milliseconds(1));
    }
  }

  static constexpr uint32_t payloadHint_ = 0;
  mutable std::mutex traceMutex_;
  TraceContext lastTrace_;
  TraceContext deferredTrace_;
  Metadata lastPingMetadata_;
  std::atomic<uint64_t> sunk_{0};
  std::atomic<int> pings_{0};
  std::atomic<int> cancelled_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending> pending_;
  bool stopping_ = false;
  std::thread timer_;  // last: starts after the members it uses
};

}  // namespace zcrpc::testing
