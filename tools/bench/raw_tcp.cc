// zcrpc-bench — the baseline over tcp: a raw TCP_NODELAY send/recv ping-pong on 127.0.0.1
// that moves the payload and nothing else, waiting as the cell's wait mode says
// (busy-poll: spin on non-blocking recv; spin-then-sleep: spin, then poll(); blocking:
// blocking recv). Every zcrpc figure over tcp is shown against it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "os/os.h"
#include "system.h"

namespace zcrpc::bench {

namespace {

constexpr auto kSleepSlice = std::chrono::milliseconds(100);  // deadlines are checked between

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return a;
}

/// TCP_NODELAY (tcp), and the blocking mode `mode` needs: non-blocking unless kBlocking,
/// where SO_RCVTIMEO/SO_SNDTIMEO make a blocking call return so the loops can check deadlines.
os::Fd prepare(os::Fd fd, WaitMode mode, bool tcp = true) {
  int one = 1;
  timeval slice{0, std::chrono::duration_cast<std::chrono::microseconds>(kSleepSlice).count()};
  if (tcp)
    ZCRPC_SYSCALL(::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one),
                  "TCP_NODELAY");
  if (mode == WaitMode::kBlocking) {
    ZCRPC_SYSCALL(::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice),
                  "SO_RCVTIMEO");
    ZCRPC_SYSCALL(::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &slice, sizeof slice),
                  "SO_SNDTIMEO");
  } else {
    ZCRPC_SYSCALL(::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK),
                  "O_NONBLOCK");
  }
  return fd;
}

/// One wait for the socket to become ready (`events`), as `mode` says: spin (busy-poll, and
/// spin-then-sleep until `spinUntil`, checked every 64 rounds), sleep in poll(), or nothing
/// (a blocking call that timed out blocks again). Throws at the deadline.
void await(int fd, short events, WaitMode mode, uint32_t& spins, Clock::time_point spinUntil,
           Deadline deadline, const char* who, const char* what) {
  ++spins;
  const bool spin = mode == WaitMode::kBusyPoll || (mode == WaitMode::kSpinThenSleep &&
                                                    ((spins & 63) || Clock::now() < spinUntil));
  if (!spin || (spins & 1023) == 0) {
    if (Clock::now() >= deadline)
      throw BenchError(fmt::format(
          "{}: {} stalled past the deadline (the other side neither sent nor closed)", who,
          what));
    if (!spin && mode != WaitMode::kBlocking) os::pollOne(fd, events, kSleepSlice);
  }
  if (spin) cpuRelax();
}

/// `who` names the system in errors ("raw tcp").
void writeAll(int fd, std::span<const std::byte> data, WaitMode mode, Deadline deadline,
              const char* who) {
  uint32_t spins = 0;
  for (size_t done = 0; done < data.size();) {
    ssize_t r = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (r > 0)
      done += static_cast<size_t>(r);
    else if (errno == EAGAIN || errno == EWOULDBLOCK)
      await(fd, POLLOUT, mode, spins, Clock::time_point::min(), deadline, who, "send");
    else if (errno != EINTR)
      throwErrno(fmt::format("{}: send", who));
  }
}

/// Reads exactly `out.size()` bytes; false if the peer closed before the first byte and
/// `eofOk`. Throws on a close mid-message, an error or the deadline.
bool readExactly(int fd, std::span<std::byte> out, WaitMode mode, std::chrono::nanoseconds spin,
                 Deadline deadline, bool eofOk, const char* who) {
  uint32_t spins = 0;
  const auto spinUntil = Clock::now() + spin;
  for (size_t got = 0; got < out.size();) {
    ssize_t r = ::recv(fd, out.data() + got, out.size() - got, 0);
    if (r > 0) {
      got += static_cast<size_t>(r);
    } else if (r == 0) {
      if (got == 0 && eofOk) return false;
      throw BenchError(fmt::format("{}: peer closed after {} of {} bytes", who, got, out.size()));
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      await(fd, POLLIN, mode, spins, spinUntil, deadline, who, "recv");
    } else if (errno != EINTR) {
      throwErrno(fmt::format("{}: recv", who));
    }
  }
  return true;
}

/// The server side of a cell: waits for its one client on `listener` (until the cell's
/// deadline), then echoes messages of the cell's payload size, waiting as `mode` says,
/// until the client closes at a message boundary.
void serveEcho(const os::Fd& listener, PeerCell& cell, WaitMode mode, bool tcp,
               std::chrono::nanoseconds spin, const char* who) {
  while (!(os::pollOne(listener.get(), POLLIN, kSleepSlice) & POLLIN))
    if (Clock::now() >= cell.deadline)
      throw BenchError(fmt::format("{}: nobody connected in time", who));
  os::Fd socket = prepare(
      os::Fd(ZCRPC_SYSCALL(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC), "accept")),
      mode, tcp);
  auto in = cell.scratch.first(cell.spec.payloadBytes);
  uint64_t count = 0;
  try {
    for (; readExactly(socket.get(), in, mode, spin, cell.deadline, true, who); ++count)
      writeAll(socket.get(), in, mode, cell.deadline, who);
  } catch (const BenchError& e) {
    throw BenchError(fmt::format("{} after echoing {} messages", e.what(), count));
  }
}

