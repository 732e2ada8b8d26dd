// zcrpc — tcp connection set-up shared by both ends: socket options and the
// handshake's wire format (Hello, token, Answer; see docs/wire-format.md).
//
// Files of the tcp transport:
//   stream.h             ByteStream: every byte in and out of a connection and its handshake
//   tcp_setup.{h,cc}     socket options, the handshake's messages, connectTcp()
//   tcp_listener.cc      the listener: accept, handshakes in progress, listenTcp()
//   tcp_connection.h     the connection (data path) and what its two halves share
//   tcp_connection.cc    the connection's life: construction, event-loop wait, close, errors
//   tcp_send.cc          sending: send buffer, iovec queue, writes
//   tcp_receive.cc       receiving: receive ring, frames in place, big frames, reads
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "transport/address.h"
#include "transport/tcp/stream.h"
#include "transport/token.h"
#include "zcrpc/tcp.h"

// Internal to libzcrpc: nothing here is exported from the shared library.
#pragma GCC visibility push(hidden)
namespace zcrpc::tcp {

inline constexpr uint64_t kHelloMagic = 0x31'7063'7263'7a74ull;  // bytes "tzcrcp1\0" on the wire
inline constexpr uint32_t kHelloVersion = 1;
inline constexpr size_t kMaxToken = 1024;

/// The client's first message; `tokenBytes` bytes of token follow it.
struct Hello {
  uint64_t magic = kHelloMagic;
  uint32_t version = kHelloVersion;
  uint32_t tokenBytes = 0;
  uint64_t maxMessageBytes = 0;  ///< the largest message the client accepts
};
/// The server's reply: accepted with the agreed maximum message size, or a reason.
struct Answer {
  uint64_t magic = kHelloMagic;
  uint32_t version = kHelloVersion;
  uint32_t accepted = 0;
  uint64_t maxMessageBytes = 0;
  char reason[160] = {};
};

void setNoDelay(int fd);

/// A non-blocking stream socket listening on the first of `addresses` it can bind (tcp with
/// SO_REUSEADDR, or a hand-made unix-socket addrinfo); throws Failed "listen on <what>: ...".
os::Fd listenSocket(const addrinfo* addresses, const std::string& what);

/// A connected non-blocking stream socket to the first of `addresses` that accepts before
/// `deadline` (tcp, or a hand-made unix-socket addrinfo); throws Failed "<what>: <the last
/// reason>" (`timeout` is the limit the deadline came from, for that text).
os::Fd connectSocket(const addrinfo* addresses, Deadline deadline, std::chrono::milliseconds timeout,
                     const std::string& what);
/// Keepalive probes and TCP_USER_TIMEOUT for TcpOptions::deadPeerTimeout (0: off).
void setDeadPeerTimeout(int fd, std::chrono::milliseconds timeout);
void checkDeadPeerTimeout(std::chrono::milliseconds timeout);

/// Refuses a token without TLS unless plain text is allowed (see TcpOptions::token);
/// throws InvalidArgument naming `what`.
void checkTokenPolicy(const TcpOptions& options, const std::string& what);

/// Blocking-with-deadline exact write / read for the handshake; throw Disconnected or
/// Failed (timed out) naming `what`.
void writeAll(ByteStream& stream, const void* data, size_t size, Deadline deadline,
              const std::string& what);
void readAll(ByteStream& stream, void* data, size_t size, Deadline deadline, const std::string& what);
/// Reads a server's Answer to the client's Hello. A peer that is not a zcrpc tcp server
/// fails as soon as that shows: bytes that are not the magic (named in the message), or a
/// close before a whole answer; a silent one at `deadline` (`timeout` is its length, for
/// the message). Every failure says the peer may not be a zcrpc server.
void readAnswer(ByteStream& stream, Answer& answer, Deadline deadline, const std::string& what,
                std::chrono::milliseconds timeout);

}  // namespace zcrpc::tcp
#pragma GCC visibility pop
