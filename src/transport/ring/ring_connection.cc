#include "transport/ring/ring_connection.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "os/os.h"
#include "transport/try_wait.h"

namespace zcrpc::ring {

namespace {

// A record always has room before the end of the ring for a full segment table, a trace
// context and an extension area of maxExtensionBytes() after its last inline segment
// (tailReserve_ = kTableReserve + that: contiguity), while free space is counted for only
// kTableAccounted entries at first and claimed (waiting if need be) as the table grows.
constexpr uint32_t kTableReserve = kMaxSegments * sizeof(SegmentEntry) + sizeof(TraceContext);
constexpr uint32_t kTableAccounted = 4 * sizeof(SegmentEntry) + sizeof(TraceContext);
constexpr uint32_t kRecordFixed = kRecordHeaderBytes + kFrameHeaderBytes;
constexpr uint64_t kMinArenaSegmentBytes = 64 * 1024;
// Records from this size on clear as much ring space ahead once published (zeroAhead):
// below it clearing costs less than the call.
constexpr uint32_t kZeroAheadFrom = 2048;
// An arena allocation starts again at the arena's beginning, when nothing of ours is left
// in the arena, once it got this far in: four allocations of its size or an eighth of the
// arena past its own size, whichever is less (see arenaAllocate). A ping-pong of large
// messages then cycles through memory the caches still hold, not the whole arena.
constexpr uint64_t kArenaRewindShare = 8;
constexpr uint64_t kArenaRewindAllocations = 4;
constexpr auto kSleepSlice = std::chrono::milliseconds(20);
constexpr auto kLivenessInterval = std::chrono::milliseconds(2);

// Loads from the peer's read-only mapping. std::atomic_ref needs a non-const object, so
// use the builtins, which accept const pointers.
inline uint64_t loadAcquire(const std::byte* p) noexcept {
  return __atomic_load_n(reinterpret_cast<const uint64_t*>(p), __ATOMIC_ACQUIRE);
}
inline uint64_t loadRelaxed(const std::byte* p) noexcept {
  return __atomic_load_n(reinterpret_cast<const uint64_t*>(p), __ATOMIC_RELAXED);
}
inline void storeRelease(std::byte* p, uint64_t v) noexcept {
  __atomic_store_n(reinterpret_cast<uint64_t*>(p), v, __ATOMIC_RELEASE);
}

// The record word's line has arrived; the rest of the record (segment table at its end,
// the payload Cap'n Proto reads later) would otherwise come over one cache miss after
// another as the code reaches it. Asking for the lines now overlaps the transfers. Only
// addresses inside the validated record are named (and a prefetch never faults).
inline void prefetchRecord(const std::byte* record, uint32_t len) noexcept {
  constexpr uint32_t kMaxLines = 8;  // beyond this the hardware's stream prefetch takes over
  const std::byte* end = record + len;
  const std::byte* line = reinterpret_cast<const std::byte*>(
      reinterpret_cast<uintptr_t>(record) & ~uintptr_t{kCacheLine - 1});
  for (uint32_t i = 1; i <= kMaxLines && line + i * kCacheLine < end; ++i)
    __builtin_prefetch(line + i * kCacheLine);
  __builtin_prefetch(end - sizeof(SegmentEntry));  // the segment table ends the record
}

}  // namespace

void initFile(std::byte* base, uint64_t ringBytes, uint64_t arenaBytes, uint64_t maxMessageBytes,
              uint64_t fileBytes, WaitMode waitMode) {
  auto* f = new (base) FileControl();
  f->header = FileHeader{kMagic,      kLayoutVersion,  sizeof(FileHeader), ringBytes,
                         arenaBytes, maxMessageBytes, fileBytes,          {0, 0}};
  // Written before the file is shared (the handshake orders it): relaxed is enough.
  uint32_t maySleep = waitMode != WaitMode::kBusyPoll;
  f->producer.maySleep.store(maySleep, std::memory_order_relaxed);
  f->consumer.maySleep.store(maySleep, std::memory_order_relaxed);
}

void checkOptions(const ConnectionOptions& o) {
  checkConnectionOptions(o, "ring");
  if (o.arenaBytes % 4096 != 0 || o.arenaBytes > kMaxArenaBytes)
    throw InvalidArgument("arena size " + std::to_string(o.arenaBytes) +
                          " must be a multiple of 4096 and at most 8 GiB");
  if (o.maxMessageBytes + kRecordFixed + kTableReserve > o.ringBytes / 2 &&
      o.arenaBytes < o.maxMessageBytes)
    throw InvalidArgument("arena of " + std::to_string(o.arenaBytes) +
                          " bytes cannot hold a message of the maximum size " +
                          std::to_string(o.maxMessageBytes));
}

std::string checkFileHeader(const FileHeader& h, uint64_t fileBytes) {
  if (h.magic != kMagic) return "bad magic in shared memory header";
  if (h.version != kLayoutVersion)
    return "shared memory layout version " + std::to_string(h.version) + ", expected " +
           std::to_string(kLayoutVersion);
  if (h.headerBytes != sizeof(FileHeader)) return "bad header size in shared memory header";
  if (!validRingBytes(h.ringBytes))
    return "bad ring size " + std::to_string(h.ringBytes) + " in shared memory header";
  if (h.arenaBytes % 4096 || h.arenaBytes > kMaxArenaBytes)
    return "bad arena size " + std::to_string(h.arenaBytes) + " in shared memory header";
  if (!validMaxMessageBytes(h.maxMessageBytes))
    return "bad maximum message size in shared memory header";
  if (h.fileBytes != fileBytes || fileBytesFor(h.ringBytes, h.arenaBytes) != fileBytes)
    return "shared memory size does not match its header";
  return {};
}

RingConnection::RingConnection(RingFiles files, std::unique_ptr<Link> link,
                               const ConnectionOptions& options)
    : files_(files),
      link_(std::move(link)),
      options_(options),
      ringMask_(files.ringBytes - 1),
      arenaBytes_(files.arenaBytes),
      maxMessage_(files.maxMessageBytes),
      fastFirstMaxBytes_(std::min<uint64_t>(
          files.maxMessageBytes, files.ringBytes / kRecordShare - kRecordFixed - kTableAccounted)),
      // An extension area of up to 1/256 of the ring (64 bytes .. kMaxExtensionBytes).
      extensionRoom_(static_cast<uint32_t>(std::clamp<uint64_t>(
          files.ringBytes / 256, 64, kMaxExtensionBytes))),
      tailReserve_(kTableReserve + extensionRoom_),
      txRing_(reinterpret_cast<std::byte*>(files.local) + kDataOffset),
      txArena_(txRing_ + files.ringBytes),
      rxRing_(reinterpret_cast<const std::byte*>(files.peer) + kDataOffset),
      rxArena_(rxRing_ + files.ringBytes),
      receiveWaiter_(options.waitMode, options.spinTime, options.spinPolicy, PollCost::kMemory),
      spaceWaiter_(options.waitMode, options.spinTime, options.spinPolicy, PollCost::kMemory),
      leases_(options.maxLeases) {
  // Read once: a peer that changes these later only costs itself wake-ups.
  peerConsumerMaySleep_ = files_.peer->consumer.maySleep.load(std::memory_order_relaxed) != 0;
  peerProducerMaySleep_ = files_.peer->producer.maySleep.load(std::memory_order_relaxed) != 0;
  frameLimits_.maxMessageBytes = maxMessage_;
  frameLimits_.arena = std::span<const std::byte>(rxArena_, arenaBytes_);
}

RingConnection::~RingConnection() {
  if (open_.msg) open_.msg->markSent();  // never touch a message that outlives us
  close();
}

// ------------------------------------------------------------------------------------
// Liveness and errors

bool RingConnection::peerClosed() const noexcept {
  // pairs with the release store of `closed` in the peer's close()
  return files_.peer->producer.closed.load(std::memory_order_acquire) != 0;
}

bool RingConnection::checkPeerAlive() noexcept {
  if (closed_.load(std::memory_order_relaxed) || peerDead_.load(std::memory_order_relaxed))
    return false;
  if (peerClosed()) {
    markPeerDead("peer closed the connection");
    return false;
  }
  auto now = Clock::now().time_since_epoch().count();
  if (now < nextLivenessCheck_.load(std::memory_order_relaxed)) return true;
  nextLivenessCheck_.store(now + Clock::duration(kLivenessInterval).count(),
                           std::memory_order_relaxed);
  if (link_->peerGone()) {
    markPeerDead("peer hung up (process exited or closed the socket)");
    return false;
  }
  return true;
}

void RingConnection::markPeerDead(std::string reason) noexcept {
  {
    std::lock_guard lock(errorMutex_);
    if (error_.empty()) error_ = std::move(reason);
  }
  // The receiving side still drains what the peer published before it went.
  peerDead_.store(true, std::memory_order_release);
}

void RingConnection::fault(std::string reason) noexcept {
  {
    std::lock_guard lock(errorMutex_);
    if (error_.empty()) error_ = std::move(reason);
  }
  close();
}

void RingConnection::close() noexcept {
  if (closed_.exchange(true)) return;
  publishHeld();  // what was sent before close() is the peer's to read
  // pairs with the acquire load in the peer's peerClosed()
  files_.local->producer.closed.store(1, std::memory_order_release);
  // Wake a peer sleeping on either futex so it notices at once.
  files_.local->producer.dataSeq.fetch_add(1, std::memory_order_release);
  os::futexWakeAll(files_.local->producer.dataSeq);
  files_.local->consumer.spaceSeq.fetch_add(1, std::memory_order_release);
  os::futexWakeAll(files_.local->consumer.spaceSeq);
  link_->shutdown();
}

bool RingConnection::armWait() noexcept {
  if (closed_.load(std::memory_order_relaxed)) return false;
  // pairs with the seq_cst fence in the peer's wakeConsumer(), as in waitFor()
  files_.local->consumer.sleeping.store(kSleepSocket, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (dataReady() || peerClosed()) {
    disarmWait();
    return false;
  }
  return true;
}

void RingConnection::disarmWait() noexcept {
  files_.local->consumer.sleeping.store(kAwake, std::memory_order_relaxed);
  link_->drainWakeups();
}

Status RingConnection::checkPeer() noexcept {
  nextLivenessCheck_.store(0, std::memory_order_relaxed);
  if (checkPeerAlive()) return Status::kOk;
  // As over tcp and rdma, a peer that went is reported once what it published before
  // going is read: a caller that stops receiving on kDisconnected (the server's worker)
  // would lose it. tryReceive() says kDisconnected when the ring is drained.
  // pairs with the release store of `closed` in the peer's close() (peerClosed()), which
  // follows its last publish
  return !closed_.load(std::memory_order_relaxed) && dataReady() ? Status::kOk
                                                                 : Status::kDisconnected;
}

std::string RingConnection::lastError() const {
  std::lock_guard lock(errorMutex_);
  return error_;
}

// ------------------------------------------------------------------------------------
// Waiting

template <typename Done>
Status RingConnection::waitFor(Done done, Deadline deadline, bool forData) {
  // `done` may consume a message: the waiter calls it until it returns true, never after.
  auto alive = [this](bool now) {
    if (now) nextLivenessCheck_.store(0, std::memory_order_relaxed);  // after a sleep: the socket too
    return checkPeerAlive();
  };
  if (forData)
    return receiveWaiter_.wait(
        done, alive, [&](Clock::duration left) { return sleepForData(done, left); }, deadline);
  return spaceWaiter_.wait(
      done, alive, [&](Clock::duration left) { return sleepForSpace(done, left); }, deadline);
}

template <typename Done>
bool RingConnection::sleepForData(Done& done, Clock::duration left) {
  const auto slice = std::min<Clock::duration>(kSleepSlice, left);
  bool ready;
  if (leases_.full()) {
    // Nothing to wait for from the peer: every lease is held here. Sleep until one of
    // them is released (by any thread).
    uint32_t seq = leaseSeq_.load(std::memory_order_acquire);
    // pairs with the unlock in LeaseQueue::reclaim(): either it frees a slot we see
    // here, or it reports us as a waiter and afterReleased() bumps leaseSeq_.
    if (leases_.announceWaiter()) os::futexWait(leaseSeq_, seq, slice);
    leases_.withdrawWaiter();
    ready = done();
  } else {
    ConsumerControl& me = files_.local->consumer;
    const bool onLink = options_.waitMode == WaitMode::kBlocking;
    const auto& seqWord = files_.peer->producer.dataSeq;
    uint32_t seq = seqWord.load(std::memory_order_acquire);
    // pairs with the seq_cst fence in the peer's wakeConsumer(): either it sees us
    // asleep, or our re-check below sees its record.
    me.sleeping.store(onLink ? kSleepSocket : kSleepFutex, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    ready = done();
    if (!ready && !peerClosed()) {
      if (onLink)  // a hang-up wakes this sleep, so it can be long
        link_->sleepOnLink(std::chrono::duration_cast<std::chrono::milliseconds>(
            std::min<Clock::duration>(std::chrono::milliseconds(500), left) +
            std::chrono::milliseconds(1)));
      else
        os::futexWait(seqWord, seq, slice);
    }
    me.sleeping.store(kAwake, std::memory_order_relaxed);
  }
  return ready;
}

template <typename Done>
bool RingConnection::sleepForSpace(Done& done, Clock::duration left) {
  const auto slice = std::min<Clock::duration>(kSleepSlice, left);
  ProducerControl& me = files_.local->producer;
  const auto& seqWord = files_.peer->consumer.spaceSeq;
  uint32_t seq = seqWord.load(std::memory_order_acquire);
  // pairs with the seq_cst fence in the peer's wakeProducer()
  me.waitingForSpace.store(1, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const bool ready = done();
  if (!ready && !peerClosed()) os::futexWait(seqWord, seq, slice);
  me.waitingForSpace.store(0, std::memory_order_relaxed);
  return ready;
}

// ------------------------------------------------------------------------------------
// Producer

bool RingConnection::ringRoom(uint64_t end) {
  if (end - cachedHead_ <= files_.ringBytes) return true;
  // pairs with the release store of `head` in the peer's reclaim()
  uint64_t head = files_.peer->consumer.head.load(std::memory_order_acquire);
  if (head < cachedHead_ || head > tail_) {
    fault("peer published an invalid ring head " + std::to_string(head) + " (expected " +
          std::to_string(cachedHead_) + ".." + std::to_string(tail_) + ")");
    return false;
  }
  cachedHead_ = head;
  return end - cachedHead_ <= files_.ringBytes;
}

bool RingConnection::refreshArenaHead() {
  // pairs with the release store of `arenaHead` in the peer's reclaim()
  uint64_t head = files_.peer->consumer.arenaHead.load(std::memory_order_acquire);
  if (head > arenaPublished_ || (head < cachedArenaHead_ && head != arenaRewoundFrom_)) {
    fault("peer published an invalid arena head " + std::to_string(head));
    return false;
  }
  // After a rewind the peer still shows the old end until it releases a later message.
  if (head > cachedArenaHead_) cachedArenaHead_ = head;
  return true;
}

bool RingConnection::arenaRoom(uint64_t end) {
  if (end - cachedArenaHead_ <= arenaBytes_) return true;
  return refreshArenaHead() && end - cachedArenaHead_ <= arenaBytes_;
}

std::byte* RingConnection::arenaAllocate(uint64_t bytes, bool mayWait) {
  if (bytes == 0 || bytes > arenaBytes_) return nullptr;
  const uint64_t offset0 = arenaTail_ % arenaBytes_;
  const uint64_t rewindFrom =
      bytes + std::min(arenaBytes_ / kArenaRewindShare, kArenaRewindAllocations * bytes);
  if (offset0 >= rewindFrom && arenaTail_ == arenaPublished_ &&
      (cachedArenaHead_ == arenaPublished_ || refreshArenaHead()) &&
      cachedArenaHead_ == arenaPublished_) {
    // Nothing of ours is in the arena: the peer released all we published and this
    // message has nothing there yet. Rewind to the arena's beginning, where recent
    // messages left their lines in cache, instead of walking on through the whole arena
    // (cold memory for every large message of a ping-pong). The space skipped holds
    // nothing, so it counts as released at once: the whole arena stays usable. The peer
    // accepts arena ends up to two arenas past the last one, which covers the skip.
    arenaRewoundFrom_ = arenaTail_;
    arenaTail_ += arenaBytes_ - offset0;
    cachedArenaHead_ = arenaTail_;
  }
  uint64_t start = arenaTail_;
  uint64_t offset = start % arenaBytes_;
  if (arenaBytes_ - offset < bytes) start += arenaBytes_ - offset;  // keep it contiguous
  uint64_t end = start + bytes;
  if (!arenaRoom(end)) {
    if (!mayWait) return nullptr;
    const auto waitStart = Clock::now();
    Status s = waitForSpace([&] { return arenaRoom(end); }, buildWaitDeadline());
    if (s == Status::kDisconnected) throw Disconnected("connection lost: " + lastError());
    if (s != Status::kOk) throw roomWaitFailed("arena", waitStart);
  }
  arenaTail_ = end;
  std::byte* p = txArena_ + start % arenaBytes_;
  // Fresh memfd pages are zero: only memory used before needs clearing.
  if (start < arenaCleanFrom_ || end > arenaBytes_) std::memset(p, 0, bytes);
  if (end <= arenaBytes_) arenaCleanFrom_ = std::max(arenaCleanFrom_, end);
  else arenaCleanFrom_ = UINT64_MAX;
  return p;
}

template <typename Ready>
Status RingConnection::waitForSpace(Ready ready, Deadline deadline) {
  // Only the consumer frees space: make sure it has been told about everything sent
  // unflushed before we wait for it.
  wakeConsumer();
  OutgoingMessage::RoomWaitHook* hook = open_.msg ? open_.msg->roomWaitHook() : nullptr;
  if (!hook) return waitFor(ready, deadline, /*forData=*/false);
  // The message's owner may free what the peer waits on before it releases our memory
  // (see RoomWaitHook): let it, between slices of the wait.
  auto slice = std::chrono::microseconds(20);
  for (;;) {
    hook->whileWaitingForRoom();
    const Deadline until = std::min(deadline, Clock::now() + slice);
    Status s = waitFor(ready, until, /*forData=*/false);
    if (s != Status::kTimedOut || until == deadline) return s;
    slice = std::min<std::chrono::microseconds>(slice * 2, std::chrono::milliseconds(1));
  }
}

bool RingConnection::extendRecord(uint32_t newReserved, bool mayWait) {
  if (newReserved <= open_.reserved) return true;
  uint64_t offset = open_.start & ringMask_;
  if (offset + newReserved > files_.ringBytes) return false;
  uint64_t end = open_.start + newReserved;
  if (!ringRoom(end)) {
    if (!mayWait) return false;
    const auto waitStart = Clock::now();
    Status s = waitForSpace([&] { return ringRoom(end); }, buildWaitDeadline());
    if (s == Status::kDisconnected) throw Disconnected("connection lost: " + lastError());
    if (s != Status::kOk) throw roomWaitFailed("ring", waitStart);
  }
  open_.reserved = newReserved;
  return true;
}

Status RingConnection::tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) {
  // Fast path: no message open, connection up, a small first segment that goes in the ring
  // without a wrap marker, and room known from the cached head. Anything else (errors,
  // wrapping, refreshing the head, the arena) takes the general path, which decides alone.
  const uint64_t firstBytes = uint64_t{firstSegmentWords} * 8;
  const uint64_t pos = tail_;
  const uint64_t offset = pos & ringMask_;
  const uint32_t inlineBytes = kRecordFixed + static_cast<uint32_t>(firstBytes);
  if (open_.msg || firstBytes - 1 >= fastFirstMaxBytes_ ||  // also catches 0 words
      closed_.load(std::memory_order_relaxed) || peerDead_.load(std::memory_order_relaxed) ||
      files_.ringBytes - offset < std::max(inlineBytes + tailReserve_, gatherRoom_) ||
      pos + inlineBytes + kTableAccounted - cachedHead_ > files_.ringBytes)
    return tryStartMessageSlow(msg, firstSegmentWords);
  std::byte* record = txRing_ + offset;
  // Frame header and first segment are contiguous: clear both at once (Cap'n Proto builds
  // only on zeroed memory; this space held an earlier lap's message), unless zeroAhead()
  // did already.
  clearRing(pos + kRecordHeaderBytes, pos + inlineBytes);
  auto* header = reinterpret_cast<FrameHeader*>(record + kRecordHeaderBytes);
  header->kind = static_cast<uint8_t>(FrameKind::kData);
  auto* first = reinterpret_cast<capnp::word*>(record + kRecordFixed);
  open_.msg = &msg;
  open_.start = pos;
  open_.reserved = inlineBytes + kTableAccounted;
  open_.ringEnd = inlineBytes;
  open_.arenaTailAtStart = arenaTail_;
  open_.allocatedBytes = firstBytes;
  open_.count = 1;
  open_.allocations[0] = {first, firstSegmentWords, 0};
  msg.open(*this, *header, kj::ArrayPtr<capnp::word>(first, firstSegmentWords));
  return Status::kOk;
}

Status RingConnection::tryStartMessageSlow(OutgoingMessage& msg, uint32_t firstSegmentWords) {
  if (open_.msg)
    throw InvalidArgument("a message is already open on " + endpoint() +
                          ": send or destroy it before starting another");
  if (closed_.load(std::memory_order_relaxed) || peerDead_.load(std::memory_order_relaxed))
    return Status::kDisconnected;
  if (firstSegmentWords == 0) firstSegmentWords = 1;
  uint64_t firstBytes = uint64_t{firstSegmentWords} * 8;
  if (firstBytes > maxMessage_)
    throw InvalidArgument("message of " + std::to_string(firstBytes) +
                          " bytes exceeds the maximum message size " +
                          std::to_string(maxMessage_) + " of " + endpoint());
  const uint32_t fixed = kRecordFixed;
  bool firstInRing = fixed + firstBytes + kTableAccounted <= recordLimit(firstBytes);
  if (!firstInRing && firstBytes > arenaBytes_)
    throw InvalidArgument("first segment of " + std::to_string(firstBytes) +
                          " bytes fits neither the ring nor the arena of " + endpoint());
  uint32_t inlineBytes = fixed + (firstInRing ? static_cast<uint32_t>(firstBytes) : 0);
  uint32_t need = inlineBytes + kTableAccounted;

  uint64_t pos = tail_;
  uint64_t toEnd = files_.ringBytes - (pos & ringMask_);
  bool wrap = toEnd < std::max(inlineBytes + tailReserve_, gatherRoom_);
  if (!ringRoom((wrap ? pos + toEnd : pos) + need))
    return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kWouldBlock;
  uint64_t arenaMark = arenaTail_;
  std::byte* arenaFirst = nullptr;
  if (!firstInRing) {
    arenaFirst = arenaAllocate(firstBytes, /*mayWait=*/false);
    if (!arenaFirst)
      return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected
                                                     : Status::kWouldBlock;
  }
  if (wrap) {
    // Pad to the end with a wrap marker; the consumer skips it. Published now: harmless
    // even if this message is later abandoned.
    // pairs with the acquire load of the record word in tryReceive()
    storeRelease(txRing_ + (pos & ringMask_),
                 (uint64_t{recordTag(pos)} << 32) | toEnd | kWrapBit);
    pos += toEnd;
    tail_ = pos;
  }
  std::byte* record = txRing_ + (pos & ringMask_);
  auto* header = reinterpret_cast<FrameHeader*>(record + kRecordHeaderBytes);
  clearRing(pos + kRecordHeaderBytes, pos + fixed + (firstInRing ? firstBytes : 0));
  header->kind = static_cast<uint8_t>(FrameKind::kData);
  capnp::word* first;
  if (firstInRing) {
    first = reinterpret_cast<capnp::word*>(record + fixed);
  } else {
    first = reinterpret_cast<capnp::word*>(arenaFirst);
  }
  open_.msg = &msg;
  open_.start = pos;
  open_.reserved = need;
  open_.ringEnd = fixed + (firstInRing ? static_cast<uint32_t>(firstBytes) : 0);
  open_.arenaTailAtStart = arenaMark;
  open_.allocatedBytes = firstBytes;
  open_.count = 1;
  open_.allocations[0] = {first, firstSegmentWords, 0};
  msg.open(*this, *header, kj::ArrayPtr<capnp::word>(first, firstSegmentWords));
  return Status::kOk;
}

Status RingConnection::startMessage(OutgoingMessage& msg, uint32_t firstSegmentWords,
                                    Deadline deadline) {
  const Status result =
      tryThenWait([&] { return tryStartMessage(msg, firstSegmentWords); },
                  [&](auto ready, Deadline d) { return waitForSpace(ready, d); }, deadline);
  if (result == Status::kOk) msg.setBuildDeadline(deadline);
  return result;
}

Overloaded RingConnection::roomWaitFailed(const char* what, Clock::time_point waitStart) const {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - waitStart);
  return Overloaded(std::string(what) + " of " + endpoint() + " stayed full for " +
                    std::to_string(ms.count()) +
                    " ms, as long as this message may wait (its deadline, its build wait, at most "
                    "connectTimeout): the peer is not releasing received messages");
}

Deadline RingConnection::buildWaitDeadline() const {
  const auto now = Clock::now();
  Deadline d = now + options_.connectTimeout;
  if (open_.msg) {
    d = std::min(d, open_.msg->buildDeadline());
    if (open_.msg->buildWait() < std::chrono::nanoseconds(options_.connectTimeout))
      d = std::min(d, now + open_.msg->buildWait());
  }
  return d;
}

kj::ArrayPtr<capnp::word> RingConnection::allocateMore(uint32_t minWords) {
  if (open_.count == kMaxSegments)
    throw InvalidArgument("message on " + endpoint() + " needs more than " +
                          std::to_string(kMaxSegments) + " segments");
  uint64_t remaining = maxMessage_ - open_.allocatedBytes;
  uint64_t minBytes = uint64_t{minWords} * 8;
  if (minBytes > remaining)
    throw InvalidArgument("message exceeds the maximum message size " +
                          std::to_string(maxMessage_) + " bytes of " + endpoint());
  uint64_t want = std::min(std::max(minBytes, open_.allocatedBytes), remaining);
  const uint32_t tableAfter = tailReserve_;
  capnp::word* seg = nullptr;
  uint32_t location = 0;
  // In the ring when it stays a small record and fits contiguously; else in the arena.
  uint64_t ringWant = want;
  uint64_t limit = std::min<uint64_t>(recordLimit(minBytes),
                                      files_.ringBytes - (open_.start & ringMask_));
  uint32_t tableNow = (open_.count + 1) * sizeof(SegmentEntry);
  if (open_.ringEnd + minBytes + tableAfter <= limit) {
    ringWant = std::min<uint64_t>(want, limit - open_.ringEnd - tableAfter);
    if (extendRecord(static_cast<uint32_t>(open_.ringEnd + ringWant + tableNow), false)) {
      std::byte* p = txRing_ + (open_.start & ringMask_) + open_.ringEnd;
      clearRing(open_.start + open_.ringEnd, open_.start + open_.ringEnd + ringWant);
      seg = reinterpret_cast<capnp::word*>(p);
      location = (open_.ringEnd - kRecordHeaderBytes) / 8;
      open_.ringEnd += static_cast<uint32_t>(ringWant);
      want = ringWant;
    }
  }
  if (!seg) {
    extendRecord(open_.ringEnd + tableNow, /*mayWait=*/true);
    want = std::max(want, std::min(kMinArenaSegmentBytes, remaining));
    std::byte* p = arenaAllocate(want, /*mayWait=*/true);
    if (!p && want > minBytes) p = arenaAllocate(want = minBytes, true);
    if (!p) throw Overloaded("arena of " + endpoint() + " cannot hold a segment of " +
                             std::to_string(want) + " bytes");
    seg = reinterpret_cast<capnp::word*>(p);
    location = kArenaBit | static_cast<uint32_t>((p - txArena_) / 8);
  }
  open_.allocatedBytes += want;
  open_.allocations[open_.count++] = {seg, static_cast<uint32_t>(want / 8), location};
  return kj::ArrayPtr<capnp::word>(seg, want / 8);
}

void RingConnection::abandon() noexcept {
  // Nothing was published for this record: forget the reservation and arena chunks (but
  // not a rewind: the arena goes on from where it rewound to). The message may have
  // written anywhere in its reservation: nothing there is known zero.
  arenaTail_ = std::max(open_.arenaTailAtStart, cachedArenaHead_);
  ringZeroedTo_ = 0;
  open_.msg = nullptr;
}

template <bool kHold>
[[gnu::always_inline]] inline Status RingConnection::publish(OutgoingMessage& msg, bool flush) {
  if (open_.msg != &msg)
    throw InvalidArgument("send: message was not started on " + endpoint() + " or already sent");
  if (closed_.load(std::memory_order_relaxed)) {
    msg.markSent();
    abandon();
    return Status::kDisconnected;
  }
  auto segments = msg.segmentsForSend();
  size_t n = segments.size();
  if (n > kMaxSegments)
    throw InvalidArgument("message on " + endpoint() + " has more than " +
                          std::to_string(kMaxSegments) + " segments");
  const auto extension = msg.extensions();
  if (extension.size() && !extensionAreaFits(extension, extensionRoom_)) [[unlikely]]
    refuseExtensionArea(extension, extensionRoom_, endpoint());
  const uint32_t extensionBytes = static_cast<uint32_t>(extension.size() * sizeof(capnp::word));
  // Data given to referenceData(), whose field is still its placeholder: by segment.
  auto refs = msg.references();
  std::array<int, OutgoingMessage::kMaxReferences> refSegment;
  uint32_t segmentsWithRefs = 0;  // bit i: segment i holds a field to gather
  uint64_t gathered = 0;
  for (size_t r = 0; r < refs.size(); ++r) {
    refSegment[r] = OutgoingMessage::gatherSegment(refs[r], segments);
    if (refSegment[r] >= 0) segmentsWithRefs |= 1u << refSegment[r];
  }
  std::byte* record = txRing_ + (open_.start & ringMask_);
  const std::byte* frame = record + kRecordHeaderBytes;
  std::array<SegmentEntry, kMaxSegments> table;
  uint32_t inlineEnd = kRecordHeaderBytes + kFrameHeaderBytes;
  uint64_t total = 0;
  size_t i = 0;
  if (n == 1 && !segmentsWithRefs &&
      reinterpret_cast<const std::byte*>(segments[0].begin()) == record + kRecordFixed) {
    // The common small message: one segment, the first one, inline right after the header.
    uint32_t words = static_cast<uint32_t>(segments[0].size());
    total = uint64_t{words} * 8;
    table[0] = {words, kFrameHeaderBytes / 8};
    inlineEnd = kRecordFixed + words * 8;
    i = 1;
  }
  for (; i < n; ++i) {
    const capnp::word* begin = segments[i].begin();
    uint32_t words = static_cast<uint32_t>(segments[i].size());
    total += uint64_t{words} * 8;
    auto* b = reinterpret_cast<const std::byte*>(begin);
    if (b >= record && b < record + open_.reserved) {
      uint32_t end = static_cast<uint32_t>(b - record) + words * 8;
      if (segmentsWithRefs >> i & 1) {
        const uint32_t added = gatherAfter(msg, segments, i, refSegment, end);
        words += added / 8;
        total += added;
        gathered += added;
        end += added;
      }
      table[i] = {words, static_cast<uint32_t>((b - frame) / 8)};
      inlineEnd = std::max<uint32_t>(inlineEnd, end);
    } else if (b >= txArena_ && b < txArena_ + arenaBytes_) {
      table[i] = {words, kArenaBit | static_cast<uint32_t>((b - txArena_) / 8)};
    } else if (words == 0) {
      table[i] = {0, 0};  // an empty segment carries nothing (see parseFrame)
    } else {
      // External data (Orphanage::referenceExternalData): the one copy into transport
      // memory that a user buffer needs. Into the record, after everything in it, when the
      // record stays small, the ring has room now (as allocateMore() places segments) and
      // no later segment lies in the record (in-record segments ascend: see parseFrame;
      // Cap'n Proto allocates landing pads for far pointers after external segments);
      // else into the arena.
      if (total > maxMessage_)
        throw InvalidArgument("message exceeds the maximum message size " +
                              std::to_string(maxMessage_) + " bytes of " + endpoint());
      const uint64_t bytes = uint64_t{words} * 8;
      const uint64_t tail = n * sizeof(SegmentEntry) + sizeof(TraceContext) + extensionBytes;
      const uint64_t limit = std::min<uint64_t>(recordLimit(bytes),
                                                files_.ringBytes - (open_.start & ringMask_));
      auto inRecord = [&](size_t j) {
        auto* bj = reinterpret_cast<const std::byte*>(segments[j].begin());
        return bj >= record && bj < record + open_.reserved;
      };
      bool laterInRecord = false;
      for (size_t j = i + 1; j < n && !laterInRecord; ++j) laterInRecord = inRecord(j);
      if (!laterInRecord && open_.ringEnd + bytes + tail <= limit &&
          extendRecord(static_cast<uint32_t>(open_.ringEnd + bytes + tail), false)) {
        std::byte* p = record + open_.ringEnd;
        std::memcpy(p, begin, bytes);
        table[i] = {words, static_cast<uint32_t>((p - frame) / 8)};
        open_.ringEnd += static_cast<uint32_t>(bytes);
        inlineEnd = std::max<uint32_t>(inlineEnd, open_.ringEnd);
        continue;
      }
      std::byte* p = arenaAllocate(bytes, /*mayWait=*/true);
      if (!p) throw Overloaded("arena of " + endpoint() + " cannot hold external data");
      std::memcpy(p, begin, bytes);
      table[i] = {words, kArenaBit | static_cast<uint32_t>((p - txArena_) / 8)};
    }
  }
  // Referenced data that could not follow its field's segment in the record: a segment of
  // its own in the arena, a landing pad and the data, reached by a far pointer.
  for (size_t r = 0; r < refs.size(); ++r) {
    if (refSegment[r] < 0) continue;
    if (n == kMaxSegments)
      throw InvalidArgument("message on " + endpoint() + " needs more than " +
                            std::to_string(kMaxSegments) + " segments");
    const uint64_t bytes = 8 + ((refs[r].bytes.size() + 7) & ~uint64_t{7});
    total += bytes;
    if (total > maxMessage_)
      throw InvalidArgument("message exceeds the maximum message size " +
                            std::to_string(maxMessage_) + " bytes of " + endpoint());
    std::byte* p = arenaAllocate(bytes, /*mayWait=*/true);
    if (!p) throw Overloaded("arena of " + endpoint() + " cannot hold referenced data");
    const OutgoingMessage::Reference& ref = refs[r];
    // The landing pad: a list of bytes right after it.
    const uint64_t pad = 1 | (uint64_t{ref.bytes.size()} << 3 | 2) << 32;
    std::memcpy(p, &pad, sizeof pad);
    std::memcpy(p + 8, ref.bytes.begin(), ref.bytes.size());
    std::memset(p + 8 + ref.bytes.size(), 0, bytes - 8 - ref.bytes.size());
    const uint64_t far = 2 | uint64_t{n} << 32;  // to the landing pad: word 0 of segment n
    std::memcpy(static_cast<void*>(ref.pointer), &far, sizeof far);
    table[n++] = {static_cast<uint32_t>(bytes / 8),
                  kArenaBit | static_cast<uint32_t>((p - txArena_) / 8)};
    gathered += bytes;
  }
  if (total > maxMessage_)
    throw InvalidArgument("message exceeds the maximum message size " +
                          std::to_string(maxMessage_) + " bytes of " + endpoint());
  const bool traced = msg.trace().valid();
  const uint32_t tableBytes = static_cast<uint32_t>(n * sizeof(SegmentEntry));
  const uint32_t traceEnd = inlineEnd + tableBytes + (traced ? sizeof(TraceContext) : 0);
  uint32_t recordBytes = traceEnd + extensionBytes;
  extendRecord(recordBytes, /*mayWait=*/true);
  if (n == 1)
    std::memcpy(record + inlineEnd, table.data(), sizeof(SegmentEntry));  // a plain store
  else
    std::memcpy(record + inlineEnd, table.data(), tableBytes);
  if (traced) std::memcpy(record + inlineEnd + tableBytes, &msg.trace(), sizeof(TraceContext));
  if (extensionBytes) [[unlikely]]
    std::memcpy(record + traceEnd, extension.begin(), extensionBytes);
  auto& h = msg.header();
  h.frameBytes = recordBytes - kRecordHeaderBytes;
  h.segmentCount = static_cast<uint16_t>(n);
  h.tableOffset = inlineEnd - kRecordHeaderBytes;
  h.flags = (traced ? kFlagTraced : 0) | (extensionBytes ? kFlagExtended : 0);
  h.reserved = 0;
  std::memcpy(record + 8, &arenaTail_, sizeof arenaTail_);
  // Publish: everything above becomes visible with the record word. The first record of
  // a burst (sendMore: the user sends more right away) keeps its word until the burst is
  // flushed, so a consumer that keeps up waits on one line instead of taking each
  // record's line while we still write it (the burst then crosses in whole lines).
  if (!kHold || heldRecord_.load(std::memory_order_relaxed) != kNoHeld) [[likely]]
    // pairs with the acquire load of the record word in tryReceive()
    storeRelease(record, (uint64_t{recordTag(open_.start)} << 32) | recordBytes);
  else
    heldRecord_.store(open_.start, std::memory_order_release);  // see publishHeld()
  tail_ = open_.start + recordBytes;
  arenaPublished_ = arenaTail_;
  open_.msg = nullptr;
  msg.setGatheredBytes(gathered);
  msg.markSent();
  wakePending_ = true;
  if (flush) wakeConsumer();
  if (recordBytes >= kZeroAheadFrom) zeroAhead(recordBytes);
  return Status::kOk;
}

Status RingConnection::send(OutgoingMessage& msg, bool flush) { return publish<false>(msg, flush); }

Status RingConnection::sendMore(OutgoingMessage& msg) { return publish<true>(msg, false); }

uint32_t RingConnection::gatherAfter(OutgoingMessage& msg,
                                     kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments,
                                     size_t i,
                                     std::array<int, OutgoingMessage::kMaxReferences>& refSegment,
                                     uint32_t end) {
  // Only after the record's last segment (in-record segments ascend: see parseFrame), as
  // far as the record may grow without waiting; what does not fit goes to the arena.
  std::byte* record = txRing_ + (open_.start & ringMask_);
  for (size_t j = i + 1; j < segments.size(); ++j) {
    auto* bj = reinterpret_cast<const std::byte*>(segments[j].begin());
    if (bj >= record && bj < record + open_.reserved) return 0;
  }
  auto refs = msg.references();
  const auto* segment = reinterpret_cast<const std::byte*>(segments[i].begin());
  const uint64_t limit =
      std::min<uint64_t>(recordLimit(0), files_.ringBytes - (open_.start & ringMask_));
  uint32_t added = 0;
  for (size_t r = 0; r < refs.size(); ++r) {
    if (refSegment[r] != static_cast<int>(i)) continue;
    const uint64_t size = refs[r].bytes.size();
    const uint64_t bytes = (size + 7) & ~uint64_t{7};
    const uint64_t newEnd = uint64_t{end} + added + bytes;
    if (newEnd + tailReserve_ > limit) {
      // The ring's end came first: records start at the ring's beginning from now on when
      // less than this is left (else every small record after this one would fail too).
      if (newEnd + tailReserve_ <= recordLimit(0))
        gatherRoom_ = std::max(gatherRoom_, static_cast<uint32_t>(newEnd + tailReserve_));
      continue;
    }
    if (!extendRecord(static_cast<uint32_t>(newEnd + tailReserve_), /*mayWait=*/false)) continue;
    std::byte* at = record + end + added;
    std::memcpy(at, refs[r].bytes.begin(), size);
    std::memset(at + size, 0, bytes - size);
    OutgoingMessage::pointAtGathered(refs[r], segments[i].begin(),
                                     static_cast<uint64_t>(at - segment) / 8);
    added += static_cast<uint32_t>(bytes);
    refSegment[r] = -1;  // done
  }
  open_.ringEnd = std::max<uint32_t>(open_.ringEnd, end + added);
  return added;
}

void RingConnection::zeroAhead(uint64_t want) {
  // From after the next record's word (the consumer may be polling it) up to `want` bytes
  // on, within this lap, and only over space the consumer has released.
  const uint64_t from = std::max(tail_ + kRecordHeaderBytes, ringZeroedTo_);
  uint64_t to = std::min(tail_ + want, (tail_ | ringMask_) + 1);
  if (to <= from) return;
  if (!ringRoom(to)) to = std::min(to, cachedHead_ + files_.ringBytes);
  if (to <= from) return;
  std::memset(txRing_ + (from & ringMask_), 0, to - from);
  ringZeroedTo_ = to;
}

Status RingConnection::flush() {
  wakeConsumer();
  return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
}

void RingConnection::publishHeld() noexcept {
  if (heldRecord_.load(std::memory_order_relaxed) == kNoHeld) [[likely]] return;
  // pairs with the release store in send(): the record (its frame header) is complete
  const uint64_t pos = heldRecord_.exchange(kNoHeld, std::memory_order_acquire);
  if (pos == kNoHeld) return;  // close() on another thread took it
  std::byte* record = txRing_ + (pos & ringMask_);
  FrameHeader h;
  std::memcpy(&h, record + kRecordHeaderBytes, sizeof h);
  // pairs with the acquire load of the record word in tryReceive()
  storeRelease(record, (uint64_t{recordTag(pos)} << 32) | (h.frameBytes + kRecordHeaderBytes));
}

void RingConnection::wakeConsumer() noexcept {
  if (!wakePending_) return;  // also set while a burst is held (publish())
  wakePending_ = false;
  if (heldRecord_.load(std::memory_order_relaxed) != kNoHeld) [[unlikely]]
    publishHeld();
  if (!peerConsumerMaySleep_) return;
  // pairs with the seq_cst store+fence of `sleeping` in the peer's waitFor(): either we
  // see it asleep here, or its re-check sees our record.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  uint32_t s = files_.peer->consumer.sleeping.load(std::memory_order_relaxed);
  if (s == kSleepFutex) {
    files_.local->producer.dataSeq.fetch_add(1, std::memory_order_release);
    os::futexWakeAll(files_.local->producer.dataSeq);
  } else if (s == kSleepSocket) {
    link_->wakePeer();
  }
}

// ------------------------------------------------------------------------------------
// Consumer

bool RingConnection::dataReady() const noexcept {
  uint64_t w = loadAcquire(rxRing_ + (readPos_ & ringMask_));
  return (w >> 32) == recordTag(readPos_);
}

Status RingConnection::tryReceive(IncomingMessage& out) {
  if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
  if (leases_.full()) {
    reclaim();
    if (leases_.full()) return Status::kWouldBlock;
  }
  for (;;) {
    uint64_t pos = readPos_;
    uint64_t offset = pos & ringMask_;
    // pairs with storeRelease of the record word in the peer's send()/tryStartMessage()
    uint64_t word = loadAcquire(rxRing_ + offset);
    if ((word >> 32) != recordTag(pos)) {
      if (!peerDead_.load(std::memory_order_acquire) && !peerClosed()) return Status::kWouldBlock;
      // The peer is gone; a record it published just before going is still ours.
      // pairs with the release store of `closed` in the peer's close(), which follows
      // its last publish
      word = loadAcquire(rxRing_ + offset);
      if ((word >> 32) != recordTag(pos)) {
        fault("peer closed the connection");  // keeps an earlier, more precise reason
        return Status::kDisconnected;
      }
    }
    uint32_t len = static_cast<uint32_t>(word);
    uint64_t toEnd = files_.ringBytes - offset;
    if (len & kWrapBit) {
      if ((len & ~kWrapBit) != toEnd) {
        fault("bad wrap marker at ring position " + std::to_string(pos));
        return Status::kDisconnected;
      }
      readPos_ = pos + toEnd;
      continue;
    }
    if (len % 8 || len < kRecordHeaderBytes + kFrameHeaderBytes || len > toEnd) {
      fault("bad record length " + std::to_string(len) + " at ring position " +
            std::to_string(pos));
      return Status::kDisconnected;
    }
    prefetchRecord(rxRing_ + offset, len);
    uint64_t arenaEnd = loadRelaxed(rxRing_ + offset + 8);
    // At most two arenas on: one for the record's own segments, one for a rewind's skip.
    if (arenaEnd < lastArenaEnd_ || arenaEnd - lastArenaEnd_ > 2 * arenaBytes_) {
      fault("bad arena position " + std::to_string(arenaEnd) + " in record at ring position " +
            std::to_string(pos));
      return Status::kDisconnected;
    }
    LeaseQueue::Entry& slot = leases_.next();
    if (!checkFrame(std::span<const std::byte>(rxRing_ + offset + kRecordHeaderBytes,
                                               len - kRecordHeaderBytes),
                    frameLimits_, slot.frame)) {
      fault("malformed frame at ring position " + std::to_string(pos) + ": " +
            frameRefusalReason(slot.frame));
      return Status::kDisconnected;
    }
    slot.end = pos + len;
    slot.aux = arenaEnd;
    lastArenaEnd_ = arenaEnd;
    readPos_ = pos + len;
    out.attach(*this, leases_.push());
    return Status::kOk;
  }
}

Status RingConnection::receive(IncomingMessage& out, Deadline deadline) {
  return tryThenWait([&] { return tryReceive(out); },
                     [&](auto ready, Deadline d) { return waitFor(ready, d, /*forData=*/true); },
                     deadline);
}

void RingConnection::releaseLease(uint32_t slot) noexcept {
  leases_.release(
      slot, [this](uint64_t end, uint64_t aux) { publishReleased(end, aux); },
      [this](bool waiter) { afterReleased(waiter); });
}

// Out of line: tryReceive() calls it only when every lease is held, and inlined it costs
// the receive fast path registers.
[[gnu::noinline]] void RingConnection::reclaim() noexcept {
  leases_.reclaim([this](uint64_t end, uint64_t aux) { publishReleased(end, aux); },
                  [this](bool waiter) { afterReleased(waiter); });
}

void RingConnection::publishReleased(uint64_t ringHead, uint64_t arenaHead) noexcept {
  ConsumerControl& me = files_.local->consumer;
  // pairs with the acquire loads in the peer's ringRoom()/arenaRoom(): the peer may reuse
  // the space only after our reads of it are done.
  me.arenaHead.store(arenaHead, std::memory_order_release);
  me.head.store(ringHead, std::memory_order_release);
}

void RingConnection::afterReleased(bool leaseWaiter) noexcept {
  // Runs after a reclaim that freed space dropped the lease lock. `leaseWaiter`: our
  // receiving thread sleeps because every lease was held (see LeaseQueue::announceWaiter).
  if (leaseWaiter) {
    leaseSeq_.fetch_add(1, std::memory_order_release);
    os::futexWakeAll(leaseSeq_);
  }
  wakeProducer();
}

uint32_t RingConnection::recordLimit(uint64_t segmentBytes) const noexcept {
  // Small records keep the ring flowing; a segment the arena cannot take may use half.
  return static_cast<uint32_t>(segmentBytes > arenaBytes_ ? files_.ringBytes / 2
                                                          : files_.ringBytes / kRecordShare);
}

void RingConnection::wakeProducer() noexcept {
  if (!peerProducerMaySleep_) return;
  // pairs with the seq_cst store+fence of waitingForSpace in the peer's waitFor(): either
  // it sees the head publishReleased() stored, or we see it waiting.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (files_.peer->producer.waitingForSpace.load(std::memory_order_relaxed)) {
    files_.local->consumer.spaceSeq.fetch_add(1, std::memory_order_release);
    os::futexWakeAll(files_.local->consumer.spaceSeq);
  }
}

}  // namespace zcrpc::ring
