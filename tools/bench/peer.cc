#include "peer.h"

#include <fmt/format.h>
#include <kj/exception.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace zcrpc::bench {

namespace {

constexpr auto kIdleTimeout = std::chrono::seconds(120);  // the peer's longest wait for a command

std::string errorText(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (const kj::Exception& x) {
    return std::string("Cap'n Proto: ") + x.getDescription().cStr();
  } catch (...) {
    return "unknown exception";
  }
}

Reply reply(ReplyKind kind, uint32_t id, const std::string& text = {}) {
  Reply r;
  r.kind = kind;
  r.id = id;
  std::strncpy(r.text, text.c_str(), sizeof r.text - 1);
  return r;
}

}  // namespace

void ControlChannel::send(const void* p, size_t n) {
  ssize_t r;
  do r = ::send(fd(), p, n, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  if (r < 0) throwErrno("control socket send");
  if (static_cast<size_t>(r) != n) throw BenchError("control socket: short send");
}

bool ControlChannel::receive(void* p, size_t n, Deadline deadline) {
  for (auto now = Clock::now(); now < deadline; now = Clock::now()) {
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    if (!(os::pollOne(fd(), POLLIN, std::min(ms, std::chrono::milliseconds(1000))) &
          (POLLIN | POLLHUP)))
      continue;
    ssize_t r = ::recv(fd(), p, n, MSG_DONTWAIT);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r < 0) throwErrno("control socket receive");
    if (r == 0) throw BenchError("control socket closed by the other process");
    if (static_cast<size_t>(r) != n)
      throw BenchError(fmt::format("control socket: message of {} bytes, expected {}", r, n));
    return true;
  }
  return false;
}

PeerProcess::PeerProcess(const std::function<void(ControlChannel&)>& body) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throwErrno("socketpair");
  control_ = std::make_unique<ControlChannel>(sv[0]);  // before fork: nothing throws after it
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ < 0) {
    ::close(sv[1]);
    throwErrno("fork");
  }
  if (pid_ > 0) {
    ::close(sv[1]);
    return;
  }
  // The child: dies with the parent, whatever kills it (and if that already happened).
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(3);
  int code = 0;
  {
    ControlChannel control(sv[1]);
    try {
      body(control);
    } catch (...) {
      code = 1;
      try {
        control.send(reply(ReplyKind::kError, 0, errorText(std::current_exception())));
      } catch (...) {
      }
    }
  }
  // exit(), not _exit(): libraries deregister in their static destructors (iceoryx's runtime
  // tells RouDi it leaves). stdio was flushed before the fork, so nothing prints twice.
  std::exit(code);
}

PeerProcess::~PeerProcess() {
  control_->close();  // the child sees a hang-up and exits; otherwise reap() kills it
  reap(std::chrono::milliseconds(500));
}

Reply PeerProcess::expect(ReplyKind kind, uint32_t id, Deadline deadline, const std::string& what) {
  Reply r;
  try {
    do
      if (!control_->receive(r, deadline))
        throw BenchError(what + ": the peer process did not answer in time");
    while (r.id != id && r.id != 0);
  } catch (const BenchError& e) {
    siginfo_t exited{};  // WNOWAIT: leaves the child for reap() to collect
    if (pid_ <= 0 || ::waitid(P_PID, pid_, &exited, WEXITED | WNOHANG | WNOWAIT) != 0 ||
        exited.si_pid == 0)
      throw;
    throw BenchError(what + ": the peer process went away (" + e.what() + "; it " +
                     reap(std::chrono::milliseconds(1000)) + ")");
  }
  r.text[sizeof r.text - 1] = 0;
  if (r.kind == ReplyKind::kError) throw BenchError(what + ": the peer process failed: " + r.text);
  if (r.kind != kind)
    throw BenchError(fmt::format("{}: reply {} from the peer process, expected {}", what,
                                 static_cast<uint32_t>(r.kind), static_cast<uint32_t>(kind)));
  return r;
}

void PeerProcess::quit() {
  send(Command{Op::kQuit, 0, 0, 0, {}});
  expect(ReplyKind::kDone, 0, Clock::now() + std::chrono::seconds(5), "stopping the peer process");
  std::string how = reap(std::chrono::milliseconds(5000));
  if (!WIFEXITED(exitStatus_) || WEXITSTATUS(exitStatus_) != 0)
    throw BenchError("the peer process " + how);
}

