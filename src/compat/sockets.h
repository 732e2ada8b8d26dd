// zcrpc — the sockets of standard Cap'n Proto peers: TCP host:port or a unix stream socket.
#pragma once

#include <netdb.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <string>
#include <string_view>

#include "os/os.h"
#include "transport/address.h"

#pragma GCC visibility push(hidden)
namespace zcrpc::compat {

inline constexpr std::string_view kTcpScheme = "capnp";
inline constexpr std::string_view kUnixScheme = "capnp+unix";

/// A unix stream socket's address: a path, or "@name" for an abstract socket, as one
/// addrinfo (what tcp::listenSocket / tcp::connectSocket take).
class UnixAddress final {
 public:
  /// Throws InvalidArgument naming the endpoint when `text` is empty or too long.
  explicit UnixAddress(std::string_view text);
  const addrinfo* info() const noexcept { return &info_; }
  bool abstract() const noexcept { return abstract_; }
  /// The file system path (empty for an abstract socket).
  const std::string& path() const noexcept { return path_; }
  /// "capnp+unix:///path" or "capnp+unix://@name".
  std::string endpoint() const;

 private:
  sockaddr_un address_{};
  addrinfo info_{};
  bool abstract_ = false;
  std::string path_;
  std::string text_;
};

/// Listening sockets (non-blocking).
os::Fd listenTcpSocket(std::string_view hostPort, std::string& endpoint);
os::Fd listenUnixSocket(const UnixAddress& address);

/// Connected sockets (non-blocking), within `timeout`. TCP ones get TCP_NODELAY and the
/// dead-peer timeout.
os::Fd connectTcpSocket(std::string_view hostPort, std::chrono::milliseconds timeout,
                        std::chrono::milliseconds deadPeerTimeout);
os::Fd connectUnixSocket(const UnixAddress& address, std::chrono::milliseconds timeout);

}  // namespace zcrpc::compat
#pragma GCC visibility pop
