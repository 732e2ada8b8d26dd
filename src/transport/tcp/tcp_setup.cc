// zcrpc — tcp connection set-up shared by both ends, and the client's connectTcp().
#include "transport/tcp/tcp_setup.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "os/os.h"
#include "transport/options.h"
#include "transport/tcp/tcp_connection.h"
#include "transport/tcp/tls_stream.h"

namespace zcrpc {
namespace tcp {

void setNoDelay(int fd) {
  int one = 1;
  ZCRPC_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), "TCP_NODELAY");
}

/// Keepalive probes and TCP_USER_TIMEOUT (TcpOptions::deadPeerTimeout): the first probe
/// after half the timeout of silence, then one every sixth of it (whole seconds, 1 to
/// 32767); the kernel ends the connection once a probe is out and nothing has come back for
/// the whole timeout, or sent data has waited that long for an acknowledgement.
void setDeadPeerTimeout(int fd, std::chrono::milliseconds timeout) {
  if (timeout.count() == 0) return;
  int one = 1;
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(timeout).count();
  constexpr int64_t kMaxKeepSeconds = 32767;  // the kernel's limit for both
  int idle = static_cast<int>(std::clamp<int64_t>(secs / 2, 1, kMaxKeepSeconds));
  int interval = static_cast<int>(std::clamp<int64_t>(secs / 6, 1, kMaxKeepSeconds));
  unsigned user = static_cast<unsigned>(timeout.count());
  ZCRPC_SYSCALL(::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one), "SO_KEEPALIVE");
  ZCRPC_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle), "TCP_KEEPIDLE");
  ZCRPC_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval),
                "TCP_KEEPINTVL");
  ZCRPC_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user, sizeof user),
                "TCP_USER_TIMEOUT");
}

void checkDeadPeerTimeout(std::chrono::milliseconds timeout) {
  if (timeout.count() != 0 && (timeout < std::chrono::seconds(1) || timeout > std::chrono::hours(24)))
    throw InvalidArgument("tcp dead-peer timeout of " + std::to_string(timeout.count()) +
                          " ms must be 0 (off) or between 1 s and 24 h");
}

void checkTokenPolicy(const TcpOptions& options, const std::string& what) {
  if (!options.token.empty() && !options.tls.enabled && !options.allowPlaintextToken)
    throw InvalidArgument(what + ": the access token would travel in clear text over plain tcp: "
                          "turn TLS on (tls=on) or allow it explicitly (allow_plaintext_token=true)");
}

/// Blocking-with-deadline exact read/write for the handshake.
void writeAll(ByteStream& stream, const void* data, size_t size, Deadline deadline,
              const std::string& what) {
  auto* p = static_cast<const char*>(data);
  while (size) {
    const iovec range{const_cast<char*>(p), size};
    ssize_t n = stream.write(&range, 1);
    if (n > 0) {
      p += n, size -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) {
      std::string layer = stream.failure();  // TLS: the alert or protocol error
      throw Disconnected(layer.empty() ? os::errnoText(what + ": handshake send", errno) : layer);
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) throw Failed(what + ": handshake timed out");
    os::pollOne(stream.fd(), POLLOUT, left);
  }
}

void readAll(ByteStream& stream, void* data, size_t size, Deadline deadline, const std::string& what) {
  auto* p = static_cast<char*>(data);
  while (size) {
    ssize_t n = stream.read(p, size);
    if (n > 0) {
      p += n, size -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) throw Disconnected(what + ": peer closed during the handshake");
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      std::string layer = stream.failure();  // TLS: the alert or protocol error
      throw Disconnected(layer.empty() ? os::errnoText(what + ": handshake receive", errno) : layer);
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) throw Failed(what + ": handshake timed out");
    os::pollOne(stream.fd(), POLLIN, left);
  }
}

os::Fd listenSocket(const addrinfo* addresses, const std::string& what) {
  int lastErr = 0;
  for (const addrinfo* a = addresses; a; a = a->ai_next) {
    os::Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!fd) {
      lastErr = errno;
      continue;
    }
    int one = 1;
    if (a->ai_family != AF_UNIX) ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd.get(), 128) != 0) {
      lastErr = errno;
      continue;
    }
    return fd;
  }
  throw Failed(os::errnoText("listen on " + what, lastErr));
}

os::Fd connectSocket(const addrinfo* addresses, Deadline deadline, std::chrono::milliseconds timeout,
                     const std::string& what) {
  std::string lastError = "no address";
  for (const addrinfo* a = addresses; a; a = a->ai_next) {
    os::Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!fd) {
      lastError = os::errnoText("socket", errno);
      continue;
    }
    if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS && errno != EAGAIN) {
        lastError = os::errnoText("connect", errno);
        continue;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0 || !(os::pollOne(fd.get(), POLLOUT, left) & (POLLOUT | POLLERR | POLLHUP))) {
        lastError = "connect timed out after " + std::to_string(timeout.count()) + " ms";
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err) {
        lastError = os::errnoText("connect", err);
        continue;
      }
    }
    return fd;
  }
  throw Failed(what + ": " + lastError);
}

