// zcrpc-bench — the peer process, which serves every system's cells, and the control socket
// (a SOCK_SEQPACKET socketpair) that starts and ends them: never the channels measured.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>

#include "os/os.h"
#include "system.h"

namespace zcrpc::bench {

enum class Op : uint32_t { kCell = 1, kEndCell = 2, kQuit = 3 };

/// What the measuring process asks: serve one cell of systems[system], end it, or quit.
/// `id` numbers the cells; every reply names the cell it belongs to.
struct Command {
  Op op = Op::kCell;
  uint32_t system = 0;
  uint32_t id = 0;
  uint32_t reserved = 0;
  CellSpec spec;
};

enum class ReplyKind : uint32_t {
  kReady = 1,    ///< the peer runs and waits for cells
  kStarted = 2,  ///< the cell runs; `text` is the endpoint to connect to
  kDone = 3,     ///< the cell finished; `value` is the serving side's PeerCell::value
  kError = 4,    ///< the cell (or the peer) failed; `text` says why
};

struct Reply {
  ReplyKind kind = ReplyKind::kDone;
  uint32_t id = 0;  ///< the cell's Command::id; 0: the peer as a whole
  uint64_t value = 0;
  uint64_t preemptions = 0;  ///< kDone: the peer's involuntary context switches in the cell
  char text[4072] = {};      ///< room for a UCX worker address in hex
};

/// One end of the control socket. Threads: one.
class ControlChannel final {
 public:
  explicit ControlChannel(int fd) noexcept : fd_(fd) {}
  template <typename T>
  void send(const T& m) {
    send(&m, sizeof m);
  }
  /// The next message, or false at `deadline`. Throws BenchError on hang-up, an error or a
  /// message of another size.
  template <typename T>
  bool receive(T& m, Deadline deadline) {
    return receive(&m, sizeof m, deadline);
  }
  int fd() const noexcept { return fd_.get(); }
  void close() noexcept { fd_.reset(); }

 private:
  void send(const void* p, size_t n);
  bool receive(void* p, size_t n, Deadline deadline);
  os::Fd fd_;
};

/// The forked peer: runs `body` with its end of the control socket, then exits (0, or 1
/// after reporting an exception as kError) through exit(), so static destructors run. It dies with
/// the parent (PR_SET_PDEATHSIG), and the destructor kills and reaps it on every path. Create it
/// from the single-threaded main process with stdio flushed. Threads: the creating thread only.
class PeerProcess final {
 public:
  explicit PeerProcess(const std::function<void(ControlChannel&)>& body);
  ~PeerProcess();
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;

  void send(const Command& c) { control_->send(c); }
  int controlFd() const noexcept { return control_->fd(); }
  pid_t pid() const noexcept { return pid_; }
  /// Waits for a reply of `kind` for cell `id`, skipping late replies of cells given up
  /// before. Throws BenchError naming `what` with the peer's own error (or how it exited)
  /// when it failed, or when nothing came before `deadline`.
  Reply expect(ReplyKind kind, uint32_t id, Deadline deadline, const std::string& what);
  /// Asks the peer to quit and reaps it. Throws BenchError when it exited with an error.
  void quit();

 private:
  /// Reaps the child, waiting up to `grace` before SIGKILL. Returns how it ended.
  std::string reap(std::chrono::milliseconds grace) noexcept;

  pid_t pid_ = -1;
  int exitStatus_ = 0;
  std::string ended_;  ///< how the child ended, once reaped
  std::unique_ptr<ControlChannel> control_;
};

/// The peer process's loop: pins itself to `cpu`, says kReady, then serves cells of
/// `systems` until kQuit, then lets each of them leavePeer(). A cell that throws is reported as kError and the loop goes on
/// (a failed rival must not end the run); `scratchBytes` of receive room are faulted in.
void servePeer(ControlChannel& control, std::span<System* const> systems, int cpu,
               size_t scratchBytes);

}  // namespace zcrpc::bench
