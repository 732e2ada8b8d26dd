// zcrpc — layout of one side's "transmit file": everything that side writes.
//
// Each end of a ring connection owns one memory region (a memfd for shm, private memory
// for loopback) that only it writes and that the peer maps read-only:
//
//   [FileHeader][ProducerControl][ConsumerControl][pad to 4 KiB][ring][arena]
//
// The ring and arena carry this side's outgoing messages; ConsumerControl publishes how far
// this side has consumed the *peer's* ring and arena. See docs/ring.md for the protocol.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "os/os.h"
#include "transport/options.h"
#include "transport/record.h"

namespace zcrpc::ring {

using os::kCacheLine;
using zcrpc::kRecordHeaderBytes;  // the ring's record: tag | length word, then the arena end
inline constexpr uint64_t kMagic = 0x3170'7263'7a7a'0a01ull;  // "\x01\nzzcrp1"
inline constexpr uint32_t kLayoutVersion = 2;  // 2: record tags are never zero
inline constexpr size_t kDataOffset = 4096;
inline constexpr uint64_t kMaxArenaBytes = uint64_t{8} << 30;  // arena word offsets fit 31 bits

struct FileHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t headerBytes;
  uint64_t ringBytes;
  uint64_t arenaBytes;
  uint64_t maxMessageBytes;
  uint64_t fileBytes;
  uint64_t reserved[2];
};
static_assert(sizeof(FileHeader) == 64);

/// Written by the producer of the ring in this file.
struct alignas(kCacheLine) ProducerControl {
  std::atomic<uint32_t> dataSeq;       ///< futex word the consumer sleeps on; bumped to wake it
  std::atomic<uint32_t> closed;        ///< 1 once this side closed the connection
  std::atomic<uint32_t> waitingForSpace;  ///< 1 while the producer sleeps for space
  std::atomic<uint32_t> maySleep;      ///< set once at start: this producer may sleep for space
};

/// Written by this side as consumer of the *peer's* ring. Two lines: the released indices
/// change with every batch of releases; the sleep words change only when the consumer
/// sleeps, so the producer's check of them stays a cache hit.
struct alignas(kCacheLine) ConsumerControl {
  std::atomic<uint64_t> head;       ///< ring bytes released (absolute position)
  std::atomic<uint64_t> arenaHead;  ///< arena bytes released (absolute position)
  alignas(kCacheLine) std::atomic<uint32_t> sleeping;  ///< kAwake / kSleepFutex / kSleepSocket
  std::atomic<uint32_t> spaceSeq;   ///< futex word the peer's producer sleeps on
  std::atomic<uint32_t> maySleep;   ///< set once at start: this consumer may sleep for data
};

inline constexpr uint32_t kAwake = 0;
inline constexpr uint32_t kSleepFutex = 1;
inline constexpr uint32_t kSleepSocket = 2;

struct alignas(kCacheLine) FileControl {
  FileHeader header;
  ProducerControl producer;
  ConsumerControl consumer;
};
static_assert(sizeof(FileControl) <= kDataOffset);
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

constexpr uint64_t fileBytesFor(uint64_t ringBytes, uint64_t arenaBytes) {
  return kDataOffset + ringBytes + arenaBytes;
}

/// Record header word 0: tag (high 32 bits) | length (low 32 bits; bit 0 = wrap marker).
/// The tag is derived from the record's absolute position, so a stale record from an
/// earlier lap, or zeroed memory, never matches what the consumer expects: it is odd, so
/// never zero (the word after a record is often zeroed memory: the unused end of a first
/// segment, fresh pages), and records a lap apart differ in the bits above bit 0.
constexpr uint32_t recordTag(uint64_t position) {
  return (static_cast<uint32_t>(position >> 3) ^ 0xA5C3'5A3Cu) | 1u;
}
inline constexpr uint32_t kWrapBit = 1;

}  // namespace zcrpc::ring
