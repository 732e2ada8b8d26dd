// zcrpc — received-message leases, released out of order, reclaimed in order.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>

#include "os/os.h"
#include "transport/ring/layout.h"
#include "zcrpc/frame.h"

namespace zcrpc {

/// Slots for the messages a connection has handed out, in arrival order. The receiving
/// thread fills and pushes; any thread releases; the released prefix is reclaimed under
/// a try-lock (a release that finds it taken leaves the holder a mark instead) and
/// reported through a callback with the end position of the last slot reclaimed. See
/// docs/ring.md ("Reclaiming") for the argument.
class LeaseQueue final {
 public:
  struct NoAction {
    void operator()(bool) const noexcept {}
  };

  // The bookkeeping comes first so that it shares the first cache line with the frame
  // header, and the first segments follow on the second: a small message touches two
  // lines of its entry, not three (the unused segment slots lie beyond).
  struct alignas(os::kCacheLine) Entry {
    uint64_t end = 0;                      ///< transport position after this message
    uint64_t aux = 0;                      ///< second position (the shm arena end)
    os::Memory owned;  ///< memory of its own (a large frame), given back when reclaimed
    std::atomic<uint32_t> released{0};
    ParsedFrame frame;
  };

  /// The entries live in memory of their own, and each is made when it is first used: a
  /// connection that holds few messages at once touches few of them (an entry is ~640
  /// bytes; 256 made at once cost an idle connection 160 KiB), and all of it goes back
  /// to the system with the queue.
  explicit LeaseQueue(uint32_t capacity)
      : memory_(sizeof(Entry) * capacity, "lease entries"),
        entries_(reinterpret_cast<Entry*>(memory_.data())),
        mask_(capacity - 1) {}
  ~LeaseQueue() {
    for (uint64_t i = 0; i < built_; ++i) entries_[i].~Entry();
  }
  LeaseQueue(const LeaseQueue&) = delete;
  LeaseQueue& operator=(const LeaseQueue&) = delete;

  /// Receiving thread.
  bool full() const noexcept {
    return tail_.load(std::memory_order_relaxed) - head_.load(std::memory_order_acquire) > mask_;
  }
  bool empty() const noexcept {
    return tail_.load(std::memory_order_relaxed) == head_.load(std::memory_order_acquire);
  }
  Entry& next() noexcept {
    const uint64_t t = tail_.load(std::memory_order_relaxed);
    if (built_ <= mask_ && t >= built_) [[unlikely]] build(t);  // only during the first lap
    return entries_[t & mask_];
  }
  /// Publishes next(); returns its slot number for the lease.
  uint32_t push() noexcept {
    uint64_t t = tail_.load(std::memory_order_relaxed);
    // pairs with the acquire load of tail_ in reclaim()
    tail_.store(t + 1, std::memory_order_release);
    return static_cast<uint32_t>(t & mask_);
  }
  const Entry& at(uint32_t slot) const noexcept { return entries_[slot]; }

  /// Any thread, once per lease. `afterAdvance(waiter)`, when given, runs after the lock is
  /// dropped whenever this call moved the reclaimed position; `waiter` says the receiving
  /// thread announced (announceWaiter) that it sleeps for a free slot.
  template <typename OnAdvance, typename AfterAdvance = NoAction>
  void release(uint32_t slot, OnAdvance onAdvance, AfterAdvance afterAdvance = {}) noexcept {
    // pairs with the acquire load in scanLocked(): the lease's reads of the message happen
    // before the space is published as free. That the holder sees the flag at all is
    // guaranteed by the RMW on state_ in lockOrMark() (see there).
    entries_[slot].released.store(1, std::memory_order_release);
    reclaim(onAdvance, afterAdvance);
  }

  /// Pops the released prefix; calls onAdvance(end, aux) of the last popped entry under the
  /// lock, and afterAdvance(waiter) after dropping it (see release()). When another thread
  /// holds the lock, leaves it a mark instead: the holder rescans before it unlocks.
  template <typename OnAdvance, typename AfterAdvance = NoAction>
  void reclaim(OnAdvance onAdvance, AfterAdvance afterAdvance = {}) noexcept {
    if (!lockOrMark()) return;  // the holder rescans
    bool advanced = false;
    bool waiter = false;
    do advanced |= scanLocked(onAdvance);
    while (!unlock(waiter));
    if (advanced) callAfter(afterAdvance, waiter);
  }

  /// Receiving thread, about to sleep because the queue is full: announces it, so that the
  /// next reclaim that frees a slot passes waiter = true to its afterAdvance. Returns true
  /// when the queue is still full (sleep), false when a slot was freed meanwhile. Call
  /// withdrawWaiter() after the sleep either way.
  bool announceWaiter() noexcept {
    // An RMW on state_, like every unlock: either it comes after the unlock that follows a
    // reclaim (and acquires its head_ store: full() below sees the slot), or that unlock
    // reads kWaiter and the reclaimer wakes us.
    state_.fetch_or(kWaiter, std::memory_order_acq_rel);
    return full();
  }
  void withdrawWaiter() noexcept { state_.fetch_and(~kWaiter, std::memory_order_relaxed); }

