// zcrpc-bench — the floor: the least work a shared-memory ping-pong can do. It copies the
// payload into memory the peer can see, publishes it with one release store of a sequence
// word, and the peer polls that word. No framing, no validation, no leases. Every zcrpc
// figure over shm is shown against it, measured in the same repetition on the same CPUs.
//
// Two rings of fixed-size slots in one anonymous shared mapping (made before fork), one per
// direction. A direction starts with a cache line holding a futex word and a "receiver
// sleeps" flag, used only in the sleeping wait modes: the receiver sets the flag before it
// sleeps, the sender wakes it only when it finds the flag set. No back-pressure: valid
// for ping-pong only, where every message is answered before the next one is sent.
#include <fmt/format.h>
#include <poll.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>

#include "os/os.h"
#include "system.h"

namespace zcrpc::bench {

namespace {

constexpr size_t kLine = 64;        // the wait line, before the slots
constexpr size_t kSlotHeader = 16;  // seq word, length, padding; payload 8-byte aligned
constexpr size_t kMaxSlots = 64;
constexpr uint32_t kStopBytes = UINT32_MAX;
constexpr auto kSleepSlice = std::chrono::milliseconds(100);  // deadline and peer checks between

struct WaitLine {
  std::atomic<uint32_t> futex;     // bumped by the sender before the wake
  std::atomic<uint32_t> sleeping;  // 1 while the receiver is in (or about to enter) the wait
};

constexpr size_t stride(size_t payload) { return (kSlotHeader + payload + 63) / 64 * 64; }

/// One process's end for one cell: private counters and the slot layout for the cell's
/// payload size. Both ends must use the same size and wait mode. Threads: one.
class End final {
 public:
  End(std::byte* tx, std::byte* rx, size_t directionBytes, size_t payload, WaitMode mode,
      std::chrono::nanoseconds spin)
      : tx_(tx),
        rx_(rx),
        mode_(mode),
        spin_(spin),
        payload_(payload),
        stride_(stride(payload)),
        slots_(std::clamp<size_t>((directionBytes - kLine) / stride_, 1, kMaxSlots)) {}

  void send(std::span<const std::byte> payload) noexcept {
    std::memcpy(slot(tx_, sent_ + 1) + kSlotHeader, payload.data(), payload.size());
    publish(static_cast<uint32_t>(payload.size()));
  }
  void sendStop() noexcept { publish(kStopBytes); }

  /// The next message in place (valid until the next receive; empty for the stop marker),
  /// or nullopt at `deadline` or when `watchFd` (if not -1) turns readable: the peer
  /// stopped. That is polled only after ~64 k idle spins or a sleep slice, so it costs a
  /// healthy ping-pong nothing.
  std::optional<std::span<const std::byte>> receive(Deadline deadline, int watchFd = -1) noexcept {
    const uint64_t want = received_ + 1;
    std::byte* s = slot(rx_, want);
    std::atomic_ref<uint64_t> seq(*reinterpret_cast<uint64_t*>(s));
    // Every load of `seq` pairs with the release store in the peer's publish().
    bool arrived = seq.load(std::memory_order_acquire) == want;
    const auto spinUntil = Clock::now() + spin_;  // kSpinThenSleep
    for (uint32_t spins = 1; !arrived; ++spins) {
      if (mode_ == WaitMode::kBusyPoll) {
        if ((spins & 1023) == 0 && Clock::now() >= deadline) return std::nullopt;
        if ((spins & 0xffff) == 0 && readable(watchFd)) return std::nullopt;
      } else if (mode_ == WaitMode::kBlocking || ((spins & 63) == 0 && Clock::now() >= spinUntil)) {
        if (!sleep(seq, want, deadline, watchFd)) return std::nullopt;
        break;
      }
      cpuRelax();
      arrived = seq.load(std::memory_order_acquire) == want;
    }
    received_ = want;
    uint32_t bytes = *reinterpret_cast<const uint32_t*>(s + 8);
    if (bytes == kStopBytes) return std::span<const std::byte>();
    return std::span<const std::byte>(s + kSlotHeader, std::min<size_t>(bytes, payload_));
  }

 private:
  std::byte* slot(std::byte* dir, uint64_t seq) const noexcept {
    return dir + kLine + (seq % slots_) * stride_;
  }
  static WaitLine& line(std::byte* dir) noexcept { return *reinterpret_cast<WaitLine*>(dir); }

