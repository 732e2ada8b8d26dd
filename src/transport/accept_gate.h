// zcrpc — how a listener accepts when the process runs out of descriptors or memory, and
// how many connections it lets live at once.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "os/os.h"
#include "zcrpc/transport.h"

namespace zcrpc {

/// Lets through at most one message per interval and counts the ones it held back, so a
/// condition that repeats thousands of times a second is logged once a second.
/// Threads: one at a time.
class LogLimiter final {
 public:
  explicit LogLimiter(std::chrono::milliseconds interval = std::chrono::seconds(1))
      : interval_(interval) {}
  /// True when a message may go out now; `suppressed` is then set to how many were held
  /// back since the last one.
  bool allow(Clock::time_point now, uint64_t& suppressed) noexcept;

 private:
  std::chrono::milliseconds interval_;
  Clock::time_point next_{};
  uint64_t held_ = 0;
};

/// How long a step that keeps failing rests before it is tried again: 10 ms, doubling to
/// 1 s while the failure repeats, from the start again after a success. Threads: one at a
/// time.
class Backoff final {
 public:
  static constexpr std::chrono::milliseconds kFirst{10};
  static constexpr std::chrono::milliseconds kMax{1000};

  /// A failure at `now`: the rest grows and starts now.
  void fail(Clock::time_point now) noexcept {
    rest_ = rest_.count() == 0 ? kFirst : std::min(rest_ * 2, kMax);
    until_ = now + rest_;
  }
  void succeed() noexcept { rest_ = std::chrono::milliseconds(0); }
  bool resting(Clock::time_point now) const noexcept { return now < until_; }
  Clock::time_point until() const noexcept { return until_; }
  /// The length of the current (or last) rest.
  std::chrono::milliseconds rest() const noexcept { return rest_; }

 private:
  std::chrono::milliseconds rest_{0};
  Clock::time_point until_{};
};

/// Counts a listener's live connections against its limit. Each connection the listener
/// makes holds a Ticket; destroying it (with the connection) frees the place. Tickets may
/// outlive the listener. Threads: any.
class ConnectionCount final {
 public:
  class Ticket final {
   public:
    Ticket() = default;
    explicit Ticket(std::shared_ptr<std::atomic<uint32_t>> live) : live_(std::move(live)) {}
    Ticket(Ticket&&) noexcept = default;
    Ticket& operator=(Ticket&& o) noexcept {
      if (this != &o) {
        reset();
        live_ = std::move(o.live_);
      }
      return *this;
    }
    ~Ticket() { reset(); }
    void reset() noexcept {
      if (live_) live_->fetch_sub(1, std::memory_order_relaxed);
      live_.reset();
    }

   private:
    std::shared_ptr<std::atomic<uint32_t>> live_;
  };

  /// `limit` 0: no limit.
  explicit ConnectionCount(uint32_t limit) : limit_(limit) {}
  /// Takes a place into `out`; false (and `out` untouched) when the limit is reached.
  bool tryTake(Ticket& out) noexcept;
  uint32_t live() const noexcept { return live_->load(std::memory_order_relaxed); }
  uint32_t limit() const noexcept { return limit_; }

 private:
  uint32_t limit_;
  std::shared_ptr<std::atomic<uint32_t>> live_ = std::make_shared<std::atomic<uint32_t>>(0);
};

/// Accepting on a listening socket without spinning when the process is out of file
/// descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM). A socket with clients
/// waiting stays readable, so a listener that retried at once would take a core and log
/// on every round. Instead the gate backs off: it stops accepting (and the listener stops
/// polling its socket) for a Backoff: 10 ms, doubling to 1 s while the condition lasts. At
/// the end of each back-off it tries again; for descriptor exhaustion it also frees one
/// spare descriptor it keeps for the purpose, to accept up to kRefuseBatch waiting clients
/// and tell each why they cannot be served (`refuse`), instead of leaving them to time
/// out. The condition is logged at most once a second with how often it recurred. The
/// first accept that succeeds ends the back-off: the listener recovers by itself once
/// descriptors are free again. Errors accept(2) reports for a connection that failed
/// while queued (ECONNABORTED, EPROTO, network errors) are skipped.
/// Threads: the listener's (one at a time).
class AcceptGate final {
 public:
  static constexpr int kRefuseBatch = 16;

  /// Called with a client accepted only to be refused and the reason; it may send the
  /// reason in the listener's protocol. The descriptor is closed afterwards.
  using Refuse = std::function<void(int fd, const std::string& why)>;

  explicit AcceptGate(std::string endpoint);

  /// The next waiting client, or an empty Fd when none waits or while backing off.
  os::Fd accept(int listenFd, const Refuse& refuse);
  /// True while backing off: do not poll the listening socket before retryAt().
  bool backingOff(Clock::time_point now) const noexcept { return backoff_.resting(now); }
  Clock::time_point retryAt() const noexcept { return backoff_.until(); }
  /// Clients refused so far because the process was out of descriptors.
  uint64_t refusedForDescriptors() const noexcept { return refused_; }

 private:
  void backOff(int err, Clock::time_point now);

  std::string endpoint_;
  os::Fd spare_;
  Backoff backoff_;
  LogLimiter log_;
  uint64_t refused_ = 0;
};

}  // namespace zcrpc
