// rdma:// — frames moved by RDMA WRITE WITH IMMEDIATE into the peer's registered ring.
//
// Each side registers one receive region for remote write: a byte ring (power of two) and,
// after it, one credit word. Nothing is registered for remote read. The other side builds
// its message in place in its own registered send buffer and moves the whole record
// (16-byte record header + frame) with one RDMA WRITE WITH IMMEDIATE; the immediate carries
// the record length. Both sides derive where a record lies from the same rule (records
// are contiguous; one that would run past the end of the ring starts the next lap), so
// nothing but the length travels out of band. Receives are zero-length work requests
// whose completions say, in order, that a record has landed.
//
// Credits: the receiver counts records it has released (in arrival order, LeaseQueue).
// The count travels piggy-backed in every record header it sends, and lazily, when
// nothing flows the other way or before it sleeps, by an inline RDMA WRITE into the
// sender's credit word. The sender remembers where each record it sent ends, so the
// count gives both the ring bytes freed and the receive requests re-posted: it never
// overwrites unread data and never runs the peer's receive queue dry.
//
// Frames larger than a quarter of the peer's ring, or needing more gather entries than
// the queue pair has, travel in fragments (each its own record) and are reassembled on
// receipt in a buffer of their own: one copy, for large messages only. See docs/rdma.md.
//
// This header: the wire structs and the connection class; which file holds what is listed
// in rdma_cm.h.
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "os/os.h"
#include "os/spin.h"
#include "transport/frame_assembly.h"
#include "transport/lease_queue.h"
#include "transport/rdma/rdma_cm.h"
#include "transport/options.h"
#include "transport/record.h"
#include "transport/token.h"
#include "transport/waiter.h"