  void publish(uint32_t bytes) noexcept {
    std::byte* s = slot(tx_, ++sent_);
    std::memcpy(s + 8, &bytes, sizeof bytes);
    // pairs with the acquire loads in the peer's receive(): payload and length are visible
    // once it sees this sequence number.
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(s))
        .store(sent_, std::memory_order_release);
    if (mode_ == WaitMode::kBusyPoll) return;
    WaitLine& w = line(tx_);
    // pairs with the fence in the peer's sleep(): either this load sees its flag, or its
    // re-check of the slot word after that fence sees the store above.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (w.sleeping.load(std::memory_order_relaxed) == 0) return;
    w.futex.fetch_add(1, std::memory_order_release);  // pairs with the load in sleep()
    os::futexWakeAll(w.futex);
  }

  /// Sleeps on the receive direction's futex until the slot's word reaches `want`.
  bool sleep(std::atomic_ref<uint64_t>& seq, uint64_t want, Deadline deadline,
             int watchFd) noexcept {
    WaitLine& w = line(rx_);
    for (;;) {
      uint32_t seen = w.futex.load(std::memory_order_acquire);  // pairs with publish()'s bump
      w.sleeping.store(1, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the one in publish()
      bool arrived = seq.load(std::memory_order_acquire) == want;
      auto now = Clock::now();
      if (!arrived && now < deadline)
        os::futexWait(w.futex, seen,
                      std::min<std::chrono::nanoseconds>(deadline - now, kSleepSlice));
      w.sleeping.store(0, std::memory_order_relaxed);
      if (arrived || seq.load(std::memory_order_acquire) == want) return true;
      if (Clock::now() >= deadline || readable(watchFd)) return false;
    }
  }

  std::byte* tx_;
  std::byte* rx_;
  WaitMode mode_;
  std::chrono::nanoseconds spin_;
  size_t payload_, stride_, slots_;
  uint64_t sent_ = 0, received_ = 0;
};

class Floor final : public System {
 public:
  Floor(const Settings& s, size_t maxPayload)
      : s_(s),
        directionBytes_((kLine + std::max<size_t>(4 << 20, 2 * stride(maxPayload)) + 4095) / 4096 *
                        4096) {
    void* p = ::mmap(nullptr, 2 * directionBytes_, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      throwErrno(fmt::format("mmap floor ring of {} bytes", 2 * directionBytes_));
    base_ = static_cast<std::byte*>(p);
  }
  ~Floor() override { ::munmap(base_, 2 * directionBytes_); }

  SeriesInfo info(Transport) const override {
    return {"floor", "floor ring (copy, publish one word)", Role::kReference};
  }
  bool covers(Transport t) const override { return t == Transport::kShm; }

  void serve(PeerCell& cell) override {
    // Zeroed (and faulted in) here, before the message that lets the client send orders it.
    std::memset(base_, 0, 2 * directionBytes_);
    End end = this->end(cell.spec, false);
    cell.started();
    for (;;) {  // echo until the stop marker, which is echoed too
      auto req = end.receive(cell.deadline, cell.controlFd());
      if (!req) throw BenchError("floor echo: the client went silent or gave up");
      if (req->empty()) return end.sendStop();
      end.send(*req);  // reads the request in place: the one copy an echo makes
    }
  }

  Figure measure(ClientCell& cell) override {
    End end = this->end(cell.spec, true);
    const Deadline deadline = cellDeadline(cell.budget.total());
    auto roundTrip = [&] {
      end.send(cell.payload);
      auto reply = end.receive(deadline, cell.watchFd);
      if (!reply || reply->size() != cell.payload.size())
        throw BenchError(reply ? fmt::format("floor: echo of {} bytes, sent {}", reply->size(),
                                             cell.payload.size())
                               : "floor: no echo (the peer stopped or the deadline passed)");
    };
    Figure f;
    f.latency = measureLatency(roundTrip, cell.budget, cell.samples);
    end.sendStop();
    if (auto stop = end.receive(deadline, cell.watchFd); !stop || !stop->empty())
      throw BenchError("floor: the echo side did not acknowledge the end of the cell");
    return f;
  }

 private:
  End end(const CellSpec& spec, bool client) const {
    std::byte* up = base_;  // client -> server
    std::byte* down = base_ + directionBytes_;
    return End(client ? up : down, client ? down : up, directionBytes_, spec.payloadBytes,
               spec.waitMode, s_.spinTime);
  }

  const Settings& s_;
  size_t directionBytes_;
  std::byte* base_ = nullptr;
};

}  // namespace

std::unique_ptr<System> makeFloor(const Settings& s, size_t maxPayloadBytes) {
  return std::make_unique<Floor>(s, maxPayloadBytes);
}

}  // namespace zcrpc::bench
