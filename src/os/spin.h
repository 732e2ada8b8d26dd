// zcrpc — spinning: the pause hint of busy loops, and the lock of a connection's send state.
#pragma once

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

namespace zcrpc::os {

/// Tells the CPU this is a spin-wait loop (less power, the sibling hyperthread runs).
inline void cpuRelax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// Idle rounds of a busy-poll loop between sched_yield()s (a power of two), for loops whose
/// rounds read memory (a ring's next record word, a completion queue).
inline constexpr uint32_t kYieldEvery = 256;
/// The same for loops whose every round is a system call (a non-blocking recv()): about as
/// many microseconds between yields.
inline constexpr uint32_t kYieldEveryCalls = 16;

/// One idle round of a busy-poll loop, `round` counting them: the pause hint, and every
/// `Every` rounds (a few microseconds of finding nothing) sched_yield() instead. A
/// poller that shares its CPU with another runnable thread (more spinning threads than
/// cores: a client and a server on one CPU, a crowded host, a container's CPU limit) thus
/// lets it run within microseconds, not when the scheduler tick ends its time slice (4 ms
/// here). With the CPU to itself the yield returns at once; a message that arrives during
/// it waits for one system call, and only after the poller already waited that long.
template <uint32_t Every = kYieldEvery>
inline void idleSpin(uint32_t round) noexcept {
  static_assert(Every && !(Every & (Every - 1)), "a power of two");
  if ((round & (Every - 1)) == 0) [[unlikely]]
    ::sched_yield();
  else
    cpuRelax();
}

/// A lock for state that is nearly always taken by one thread: a connection's send state,
/// which the sending thread locks around each message while the receiving thread (or one
/// releasing a lease) only try_locks it or holds it briefly. Uncontended, lock + unlock is
/// one atomic exchange and one store; glibc's std::mutex took ~160 instructions a call on
/// the tcp client and ~280 on the server (three lock/unlock pairs per message each way).
/// A waiter spins briefly, then yields, then sleeps in short steps: the holder may be in a
/// syscall, or in close()'s bounded drain (up to 200 ms).
///
/// Meets BasicLockable and Lockable, for std::lock_guard / std::unique_lock.
class SpinLock {
 public:
  bool try_lock() noexcept {
    // pairs with the release store in unlock(): the holder's writes are visible to us
    return !held_.load(std::memory_order_relaxed) &&
           !held_.exchange(true, std::memory_order_acquire);
  }
  void lock() noexcept {
    if (try_lock()) [[likely]]
      return;
    lockSlow();
  }
  void unlock() noexcept { held_.store(false, std::memory_order_release); }

 private:
  void lockSlow() noexcept {
    for (unsigned i = 1;; ++i) {
      if (try_lock()) return;
      if (i < 128)
        cpuRelax();
      else if (i < 256)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  std::atomic<bool> held_{false};
};

}  // namespace zcrpc::os
