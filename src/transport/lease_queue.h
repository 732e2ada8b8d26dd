// zcrpc — received-message leases, released out of order, reclaimed in order.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "transport/ring/layout.h"
#include "zcrpc/frame.h"

namespace zcrpc {

/// Slots for the messages a connection has handed out, in arrival order. The receiving
/// thread fills and pushes; any thread releases; the released prefix is reclaimed under
/// a try-lock and reported through a callback with the end position of the last slot
/// reclaimed. See docs/ring.md ("Reclaiming") for the argument.
class LeaseQueue final {
 public:
  struct NoAction {
    void operator()() const noexcept {}
  };

  struct alignas(ring::kCacheLine) Entry {
    ParsedFrame frame;
    uint64_t end = 0;                      ///< transport position after this message
    uint64_t aux = 0;                      ///< second position (the shm arena end)
    std::unique_ptr<capnp::word[]> owned;  ///< a buffer of its own, freed when reclaimed
    std::atomic<uint32_t> released{0};
  };

  explicit LeaseQueue(uint32_t capacity)
      : entries_(std::make_unique<Entry[]>(capacity)), mask_(capacity - 1) {}

  /// Receiving thread.
  bool full() const noexcept {
    return tail_.load(std::memory_order_relaxed) - head_.load(std::memory_order_acquire) > mask_;
  }
  bool empty() const noexcept {
    return tail_.load(std::memory_order_relaxed) == head_.load(std::memory_order_acquire);
  }
  Entry& next() noexcept { return entries_[tail_.load(std::memory_order_relaxed) & mask_]; }
  /// Publishes next(); returns its slot number for the lease.
  uint32_t push() noexcept {
    uint64_t t = tail_.load(std::memory_order_relaxed);
    // pairs with the acquire load of tail_ in reclaim()
    tail_.store(t + 1, std::memory_order_release);
    return static_cast<uint32_t>(t & mask_);
  }
  const Entry& at(uint32_t slot) const noexcept { return entries_[slot]; }

  /// Any thread, once per lease. `afterAdvance`, when given, runs after the reclaimed
  /// position was published and a full fence, each time this call moved it (see reclaim).
  template <typename OnAdvance, typename AfterAdvance = NoAction>
  void release(uint32_t slot, OnAdvance onAdvance, AfterAdvance afterAdvance = {}) noexcept {
    // pairs with the seq_cst fence after the unlock in reclaim(): no release is ever missed
    entries_[slot].released.store(1, std::memory_order_seq_cst);
    reclaim(onAdvance, afterAdvance);
  }

  /// Pops the released prefix; calls onAdvance(end, aux) of the last popped entry under the
  /// lock, then, after unlocking and a full fence, afterAdvance() (so a store made in
  /// onAdvance is ordered before the loads afterAdvance makes: one fence serves the
  /// caller's own Dekker pairings too).
  template <typename OnAdvance, typename AfterAdvance = NoAction>
  void reclaim(OnAdvance onAdvance, AfterAdvance afterAdvance = {}) noexcept {
    for (;;) {
      // pairs with the fence after the unlock below (in the thread that held the lock)
      if (lock_.exchange(true, std::memory_order_seq_cst)) return;  // the holder re-checks
      uint64_t h = head_.load(std::memory_order_relaxed);
      uint64_t t = tail_.load(std::memory_order_acquire);
      uint64_t end = 0, aux = 0;
      bool advanced = false;
      while (h != t && entries_[h & mask_].released.load(std::memory_order_acquire)) {
        Entry& e = entries_[h & mask_];
        end = e.end;
        aux = e.aux;
        e.owned.reset();
        e.released.store(0, std::memory_order_relaxed);
        ++h;
        advanced = true;
      }
      if (advanced) {
        // pairs with the acquire load of head_ in full()/empty()
        head_.store(h, std::memory_order_release);
        callAdvance(onAdvance, end, aux);
      }
      lock_.store(false, std::memory_order_release);
      // Dekker with release(): a releaser that found the lock taken stored its flag
      // (seq_cst) before its exchange; with this fence between our unlock and our re-check,
      // either its exchange sees the lock free or the re-check below sees its flag.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (advanced) afterAdvance();
      if (h == tail_.load(std::memory_order_acquire) ||
          !entries_[h & mask_].released.load(std::memory_order_relaxed))
        return;
    }
  }
  /// Receiving thread, queue empty: moves the reclaimed position to `position` (skipping
  /// padding no lease covers) under the same lock, so it cannot race a reclaim.
  template <typename OnAdvance>
  void syncHead(uint64_t position, OnAdvance onAdvance) noexcept {
    if (lock_.exchange(true, std::memory_order_seq_cst)) return;
    if (empty()) onAdvance(position);
    lock_.store(false, std::memory_order_seq_cst);
  }

  /// Forgets every lease (the connection is going away).
  void dropAll() noexcept {
    for (uint64_t i = 0; i <= mask_; ++i) entries_[i].owned.reset();
  }

 private:
  template <typename F>
  static void callAdvance(F& f, uint64_t end, uint64_t aux) {
    if constexpr (std::is_invocable_v<F&, uint64_t, uint64_t>)
      f(end, aux);
    else
      f(end);
  }

  std::unique_ptr<Entry[]> entries_;
  uint64_t mask_;
  std::atomic<uint64_t> tail_{0};
  std::atomic<uint64_t> head_{0};
  std::atomic<bool> lock_{false};
};

}  // namespace zcrpc
