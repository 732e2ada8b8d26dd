// zcrpc — a Connection over two lock-free SPSC byte rings (one per direction).
// Shared by the shm transport (memfds, unix socket) and loopback (private memory).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "transport/lease_queue.h"
#include "transport/ring/layout.h"
#include "transport/waiter.h"
#include "zcrpc/transport.h"

namespace zcrpc::ring {

/// What differs between shm and loopback: liveness and socket wake-ups. Owns the memory.
class Link {
 public:
  virtual ~Link() = default;
  /// True once the peer is known to be gone. May make a system call: callers rate-limit.
  virtual bool peerGone() noexcept = 0;
  /// Wakes a peer sleeping on the link.
  virtual void wakePeer() noexcept = 0;
  /// Sleeps until woken through the link, the peer hangs up, or `timeout` passes.
  virtual void sleepOnLink(std::chrono::milliseconds timeout) noexcept = 0;
  /// Descriptor that sleepOnLink() waits on (readable on a wake-up or hang-up).
  virtual int waitFd() const noexcept = 0;
  /// Discards pending wake-ups.
  virtual void drainWakeups() noexcept = 0;
  /// Tells the peer we are gone (the peer's peerGone() turns true). Idempotent.
  virtual void shutdown() noexcept = 0;
  virtual std::string describe() const = 0;
};

/// Our file (writable) and the peer's (read-only), with their validated sizes.
struct RingFiles {
  FileControl* local = nullptr;
  const FileControl* peer = nullptr;
  uint64_t ringBytes = 0;
  uint64_t arenaBytes = 0;
  uint64_t maxMessageBytes = 0;
};

/// Writes the header of a new transmit file, resets its control words and announces
/// whether this side may sleep (so the peer knows whether to wake it). Call before sharing.
void initFile(std::byte* base, uint64_t ringBytes, uint64_t arenaBytes, uint64_t maxMessageBytes,
              uint64_t fileBytes, WaitMode waitMode);
/// Validates a file header copied out of shared memory; empty or the reason.
std::string checkFileHeader(const FileHeader& h, uint64_t fileBytes);
/// Data given to OutgoingMessage::referenceData from this size on is copied at send(),
/// right after its field's segment when that can grow, so the message keeps one segment.
inline constexpr uint64_t kGathersFromBytes = 1024;

/// Checks the connection options a side is configured with (checkConnectionOptions, then
/// the arena); throws InvalidArgument.
void checkOptions(const ConnectionOptions& opts);

// Hidden: used only inside libzcrpc, so calls between its members bind locally and the
// compiler may inline the small ones on the fast path (no PLT, no interposition).
class __attribute__((visibility("hidden"))) RingConnection final : public Connection,
                                                                   private SegmentSource,
                                                                   private LeaseOwner {
 public:
  RingConnection(RingFiles files, std::unique_ptr<Link> link, const ConnectionOptions& options);
  ~RingConnection() override;

  Status tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) override;
  Status startMessage(OutgoingMessage& msg, uint32_t firstSegmentWords,
                      Deadline deadline) override;
  Status send(OutgoingMessage& msg, bool flush) override;
  Status sendMore(OutgoingMessage& msg) override;
  Status flush() override;
  Status tryReceive(IncomingMessage& out) override;
  Status receive(IncomingMessage& out, Deadline deadline) override;
  int waitFd() const noexcept override { return link_->waitFd(); }
  bool armWait() noexcept override;
  void disarmWait() noexcept override;
  Status checkPeer() noexcept override;
  void close() noexcept override;
  std::string lastError() const override;
  std::string endpoint() const override { return link_->describe(); }
  uint64_t maxMessageBytes() const noexcept override { return maxMessage_; }
  uint32_t maxLeases() const noexcept override { return options_.maxLeases; }
  const PeerIdentity& peer() const noexcept override { return peer_; }
  /// Who the peer is, as the transport that set the connection up established it (shm:
  /// its credentials). Before the connection is handed out only.
  void setPeer(PeerIdentity peer) { peer_ = std::move(peer); }
  uint32_t maxExtensionBytes() const noexcept override { return extensionRoom_; }

