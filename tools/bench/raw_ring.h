// zcrpc-bench — the floor: the least work a shared-memory ping-pong can do.
//
// Every zcrpc latency figure is reported as a ratio to this floor, measured in the same
// repetition on the same pair of CPUs. It does only what any shared-memory transport must:
// copy the payload into memory the peer can see, publish it with one release store of a
// sequence word, and let the peer poll that word. No framing, no validation, no leases.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include "common.h"

namespace zcrpc::bench {

/// Two single-producer single-consumer rings of fixed-size slots in one anonymous shared
/// mapping, one per direction (client -> server, server -> client). A slot is a 16-byte
/// header, whose first word is the message's sequence number (stored last, with release),
/// followed by the payload bytes; the receiver polls that one word.
///
/// Each direction starts with a cache line holding a futex word and a "receiver sleeps"
/// flag, used only by ends in the spin-then-sleep and blocking wait modes (the floor for
/// zcrpc in those modes): the receiver sets the flag before it sleeps, the sender wakes it
/// only when it finds the flag set. A busy-polling end never touches that line.
///
/// There is no back-pressure: the rings are valid only for ping-pong, where every message
/// is answered before the next one is sent, so a slot is never rewritten while its reader
/// still looks at it.
///
/// Lifetime: construct before fork(); both processes then share the same pages. Threads:
/// one RawEnd per process, used by one thread; `clear` only while neither end is in use.
class RawRing final {
 public:
  /// Maps room for payloads of up to `maxPayloadBytes`. Throws BenchError.
  explicit RawRing(size_t maxPayloadBytes);
  ~RawRing();
  RawRing(const RawRing&) = delete;
  RawRing& operator=(const RawRing&) = delete;

  /// Zeroes the part of both directions a cell of `payloadBytes` payloads uses (so no stale
  /// word can pass for a fresh message, and the pages are faulted in). Call it between
  /// cells, before the control message that starts the peer's cell: that message orders the
  /// zeroing before the peer's first read.
  void clear(size_t payloadBytes) noexcept;

  size_t maxPayloadBytes() const noexcept { return maxPayload_; }

 private:
  friend class RawEnd;
  std::byte* direction(int which) const noexcept { return base_ + which * directionBytes_; }

  std::byte* base_ = nullptr;
  size_t maxPayload_;
  size_t directionBytes_;
};

/// Which way an end sends: the client sends on direction 0 and receives on 1.
enum class RawRole { kClient, kServer };

/// A received message: the payload in place in the ring, valid until the next receive.
struct RawMessage {
  std::span<const std::byte> payload;
  bool stop = false;  ///< the peer's stop marker: the cell is over
};

/// One process's end of a RawRing for one cell: private sequence counters and the slot
/// layout for that cell's payload size. Both ends of a cell must use the same size, the
/// same wait mode and a ring cleared for it. Threads: one.
class RawEnd final {
 public:
  /// `waitMode`: how receive() waits. kBusyPoll spins on the slot's word; kSpinThenSleep
  /// spins for `spinTime`, then sleeps on the direction's futex; kBlocking sleeps at once.
  /// In the two sleeping modes send() checks the peer's sleep flag and wakes it.
  RawEnd(const RawRing& ring, RawRole role, size_t payloadBytes,
         WaitMode waitMode = WaitMode::kBusyPoll,
         std::chrono::nanoseconds spinTime = std::chrono::microseconds(50)) noexcept;

  /// Copies `payload` (at most the cell's payload size) into the next slot and publishes it.
  void send(std::span<const std::byte> payload) noexcept;
  /// Publishes the stop marker.
  void sendStop() noexcept;
  /// Waits (by the end's wait mode) for the next message until `deadline`; false at the
  /// deadline, or early when `watchFd` (if not -1) turns readable or hangs up: the peer
  /// stopped (the control socket carries nothing while a cell runs). Polled only after
  /// ~64 k idle spins or a 100 ms sleep, so it costs a healthy ping-pong nothing.
  bool receive(RawMessage& out, Deadline deadline, int watchFd = -1) noexcept;

 private:
  std::byte* slot(std::byte* dir, uint64_t seq) const noexcept {
    return dir + (seq % slots_) * stride_;
  }
  void publish(uint64_t seq, uint32_t bytes) noexcept;
  /// Sleeps on the receive direction's futex until the slot's word reaches `want`, the
  /// deadline passes or `watchFd` says the peer stopped. Returns whether it arrived.
  bool sleepFor(std::atomic_ref<uint64_t>& seq, uint64_t want, Deadline deadline,
                int watchFd) noexcept;

  std::byte* tx_;      // first slot of the sending direction
  std::byte* rx_;      // first slot of the receiving direction
  std::byte* txWait_;  // the wait line of each direction
  std::byte* rxWait_;
  WaitMode waitMode_;
  std::chrono::nanoseconds spinTime_;
  size_t payloadBytes_;
  size_t stride_;
  size_t slots_;
  uint64_t sent_ = 0;
  uint64_t received_ = 0;
};

}  // namespace zcrpc::bench
