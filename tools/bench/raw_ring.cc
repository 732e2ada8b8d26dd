#include "raw_ring.h"

#include <linux/futex.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

namespace zcrpc::bench {

namespace {

constexpr size_t kWaitLineBytes = 64;    // futex word and sleep flag, before the slots
constexpr size_t kSlotHeaderBytes = 16;  // seq word, length, padding; payload 8-byte aligned
constexpr size_t kMaxSlots = 64;
constexpr size_t kMinDirectionBytes = size_t{4} << 20;
constexpr uint32_t kStopBytes = UINT32_MAX;
/// Longest single futex sleep: the deadline and the peer's health are checked between.
constexpr auto kSleepSlice = std::chrono::milliseconds(100);

struct SlotHeader {
  uint64_t seq;    // the message's sequence number (1, 2, ...); stored last, with release
  uint32_t bytes;  // payload length, or kStopBytes
  uint32_t reserved;
};
static_assert(sizeof(SlotHeader) == kSlotHeaderBytes);

/// The first cache line of a direction. Written by both ends only in the sleeping wait modes.
struct alignas(64) WaitLine {
  uint32_t futex;     // bumped by the sender before FUTEX_WAKE
  uint32_t sleeping;  // 1 while the receiver is in (or about to enter) FUTEX_WAIT
};
static_assert(sizeof(WaitLine) == kWaitLineBytes);

constexpr size_t roundUp(size_t v, size_t to) { return (v + to - 1) / to * to; }
constexpr size_t strideFor(size_t payloadBytes) {
  return roundUp(kSlotHeaderBytes + payloadBytes, 64);
}

size_t directionBytesFor(size_t maxPayloadBytes) {
  return roundUp(kWaitLineBytes + std::max(kMinDirectionBytes, 2 * strideFor(maxPayloadBytes)),
                 4096);
}

size_t slotsFor(size_t directionBytes, size_t payloadBytes) {
  return std::clamp<size_t>((directionBytes - kWaitLineBytes) / strideFor(payloadBytes), 1,
                            kMaxSlots);
}

WaitLine* waitLine(std::byte* p) noexcept { return reinterpret_cast<WaitLine*>(p); }

/// The shared mapping is MAP_SHARED between two processes: no FUTEX_PRIVATE_FLAG.
long futex(uint32_t* word, int op, uint32_t value, const timespec* timeout) noexcept {
  return ::syscall(SYS_futex, word, op, value, timeout, nullptr, 0);
}

bool peerStopped(int watchFd) noexcept {
  if (watchFd < 0) return false;
  pollfd pfd{watchFd, POLLIN, 0};
  return ::poll(&pfd, 1, 0) > 0;
}

}  // namespace

RawRing::RawRing(size_t maxPayloadBytes)
    : maxPayload_(maxPayloadBytes), directionBytes_(directionBytesFor(maxPayloadBytes)) {
  void* p = ::mmap(nullptr, 2 * directionBytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
  if (p == MAP_FAILED)
    throwErrno("mmap floor ring of " + std::to_string(2 * directionBytes_) + " bytes");
  base_ = static_cast<std::byte*>(p);
}

RawRing::~RawRing() { ::munmap(base_, 2 * directionBytes_); }

void RawRing::clear(size_t payloadBytes) noexcept {
  size_t used = kWaitLineBytes + slotsFor(directionBytes_, payloadBytes) * strideFor(payloadBytes);
  std::memset(direction(0), 0, used);
  std::memset(direction(1), 0, used);
}

RawEnd::RawEnd(const RawRing& ring, RawRole role, size_t payloadBytes, WaitMode waitMode,
               std::chrono::nanoseconds spinTime) noexcept
    : tx_(ring.direction(role == RawRole::kClient ? 0 : 1) + kWaitLineBytes),
      rx_(ring.direction(role == RawRole::kClient ? 1 : 0) + kWaitLineBytes),
      txWait_(ring.direction(role == RawRole::kClient ? 0 : 1)),
      rxWait_(ring.direction(role == RawRole::kClient ? 1 : 0)),
      waitMode_(waitMode),
      spinTime_(spinTime),
      payloadBytes_(std::min(payloadBytes, ring.maxPayloadBytes())),
      stride_(strideFor(payloadBytes_)),
      slots_(slotsFor(ring.directionBytes_, payloadBytes_)) {}

void RawEnd::publish(uint64_t seq, uint32_t bytes) noexcept {
  auto* h = reinterpret_cast<SlotHeader*>(slot(tx_, seq));
  h->bytes = bytes;
  // pairs with the acquire load of `seq` in the peer's receive(): the payload and length
  // written above are visible once the peer sees this sequence number.
  std::atomic_ref<uint64_t>(h->seq).store(seq, std::memory_order_release);
  if (waitMode_ == WaitMode::kBusyPoll) return;
  WaitLine* w = waitLine(txWait_);
  // pairs with the fence in the peer's sleepFor(): either this load sees its `sleeping`
  // flag, or its re-check of the slot word after that fence sees the store above.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (std::atomic_ref<uint32_t>(w->sleeping).load(std::memory_order_relaxed) == 0) return;
  // pairs with the load of `futex` in sleepFor(): a bump between that load and FUTEX_WAIT
  // makes the wait return at once.
  std::atomic_ref<uint32_t>(w->futex).fetch_add(1, std::memory_order_release);
  futex(&w->futex, FUTEX_WAKE, 1, nullptr);
}

void RawEnd::send(std::span<const std::byte> payload) noexcept {
  size_t n = std::min(payload.size(), payloadBytes_);
  ++sent_;
  std::memcpy(slot(tx_, sent_) + kSlotHeaderBytes, payload.data(), n);
  publish(sent_, static_cast<uint32_t>(n));
}

void RawEnd::sendStop() noexcept { publish(++sent_, kStopBytes); }

bool RawEnd::sleepFor(std::atomic_ref<uint64_t>& seq, uint64_t want, Deadline deadline,
                      int watchFd) noexcept {
  WaitLine* w = waitLine(rxWait_);
  std::atomic_ref<uint32_t> word(w->futex);
  std::atomic_ref<uint32_t> sleeping(w->sleeping);
  for (;;) {
    uint32_t seen = word.load(std::memory_order_acquire);  // pairs with publish()'s bump
    sleeping.store(1, std::memory_order_relaxed);
    // pairs with the fence in the peer's publish() (see there)
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (seq.load(std::memory_order_acquire) == want) {  // pairs with publish()'s release store
      sleeping.store(0, std::memory_order_relaxed);
      return true;
    }
    auto now = Clock::now();
    if (now >= deadline) {
      sleeping.store(0, std::memory_order_relaxed);
      return false;
    }
    auto slice = std::min<std::chrono::nanoseconds>(deadline - now, kSleepSlice);
    timespec ts{static_cast<time_t>(slice.count() / 1'000'000'000),
                static_cast<long>(slice.count() % 1'000'000'000)};
    futex(&w->futex, FUTEX_WAIT, seen, &ts);
    sleeping.store(0, std::memory_order_relaxed);
    if (seq.load(std::memory_order_acquire) == want) return true;
    if (peerStopped(watchFd)) return false;
  }
}

bool RawEnd::receive(RawMessage& out, Deadline deadline, int watchFd) noexcept {
  uint64_t want = received_ + 1;
  std::byte* s = slot(rx_, want);
  auto* h = reinterpret_cast<SlotHeader*>(s);
  std::atomic_ref<uint64_t> seq(h->seq);
  // pairs with the release store in the peer's publish()
  if (seq.load(std::memory_order_acquire) != want) {
    if (waitMode_ == WaitMode::kBusyPoll) {
      for (uint32_t spins = 1; seq.load(std::memory_order_acquire) != want; ++spins) {
        if ((spins & 1023) == 0 && Clock::now() >= deadline) return false;
        if ((spins & 0xffff) == 0 && peerStopped(watchFd)) return false;
        cpuRelax();
      }
    } else {
      bool arrived = false;
      if (waitMode_ == WaitMode::kSpinThenSleep) {
        auto spinUntil = Clock::now() + spinTime_;
        for (uint32_t spins = 1; !arrived; ++spins) {
          arrived = seq.load(std::memory_order_acquire) == want;
          if (!arrived && (spins & 63) == 0 && Clock::now() >= spinUntil) break;
          if (!arrived) cpuRelax();
        }
      }
      if (!arrived && !sleepFor(seq, want, deadline, watchFd)) return false;
    }
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
