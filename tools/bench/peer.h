// zcrpc-bench — the second process and the control socket that drives it.
//
// The measuring process forks one peer (the echo / sink side). Cells are started and
// finished over a SOCK_SEQPACKET socketpair, never over the channels being measured.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common.h"

namespace zcrpc::bench {

/// What the peer does next.
enum class Op : uint32_t {
  kFloorEcho = 1,  ///< echo on the floor ring until its stop marker
  kZcrpcEcho = 2,  ///< echo over the zcrpc connection until its stop message
  kZcrpcSink = 3,  ///< receive and count over zcrpc until the stop message, then acknowledge
  kQuit = 4,
  // RPC mode (rpc_mode.cc). kStarted's `text` carries the endpoint to connect to.
  kRpcServe = 5,    ///< run a zcrpc::Server (Echo) on a new endpoint until kEndCell
  kCapnpServe = 6,  ///< run a capnp::EzRpcServer (Echo) on a new address until kEndCell
  kRawTcpEcho = 7,  ///< accept one TCP connection, echo fixed-size payloads until EOF
  kEndCell = 8,     ///< the measuring side is done with a serving cell
};

/// Transport of an RPC-mode cell.
enum class Transport : uint8_t { kShm = 0, kTcp = 1 };

struct Command {
  Op op;
  Transport transport = Transport::kShm;  ///< RPC mode
  WaitMode waitMode = WaitMode::kBusyPoll;  ///< RPC mode; kFloorEcho: the floor's wait mode
  uint16_t reserved = 0;
  uint64_t payloadBytes = 0;
  int64_t budgetNs = 0;  ///< how long the measuring side may run the cell (bounds the peer)
};
static_assert(sizeof(Command) == 24);

enum class ReplyKind : uint32_t {
  kReady = 1,    ///< listening: the measuring process may connect
  kStarted = 2,  ///< the cell's loop is running
  kDone = 3,     ///< the cell finished; `value` is the number of messages handled
  kError = 4,    ///< the peer failed; `text` says why, and it exits
};

struct Reply {
  ReplyKind kind;
  uint32_t reserved = 0;
  uint64_t value = 0;
  uint64_t preemptions = 0;  ///< kDone: the peer's involuntary context switches in the cell
  char text[488] = {};
};

/// One end of the control socket. Threads: one.
class ControlChannel final {
 public:
  explicit ControlChannel(int fd) noexcept : fd_(fd) {}
  ControlChannel(const ControlChannel&) = delete;
  ControlChannel& operator=(const ControlChannel&) = delete;
  ~ControlChannel();

  void send(const Command& c) { sendBytes(&c, sizeof c); }
  void send(const Reply& r) { sendBytes(&r, sizeof r); }
  /// The next message, or false at `deadline`. Throws BenchError on hang-up or error.
  bool receive(Command& c, Deadline deadline) { return receiveBytes(&c, sizeof c, deadline); }
  bool receive(Reply& r, Deadline deadline) { return receiveBytes(&r, sizeof r, deadline); }
  void close() noexcept;
  int fd() const noexcept { return fd_; }

 private:
  void sendBytes(const void* p, size_t n);
  bool receiveBytes(void* p, size_t n, Deadline deadline);
  int fd_;
};

/// The forked peer. The child runs `body` with its end of the control socket and exits:
/// 0 when `body` returns, 1 after reporting an exception as a kError reply. It is killed
/// with the parent (PR_SET_PDEATHSIG), and the destructor kills and reaps it on every path,
/// so no child outlives the bench.
///
/// Lifetime: create from the single-threaded main process; flush stdio first (fork copies
/// unflushed buffers). Threads: the creating thread only.
class PeerProcess final {
 public:
  using Body = std::function<void(ControlChannel&)>;
  explicit PeerProcess(Body body);
  ~PeerProcess();
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;

  void send(const Command& c) { control_->send(c); }
  /// The control socket: readable or hung up when the peer failed mid-cell.
  int controlFd() const noexcept { return control_->fd(); }
  /// Waits for a reply of `kind`. Throws BenchError naming `what` with the peer's own error
  /// (or its exit status) when it failed, or when nothing came before `deadline`.
  Reply expect(ReplyKind kind, Deadline deadline, const std::string& what);
  /// Why the peer failed, if it says so within `wait` (its kError text, or how it exited);
  /// empty when it seems alive and silent.
  std::string failure(std::chrono::milliseconds wait);
  /// Asks the peer to quit and reaps it. Throws BenchError when it exited with an error.
  void quit();

 private:
  /// Reaps the child, waiting up to `grace` before SIGKILL. Returns how it ended.
  std::string reap(std::chrono::milliseconds grace) noexcept;

  pid_t pid_ = -1;
  int exitStatus_ = 0;  ///< waitpid status once reaped
  std::string ended_;   ///< how the child ended, once reaped
  std::unique_ptr<ControlChannel> control_;
};

}  // namespace zcrpc::bench
