#include "transport/accept_gate.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "zcrpc/log.h"

namespace zcrpc {

uint32_t defaultMaxConnections() noexcept {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return 1u << 16;
  return static_cast<uint32_t>(std::clamp<rlim_t>(r.rlim_cur / 4, 16, 1u << 20));
}

bool LogLimiter::allow(Clock::time_point now, uint64_t& suppressed) noexcept {
  if (now < next_) {
    ++held_;
    return false;
  }
  suppressed = held_;
  held_ = 0;
  next_ = now + interval_;
  return true;
}

bool ConnectionCount::tryTake(Ticket& out) noexcept {
  uint32_t n = live_->load(std::memory_order_relaxed);
  do {
    if (limit_ && n >= limit_) return false;
  } while (!live_->compare_exchange_weak(n, n + 1, std::memory_order_relaxed));
  out = Ticket(live_);
  return true;
}

namespace {

os::Fd openSpare() { return os::Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

bool outOfDescriptors(int err) { return err == EMFILE || err == ENFILE; }
bool outOfMemory(int err) { return err == ENOBUFS || err == ENOMEM; }

/// accept(2): "Linux accept() passes already-pending network errors on the new socket as
/// an error code from accept()... the application should treat them like EAGAIN by
/// retrying" — and a client that gave up while queued.
bool clientFailedWhileQueued(int err) {
  switch (err) {
    case ECONNABORTED: case EPROTO: case ENETDOWN: case ENOPROTOOPT: case EHOSTDOWN:
    case ENONET: case EHOSTUNREACH: case EOPNOTSUPP: case ENETUNREACH: case EPERM:
      return true;
    default:
      return false;
  }
}

int acceptOne(int listenFd) {
  int fd;
  do fd = ::accept4(listenFd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  while (fd < 0 && errno == EINTR);
  return fd;
}

}  // namespace

AcceptGate::AcceptGate(std::string endpoint) : endpoint_(std::move(endpoint)), spare_(openSpare()) {}

void AcceptGate::backOff(int err, Clock::time_point now) {
  backoff_.fail(now);
  uint64_t suppressed = 0;
  if (log_.allow(now, suppressed)) {
    std::string more = suppressed ? " (" + std::to_string(suppressed) + " times since the last message)" : "";
    logMessage(LogLevel::kWarning,
               endpoint_ + ": accept: " +
                   os::errnoText(outOfDescriptors(err) ? "out of file descriptors" : "out of memory", err) +
                   "; refused " + std::to_string(refused_) + " waiting clients so far; not accepting for " +
                   std::to_string(backoff_.rest().count()) + " ms" + more);
  }
}

os::Fd AcceptGate::accept(int listenFd, const Refuse& refuse) {
  auto now = Clock::now();
  if (backingOff(now)) return {};
  for (;;) {
    int fd = acceptOne(listenFd);
    if (fd >= 0) {
      backoff_.succeed();
      if (!spare_) spare_ = openSpare();  // as soon as there is one again
      return os::Fd(fd);
    }
    int err = errno;
    if (err == EAGAIN) return {};
    if (clientFailedWhileQueued(err)) continue;
    if (outOfDescriptors(err) && spare_) {
      // Tell the clients that wait why they cannot be served, with the one descriptor
      // kept for it, rather than leave them to time out.
      for (int i = 0; i < kRefuseBatch; ++i) {
        spare_.reset();
        int client = acceptOne(listenFd);
        if (client < 0) break;
        os::Fd c(client);
        ++refused_;
        if (refuse) refuse(c.get(), "server " + endpoint_ + " is out of file descriptors (" +
                                        os::errnoText("accept", err) + "); try again later");
        c.reset();
        spare_ = openSpare();
        if (!spare_) break;
      }
      if (!spare_) spare_ = openSpare();
    }
    if (outOfDescriptors(err) || outOfMemory(err)) {
      backOff(err, now);
      return {};
    }
    throw Failed(os::errnoText("accept on " + endpoint_, err));
  }
}

}  // namespace zcrpc
