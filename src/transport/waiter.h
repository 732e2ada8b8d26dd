// zcrpc — the one wait loop: spin while a message is likely to come soon, then sleep.
//
// Every wait of the library runs through a Waiter: a connection waiting for data or for
// room (ring, tcp, rdma) and a server worker waiting for work on any of its connections.
// What differs between them is what one poll does, how to learn that the peer is gone,
// and how to sleep; those are the callbacks of wait(). The spin phase, its clock reads and
// yields, and how long it lasts (fixed, or adapted to the gaps this waiter has seen) live
// here only.
#pragma once

#include <chrono>
#include <cstdint>

#include "os/spin.h"
#include "zcrpc/transport.h"

namespace zcrpc {

/// What one round of polling costs, which sets how often the spin reads the clock and
/// yields.
enum class PollCost : uint8_t {
  kMemory,      ///< a read of (shared) memory: yield every os::kYieldEvery rounds
  kSystemCall,  ///< a system call (a non-blocking recv()): yield every kYieldEveryCalls
  /// a read of memory by a poll that itself yields now and then (rdma's tryReceive, for
  /// the softirq work of a kernel-side provider): the spin only pauses
  kMemorySelfYielding,
  /// rounds of any cost (a server worker's round over connections of every transport:
  /// a recv() each over tcp): as kMemory, and a yield at least every kYieldInterval by
  /// the clock
  kMixed,
};

/// The longest a PollCost::kMixed spin goes without a yield (see os::idleSpin).
inline constexpr auto kYieldInterval = std::chrono::microseconds(20);

/// How long to spin before sleeping, learnt from the gaps a waiter sees (adaptive policy).
///
/// The rule is the kernel's halt-polling rule (KVM's halt_poll_ns, the guest haltpoll
/// cpuidle governor): a wait that slept but ended within `spinTime` would have been
/// caught by spinning longer, so the limit doubles (from spinTime / 8); a wait longer than
/// `spinTime` spun for nothing, so it halves (to zero below spinTime / 8). A waiter whose
/// messages come back to back keeps spinning; one that gets a call every 100 us or every
/// second, or none, stops spinning after a few waits and sleeps at once; one that slept
/// and then sees short gaps again spins again after a few. A wait caught while spinning
/// changes nothing. The measured gap includes the wake-up's own latency, as the kernel's
/// does: where waking takes longer than spinTime, short gaps look long.
class SpinLimit {
 public:
  SpinLimit(WaitMode mode, std::chrono::nanoseconds spinTime, SpinPolicy policy) noexcept;

  /// How long the next wait may spin: Clock::duration::max() for busy-poll, zero for blocking.
  Clock::duration limit() const noexcept { return limit_; }
  /// Whether afterSleep() can change anything (adaptive spin-then-sleep).
  bool adapts() const noexcept { return adaptive_; }
  /// A wait that slept ended after `gap` (from its start, spin included), or ran into its
  /// deadline after `gap` without a message (`timedOut`). Adapts the limit.
  void afterSleep(Clock::duration gap, bool timedOut) noexcept;

 private:
  Clock::duration limit_;
  Clock::duration max_;
  Clock::duration growStart_;
  bool adaptive_;
};

/// Spins, then sleeps. Threads: one waiting thread at a time (it keeps what the adaptive
/// policy learnt, so each waiting site owns one: a connection's receiving side, its sending
/// side, a server worker).
class Waiter {
 public:
  Waiter(WaitMode mode, std::chrono::nanoseconds spinTime, SpinPolicy policy,
         PollCost cost) noexcept
      : limit_(mode, spinTime, policy), cost_(cost) {}

