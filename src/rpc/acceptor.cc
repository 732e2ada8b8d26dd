#include "rpc/acceptor.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "zcrpc/log.h"

namespace zcrpc {

Acceptor::Acceptor(Adopt adopt)
    : adopt_(std::move(adopt)),
      wake_(ZCRPC_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd for acceptor")) {}

std::vector<std::string> Acceptor::endpoints() const {
  std::vector<std::string> out;
  for (auto& e : listeners_) out.push_back(e.listener->endpoint());
  return out;
}

void Acceptor::start() { thread_ = std::thread([this] { run(); }); }

void Acceptor::stop() {
  stopping_.store(true, std::memory_order_release);
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  listeners_.clear();
}

void Acceptor::run() {
  std::vector<pollfd> fds;
  while (!stopping_.load(std::memory_order_acquire)) {
    fds.clear();
    fds.push_back({wake_.get(), POLLIN, 0});
    // Sleeps until a client or a handshake in progress has something, or a handshake's
    // deadline: no periodic wake-up to take a core from a busy-polling worker.
    Deadline wakeAt = kNoDeadline;
    auto now = Clock::now();
    for (auto& e : listeners_)
      wakeAt = std::min(wakeAt, e.backoff.resting(now) ? e.backoff.until() : e.listener->addPollFds(fds));
    int ms = -1;
    if (wakeAt != kNoDeadline) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(wakeAt - Clock::now());
      ms = static_cast<int>(std::clamp<int64_t>(left.count(), 0, 60'000));
    }
    if (::poll(fds.data(), fds.size(), ms) < 0) continue;
    now = Clock::now();
    for (auto& e : listeners_) {
      if (e.backoff.resting(now)) continue;
      try {
        if (auto c = e.listener->accept(now)) adopt_(std::move(c));
        e.backoff.succeed();
      } catch (const std::exception& ex) {
        e.backoff.fail(now);
        uint64_t suppressed = 0;
        if (log_.allow(now, suppressed))
          logMessage(LogLevel::kError,
                     "accept on " + e.listener->endpoint() + " failed: " + ex.what() + "; retrying in " +
                         std::to_string(e.backoff.rest().count()) + " ms" +
                         (suppressed ? " (" + std::to_string(suppressed) + " more failures since the last message)" : ""));
      }
    }
  }
}

}  // namespace zcrpc