 private:
  // SegmentSource
  kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override;
  void abandon() noexcept override;
  uint64_t gathersFromBytes() const noexcept override { return kGathersFromBytes; }
  // LeaseOwner
  const ParsedFrame& leasedFrame(uint32_t slot) const noexcept override {
    return leases_.at(slot).frame;
  }
  const ReaderLimits& readerLimits() const noexcept override { return options_.readerLimits; }
  void releaseLease(uint32_t slot) noexcept override;

  // producer side
  Status tryStartMessageSlow(OutgoingMessage& msg, uint32_t firstSegmentWords);
  bool ringRoom(uint64_t end);
  std::byte* arenaAllocate(uint64_t bytes, bool mayWait);
  bool arenaRoom(uint64_t end);
  /// Reads the peer's released arena position into cachedArenaHead_; false (and the
  /// connection closed) when it is invalid.
  bool refreshArenaHead();
  /// Grows the open record to `newReserved` bytes; false when that would pass the ring's
  /// end, or (unless `mayWait`) when the space is not free yet. Throws when waiting fails.
  bool extendRecord(uint32_t newReserved, bool mayWait);
  /// send() and sendMore() (kHold: a burst's message, see heldRecord_), each its own copy.
  template <bool kHold>
  Status publish(OutgoingMessage& msg, bool flush);
  void wakeConsumer() noexcept;
  /// Stores the record word of the held first record of a batch, if there is one.
  void publishHeld() noexcept;
  /// Zeroes ring positions [from, to) of the open record, but for what zeroAhead()
  /// cleared already.
  void clearRing(uint64_t from, uint64_t to) noexcept {
    if (from < ringZeroedTo_) from = std::min(to, ringZeroedTo_);
    if (from < to) std::memset(txRing_ + (from & ringMask_), 0, to - from);
  }
  /// After publishing a large record: clears up to `want` bytes of released ring space
  /// after it, so the next message of that size finds its memory zeroed (Cap'n Proto
  /// builds only on zeroed memory) while the peer is busy with this one.
  void zeroAhead(uint64_t want);
  template <typename Ready>
  Status waitForSpace(Ready ready, Deadline deadline);

  // consumer side
  bool dataReady() const noexcept;
  void reclaim() noexcept;
  void publishReleased(uint64_t ringHead, uint64_t arenaHead) noexcept;
  void afterReleased(bool leaseWaiter) noexcept;
  void wakeProducer() noexcept;
  uint32_t recordLimit(uint64_t segmentBytes) const noexcept;
  /// send(): copies referenced data whose field lies in segment `i` (in the record, ending
  /// at record offset `end`) right after it, as far as the record can grow now; returns
  /// the bytes added and marks those references done (-1).
  uint32_t gatherAfter(OutgoingMessage& msg,
                       kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments, size_t i,
                       std::array<int, OutgoingMessage::kMaxReferences>& refSegment, uint32_t end);
  /// Until when a wait for room while building or sending the open message may last: its
  /// build deadline and build wait, at most connectTimeout from now.
  Deadline buildWaitDeadline() const;
  /// The error of a wait for room (`what`: "arena" or "ring") that ran out of time.
  Overloaded roomWaitFailed(const char* what, Clock::time_point waitStart) const;

  // both
  bool peerClosed() const noexcept;
  bool checkPeerAlive() noexcept;  // rate-limited liveness; false = disconnected
  void fault(std::string reason) noexcept;
  void markPeerDead(std::string reason) noexcept;
  /// Waits (by the wait mode) until `done()` returns true: for data or leases (`forData`,
  /// receiving thread) or for room (sending thread).
  template <typename Done>
  Status waitFor(Done done, Deadline deadline, bool forData);
  /// One sleep of waitFor(), at most `left`: announce it, check `done()` once more, sleep
  /// (at most a slice, for liveness).
  template <typename Done>
  bool sleepForData(Done& done, Clock::duration left);
  template <typename Done>
  bool sleepForSpace(Done& done, Clock::duration left);