std::string PeerProcess::reap(std::chrono::milliseconds grace) noexcept {
  if (pid_ <= 0) return ended_;
  for (auto until = Clock::now() + grace;;) {
    pid_t r = ::waitpid(pid_, &exitStatus_, WNOHANG);
    if (r == pid_) break;
    if (r < 0 && errno != EINTR) {  // not our child any more: nothing left to reap
      pid_ = -1;
      return ended_ = "could not be reaped";
    }
    if (Clock::now() >= until) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, &exitStatus_, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  pid_ = -1;
  const int s = exitStatus_;
  return ended_ = WIFEXITED(s)     ? fmt::format("exited with status {}", WEXITSTATUS(s))
                  : WIFSIGNALED(s) ? fmt::format("was killed by signal {} ({})", WTERMSIG(s),
                                                 ::strsignal(WTERMSIG(s)))
                                   : fmt::format("ended with wait status {:#x}", s);
}

// ---- the peer's side ---------------------------------------------------------------------

PeerCell::PeerCell(ControlChannel& control, uint32_t id, const CellSpec& cellSpec,
                   std::span<std::byte> room)
    : spec(cellSpec),
      // The measuring side ends a serving cell; it has its own stall bounds (each wait, the
      // drain of a pipelined window), so the peer allows for them.
      deadline(Clock::now() + std::chrono::nanoseconds(cellSpec.budgetNs) + 3 * kStallTimeout),
      scratch(room),
      control_(control),
      id_(id) {}

bool PeerCell::abandoned() const noexcept { return readable(control_.fd()); }

int PeerCell::controlFd() const noexcept { return control_.fd(); }

void PeerCell::started(std::string_view endpoint) {
  if (started_) throw BenchError("peer: cell started twice");
  started_ = true;
  control_.send(reply(ReplyKind::kStarted, id_, std::string(endpoint)));
}

void PeerCell::awaitEnd() {
  Command c;
  if (!control_.receive(c, deadline))
    throw BenchError("peer: the measuring process did not end the cell in time");
  endedWith(std::as_bytes(std::span(&c, 1)));
}

void PeerCell::endedWith(std::span<const std::byte> message) {
  Command c;
  if (message.size() == sizeof c) std::memcpy(&c, message.data(), sizeof c);
  if (message.size() != sizeof c || c.op != Op::kEndCell || c.id != id_)
    throw BenchError("peer: expected the end of the cell on the control socket");
  ended_ = true;
}

void servePeer(ControlChannel& control, std::span<System* const> systems, int cpu,
               size_t scratchBytes) {
  pinToCpu(cpu);  // before any thread starts: servers' threads inherit the CPU
  struct Leave {  // however serving ends: a quit, a bad command or a failure
    std::span<System* const> systems;
    ~Leave() {
      for (System* s : systems) s->leavePeer();
    }
  } leave{systems};
  std::vector<std::byte> scratch(scratchBytes, std::byte{0});  // faulted in now
  control.send(reply(ReplyKind::kReady, 0));
  for (;;) {
    Command c;
    if (!control.receive(c, Clock::now() + kIdleTimeout))
      throw BenchError("peer: no command from the measuring process for 120 s");
    if (c.op == Op::kEndCell) continue;  // of a cell that failed here first
    if (c.op == Op::kQuit) return control.send(reply(ReplyKind::kDone, 0));
    if (c.op != Op::kCell || c.system >= systems.size() || c.spec.budgetNs < 0 ||
        c.spec.payloadBytes > scratch.size())
      throw BenchError("peer: bad command");
    const uint64_t preempted = preemptionCount();
    PeerCell cell(control, c.id, c.spec, scratch);
    std::string error;
    try {
      systems[c.system]->serve(cell);
      if (!cell.ended()) cell.awaitEnd();
    } catch (...) {
      error = errorText(std::current_exception());
    }
    Reply r = reply(error.empty() ? ReplyKind::kDone : ReplyKind::kError, c.id, error);
    r.value = cell.value;
    r.preemptions = preemptionCount() - preempted;
    control.send(r);
  }
}

}  // namespace zcrpc::bench
