#include "transport/address.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdio>
#include <cstring>

#include "zcrpc/error.h"

namespace zcrpc {

HostPort parseHostPort(std::string_view text, std::string_view scheme) {
  const std::string prefix = std::string(scheme) + "://";
  const auto bad = [&](const std::string& why) {
    return InvalidArgument(std::string(scheme) + " endpoint '" + std::string(text) + "' " + why);
  };
  std::string_view s = text;
  if (s.starts_with(prefix)) s.remove_prefix(prefix.size());
  std::string_view host, port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':')
      throw bad("is not [ipv6]:port");
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos) throw bad("has no :port");
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoul(std::string(port)) > 65535)
    throw bad("has a bad port '" + std::string(port) + "'");
  return HostPort{host.empty() ? std::string("0.0.0.0") : std::string(host), std::string(port)};
}

std::string withScheme(std::string_view text, std::string_view scheme) {
  const std::string prefix = std::string(scheme) + "://";
  return text.starts_with(prefix) ? std::string(text) : prefix + std::string(text);
}

std::string tryResolve(const HostPort& hp, bool passive, AddressList& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = (passive ? AI_PASSIVE : 0) | AI_NUMERICSERV;
  addrinfo* list = nullptr;
  int r = ::getaddrinfo(hp.host.c_str(), hp.port.c_str(), &hints, &list);
  if (r != 0) return ::gai_strerror(r);
  out = AddressList(list);
  return {};
}

AddressList resolve(const HostPort& hp, bool passive, const std::string& what) {
  AddressList out;
  std::string why = tryResolve(hp, passive, out);
  if (!why.empty()) throw Failed("resolve " + what + ": " + why);
  return out;
}

sockaddr_storage AddressList::firstAddress() const noexcept {
  sockaddr_storage out{};
  std::memcpy(&out, list_->ai_addr, list_->ai_addrlen);
  return out;
}

std::string addressText(const sockaddr* a) {
  char host[INET6_ADDRSTRLEN] = "?";
  char text[INET6_ADDRSTRLEN + 16];
  if (a->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(a);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    std::snprintf(text, sizeof text, "%s:%u", host, ntohs(in->sin_port));
  } else {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(a);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    std::snprintf(text, sizeof text, "[%s]:%u", host, ntohs(in6->sin6_port));
  }
  return text;
}

std::string peerAddress(int fd) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  return addressText(reinterpret_cast<const sockaddr*>(&a));
}

}  // namespace zcrpc
