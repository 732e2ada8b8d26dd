// zcrpc — spinning: the pause hint of busy loops, and the lock of a connection's send state.
#pragma once

#include <atomic>
#include <chrono>
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
