// zcrpc-test-server [--no-stats] [--threads N] ENDPOINT... — serves Echo (schemas/echo.capnp,
// tests/metrics/echo_impl.h) and, unless --no-stats, the stats endpoint and the health
// service (the server and "Echo" serving; SIGUSR1 makes both not serving, SIGUSR2 serving
// again), on every endpoint given (tcp://127.0.0.1:0 picks a port). Prints "ready ENDPOINT..." (the endpoints as
// listening, ports resolved) on one line once it serves, then runs until SIGTERM/SIGINT.
// For the tool and balancer tests: they start it, read the line, and kill it.
//
// zcrpc-test-server --client CALLS FAILS [--give-up N] ENDPOINT... — instead makes CALLS
// echo calls (64 bytes) and FAILS fail calls (ApplicationError 7) to the server, and N
// delay calls it gives up on (cancelled, and past a 20 ms deadline, in turn), prints
// "done", exits.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "metrics/echo_impl.h"
#include "zcrpc/context.h"
#include "zcrpc/health.h"

namespace {

int runClient(unsigned long calls, unsigned long fails, unsigned long giveUps,
              const std::vector<std::string>& endpoints) {
  zcrpc::Context context;
  zcrpc::Channel channel(context.connect(endpoints), context.config().channelOptions());
  zcrpc::echo::EchoClient client(channel);
  const std::string data(64, 'z');
  for (unsigned long i = 0; i < calls; ++i) {
    auto req = client.echoRequest(16);
    req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(data.data()), data.size()));
    if (req.call().results().getData().size() != data.size()) {
      std::fprintf(stderr, "echo came back wrong\n");
      return 1;
    }
  }
  for (unsigned long i = 0; i < fails; ++i) {
    auto req = client.failRequest();
    req.params().setCode(7);
    req.params().setMessage("refused by the test");
    try {
      req.call();
      std::fprintf(stderr, "fail did not fail\n");
      return 1;
    } catch (const zcrpc::ApplicationError& e) {
      if (e.code() != 7) return 1;
    }
  }
  // Calls the client gives up on: every other one cancelled, the rest past their deadline.
  for (unsigned long i = 0; i < giveUps; ++i) {
    auto req = client.delayRequest();
    req.params().setMicros(300'000);
    if (i % 2 == 0) {
      zcrpc::PendingCall call = req.callAsync();
      call.cancel();
      if (call.wait().errorKind() != zcrpc::ErrorKind::kCancelled) return 1;
    } else {
      req.setTimeout(std::chrono::milliseconds(20));
      try {
        req.call();
        return 1;
      } catch (const zcrpc::DeadlineExceeded&) {
      }
    }
  }
  // A round trip after the cancels: the server has read them (frames arrive in order)
  // before this client closes. (Over shm a frame sent just before the close may go
  // unread: the worker marks a connection whose peer hung up as disconnected first.)
  if (giveUps) channel.ping();
  std::printf("done\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 5 && std::strcmp(argv[1], "--client") == 0) {
    try {
      int first = 4;
      unsigned long giveUps = 0;
      if (std::strcmp(argv[4], "--give-up") == 0 && argc >= 7) {
        giveUps = std::strtoul(argv[5], nullptr, 10);
        first = 6;
      }
      return runClient(std::strtoul(argv[2], nullptr, 10), std::strtoul(argv[3], nullptr, 10),
                       giveUps, std::vector<std::string>(argv + first, argv + argc));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "zcrpc-test-server --client: %s\n", e.what());
      return 1;
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);  // health: stop serving (the server and "Echo")
  sigaddset(&set, SIGUSR2);  // health: serve again
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before any thread starts: all inherit it

  bool stats = true;
  size_t threads = 1;
  std::vector<std::string> endpoints;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-stats") == 0) stats = false;
    else if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = std::strtoul(argv[++i], nullptr, 10);
    else endpoints.push_back(argv[i]);
  }
  if (endpoints.empty()) {
    std::fprintf(stderr, "usage: %s [--no-stats] [--threads N] ENDPOINT...\n", argv[0]);
    return 2;
  }
  try {
    zcrpc::Context context;
    zcrpc::ServerOptions options = context.config().serverOptions();
    options.workerThreads = threads;
    zcrpc::testing::EchoImpl impl;
    zcrpc::Server server(options);
    server.addService(impl);
    zcrpc::HealthStatus* health = nullptr;
    if (stats) {
      server.enableStats();
      health = &server.enableHealth();
      health->set("Echo", zcrpc::ServingStatus::kServing);
    }
    for (const auto& e : endpoints) server.addListener(context.listen(e));
    server.start();
    std::string line = "ready";
    for (const auto& e : server.endpoints()) line += " " + e;
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      if ((sig == SIGUSR1 || sig == SIGUSR2) && health) {
        auto s = sig == SIGUSR1 ? zcrpc::ServingStatus::kNotServing : zcrpc::ServingStatus::kServing;
        health->set("", s);
        health->set("Echo", s);
        continue;
      }
      if (sig == SIGINT || sig == SIGTERM) break;
    }
    server.shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zcrpc-test-server: %s\n", e.what());
    return 1;
  }
  return 0;
}
