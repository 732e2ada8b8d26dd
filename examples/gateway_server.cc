// gateway_server ENDPOINT [UPSTREAM] — serves zcrpc::echo::Echo on ENDPOINT from one
// thread's own epoll loop, and answers echo and fail by calling an upstream Echo service
// without ever blocking that thread.
//
// * The Server has no worker threads (ServerOptions::workerThreads = 0): the loop drives it
//   with Server::poll() and sleeps on Server::waitFd() beside its other descriptors.
// * A handler that needs another service defers its answer, sends the upstream call with
//   callAsync() and returns; the upstream answer's callback (run by the upstream
//   Channel's poll(), in the same loop) completes the deferred answer. A caller that
//   cancels gets its upstream call cancelled too.
// * delay() is answered from the loop's own timer, also deferred.
// * SIGINT and SIGTERM come to the loop as a signalfd.
//
// The upstream is UPSTREAM (an endpoint: shm://NAME, tcp://HOST:PORT, ...) or, without it,
// an echo backend in this process on its own worker thread, reached over a loopback pair.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "echo.capnp.zcrpc.h"
#include "example_util.h"
#include "zcrpc/context.h"
#include "zcrpc/loopback.h"

namespace zcrpc::examples {
namespace {

using echo::Echo;

/// The in-process upstream: echo and fail, on its own server's worker thread.
class Backend final : public echo::EchoService {
 public:
  void echo(EchoCall& call) override {
    auto data = call.params().getData();
    call.results(static_cast<uint32_t>(data.size() / 8 + 4)).setData(data);
  }
  void ping(PingCall&) override {}
  void sink(SinkCall&) override {}
  void delay(DelayCall&) override { throw ApplicationError(1, "the backend does not delay"); }
  void fail(FailCall& call) override {
    throw ApplicationError(call.params().getCode(), call.params().getMessage().cStr());
  }
};

/// The gateway's service. Threads: the loop's (handlers run inside Server::poll(),
/// callbacks inside upstream.poll(), tick() between them).
class Gateway final : public echo::EchoService {
 public:
  explicit Gateway(Channel& upstream) : upstream_(upstream) {}

  void echo(EchoCall& call) override {
    // Build the upstream request from the params first: they go with defer().
    auto req = upstream_.echoRequest(static_cast<uint32_t>(call.params().getData().size() / 8 + 4));
    req.params().setData(call.params().getData());
    forward(call.defer(), req, [](CallResult& r) -> Fill {
      auto data = r.results<Echo::EchoResults>().getData();
      return [bytes = std::vector<kj::byte>(data.begin(), data.end())](OutgoingMessage& out) {
        out.build<Echo::EchoResults>().setData(kj::arrayPtr(bytes.data(), bytes.size()));
      };
    });
  }
  void fail(FailCall& call) override {
    auto req = upstream_.failRequest();
    req.params().setCode(call.params().getCode());
    req.params().setMessage(call.params().getMessage());
    forward(call.defer(), req, [](CallResult&) -> Fill { return [](OutgoingMessage&) {}; });
  }
  void ping(PingCall&) override {}
  void sink(SinkCall&) override {}
  void delay(DelayCall& call) override {
    const auto micros = std::chrono::microseconds(call.params().getMicros());
    delays_.push_back({call.defer(), Clock::now() + micros});
  }

  /// The loop's timer: answers delays that are due or that their callers cancelled, and
  /// cancels the upstream calls of callers that gave up.
  void tick() {
    const auto now = Clock::now();
    std::erase_if(delays_, [&](Delayed& d) {
      const bool cancelled = d.reply.isCancelled();
      if (!cancelled && now < d.due) return false;
      d.reply.complete([cancelled](OutgoingMessage& out) {
        out.build<Echo::DelayResults>().setCancelled(cancelled);
      });
      return true;
    });
    std::erase_if(forwarded_, [](Forwarded& f) {
      if (f.pending.done()) return true;
      if (f.reply->isCancelled()) f.pending.cancel();  // its callback fails the reply
      return false;
    });
  }
  bool waiting() const { return !delays_.empty() || !forwarded_.empty(); }

 private:
  struct Delayed {
    DeferredReply reply;
    Clock::time_point due;
  };
  struct Forwarded {
    std::shared_ptr<DeferredReply> reply;
    PendingCall pending;
  };

