// echo_server ENDPOINT — serves zcrpc::echo::Echo (schemas/echo.capnp) until SIGINT or
// SIGTERM. ENDPOINT is shm://NAME (or just NAME), tcp://HOST:PORT or rdma://HOST:PORT;
// settings come from ZCRPC_* variables and URI queries (see zcrpc::Config).
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <deque>
#include <mutex>
#include <thread>

#include "echo.capnp.zcrpc.h"
#include "example_util.h"
#include "zcrpc/context.h"

namespace zcrpc::examples {
namespace {

/// Answers delayed calls from its own thread, so a `delay` never holds up the server's
/// polling thread. Threads: add() from handlers; the timer thread does the rest.
class Delayer final {
 public:
  Delayer() : thread_([this] { run(); }) {}
  ~Delayer() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();  // pending replies are dropped: each fails its call with kFailed
  }

  void add(DeferredReply reply, Clock::time_point due) {
    {
      std::lock_guard lock(mutex_);
      pending_.push_back({std::move(reply), due});
    }
    wake_.notify_one();
  }

 private:
  struct Pending {
    DeferredReply reply;
    Clock::time_point due;
  };

  static void answer(DeferredReply& reply, bool cancelled) {
    reply.complete([cancelled](OutgoingMessage& out) {
      out.initRoot<echo::Echo::DelayResults>().setCancelled(cancelled);
    });
  }

  void run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      auto now = Clock::now();
      for (auto it = pending_.begin(); it != pending_.end();) {
        bool cancelled = it->reply.isCancelled();
        if (cancelled || now >= it->due) {
          answer(it->reply, cancelled);
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      // Wake at least every millisecond while calls wait, to notice cancellations.
      if (pending_.empty())
        wake_.wait(lock);
      else
        wake_.wait_for(lock, std::chrono::milliseconds(1));
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending> pending_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

class EchoImpl final : public echo::EchoService {
 public:
  void echo(EchoCall& call) override {
    capnp::Data::Reader data = call.params().getData();
    // Size the response's first segment for the payload: one copy, into the ring.
    call.results(static_cast<uint32_t>(data.size() / sizeof(capnp::word) + 4)).setData(data);
  }
  void ping(PingCall&) override {}
  void sink(SinkCall& call) override { (void)call.params().getData().size(); }
  void delay(DelayCall& call) override {
    auto due = Clock::now() + std::chrono::microseconds(call.params().getMicros());
    delayer_.add(call.defer(), due);
  }
  void fail(FailCall& call) override {
    auto params = call.params();
    throw ApplicationError(params.getCode(), params.getMessage().cStr());
  }

 private:
  Delayer delayer_;
};

int run(int argc, char** argv) {
  return serveExample("echo_server", argc, argv, [] { return std::make_unique<EchoImpl>(); });
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  return zcrpc::examples::exampleMain("echo_server", argc, argv, zcrpc::examples::run);
}