// Internal to libzcrpc: nothing here is exported from the shared library.
#pragma GCC visibility push(hidden)
namespace zcrpc::rdma {

inline constexpr uint32_t kPrivateMagic = 0x6472'637a;  // "zcrd"
inline constexpr uint16_t kPrivateVersion = 1;
/// Records one side may have in flight (unreleased) towards the other: the receive
/// queue holds this many plus a re-post batch.
inline constexpr uint32_t kRecvCredits = 512;
inline constexpr uint32_t kRecvBatch = 32;
inline constexpr uint32_t kSendDepth = 256;
inline constexpr uint32_t kSignalEvery = 32;
inline constexpr uint32_t kOutQueue = 128;
inline constexpr uint32_t kPostBatch = 32;
inline constexpr uint32_t kWantInline = 256;
inline constexpr uint32_t kMaxSgeWanted = 32;
inline constexpr uint32_t kLocalSge = kMaxSegments + 3;  // header, segments, table, extension chunk
/// Extension areas up to this size follow the table in the send buffer; larger ones (rare)
/// are copied into a registered chunk of their own.
inline constexpr uint32_t kExtensionRoom = 256;
/// Room kept after a frame's last segment in the send buffer: table, trace context and a
/// small extension area.
inline constexpr uint32_t kTableReserve =
    kMaxSegments * sizeof(SegmentEntry) + sizeof(TraceContext) + kExtensionRoom;
inline constexpr uint32_t kControlBytes = 4096;  // after the ring: the credit word, then padding
inline constexpr uint32_t kImmLengthMask = 0x3fff'ffffu;
inline constexpr int kGidsScanned = 8;  // GID table entries scanned (reading them is slow under emulation)
inline constexpr int64_t kResolveAttemptMs = 1000;
using os::cpuRelax;
using os::kYieldEvery;
static_assert(isPowerOfTwo(kRecvCredits) && isPowerOfTwo(kSendDepth));
static_assert(kSignalEvery * 4 <= kSendDepth, "a signalled request among every quarter of the queue");
static_assert(kRecvBatch < kRecvCredits);

enum RecordFlags : uint16_t { kFragment = 1, kFirst = 2, kLast = 4 };

/// Connection private data (both directions); 56 bytes is the limit for a connect request.
struct PrivateData {
  uint32_t magic;
  uint16_t version;
  uint16_t flags;
  uint64_t ringAddr;
  uint32_t rkey;
  uint32_t ringBytes;
  uint32_t recvCredits;
  uint32_t reserved;
  uint64_t maxMessageBytes;
};
static_assert(sizeof(PrivateData) == 40);

/// A client's connection request: its PrivateData and, when it has an access token
/// (RdmaOptions::token), the token's proof (transport/token.h), flagged kHasTokenProof.
/// 56 bytes, the most a connect request carries; without a token only `data` is sent.
enum PrivateFlags : uint16_t { kHasTokenProof = 1 };
struct ConnectRequest {
  PrivateData data;
  TokenProof tokenProof;
};
static_assert(sizeof(ConnectRequest) == 56);

/// The reason a listener with `token` (empty: none) refuses a request whose private data
/// is `data`/`len` (the bytes as they came), or empty when its token proof is good. Runs
/// before anything is allocated for the client: no queue pair exists for a refused one.
std::string checkTokenProof(const void* data, size_t len, const std::string& token);

/// Sent in a reject's private data so the client can say why.
struct RejectData {
  uint32_t magic;
  char reason[120];
};

/// At the start of every record in the ring.
struct RecordHeader {
  uint32_t credit;      ///< records the writer has released of those it received (mod 2^32)
  uint16_t flags;       ///< RecordFlags; 0 = a whole frame
  uint16_t reserved;
  uint32_t frameBytes;  ///< the whole frame's size (fragments: of the frame they carry)
  uint32_t reserved2;
};
static_assert(sizeof(RecordHeader) == kRecordHeaderBytes);

/// Page-aligned memory registered with `pd`; deregistered and freed on destruction.
class Registered final {
 public:
  Registered() = default;
  Registered(ibv_pd* pd, size_t bytes, int access, const std::string& what) : bytes_(bytes) {
    mem_ = static_cast<std::byte*>(::operator new(bytes, std::align_val_t(4096)));
    std::memset(mem_, 0, bytes);
    mr_ = ibv_reg_mr(pd, mem_, bytes, access);
    if (!mr_) {
      int err = errno;
      ::operator delete(mem_, std::align_val_t(4096));
      mem_ = nullptr;
      throw Failed(os::errnoText(what + ": ibv_reg_mr of " + std::to_string(bytes) + " bytes", err));
    }
  }
  Registered(Registered&& o) noexcept
      : mem_(std::exchange(o.mem_, nullptr)), mr_(std::exchange(o.mr_, nullptr)), bytes_(o.bytes_) {}
  Registered& operator=(Registered&& o) noexcept {
    std::swap(mem_, o.mem_);
    std::swap(mr_, o.mr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~Registered() {
    if (mr_) ibv_dereg_mr(mr_);
    if (mem_) ::operator delete(mem_, std::align_val_t(4096));
  }
  std::byte* data() const noexcept { return mem_; }
  uint32_t lkey() const noexcept { return mr_->lkey; }
  uint32_t rkey() const noexcept { return mr_->rkey; }
  size_t size() const noexcept { return bytes_; }

 private:
  std::byte* mem_ = nullptr;
  ibv_mr* mr_ = nullptr;
  size_t bytes_ = 0;
};

/// One rdma connection: an RC queue pair, the registered receive ring the peer writes
/// into, and the registered send buffer records are built in.
///
/// Threads: as Connection. The sending half's state is guarded by sendLock_, which the
/// receiving thread (and a thread releasing a lease, to post a credit) takes only briefly;
/// the receiving half's state belongs to the receiving thread, but the released counters.
class RdmaConnection final : public Connection, private SegmentSource, private LeaseOwner {
 public:
  // ---- set-up and teardown (rdma_setup.cc) ----

  /// Takes ownership of `channel` and `id` (already on that channel).
  RdmaConnection(std::string what, const RdmaOptions& options, EventChannel channel, rdma_cm_id* id);
  ~RdmaConnection() override;

  /// Allocates the protection domain, completion queues, queue pair and registered memory
  /// on the id's device, and posts the receives. Before connect / accept.
  void setUp();
  PrivateData localPrivateData() const noexcept;
  /// Validates the peer's private data; returns the reason it is refused, or empty.
  std::string setPeer(const void* data, size_t len);

  rdma_cm_id* id() const noexcept { return id_; }
  rdma_event_channel* channel() const noexcept { return channel_.ch; }

  void close() noexcept override;
  std::string lastError() const override {
    std::lock_guard lock(errorMutex_);
    return error_;
  }
  std::string endpoint() const override { return what_; }
  const PeerIdentity& peer() const noexcept override { return peer_; }
  /// Who the peer is ("rdma", its address, whether it proved the token). Before the
  /// connection is handed out.
  void setPeerIdentity(PeerIdentity peer) { peer_ = std::move(peer); }
  uint64_t maxMessageBytes() const noexcept override { return maxMessage_; }
  uint32_t maxLeases() const noexcept override { return options_.maxLeases; }

  // ---- sending (rdma_send.cc) ----

  Status tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) override;
  Status startMessage(OutgoingMessage& msg, uint32_t words, Deadline deadline) override;
  Status send(OutgoingMessage& msg, bool flushNow) override;
  Status flush() override;

  // ---- receiving (rdma_receive.cc) ----

  Status tryReceive(IncomingMessage& out) override;
  Status receive(IncomingMessage& out, Deadline deadline) override;
  int waitFd() const noexcept override { return epoll_.get(); }
  bool armWait() noexcept override;
  void disarmWait() noexcept override;
  Status checkPeer() noexcept override;

 private:
  struct OpenFrame {
    OutgoingMessage* msg = nullptr;
    uint64_t start = 0;  // record header position in the send buffer
    uint64_t end = 0;    // end of the in-buffer part
    uint64_t limit = 0;  // where the in-buffer part must stop (lap end, reclaimed space)
    uint64_t allocated = 0;
    uint64_t chunkBase = 0;
  };

  /// A frame too large for one record: its bytes, cut into fragments as credits allow.
  struct BigSend {
    std::vector<ibv_sge> pieces;  // the frame in order (header, segments, table)
    size_t piece = 0;
    uint32_t pieceOffset = 0;
    uint64_t frameBytes = 0;
    uint64_t sent = 0;
    std::byte* headers = nullptr;  // one RecordHeader per fragment, in a chunk
    uint32_t headersLkey = 0;
    uint32_t fragments = 0;
    uint32_t fragment = 0;
    size_t nextPiece = 0;
    uint32_t nextOffset = 0;
  };

  struct OutEntry {
    std::array<ibv_sge, kLocalSge> sge;
    uint32_t nsge = 0;
    uint32_t bytes = 0;
    RecordHeader* header = nullptr;
    uint64_t sendEnd = 0;   // send buffer position freed once this record completed
    uint64_t chunkEnd = 0;  // chunks below this sequence number belong to it or earlier
    std::unique_ptr<BigSend> big;
  };

  struct Chunk {
    Registered mem;
    uint64_t freeAfter = ~uint64_t{0};  // send sequence after whose completion it is free
  };

  // SegmentSource (rdma_send.cc)
  kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override;
  void abandon() noexcept override;

  // LeaseOwner (rdma_receive.cc)
  const ParsedFrame& leasedFrame(uint32_t slot) const noexcept override { return leases_.at(slot).frame; }
  const ReaderLimits& readerLimits() const noexcept override { return options_.readerLimits; }
  void releaseLease(uint32_t slot) noexcept override;

  // ---- credits (rdma_send.cc, but the inline ones) ----

  void advanceReleased(uint64_t end, uint64_t records) noexcept {
    releasedPos_.store(end, std::memory_order_relaxed);
    // pairs with the acquire loads in lazyCredit / creditWorthSending / pump
    releasedRecords_.store(records, std::memory_order_release);
  }

  bool creditWorthSending() const noexcept {
    uint64_t r = releasedRecords_.load(std::memory_order_acquire);
    uint64_t told = creditSent_.load(std::memory_order_relaxed);
    return r - told >= kRecvCredits / 8 ||
           releasedPos_.load(std::memory_order_relaxed) - creditSentPos_.load(std::memory_order_relaxed) >=
               ringBytes_ / 8;
  }

  /// Tells the peer how far we released when it is worth it (or, with `any`, whenever
  /// it has not heard of the latest release). Receiving or releasing thread.
  void lazyCredit(bool any) noexcept;
  /// sendLock_ held. One inline RDMA WRITE of the released count into the peer's credit word.
  void postCredit() noexcept;
  /// sendLock_ held. Learns how many of our records the peer released, from the credit
  /// word it writes and from the headers of its records.
  void refreshCredit() noexcept;

  uint64_t peerHead() const noexcept {
    return peerAcked_ ? recordEnds_[(peerAcked_ - 1) & (peerCredits_ - 1)] : 0;
  }

  // ---- send buffer (rdma_send.cc, but the inline ones) ----

  uint32_t outCount() const noexcept { return static_cast<uint32_t>(outTail_ - outHead_); }

  bool reserveSend(uint64_t need, uint64_t& at) noexcept {
    uint64_t pos = sendTail_;
    if ((pos & sendMask_) + need > sendBytes_) pos = (pos | sendMask_) + 1;
    if (pos + need - sendHead_ > sendBytes_) return false;
    at = pos;
    return true;
  }

  Status blockedOrDisconnected() const noexcept {
    return closed_.load() ? Status::kDisconnected : Status::kWouldBlock;
  }

  capnp::word* newChunk(uint32_t words);
  uint32_t lkeyOf(const void* p) const noexcept;
  /// Turns `e` into a fragmented send: the frame without the record header, in pieces.
  void makeBig(OutEntry& e, uint64_t frameBytes);
  /// sendLock_ held: posts queued records as far as the peer's credits, the send queue
  /// and the ring allow, chained into one ibv_post_send (one doorbell).
  void pump() noexcept;
  /// The next fragment of a big send into `sge`/`wr`, not yet committed. False if none
  /// can be built now.
  bool nextFragment(OutEntry& e, std::array<ibv_sge, kLocalSge>& sge, ibv_send_wr& wr, uint32_t& bytes,
                    bool& last) noexcept;
  void commitFragment(OutEntry& e, uint32_t bytes, bool) noexcept;
  /// sendLock_ held: a signalled zero-length write, so that unsignalled requests
  /// before it complete visibly and their memory can be reclaimed.
  void forceSignal() noexcept;
  /// sendLock_ held: reaps send completions, reclaiming the send buffer and chunks.
  void pollSend() noexcept;

  /// Receiving thread: posts queued records unless the sending thread is at it.
  void flushFromReceiver() noexcept {
    if (outTail_.load(std::memory_order_relaxed) == outHeadShadow() || !sendLock_.try_lock()) return;
    pump();
    sendLock_.unlock();
  }
  uint64_t outHeadShadow() const noexcept { return outHead_.load(std::memory_order_relaxed); }

  // ---- receive ring (rdma_receive.cc) ----

  void postRecvBatch();
  /// Receiving thread: fills wcs_ from the receive queue. True if something came.
  bool pollRecv() noexcept;
  Status handleCompletion(const ibv_wc& wc, IncomingMessage& out);
  Status malformed(const std::string& why);
  /// Non-blocking: reads the connection's cm events (a disconnect marks the peer gone).
  void handleCmEvents() noexcept;
  Status disconnected(const std::string& why);
  void noteError(const std::string& why);
  void fault(std::string why) noexcept;
  void disconnectOnce() noexcept {
    if (id_ && !disconnectCalled_.exchange(true)) rdma_disconnect(id_);
  }
  template <typename Done>
  Status waitFor(Done done, Deadline deadline, bool forWrite);

  std::string what_;
  ConnectionOptions options_;
  PeerIdentity peer_;
  EventChannel channel_;
  rdma_cm_id* id_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* comp_ = nullptr;
  ibv_cq* recvCq_ = nullptr;
  ibv_cq* sendCq_ = nullptr;
  os::Fd epoll_;
  uint32_t maxInline_ = 0;
  uint32_t maxSge_ = 1;
  uint64_t maxMessage_ = kDefaultMaxMessageBytes;
  uint64_t maxFrame_ = kDefaultMaxMessageBytes;
  std::atomic<bool> closed_{false};
  std::atomic<bool> closedByUs_{false};
  std::atomic<bool> faulted_{false};
  std::atomic<bool> peerGone_{false};
  std::atomic<bool> disconnectCalled_{false};
  bool draining_ = false;  // sendLock_: close() lets queued records out
  bool armed_ = false;
  mutable std::mutex errorMutex_;
  std::string error_;
  Waiter receiveWaiter_;  // receiving thread
  Waiter sendWaiter_;     // sending thread
  uint32_t cmChecks_[2] = {0, 0};  // each waiting thread's count of liveness checks

  // receive (receiving thread, except the released counters)
  uint32_t ringBytes_;
  uint64_t ringMask_;
  Registered ringMr_;
  std::byte* ring_ = nullptr;
  uint32_t* creditWord_ = nullptr;  // written by the peer: records of ours it released
  uint64_t parse_ = 0;
  uint64_t recordsIn_ = 0;
  std::array<ibv_wc, 32> wcs_{};
  uint32_t wcIndex_ = 0;
  uint32_t wcCount_ = 0;
  uint32_t recvConsumed_ = 0;
  uint32_t emptyPolls_ = 0;
  std::array<ibv_recv_wr, kRecvBatch> recvWrs_{};
  FrameAssembly big_;  // a fragmented frame, as its fragments arrive
  FrameLimits limits_;
  std::atomic<uint32_t> headerCredit_{0};
  std::atomic<bool> lastTaken_{false};  // the last completion polled was taken, not yet answered
  std::atomic<uint64_t> releasedRecords_{0};
  std::atomic<uint64_t> releasedPos_{0};
  std::atomic<uint64_t> creditSent_{0};
  std::atomic<uint64_t> creditSentPos_{0};

  // send (sendLock_)
  os::SpinLock sendLock_;
  uint64_t sendBytes_;
  uint64_t sendMask_;
  Registered sendMr_;
  std::byte* send_ = nullptr;
  uint32_t* creditSource_ = nullptr;
  uint64_t sendHead_ = 0;
  uint64_t sendTail_ = 0;
  OpenFrame open_;
  std::array<OutEntry, kOutQueue> out_;
  std::atomic<uint64_t> outHead_{0};
  std::atomic<uint64_t> outTail_{0};
  std::deque<Chunk> chunks_;
  uint64_t chunkSeq_ = 0;    // chunks made so far
  uint64_t chunkFront_ = 0;  // sequence number of chunks_.front()
  uint64_t chunkFreed_ = 0;  // chunks below this have freeAfter set
  uint64_t postSeq_ = 0;
  uint64_t completedSeq_ = 0;
  uint64_t lastSignal_ = 0;
  std::array<uint64_t, kSendDepth> marks_{};
  uint64_t peerAddr_ = 0;
  uint32_t peerRkey_ = 0;
  uint64_t peerRingBytes_ = 4096;
  uint64_t peerMask_ = 4095;
  uint32_t peerCredits_ = kRecvCredits;
  uint64_t peerTail_ = 0;
  uint64_t recordsSent_ = 0;
  uint64_t peerAcked_ = 0;
  std::vector<uint64_t> recordEnds_;

  LeaseQueue leases_;
};

template <typename Done>
Status RdmaConnection::waitFor(Done done, Deadline deadline, bool forWrite) {
  // Connection-manager events (the peer's disconnect) every 256 liveness checks while
  // spinning (a few thousand polls), and after every sleep.
  auto alive = [&](bool now) {
    if (closed_.load(std::memory_order_relaxed)) return false;
    if (now || (++cmChecks_[forWrite] & 255) == 0) {
      handleCmEvents();
      if (peerGone_ && forWrite) {
        (void)disconnected("peer disconnected");
        return false;
      }
    }
    return true;
  };
  auto sleep = [&](Clock::duration left) {
    auto leftMs = std::chrono::duration_cast<std::chrono::milliseconds>(left);
    if (forWrite) {
      // Room comes back through the peer's credit word, which raises no event: sleep in
      // short slices and look again.
      timespec ts{0, 100'000};
      ::nanosleep(&ts, nullptr);
    } else if (armWait()) {
      // Records of ours waiting for the peer's credits are posted when we wake; the credit
      // word raises no event, so sleep in short slices while there are any.
      auto slice = outCount() ? std::chrono::milliseconds(1) : std::chrono::milliseconds(100);
      os::pollOne(epoll_.get(), POLLIN, std::min(leftMs + std::chrono::milliseconds(1), slice));
      disarmWait();
    }
    return false;
  };
  return (forWrite ? sendWaiter_ : receiveWaiter_).wait(done, alive, sleep, deadline);
}

}  // namespace zcrpc::rdma
#pragma GCC visibility pop