  RingFiles files_;
  std::unique_ptr<Link> link_;
  PeerIdentity peer_;
  ConnectionOptions options_;
  uint64_t ringMask_;
  uint64_t arenaBytes_;
  uint64_t maxMessage_;
  uint64_t fastFirstMaxBytes_;  // a first segment up to this size always goes in the ring
  uint32_t extensionRoom_;      // maxExtensionBytes()
  uint32_t tailReserve_;        // contiguous room kept after a record's last inline segment
  std::byte* txRing_;
  std::byte* txArena_;
  const std::byte* rxRing_;
  const std::byte* rxArena_;
  bool peerConsumerMaySleep_;
  bool peerProducerMaySleep_;
  Waiter receiveWaiter_;  // receiving thread
  Waiter spaceWaiter_;    // sending thread

  std::atomic<bool> closed_{false};
  std::atomic<bool> peerDead_{false};  // the peer closed or died: drain, then kDisconnected
  mutable std::mutex errorMutex_;
  std::string error_;
  std::atomic<Clock::rep> nextLivenessCheck_{0};  // both threads; a hint, relaxed

  // ---- producer state (sending thread) ----
  uint64_t tail_ = 0;        // end of the last published record
  uint64_t cachedHead_ = 0;  // consumer's released position, as last read
  // Ring positions [tail_ + kRecordHeaderBytes, ringZeroedTo_) hold zeros nothing wrote
  // since zeroAhead() cleared them (none when ringZeroedTo_ is not above that). The
  // record word at tail_ is never cleared ahead: the consumer may be polling it.
  uint64_t ringZeroedTo_ = 0;
  // Room a record needed at the ring's end to take referenced data after its segment
  // (gatherAfter()): a record that would start with less than this left wraps first. The
  // largest seen, so after the first lap such data stops falling back to the arena; at
  // most a quarter of the ring's end goes unused per lap.
  uint32_t gatherRoom_ = 0;
  uint64_t arenaTail_ = 0;
  uint64_t arenaPublished_ = 0;  // arena end of the last published record
  uint64_t cachedArenaHead_ = 0;
  uint64_t arenaRewoundFrom_ = UINT64_MAX;  // arena end published when the arena last rewound
  uint64_t arenaCleanFrom_ = 0;  // first lap only: arena bytes from here on were never used
  bool wakePending_ = false;
  // The first record of a burst (sendMore()), whose record word
  // is not yet stored: kNoHeld when there is none. Its later records are published at
  // once (the consumer reads in order, so none is seen before it); flush(), any wait for
  // room and close() store its word. Written by the sending thread; close() may take it
  // from another (hence atomic: whoever exchanges it out publishes it).
  static constexpr uint64_t kNoHeld = UINT64_MAX;
  std::atomic<uint64_t> heldRecord_{kNoHeld};
  struct Allocation {
    const capnp::word* begin;
    uint32_t words;
    uint32_t location;
  };
  struct OpenRecord {
    OutgoingMessage* msg = nullptr;
    uint64_t start = 0;        // absolute ring position of the record
    uint32_t reserved = 0;     // bytes reserved from `start`
    uint32_t ringEnd = 0;      // record offset after the last ring segment
    uint64_t arenaTailAtStart = 0;
    uint64_t allocatedBytes = 0;
    uint32_t count = 0;
    std::array<Allocation, kMaxSegments> allocations;
  } open_;

  // ---- consumer state (receiving thread; leases released from any thread) ----
  LeaseQueue leases_;
  uint64_t readPos_ = 0;
  uint64_t lastArenaEnd_ = 0;
  // A receive that waits because every lease is held sleeps on this private futex word;
  // releasing a lease bumps it.
  std::atomic<uint32_t> leaseSeq_{0};
  FrameLimits frameLimits_;
};

}  // namespace zcrpc::ring
