// zcrpc — a frame too large for a connection's receive buffer, assembled in memory of its
// own that is committed as the frame's bytes arrive, never for what its header claims.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#include "os/os.h"

// Internal to libzcrpc: nothing here is exported from the shared library.
#pragma GCC visibility push(hidden)
namespace zcrpc {

/// The receiving side of a large frame (tcp: larger than a quarter of the receive ring;
/// rdma: sent in fragments). A peer's header may claim up to the maximum message size; the
/// memory grows with what has arrived instead: it starts at kFirstBytes and grows to twice
/// what has arrived (never past the frame's size) whenever it is full, so at most about
/// twice the bytes received are committed, and a peer that claims 64 MiB and sends 1 KiB
/// costs 64 KiB. Growth moves pages (mremap), it copies nothing. The finished frame's
/// memory goes to its lease and back to the system when the lease is reclaimed.
/// Threads: the connection's receiving thread.
class FrameAssembly final {
 public:
  static constexpr size_t kFirstBytes = 64 << 10;

  bool active() const noexcept { return static_cast<bool>(memory_); }
  uint64_t size() const noexcept { return size_; }
  uint64_t filled() const noexcept { return filled_; }
  bool complete() const noexcept { return active() && filled_ == size_; }

  /// Begins a frame of `frameBytes`, with room for at least `arrived` bytes (what came
  /// already). False (nothing begun) when no memory could be had.
  [[nodiscard]] bool begin(uint64_t frameBytes, uint64_t arrived = 0) noexcept {
    try {
      memory_ = os::Memory(std::min<uint64_t>(frameBytes, std::max<uint64_t>(arrived, kFirstBytes)),
                           "a received frame");
    } catch (...) {
      return false;
    }
    size_ = frameBytes;
    filled_ = 0;
    return true;
  }
  /// Where the next bytes go: the free room, grown first if there is none. Empty when the
  /// frame is complete, or when growing failed (out of memory: then `failed()` is true).
  std::span<std::byte> room() noexcept {
    if (filled_ == memory_.size() && filled_ < size_) {
      uint64_t want = std::min<uint64_t>(size_, std::max<uint64_t>(filled_ * 2, kFirstBytes));
      if (!memory_.grow(want)) {
        failed_ = true;
        return {};
      }
    }
    uint64_t end = std::min<uint64_t>(size_, memory_.size());
    return {memory_.data() + filled_, end - filled_};
  }
  void filledBy(size_t bytes) noexcept { filled_ += bytes; }
  bool failed() const noexcept { return failed_; }
  const std::byte* data() const noexcept { return memory_.data(); }
  /// The finished frame's memory (for its lease); the assembly is inactive afterwards.
  os::Memory take() noexcept {
    size_ = filled_ = 0;
    failed_ = false;
    return std::move(memory_);
  }
  void reset() noexcept { (void)take(); }

 private:
  os::Memory memory_;
  uint64_t size_ = 0;
  uint64_t filled_ = 0;
  bool failed_ = false;
};

}  // namespace zcrpc
#pragma GCC visibility pop
