// Child processes for tests: always reaped, killed with the test process. Test code only.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>

#include "zcrpc/transport.h"

namespace zcrpc::test {

/// A forked child running `body`; its exit code is body's return value (or 120 if it
/// threw). Killed (SIGKILL) and reaped on destruction, so no test path leaks a process;
/// the child also dies if the test process dies (PR_SET_PDEATHSIG).
/// The child must not use gtest assertions (they would be lost): it reports through its
/// exit code and stderr.
class Child final {
 public:
  explicit Child(const std::function<int()>& body) {
    pid_t parent = ::getpid();
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(121);
      int code = 120;
      try {
        code = body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: exception: %s\n", ::getpid(), e.what());
      } catch (...) {
        std::fprintf(stderr, "child %d: unknown exception\n", ::getpid());
      }
      std::fflush(nullptr);
      ::_exit(code);
    }
  }
  ~Child() { kill(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && !reaped_; }

  /// SIGKILL and reap (idempotent).
  void kill() {
    if (!running()) return;
    ::kill(pid_, SIGKILL);
    int st;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    status_ = st;
    reaped_ = true;
  }
  void signal(int sig) {
    if (running()) ::kill(pid_, sig);
  }

  /// Waits for the child to exit; kills it at `timeout`. Returns the exit code, or -1 if it
  /// had to be killed, or 128+signal if a signal ended it.
  int wait(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (running()) {
      int st;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        status_ = st;
        reaped_ = true;
        break;
      }
      if (Clock::now() >= deadline) {
        kill();
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (WIFEXITED(status_)) return WEXITSTATUS(status_);
    if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
    return -1;
  }
  /// True (and reaped) if it has ended by now; does not wait.
  bool ended() {
    if (!running()) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
    status_ = st;
    reaped_ = true;
    return true;
  }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

/// "exit N", "killed by signal N (name)" or "hung (killed at the timeout)" for a code
/// from Child::wait().
inline std::string describeExit(int code) {
  if (code == -1) return "hung (killed at the timeout)";
  if (code > 128) return "killed by signal " + std::to_string(code - 128) + " (" + strsignal(code - 128) + ")";
  return "exit " + std::to_string(code);
}

}  // namespace zcrpc::test