  /// Receiving thread, queue empty: moves the reclaimed position to `position` (skipping
  /// padding no lease covers) under the same lock, so it cannot race a reclaim.
  template <typename OnAdvance>
  void syncHead(uint64_t position, OnAdvance onAdvance) noexcept {
    uint32_t s = state_.load(std::memory_order_relaxed);
    do {
      if (s & kLocked) return;  // a reclaim is running; it publishes a position itself
    } while (!state_.compare_exchange_weak(s, s | kLocked, std::memory_order_acq_rel,
                                           std::memory_order_relaxed));
    if (empty()) onAdvance(position);
    bool waiter = false;
    while (!unlock(waiter)) scanLocked(onAdvance);
  }

  /// Forgets every lease (the connection is going away).
  void dropAll() noexcept {
    for (uint64_t i = 0; i < built_; ++i) entries_[i].owned = os::Memory();
  }

 private:
  // True: we hold the lock. False: another thread holds it and now carries kDirty, set by
  // our RMW, whose release half makes our released flag visible to the holder's acquire
  // RMW in unlock() (RMWs continue a release sequence, so any later one does too).
  bool lockOrMark() noexcept {
    // Uncontended: one locked bit-test-and-set.
    if (!(state_.fetch_or(kLocked, std::memory_order_acq_rel) & kLocked)) return true;
    uint32_t s = state_.load(std::memory_order_relaxed);
    for (;;) {
      uint32_t want = (s & kLocked) ? (s | kDirty) : (s | kLocked);
      if (state_.compare_exchange_weak(s, want, std::memory_order_acq_rel,
                                       std::memory_order_relaxed))
        return !(s & kLocked);
    }
  }

  // Holder: drops the lock and returns true, or, when a release left kDirty meanwhile,
  // clears it (acquiring that releaser's flag) and returns false: rescan, still locked.
  // The release half publishes our head_ store to the next locker and to a waiter.
  bool unlock(bool& waiter) noexcept {
    uint32_t s = kLocked;  // uncontended: nothing but our lock bit
    for (;;) {
      uint32_t want = (s & kDirty) ? (s & ~kDirty) : (s & ~kLocked);
      if (state_.compare_exchange_weak(s, want, std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
        waiter = (s & kWaiter) != 0;
        return !(s & kDirty);
      }
    }
  }

  // Holder: pops the released prefix. True when it moved.
  template <typename OnAdvance>
  bool scanLocked(OnAdvance& onAdvance) noexcept {
    uint64_t h = head_.load(std::memory_order_relaxed);
    uint64_t t = tail_.load(std::memory_order_acquire);  // pairs with the release in push()
    uint64_t end = 0, aux = 0;
    bool advanced = false;
    // pairs with the release store in release()
    while (h != t && entries_[h & mask_].released.load(std::memory_order_acquire)) {
      Entry& e = entries_[h & mask_];
      end = e.end;
      aux = e.aux;
      if (e.owned) [[unlikely]] e.owned = os::Memory();
      e.released.store(0, std::memory_order_relaxed);
      ++h;
      advanced = true;
    }
    if (advanced) {
      // pairs with the acquire load of head_ in full()/empty()
      head_.store(h, std::memory_order_release);
      callAdvance(onAdvance, end, aux);
    }
    return advanced;
  }

  template <typename F>
  static void callAfter(F& f, bool waiter) {
    if constexpr (std::is_invocable_v<F&, bool>)
      f(waiter);
    else
      f();
  }

  template <typename F>
  static void callAdvance(F& f, uint64_t end, uint64_t aux) {
    if constexpr (std::is_invocable_v<F&, uint64_t, uint64_t>)
      f(end, aux);
    else
      f(end);
  }

  /// Makes the entries up to the one for position `t` (within the first lap).
  void build(uint64_t t) noexcept {
    for (; built_ <= t && built_ <= mask_; ++built_) new (&entries_[built_]) Entry();
  }

  os::Memory memory_;
  Entry* entries_;
  uint64_t mask_;
  uint64_t built_ = 0;  // receiving thread: entries made so far (at most mask_ + 1)
  std::atomic<uint64_t> tail_{0};
  std::atomic<uint64_t> head_{0};
  // The reclaim lock and its mailbox, one word so that locking, leaving a release for the
  // holder, and announcing a waiter are all RMWs on it (one release sequence: no fences).
  static constexpr uint32_t kLocked = 1;  // a thread is reclaiming
  static constexpr uint32_t kDirty = 2;   // a release came in while locked: rescan
  static constexpr uint32_t kWaiter = 4;  // the receiving thread sleeps for a free slot
  std::atomic<uint32_t> state_{0};
};

}  // namespace zcrpc