  using Fill = std::function<void(OutgoingMessage&)>;

  /// Sends `req` upstream; its answer completes `reply`. `take(result)` reads the upstream
  /// results and returns what writes the answer: it must copy what it needs, since the
  /// upstream response goes back to its transport when the callback returns and the answer
  /// is built later (by the next Server::poll()).
  template <typename Request, typename Take>
  void forward(DeferredReply reply, Request& req, Take take) {
    auto shared = std::make_shared<DeferredReply>(std::move(reply));
    try {
      PendingCall pending = req.callAsync([shared, take](CallResult&& r) {
        if (r.ok())
          shared->complete(take(r));
        else  // errors pass through with their kind, code and message
          shared->fail(r.errorKind(), r.errorMessage(), r.errorCode());
      });
      forwarded_.push_back({shared, std::move(pending)});
    } catch (const Error& e) {
      // The upstream window is full or the upstream is gone: the caller gets the reason.
      shared->fail(e.kind(), std::string("upstream: ") + e.what());
    }
  }

  echo::EchoClient upstream_;
  std::vector<Delayed> delays_;
  std::vector<Forwarded> forwarded_;
};

int run(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s ENDPOINT [UPSTREAM]\n", argv[0]);
    return 2;
  }
  blockStopSignals();
  Context context;

  // The upstream: another process, or a backend here on a worker thread of its own.
  Backend backend;
  Server backendServer;
  std::unique_ptr<Connection> upstreamConnection;
  if (argc == 3) {
    upstreamConnection = context.connect(endpointUri(argv[2]));
  } else {
    backendServer.addService(backend);
    backendServer.start();
    auto [client, server] = makeLoopbackPair();
    backendServer.addConnection(std::move(server));
    upstreamConnection = std::move(client);
  }
  Channel upstream(std::move(upstreamConnection), context.config().channelOptions());

  Gateway gateway(upstream);
  ServerOptions options = context.config().serverOptions();
  options.workerThreads = 0;  // this thread drives it
  Server server(options);
  server.addService(gateway);
  server.addListener(context.listen(endpointUri(argv[1])));
  server.start();

  // One epoll set: the server, the upstream channel, stop signals, a 1 ms timer.
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGINT);
  sigaddset(&stopSignals, SIGTERM);
  const int signals = ::signalfd(-1, &stopSignals, SFD_CLOEXEC | SFD_NONBLOCK);
  const int timer = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  const itimerspec everyMilli{{0, 1'000'000}, {0, 1'000'000}};
  ::timerfd_settime(timer, 0, &everyMilli, nullptr);
  for (int fd : {server.waitFd(), upstream.connection().waitFd(), signals, timer}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  for (const std::string& e : server.endpoints()) std::printf("gateway_server: serving %s\n", e.c_str());
  std::fflush(stdout);

  int stopSignal = 0;
  while (stopSignal == 0) {
    // The non-blocking steps: everything that has arrived on either side.
    server.poll();
    upstream.poll();
    // Sleep only when neither has anything: both arm their descriptors first.
    const auto left = server.armWait();
    const bool upstreamArmed = upstream.connection().armWait();
    if (left.count() > 0 && upstreamArmed) {
      epoll_event events[8];
      const int timeoutMs = static_cast<int>(std::min<int64_t>(left.count(), 1000));
      const int n = ::epoll_wait(ep, events, 8, timeoutMs);
      for (int i = 0; i < n; ++i) {
        if (events[i].data.fd == signals) {
          signalfd_siginfo info{};
          if (::read(signals, &info, sizeof info) == sizeof info) stopSignal = static_cast<int>(info.ssi_signo);
        } else if (events[i].data.fd == timer) {
          uint64_t expirations = 0;
          (void)!::read(timer, &expirations, sizeof expirations);
          gateway.tick();
        }
      }
    } else if (gateway.waiting()) {
      gateway.tick();
    }
    if (upstreamArmed) upstream.connection().disarmWait();
  }
  std::printf("gateway_server: signal %d, shutting down\n", stopSignal);
  server.shutdown();  // on this thread: it drives the server
  ::close(timer);
  ::close(signals);
  ::close(ep);
  return 0;
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  return zcrpc::examples::exampleMain("gateway_server", argc, argv, zcrpc::examples::run);
}