namespace {
/// Up to the first 40 bytes of `data` in double quotes, as text where printable and \xNN
/// otherwise (what a peer that is not a zcrpc server sent, for the error message).
std::string quoted(const char* data, size_t size) {
  std::string out = "\"";
  for (size_t i = 0; i < std::min<size_t>(size, 40); ++i) {
    const auto c = static_cast<unsigned char>(data[i]);
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n";
    else if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') out += static_cast<char>(c);
    else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out + (size > 40 ? "...\"" : "\"");
}
}  // namespace

void readAnswer(ByteStream& stream, Answer& answer, Deadline deadline, const std::string& what,
                std::chrono::milliseconds timeout) {
  auto* p = reinterpret_cast<char*>(&answer);
  const uint64_t magic = kHelloMagic;
  const std::string hint = ": is it a zcrpc tcp server? (one answers at once, and says why when it refuses)";
  size_t got = 0;
  while (got < sizeof answer) {
    ssize_t n = stream.read(p + got, sizeof answer - got);
    if (n > 0) {
      got += static_cast<size_t>(n);
      if (std::memcmp(p, &magic, std::min(got, sizeof magic)) != 0) {
        // A TLS alert record (type 21, version 3.x) instead of an Answer: a TLS server
        // refusing a client that did not start TLS.
        if (p[0] == 0x15 && (got < 2 || p[1] == 0x03))
          throw Failed(what + ": the server speaks TLS (it answered with a TLS alert): connect with tls=on");
        throw Failed(what + ": the peer answered " + quoted(p, got) +
                     " instead of a zcrpc handshake: not a zcrpc tcp server");
      }
      continue;
    }
    if (n == 0)
      throw Disconnected(what + (got ? ": the peer closed the connection within its handshake answer"
                                     : ": the peer closed the connection without answering the handshake") +
                         hint);
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      std::string layer = stream.failure();  // TLS: the server's alert or a protocol error
      throw Disconnected(layer.empty() ? os::errnoText(what + ": handshake receive", errno) : layer);
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
      throw Failed(what + ": no handshake answer within " + std::to_string(timeout.count()) +
                   " ms (connect_timeout)" + (got ? " (" + std::to_string(got) + " bytes came)" : "") +
                   hint);
    os::pollOne(stream.fd(), POLLIN, left);
  }
}

}  // namespace tcp

using namespace tcp;

std::unique_ptr<Connection> connectTcp(std::string_view hostPort, const TcpOptions& options) {
  checkConnectionOptions(options.connection, "tcp buffer");
  checkDeadPeerTimeout(options.deadPeerTimeout);
  if (options.token.size() > kMaxToken)
    throw InvalidArgument("token longer than " + std::to_string(kMaxToken) + " bytes");
  const HostPort hp = parseHostPort(hostPort, "tcp").forConnect();
  const std::string what = withScheme(hostPort, "tcp");
  checkTokenPolicy(options, what);
  // The client's TLS configuration (its CAs and certificate), loaded once per connect.
  std::unique_ptr<tls::Context> tlsContext;
  if (options.tls.enabled) tlsContext = std::make_unique<tls::Context>(tls::Side::kClient, options.tls, what);
  auto deadline = deadlineAfter(options.connection.connectTimeout);
  const AddressList addresses = resolve(hp, /*passive=*/false, what);
  os::Fd fd = connectSocket(addresses.first(), deadline, options.connection.connectTimeout, what);
  setNoDelay(fd.get());
  setDeadPeerTimeout(fd.get(), options.deadPeerTimeout);
  PeerIdentity peer;
  peer.transport = "tcp";
  peer.address = peerAddress(fd.get());
  std::unique_ptr<ByteStream> stream;
  if (tlsContext) {
    // The server must prove it is the one named: tls.serverName, or the endpoint's host.
    auto tlsStream = std::make_unique<TlsStream>(
        std::move(fd), *tlsContext, options.tls.serverName.empty() ? hp.host : options.tls.serverName, what);
    tlsStream->session().handshake(deadline);
    tlsStream->session().describePeer(peer);
    stream = std::move(tlsStream);
  } else {
    stream = std::make_unique<SocketStream>(std::move(fd));
  }
  Hello hello;
  hello.tokenBytes = static_cast<uint32_t>(options.token.size());
  hello.maxMessageBytes = options.connection.maxMessageBytes;
  writeAll(*stream, &hello, sizeof hello, deadline, what);
  writeAll(*stream, options.token.data(), options.token.size(), deadline, what);
  Answer answer;
  readAnswer(*stream, answer, deadline, what, options.connection.connectTimeout);
  if (!answer.accepted) {
    answer.reason[sizeof answer.reason - 1] = 0;
    throw Failed(what + ": refused by server: " + answer.reason);
  }
  uint64_t maxMessage = std::min<uint64_t>(answer.maxMessageBytes, options.connection.maxMessageBytes);
  return std::make_unique<TcpConnection>(std::move(stream), what, options.connection, maxMessage,
                                         options.deadPeerTimeout, std::move(peer));
}

}  // namespace zcrpc
