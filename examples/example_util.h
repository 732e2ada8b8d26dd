// Helpers shared by the example programs: endpoint arguments, stop signals, checks.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <string>
#include <string_view>

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