  /// Waits until `poll()` returns true (kOk), `deadline` passes (kTimedOut) or `alive()`
  /// returns false and a last poll() finds nothing (kDisconnected).
  ///
  /// - `poll()`: one non-blocking attempt; true when the wait is over. It may consume
  ///   (a received message), so it is called until it returns true and never after.
  /// - `alive(bool now)`: false once the peer is known to be gone. Called with each clock
  ///   read while spinning (every 64 rounds of memory polls, 16 of system calls), where it
  ///   may rate-limit what costs a system call, and with `now` true after a sleep that
  ///   found nothing, where it should look at once.
  /// - `sleep(Clock::duration left)`: one sleep of at most `left`: announce it to the peer,
  ///   poll() once more (the peer may have published before it saw the announcement), and
  ///   only then block until woken, the peer goes or a slice of its own choosing ends.
  ///   Returns what that poll() returned (true: the wait is over).
  template <typename Poll, typename Alive, typename Sleep>
  Status wait(Poll&& poll, Alive&& alive, Sleep&& sleep, Deadline deadline);

  /// How long the next wait may spin (for tests and reports).
  Clock::duration spinLimit() const noexcept { return limit_.limit(); }

 private:
  SpinLimit limit_;  // knows the mode (busy-poll: no limit)
  PollCost cost_;
};

template <typename Poll, typename Alive, typename Sleep>
Status Waiter::wait(Poll&& poll, Alive&& alive, Sleep&& sleep, Deadline deadline) {
  const Clock::duration spin = limit_.limit();
  Clock::time_point now;
  if (spin == Clock::duration::zero()) {
    // Blocking, or a spin that learnt to sleep at once: straight to sleep.
    if (poll()) return Status::kOk;
    if (!alive(false)) return poll() ? Status::kOk : Status::kDisconnected;
    now = Clock::now();
    if (now >= deadline) return Status::kTimedOut;
  } else {
    // A busy poller reads the clock only to bound the wait by its deadline and to check
    // the peer now and then; a spinning one also to end the spin on time. Where the
    // clock is a system call (VMs on an HPET or ACPI clock source) each read is a
    // stretch in which an arriving message goes unnoticed, so busy polling reads it
    // rarely. The first read comes after a few rounds, not at once: the message is
    // usually that close.
    const uint32_t clockMask = cost_ == PollCost::kSystemCall  ? 15
                               : spin == Clock::duration::max() ? os::kYieldEvery - 1
                                                                : 63;
    Clock::time_point spinUntil = Clock::time_point::max();
    Clock::time_point lastYield{};
    for (uint32_t round = 1;; ++round) {
      if (poll()) return Status::kOk;
      if ((round & clockMask) == 0) {
        if (!alive(false)) return poll() ? Status::kOk : Status::kDisconnected;
        now = Clock::now();
        if (now >= deadline) return Status::kTimedOut;
        if (spinUntil == Clock::time_point::max() && spin != Clock::duration::max())
          spinUntil = now + spin;  // the first read: the spin counts from here
        else if (now >= spinUntil)
          break;
        if (cost_ == PollCost::kMixed && now - lastYield >= kYieldInterval) {
          ::sched_yield();  // rounds over tcp connections take far longer than kYieldEvery's
          lastYield = now;
          continue;
        }
      }
      if (cost_ == PollCost::kSystemCall)
        os::idleSpin<os::kYieldEveryCalls>(round);  // each round was a system call
      else if (cost_ == PollCost::kMemory || cost_ == PollCost::kMixed)
        os::idleSpin(round);
      else
        os::cpuRelax();
    }
    now -= spin;  // where the wait began, near enough, for the spin limit's gap
  }
  // Sleep phase: the sleeper announces itself, polls once more and sleeps.
  const Clock::time_point start = now;
  for (;;) {
    if (sleep(deadline - now) || poll()) {
      if (limit_.adapts()) limit_.afterSleep(Clock::now() - start, /*timedOut=*/false);
      return Status::kOk;
    }
    if (!alive(true)) return poll() ? Status::kOk : Status::kDisconnected;
    now = Clock::now();
    if (now >= deadline) {
      if (limit_.adapts()) limit_.afterSleep(now - start, /*timedOut=*/true);
      return Status::kTimedOut;
    }
  }
}

}  // namespace zcrpc
