#include "fuzz_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <stdexcept>

#include <capnp/any.h>
#include <kj/exception.h>

namespace zcrpc::fuzz {

size_t drainMessages(Connection& c, std::chrono::milliseconds idle, size_t most) {
  size_t n = 0;
  for (; n < most; ++n) {
    IncomingMessage m;
    if (c.receive(m, deadlineAfter(idle)) != Status::kOk) break;
    try {
      volatile uint64_t words = m.getRoot<capnp::AnyPointer>().targetSize().wordCount;
      (void)words;
    } catch (const kj::Exception&) {
    }
  }
  return n;
}

os::Fd connectLoopbackTcp(uint16_t port) {
  os::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    throw std::runtime_error("fuzz: connect to 127.0.0.1 failed");
  return fd;
}

os::Fd listenLoopbackTcp(uint16_t& port) {
  os::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(fd.get(), 16) != 0 || ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("fuzz: listen on 127.0.0.1 failed");
  port = ntohs(a.sin_port);
  return fd;
}

uint16_t portOf(const std::string& endpoint) {
  return static_cast<uint16_t>(std::stoul(endpoint.substr(endpoint.rfind(':') + 1)));
}

void writeSome(int fd, std::span<const uint8_t> bytes, std::chrono::milliseconds timeout) {
  auto until = Clock::now() + timeout;
  while (!bytes.empty() && Clock::now() < until) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      bytes = bytes.subspan(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) return;  // the peer closed: what it read is what counts
    os::pollOne(fd, POLLOUT, std::chrono::milliseconds(10));
  }
}

bool readableOrClosed(int fd, std::chrono::milliseconds timeout) {
  return (os::pollOne(fd, POLLIN | POLLRDHUP, timeout) & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace zcrpc::fuzz
