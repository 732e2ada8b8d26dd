#include "compat/sockets.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

#include "transport/tcp/tcp_setup.h"

namespace zcrpc::compat {

UnixAddress::UnixAddress(std::string_view text) : text_(text) {
  if (text.empty())
    throw InvalidArgument("capnp+unix endpoint has no path (capnp+unix:///path or capnp+unix://@name)");
  abstract_ = text.front() == '@';
  const std::string_view name = abstract_ ? text.substr(1) : text;
  if (name.empty() || name.size() + 1 > sizeof address_.sun_path)
    throw InvalidArgument("capnp+unix endpoint '" + std::string(text) + "': the path must have 1 to " +
                          std::to_string(sizeof address_.sun_path - 2) + " characters");
  if (name.find('\0') != std::string_view::npos)
    throw InvalidArgument("capnp+unix endpoint '" + std::string(text) + "' contains a NUL character");
  address_.sun_family = AF_UNIX;
  // An abstract name starts with a NUL byte and has no terminator: its length is the
  // address length's.
  std::memcpy(address_.sun_path + (abstract_ ? 1 : 0), name.data(), name.size());
  info_.ai_family = AF_UNIX;
  info_.ai_socktype = SOCK_STREAM;
  info_.ai_addr = reinterpret_cast<sockaddr*>(&address_);
  // Path: the name and its terminator; abstract: the leading NUL and the name.
  info_.ai_addrlen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + 1);
  if (!abstract_) path_ = std::string(name);
}

std::string UnixAddress::endpoint() const {
  return std::string(kUnixScheme) + "://" + text_;
}

os::Fd listenTcpSocket(std::string_view hostPort, std::string& endpoint) {
  const HostPort hp = parseHostPort(hostPort, kTcpScheme);
  const std::string what = withScheme(hostPort, kTcpScheme);
  const AddressList addresses = resolve(hp, /*passive=*/true, what);
  os::Fd fd = tcp::listenSocket(addresses.first(), what);
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &len);
  endpoint = std::string(kTcpScheme) + "://" + addressText(reinterpret_cast<const sockaddr*>(&local));
  return fd;
}

os::Fd listenUnixSocket(const UnixAddress& address) {
  const std::string what = address.endpoint();
  if (!address.abstract()) {
    // A socket file left by a listener that is gone (a crash) is replaced; a live one is
    // not: connecting to it tells them apart.
    struct stat st {};
    if (::lstat(address.path().c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      os::Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (probe && ::connect(probe.get(), address.info()->ai_addr, address.info()->ai_addrlen) != 0 &&
          errno == ECONNREFUSED)
        ::unlink(address.path().c_str());
    }
  }
  return tcp::listenSocket(address.info(), what);
}

os::Fd connectTcpSocket(std::string_view hostPort, std::chrono::milliseconds timeout,
                        std::chrono::milliseconds deadPeerTimeout) {
  tcp::checkDeadPeerTimeout(deadPeerTimeout);
  const HostPort hp = parseHostPort(hostPort, kTcpScheme).forConnect();
  const std::string what = withScheme(hostPort, kTcpScheme);
  const AddressList addresses = resolve(hp, /*passive=*/false, what);
  os::Fd fd = tcp::connectSocket(addresses.first(), deadlineAfter(timeout), timeout, what);
  tcp::setNoDelay(fd.get());
  tcp::setDeadPeerTimeout(fd.get(), deadPeerTimeout);
  return fd;
}

os::Fd connectUnixSocket(const UnixAddress& address, std::chrono::milliseconds timeout) {
  return tcp::connectSocket(address.info(), deadlineAfter(timeout), timeout, address.endpoint());
}

}  // namespace zcrpc::compat
