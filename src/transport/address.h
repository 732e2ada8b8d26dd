// zcrpc — network endpoint addresses (tcp://host:port, rdma://host:port): one parser, one
// resolver, one printer, shared by the transports and by Context's choice of transport.
#pragma once

#include <netdb.h>
#include <sys/socket.h>

#include <string>
#include <string_view>
#include <utility>

// Internal to libzcrpc (exported only for its tests, as os/ is).
namespace zcrpc {

/// The host and port of a network endpoint, as text.
struct HostPort {
  std::string host;  ///< a name or a numeric address, IPv6 without its brackets
  std::string port;  ///< decimal, 0..65535

  /// A listener's any-address (0.0.0.0) means this host to a client: 127.0.0.1.
  HostPort forConnect() const {
    return {host == "0.0.0.0" ? std::string("127.0.0.1") : host, port};
  }
};

/// Splits "[scheme://]host:port" (IPv6 as "[::1]:port"; an empty host is 0.0.0.0, every
/// address). Throws InvalidArgument naming the endpoint ("tcp endpoint 'x' ...") when the
/// port is missing or not a number up to 65535, or the brackets of an IPv6 host are not
/// followed by ":port".
HostPort parseHostPort(std::string_view text, std::string_view scheme);

/// `text` with its "scheme://" prefix, whether or not it had one: how errors name it.
std::string withScheme(std::string_view text, std::string_view scheme);

/// getaddrinfo's answers (stream sockets, numeric port); freed with this. Move-only.
class AddressList final {
 public:
  AddressList() = default;
  explicit AddressList(addrinfo* list) noexcept : list_(list) {}
  AddressList(AddressList&& o) noexcept : list_(std::exchange(o.list_, nullptr)) {}
  AddressList& operator=(AddressList&& o) noexcept {
    std::swap(list_, o.list_);
    return *this;
  }
  ~AddressList() {
    if (list_) ::freeaddrinfo(list_);
  }
  /// The first answer; resolve() never returns an empty list.
  const addrinfo* first() const noexcept { return list_; }
  /// A copy of the first answer's address.
  sockaddr_storage firstAddress() const noexcept;

 private:
  addrinfo* list_ = nullptr;
};

/// Resolves `hp` for a stream socket (`passive`: to bind). Throws Failed
/// "resolve <what>: <resolver's reason>".
AddressList resolve(const HostPort& hp, bool passive, const std::string& what);
/// As resolve(), but returns the resolver's reason (empty on success) instead of throwing.
std::string tryResolve(const HostPort& hp, bool passive, AddressList& out);

/// "192.0.2.1:80" or "[2001:db8::1]:80".
std::string addressText(const sockaddr* a);
/// The peer's address of a connected socket, or "?".
std::string peerAddress(int fd);

}  // namespace zcrpc
