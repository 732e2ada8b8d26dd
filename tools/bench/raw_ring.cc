#include "raw_ring.h"

#include <poll.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstring>

namespace zcrpc::bench {

namespace {

constexpr size_t kSlotHeaderBytes = 16;  // seq word, length, padding; payload 8-byte aligned
constexpr size_t kMaxSlots = 64;
constexpr size_t kMinDirectionBytes = size_t{4} << 20;
constexpr uint32_t kStopBytes = UINT32_MAX;

struct SlotHeader {
  uint64_t seq;    // the message's sequence number (1, 2, ...); stored last, with release
  uint32_t bytes;  // payload length, or kStopBytes
  uint32_t reserved;
};
static_assert(sizeof(SlotHeader) == kSlotHeaderBytes);

constexpr size_t roundUp(size_t v, size_t to) { return (v + to - 1) / to * to; }
constexpr size_t strideFor(size_t payloadBytes) {
  return roundUp(kSlotHeaderBytes + payloadBytes, 64);
}

size_t directionBytesFor(size_t maxPayloadBytes) {
  return roundUp(std::max(kMinDirectionBytes, 2 * strideFor(maxPayloadBytes)), 4096);
}

size_t slotsFor(size_t directionBytes, size_t payloadBytes) {
  return std::clamp<size_t>(directionBytes / strideFor(payloadBytes), 1, kMaxSlots);
}

}  // namespace

RawRing::RawRing(size_t maxPayloadBytes)
    : maxPayload_(maxPayloadBytes), directionBytes_(directionBytesFor(maxPayloadBytes)) {
  void* p = ::mmap(nullptr, 2 * directionBytes_, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throwErrno("mmap floor ring of " + std::to_string(2 * directionBytes_) + " bytes");
  base_ = static_cast<std::byte*>(p);
}

RawRing::~RawRing() { ::munmap(base_, 2 * directionBytes_); }

void RawRing::clear(size_t payloadBytes) noexcept {
  size_t used = slotsFor(directionBytes_, payloadBytes) * strideFor(payloadBytes);
  std::memset(direction(0), 0, used);
  std::memset(direction(1), 0, used);
}

RawEnd::RawEnd(const RawRing& ring, RawRole role, size_t payloadBytes) noexcept
    : tx_(ring.direction(role == RawRole::kClient ? 0 : 1)),
      rx_(ring.direction(role == RawRole::kClient ? 1 : 0)),
      payloadBytes_(std::min(payloadBytes, ring.maxPayloadBytes())),
      stride_(strideFor(payloadBytes_)),
      slots_(slotsFor(ring.directionBytes_, payloadBytes_)) {}

void RawEnd::publish(uint64_t seq, uint32_t bytes) noexcept {
  auto* h = reinterpret_cast<SlotHeader*>(slot(tx_, seq));
  h->bytes = bytes;
  // pairs with the acquire load of `seq` in the peer's receive(): the payload and length
  // written above are visible once the peer sees this sequence number.
  std::atomic_ref<uint64_t>(h->seq).store(seq, std::memory_order_release);
}

void RawEnd::send(std::span<const std::byte> payload) noexcept {
  size_t n = std::min(payload.size(), payloadBytes_);
  ++sent_;
  std::memcpy(slot(tx_, sent_) + kSlotHeaderBytes, payload.data(), n);
  publish(sent_, static_cast<uint32_t>(n));
}

void RawEnd::sendStop() noexcept { publish(++sent_, kStopBytes); }

bool RawEnd::receive(RawMessage& out, Deadline deadline, int watchFd) noexcept {
  uint64_t want = received_ + 1;
  std::byte* s = slot(rx_, want);
  auto* h = reinterpret_cast<SlotHeader*>(s);
  std::atomic_ref<uint64_t> seq(h->seq);
  // pairs with the release store in the peer's publish()
  for (uint32_t spins = 1; seq.load(std::memory_order_acquire) != want; ++spins) {
    if ((spins & 1023) == 0 && Clock::now() >= deadline) return false;
    if ((spins & 0xffff) == 0 && watchFd >= 0) {
      pollfd pfd{watchFd, POLLIN, 0};
      if (::poll(&pfd, 1, 0) > 0) return false;
    }
    cpuRelax();
  }
  received_ = want;
  uint32_t bytes = h->bytes;
  out.stop = bytes == kStopBytes;
  out.payload = out.stop ? std::span<const std::byte>()
                         : std::span<const std::byte>(s + kSlotHeaderBytes,
                                                      std::min<size_t>(bytes, payloadBytes_));
  return true;
}

}  // namespace zcrpc::bench
