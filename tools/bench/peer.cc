#include "peer.h"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include <fmt/format.h>
#include <kj/exception.h>

namespace zcrpc::bench {

namespace {

/// Runs in the forked child; never returns.
[[noreturn]] void runChild(int fd, pid_t parent, const PeerProcess::Body& body) {
  // Die with the parent, whatever kills it; close the race with a parent that already died.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(3);
  int code = 0;
  {
    ControlChannel control(fd);
    std::string error;
    try {
      body(control);
    } catch (const std::exception& e) {
      error = e.what();
    } catch (const kj::Exception& e) {
      error = std::string("Cap'n Proto: ") + e.getDescription().cStr();
    } catch (...) {
      error = "unknown exception";
    }
    if (!error.empty()) {
      code = 1;
      Reply r;
      r.kind = ReplyKind::kError;
      std::strncpy(r.text, error.c_str(), sizeof r.text - 1);
      try {
        control.send(r);
      } catch (...) {
      }
    }
  }
  // _exit: no atexit handlers and no flushing of stdio buffers copied from the parent.
  ::_exit(code);
}

std::string describeStatus(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("killed by signal {} ({})", WTERMSIG(status), ::strsignal(WTERMSIG(status)));
  return fmt::format("ended with wait status {:#x}", status);
}

}  // namespace

ControlChannel::~ControlChannel() { close(); }

void ControlChannel::close() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void ControlChannel::sendBytes(const void* p, size_t n) {
  for (;;) {
    ssize_t r = ::send(fd_, p, n, MSG_NOSIGNAL);
    if (r == static_cast<ssize_t>(n)) return;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throwErrno("control socket send");
    throw BenchError("control socket: short send");
  }
}

bool ControlChannel::receiveBytes(void* p, size_t n, Deadline deadline) {
  for (;;) {
    auto now = Clock::now();
    if (now >= deadline) return false;
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    pollfd pfd{fd_, POLLIN, 0};
    int pr = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(ms, 1000)));
    if (pr < 0 && errno != EINTR) throwErrno("control socket poll");
    if (pr <= 0) continue;
    ssize_t r = ::recv(fd_, p, n, MSG_DONTWAIT);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r < 0) throwErrno("control socket receive");
    if (r == 0) throw BenchError("control socket closed by the other process");
    if (static_cast<size_t>(r) != n)
      throw BenchError(fmt::format("control socket: message of {} bytes, expected {}", r, n));
    return true;
  }
}

PeerProcess::PeerProcess(Body body) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    throwErrno("control socketpair");
  // Allocated before fork, so nothing can throw between fork and owning the child.
  control_ = std::make_unique<ControlChannel>(sv[0]);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(sv[1]);
    throwErrno("fork");
  }
  if (pid == 0) {
    ::close(sv[0]);
    runChild(sv[1], parent, body);
  }
  ::close(sv[1]);
  pid_ = pid;
}

PeerProcess::~PeerProcess() {
  if (pid_ <= 0) return;
  control_->close();  // the child sees a hang-up and exits; otherwise reap() kills it
  reap(std::chrono::milliseconds(500));
}

Reply PeerProcess::expect(ReplyKind kind, Deadline deadline, const std::string& what) {
  Reply r;
  bool got = false;
  try {
    got = control_->receive(r, deadline);
  } catch (const BenchError& e) {
    throw BenchError(what + ": the peer process went away (" + e.what() + "; it " +
                     reap(std::chrono::milliseconds(1000)) + ")");
  }
  if (!got) throw BenchError(what + ": the peer process did not answer in time");
  if (r.kind == ReplyKind::kError) {
    r.text[sizeof r.text - 1] = 0;
    throw BenchError(what + ": the peer process failed: " + r.text);
  }
  if (r.kind != kind)
    throw BenchError(fmt::format("{}: unexpected reply {} from the peer process (expected {})",
                                 what, static_cast<uint32_t>(r.kind),
                                 static_cast<uint32_t>(kind)));
  return r;
}

std::string PeerProcess::failure(std::chrono::milliseconds wait) {
  if (pid_ <= 0) return "it " + ended_;
  Reply r;
  try {
    if (!control_->receive(r, Clock::now() + wait)) return {};
  } catch (const BenchError&) {
    return "it " + reap(std::chrono::milliseconds(1000));
  }
  if (r.kind != ReplyKind::kError) return {};
  r.text[sizeof r.text - 1] = 0;
  return r.text;
}

void PeerProcess::quit() {
  if (pid_ <= 0) throw BenchError("the peer process already " + ended_);
  Command c;
  c.op = Op::kQuit;
  send(c);
  expect(ReplyKind::kDone, Clock::now() + std::chrono::seconds(5), "stopping the peer process");
  std::string how = reap(std::chrono::milliseconds(5000));
  if (!WIFEXITED(exitStatus_) || WEXITSTATUS(exitStatus_) != 0)
    throw BenchError("the peer process " + how);
}

std::string PeerProcess::reap(std::chrono::milliseconds grace) noexcept {
  if (pid_ <= 0) return ended_;
  auto until = Clock::now() + grace;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) break;
    if (r < 0 && errno != EINTR) {  // not our child any more: nothing left to reap
      pid_ = -1;
      return ended_ = "could not be reaped";
    }
    if (Clock::now() >= until) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  pid_ = -1;
  exitStatus_ = status;
  return ended_ = describeStatus(status);
}

}  // namespace zcrpc::bench
