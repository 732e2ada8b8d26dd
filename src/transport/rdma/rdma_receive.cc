// zcrpc — rdma data path, receiving: receive completions, records read in place, fragments
// reassembled, the connection's cm events, errors.
#include <arpa/inet.h>
#include <sched.h>

#include "transport/rdma/rdma_connection.h"
#include "transport/try_wait.h"

namespace zcrpc::rdma {

Status RdmaConnection::tryReceive(IncomingMessage& out) {
  if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
  flushFromReceiver();
  for (;;) {
    if (leases_.full()) {
      leases_.reclaim([&](uint64_t end, uint64_t aux) { advanceReleased(end, aux); });
      if (leases_.full()) return Status::kWouldBlock;
    }
    if (wcIndex_ == wcCount_ && !pollRecv()) {
      if (peerGone_ || (++emptyPolls_ & 1023) == 0) {
        handleCmEvents();
        if (peerGone_ && !pollRecv()) return disconnected("peer disconnected");
      }
      if (peerGone_ && wcIndex_ == wcCount_) return disconnected("peer disconnected");
      if (wcIndex_ == wcCount_) {
        lazyCredit(/*any=*/false);
        // A busy poller gives way now and then: with Soft-RoCE (and any kernel-side
        // provider) the "NIC" is softirq work on these same CPUs, which two spinning
        // threads would otherwise starve for a scheduler tick. One cheap system call
        // per kYieldEvery empty polls.
        if ((emptyPolls_ & (kYieldEvery - 1)) == 0) ::sched_yield();
        return Status::kWouldBlock;
      }
    }
    const ibv_wc& wc = wcs_[wcIndex_++];
    Status s = handleCompletion(wc, out);
    if (s != Status::kWouldBlock) {
      // read by send() (sending thread), a hint only: no ordering needed
      lastTaken_.store(wcIndex_ == wcCount_, std::memory_order_relaxed);
      return s;
    }
    // kWouldBlock: a fragment, consumed; go on
  }
}

Status RdmaConnection::receive(IncomingMessage& out, Deadline deadline) {
  return tryThenWait([&] { return tryReceive(out); },
                     [&](auto ready, Deadline d) { return waitFor(ready, d, /*forWrite=*/false); },
                     deadline);
}

bool RdmaConnection::armWait() noexcept {
  if (closed_.load() || peerGone_) return false;
  flushFromReceiver();
  lazyCredit(/*any=*/true);  // the peer may be waiting for room while we sleep
  if (wcIndex_ < wcCount_) return false;
  if (ibv_req_notify_cq(recvCq_, 0) != 0) return false;
  armed_ = true;
  // A completion that arrived before the request produces no event: look once more.
  if (pollRecv()) return false;
  return true;
}

void RdmaConnection::disarmWait() noexcept {
  armed_ = false;
  void* ctx = nullptr;
  ibv_cq* cq = nullptr;
  unsigned n = 0;
  while (ibv_get_cq_event(comp_, &cq, &ctx) == 0) ++n;
  if (n) ibv_ack_cq_events(recvCq_, n);
  handleCmEvents();
}

Status RdmaConnection::checkPeer() noexcept {
  if (closed_.load()) return Status::kDisconnected;
  handleCmEvents();
  if (peerGone_ && wcIndex_ == wcCount_ && !pollRecv()) {
    noteError("peer disconnected");
    return Status::kDisconnected;
  }
  return Status::kOk;
}

void RdmaConnection::releaseLease(uint32_t slot) noexcept {
  leases_.release(slot, [&](uint64_t end, uint64_t aux) { advanceReleased(end, aux); });
  if (creditWorthSending()) {
    std::lock_guard lock(sendLock_);
    if (creditWorthSending()) postCredit();
  }
}

void RdmaConnection::postRecvBatch() {
  ibv_recv_wr* bad = nullptr;
  if (int err = ibv_post_recv(id_->qp, &recvWrs_[0], &bad))
    throw Failed(os::errnoText(what_ + ": ibv_post_recv", err));
}

bool RdmaConnection::pollRecv() noexcept {
  if (wcIndex_ < wcCount_) return true;
  int n = ibv_poll_cq(recvCq_, static_cast<int>(wcs_.size()), wcs_.data());
  if (n <= 0) {
    wcIndex_ = wcCount_ = 0;
    if (n < 0) fault(what_ + ": ibv_poll_cq (receive) failed");
    return false;
  }
  wcIndex_ = 0;
  wcCount_ = static_cast<uint32_t>(n);
  return true;
}

Status RdmaConnection::handleCompletion(const ibv_wc& wc, IncomingMessage& out) {
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status == IBV_WC_WR_FLUSH_ERR) {
      peerGone_ = true;
      return disconnected("peer disconnected (queue pair flushed)");
    }
    fault(what_ + ": receive failed: " + ibv_wc_status_str(wc.status));
    return Status::kDisconnected;
  }
  if (++recvConsumed_ == kRecvBatch) {
    recvConsumed_ = 0;
    ibv_recv_wr* bad = nullptr;
    if (int err = ibv_post_recv(id_->qp, &recvWrs_[0], &bad)) {
      fault(os::errnoText("re-post receives on " + what_, err));
      return Status::kDisconnected;
    }
  }
  if (wc.opcode != IBV_WC_RECV_RDMA_WITH_IMM || !(wc.wc_flags & IBV_WC_WITH_IMM))
    return malformed("a completion that is not a write with immediate");
  uint32_t imm = ntohl(wc.imm_data);
  if (imm & ~kImmLengthMask) return malformed("record type " + std::to_string(imm >> 30) + " unknown");
  uint64_t len = uint64_t{imm} * 8;
  if (len < kRecordHeaderBytes || len > ringBytes_ / kRecordShare)
    return malformed("record of " + std::to_string(len) + " bytes");
  if (wc.byte_len != len) return malformed("record length disagrees with the bytes written");
  uint64_t start = parse_;
  if ((start & ringMask_) + len > ringBytes_) start = (start | ringMask_) + 1;
  const std::byte* p = ring_ + (start & ringMask_);
  RecordHeader rh;
  std::memcpy(&rh, p, sizeof rh);  // one read of the header, then only the copy
  // pairs with the acquire load in refreshCredit (sending thread)
  headerCredit_.store(rh.credit, std::memory_order_release);
  parse_ = start + len;
  ++recordsIn_;
  auto& slot = leases_.next();
  slot.end = parse_;
  slot.aux = recordsIn_;
  std::span<const std::byte> body(p + kRecordHeaderBytes, len - kRecordHeaderBytes);
  if (rh.flags == 0) {
    if (big_.active()) return malformed("whole frame inside a fragmented one");
    std::string why = parseFrame(body, limits_, slot.frame);
    if (!why.empty()) return malformed(why);
    out.attach(*this, leases_.push());
    return Status::kOk;
  }
  if (!(rh.flags & kFragment) || (rh.flags & ~(kFragment | kFirst | kLast)))
    return malformed("record flags " + std::to_string(rh.flags));
  if (rh.flags & kFirst) {
    if (big_.active()) return malformed("a fragmented frame starts inside another");
    if (rh.frameBytes < kFrameHeaderBytes || rh.frameBytes % 8 || rh.frameBytes > maxFrame_)
      return malformed("fragmented frame of " + std::to_string(rh.frameBytes) +
                       " bytes exceeds the maximum message size " + std::to_string(maxMessage_));
    // Memory for the frame comes as its fragments do, not for what the first one claims.
    if (!big_.begin(rh.frameBytes)) return malformed("no memory for a frame of " + std::to_string(rh.frameBytes) + " bytes");
  } else if (!big_.active()) {
    return malformed("a fragment without its first");
  }
  if (big_.filled() + body.size() > big_.size()) return malformed("fragments longer than their frame");
  for (auto rest = body; !rest.empty();) {
    auto room = big_.room();
    if (room.empty()) return malformed("no memory to grow a frame of " + std::to_string(big_.size()) + " bytes");
    size_t n = std::min(room.size(), rest.size());
    std::memcpy(room.data(), rest.data(), n);
    big_.filledBy(n);
    rest = rest.subspan(n);
  }
  if (!(rh.flags & kLast)) {
    releaseLease(leases_.push());  // the ring space is free again at once
    return Status::kWouldBlock;
  }
  if (!big_.complete()) return malformed("fragments shorter than their frame");
  std::string why = parseFrame(std::span<const std::byte>(big_.data(), big_.size()), limits_, slot.frame);
  if (!why.empty()) return malformed(why);
  slot.owned = big_.take();
  out.attach(*this, leases_.push());
  return Status::kOk;
}

Status RdmaConnection::malformed(const std::string& why) {
  fault("malformed record from " + what_ + ": " + why);
  return Status::kDisconnected;
}

void RdmaConnection::handleCmEvents() noexcept {
  for (;;) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(channel_.ch, &ev) != 0) return;
    auto type = ev->event;
    rdma_ack_cm_event(ev);
    if (type == RDMA_CM_EVENT_DISCONNECTED || type == RDMA_CM_EVENT_DEVICE_REMOVAL ||
        type == RDMA_CM_EVENT_TIMEWAIT_EXIT)
      peerGone_ = true;
  }
}

Status RdmaConnection::disconnected(const std::string& why) {
  noteError(why);
  closed_.store(true);
  return Status::kDisconnected;
}

void RdmaConnection::noteError(const std::string& why) {
  std::lock_guard lock(errorMutex_);
  if (error_.empty() && !closedByUs_) error_ = why;
}

void RdmaConnection::fault(std::string why) noexcept {
  faulted_ = true;
  {
    std::lock_guard lock(errorMutex_);
    if (error_.empty()) error_ = std::move(why);
  }
  closed_.store(true);
  disconnectOnce();
}

}  // namespace zcrpc::rdma