/// The client side of a cell over the connected `socket` (prepared for `mode`): timed
/// round trips of the cell's payload.
Figure pingPong(int socket, ClientCell& cell, WaitMode mode, std::chrono::nanoseconds spin,
                const char* who) {
  const Deadline deadline = cellDeadline(cell.budget.total());
  const size_t n = cell.payload.size();
  auto in = cell.scratch.first(n);
  auto roundTrip = [&] {
    writeAll(socket, cell.payload, mode, deadline, who);
    readExactly(socket, in, mode, spin, deadline, /*eofOk=*/false, who);
    if (in[n - 1] != cell.payload[n - 1])
      throw BenchError(fmt::format("{}: the echo came back different", who));
  };
  Figure f;
  f.latency = measureLatency(roundTrip, cell.budget, cell.samples);
  return f;
}

class RawTcp final : public System {
 public:
  explicit RawTcp(const Settings& s) : s_(s) {}

  SeriesInfo info(Transport) const override {
    return {"raw-tcp", "raw TCP ping-pong", Role::kReference};
  }
  bool covers(Transport t) const override { return t == Transport::kTcp; }

  void serve(PeerCell& cell) override {
    os::Fd listener(ZCRPC_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
    sockaddr_in addr = loopback(0);
    socklen_t len = sizeof addr;
    ZCRPC_SYSCALL(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), len),
                  "bind 127.0.0.1:0");
    ZCRPC_SYSCALL(::listen(listener.get(), 1), "listen");
    ZCRPC_SYSCALL(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len),
                  "getsockname");
    cell.started(std::to_string(ntohs(addr.sin_port)));
    serveEcho(listener, cell, cell.spec.waitMode, /*tcp=*/true, s_.spinTime, "raw tcp");
  }

  Figure measure(ClientCell& cell) override {
    os::Fd fd(ZCRPC_SYSCALL(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
    sockaddr_in addr = loopback(static_cast<uint16_t>(std::stoul(cell.endpoint)));
    ZCRPC_SYSCALL(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), "connect");
    const WaitMode mode = cell.spec.waitMode;
    os::Fd socket = prepare(std::move(fd), mode);
    return pingPong(socket.get(), cell, mode, s_.spinTime, "raw tcp");
    // the socket closes here: the peer's echo loop sees EOF
  }

 private:
  const Settings& s_;
};

/// A unix stream socket ping-pong, blocking reads on both sides whatever the row's wait
/// mode: what two processes on one host do when they use the kernel's plainest channel.
class UnixSocket final : public System {
 public:
  explicit UnixSocket(const Settings& s) : s_(s) {}

  SeriesInfo info(Transport) const override {
    return {"unix-socket", "unix socket ping-pong", Role::kReference, "blocking read"};
  }
  bool covers(Transport t) const override { return t == Transport::kShm; }

  void serve(PeerCell& cell) override {
    os::Fd listener(ZCRPC_SYSCALL(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
    const std::string name = fmt::format("zcrpc-bench-{}-unix-{}", ::getpid(), ++serves_);
    sockaddr_un addr = address(name);
    ZCRPC_SYSCALL(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), length(name)),
                  "bind @" + name);
    ZCRPC_SYSCALL(::listen(listener.get(), 1), "listen");
    cell.started(name);
    serveEcho(listener, cell, WaitMode::kBlocking, /*tcp=*/false, s_.spinTime, "unix socket");
  }

  Figure measure(ClientCell& cell) override {
    os::Fd fd(ZCRPC_SYSCALL(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
    sockaddr_un addr = address(cell.endpoint);
    ZCRPC_SYSCALL(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), length(cell.endpoint)),
                  "connect @" + cell.endpoint);
    os::Fd socket = prepare(std::move(fd), WaitMode::kBlocking, /*tcp=*/false);
    return pingPong(socket.get(), cell, WaitMode::kBlocking, s_.spinTime, "unix socket");
    // the socket closes here: the peer's echo loop sees EOF
  }

 private:
  /// An abstract socket: nothing in the file system to clean up.
  static sockaddr_un address(const std::string& name) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (name.size() + 1 > sizeof a.sun_path) throw BenchError("unix socket name too long: " + name);
    std::memcpy(a.sun_path + 1, name.data(), name.size());
    return a;
  }
  static socklen_t length(const std::string& name) {
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  }

  const Settings& s_;
  unsigned serves_ = 0;
};

}  // namespace

std::unique_ptr<System> makeRawTcp(const Settings& s) { return std::make_unique<RawTcp>(s); }
std::unique_ptr<System> makeUnixSocket(const Settings& s) { return std::make_unique<UnixSocket>(s); }

}  // namespace zcrpc::bench
