// Helpers shared by the example programs: endpoint arguments, stop signals, checks.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "zcrpc/context.h"
#include "zcrpc/rpc.h"

namespace zcrpc::examples {

/// The endpoint URI for a command-line argument: `NAME` means `shm://NAME`; anything
/// with a scheme (`shm://`, `tcp://`, `rdma://`) is passed through to zcrpc::Context.
inline std::string endpointUri(std::string_view arg) {
  if (arg.find("://") != std::string_view::npos) return std::string(arg);
  return "shm://" + std::string(arg);
}

/// Blocks SIGINT and SIGTERM in the calling thread. Call it first in main(), before any
/// thread starts, so every thread inherits the mask and only waitForStopSignal() sees them.
inline void blockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

/// Waits for SIGINT or SIGTERM (blocked by blockStopSignals()) and returns it.
inline int waitForStopSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

/// An example's main(): runs `run(argc, argv)`; an exception ends the program with its
/// message after `name` on stderr and exit status 1.
template <typename Run>
int exampleMain(const char* name, int argc, char** argv, Run run) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 1;
  }
}

/// A server example's life once its services and listeners are added: starts `server`,
/// prints "NAME: serving ENDPOINT" for each endpoint (run_example.py waits for it), waits
/// for SIGINT or SIGTERM (blocked by blockStopSignals() first), shuts the server down.
inline int serveUntilStopped(const char* name, Server& server) {
  server.start();
  for (const std::string& e : server.endpoints()) std::printf("%s: serving %s\n", name, e.c_str());
  std::fflush(stdout);
  const int sig = waitForStopSignal();
  std::printf("%s: signal %d, shutting down\n", name, sig);
  server.shutdown();
  return 0;
}

/// run() of a server example: `argv[1]` is the endpoint, settings come from ZCRPC_*
/// variables (Context); `make()` builds the service (after the stop signals are blocked,
/// so that threads it starts inherit the mask), which is served until SIGINT or SIGTERM.
/// `workers` (0: the settings') sets the worker threads.
template <typename Make>
int serveExample(const char* name, int argc, char** argv, Make make, size_t workers = 0) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ENDPOINT   (shm://NAME, NAME, tcp://HOST:PORT)\n", argv[0]);
    return 2;
  }
  blockStopSignals();
  Context context;
  auto service = make();
  ServerOptions options = context.config().serverOptions();
  if (workers) options.workerThreads = workers;
  Server server(options);
  server.addService(*service);
  server.addListener(context.listen(endpointUri(argv[1])));
  return serveUntilStopped(name, server);
}

/// Counts failed expectations of a client run, printing each. Threads: one.
class Checker final {
 public:
  /// Records `ok`; prints `what` when it is false. Returns `ok`.
  bool expect(bool ok, const std::string& what) {
    if (!ok) {
      ++failures_;
      std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    }
    return ok;
  }
  int failures() const noexcept { return failures_; }

 private:
  int failures_ = 0;
};

}  // namespace zcrpc::examples
