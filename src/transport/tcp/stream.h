// zcrpc — the byte stream under a tcp connection: the one seam its bytes pass through.
#pragma once

#include <limits.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <algorithm>
#include <string>
#include <utility>

#include "os/os.h"

// Internal to libzcrpc: nothing here is exported from the shared library.
#pragma GCC visibility push(hidden)
namespace zcrpc::tcp {

/// The bytes of one tcp connection, both ways: the socket itself (SocketStream), or a
/// layer over it such as TLS. Every byte the handshake and the connection read or write
/// goes through read() and write(); what concerns the socket itself (poll and epoll,
/// socket options, shutdown, the peer's address) uses fd().
///
/// Both calls are non-blocking and keep the POSIX conventions the callers are written
/// for: the number of bytes moved, 0 from read() at the end of the stream, or -1 with
/// errno set (EAGAIN: nothing can move now, wait for the socket; EINTR: call again;
/// anything else: the connection failed, and errno names why).
///
/// Threads: write() from the connection's sending thread and read() from its receiving
/// thread may run at the same time (a layer whose state both share must serialise them
/// itself); fd() from any thread. Lifetime: owns the socket, closed on destruction.
class ByteStream {
 public:
  virtual ~ByteStream() = default;
  virtual int fd() const noexcept = 0;
  /// Writes what the stream takes now of `count` ranges (at most IOV_MAX are looked at).
  virtual ssize_t write(const iovec* iov, size_t count) noexcept = 0;
  virtual ssize_t read(void* into, size_t bytes) noexcept = 0;

  /// A layer with buffers of its own (TLS) says so: read() has bytes to give while the
  /// socket is not readable (do not sleep on the socket then), or bytes written wait
  /// in the layer for room in the socket (poll it for POLLOUT, then flushOutput()).
  /// `buffers()` is constant: callers test it once and skip the others when false.
  virtual bool buffers() const noexcept { return false; }
  virtual bool hasBufferedInput() const noexcept { return false; }
  virtual bool hasPendingOutput() const noexcept { return false; }
  /// Moves what waits in the layer to the socket; true when nothing is left.
  virtual bool flushOutput() noexcept { return true; }
  /// The connection is closing: a layer may say goodbye on the wire (TLS close_notify).
  virtual void finish() noexcept {}
  /// Why the layer failed, when read() or write() reported EPROTO.
  virtual std::string failure() const { return {}; }
};

/// Plain tcp: the socket's own send and receive.
class SocketStream final : public ByteStream {
 public:
  explicit SocketStream(os::Fd fd) noexcept : fd_(std::move(fd)) {}
  int fd() const noexcept override { return fd_.get(); }
  ssize_t write(const iovec* iov, size_t count) noexcept override {
    // sendmsg, not writev: MSG_NOSIGNAL, so a reset peer is an error, not a SIGPIPE.
    // One range (the common small frame): send(), with no iovec array to import.
    if (count == 1) return ::send(fd_.get(), iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    msghdr mh{};
    mh.msg_iov = const_cast<iovec*>(iov);
    mh.msg_iovlen = std::min<size_t>(count, IOV_MAX);
    return ::sendmsg(fd_.get(), &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  ssize_t read(void* into, size_t bytes) noexcept override {
    return ::recv(fd_.get(), into, bytes, MSG_DONTWAIT);
  }

 private:
  os::Fd fd_;
};

}  // namespace zcrpc::tcp
#pragma GCC visibility pop
