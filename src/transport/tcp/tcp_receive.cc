// zcrpc — receiving on a tcp connection: the receive ring, frames in place, big frames.
#include <sys/socket.h>

#include <cstring>

#include "transport/tcp/tcp_connection.h"
#include "transport/try_wait.h"

namespace zcrpc::tcp {

Status TcpConnection::tryReceive(IncomingMessage& out) {
  if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
  if (leases_.full()) {
    leases_.reclaim([&](uint64_t end) { head_.store(end, std::memory_order_release); });
    if (leases_.full()) {
      flushFromReceiver();
      return Status::kWouldBlock;
    }
  }
  Status s = tryFrame(out);
  if (s != Status::kWouldBlock) return s;
  // Nothing buffered to hand out: what we queued goes out before we look for more (a
  // caller may be waiting for the answer to it). While frames are buffered, queued output
  // stays put and coalesces: a server's answers to a batch of requests that arrived
  // together leave in one write when its pump flushes, not one write per request.
  flushFromReceiver();
  for (int reads = 0; reads < 4 && readMore(); ++reads) {
    s = tryFrame(out);
    if (s != Status::kWouldBlock) return s;
  }
  if (eof_) return drainedOrDisconnected(out);
  return Status::kWouldBlock;
}

Status TcpConnection::receive(IncomingMessage& out, Deadline deadline) {
  return tryThenWait([&] { return tryReceive(out); },
                     [&](auto ready, Deadline d) { return waitFor(ready, d, /*forWrite=*/false); },
                     deadline);
}

bool TcpConnection::frameBuffered() const noexcept {
  uint64_t avail = tail_ - parse_;
  if (avail < kFrameHeaderBytes) return false;
  uint32_t frameBytes;
  std::memcpy(&frameBytes, ring_ + (parse_ & ringMask_), sizeof frameBytes);
  return avail >= frameBytes;
}

Status TcpConnection::tryFrame(IncomingMessage& out) {
  if (big_.active()) return continueBig(out);
  uint64_t avail = tail_ - parse_;
  if (avail < kFrameHeaderBytes) return Status::kWouldBlock;
  uint32_t frameBytes;
  std::memcpy(&frameBytes, ring_ + (parse_ & ringMask_), sizeof frameBytes);
  if (frameBytes < kFrameHeaderBytes || frameBytes % 8 || frameBytes > maxFrame_)
    return badFrameSize(frameBytes);
  if (frameBytes > ringBytes_ / kRecordShare) return startBig(frameBytes, out);
  afterBig_ = false;
  if (avail < frameBytes) return Status::kWouldBlock;
  auto& slot = leases_.next();
  std::string why = parseFrame(std::span<const std::byte>(ring_ + (parse_ & ringMask_), frameBytes),
                               limits_, slot.frame);
  if (!why.empty()) return malformedFrame(why);
  parse_ += frameBytes;
  slot.end = parse_;
  out.attach(*this, leases_.push());
  return Status::kOk;
}

Status TcpConnection::badFrameSize(uint32_t frameBytes) {
  fault("frame of " + std::to_string(frameBytes) + " bytes from " + what_ +
        " is malformed or exceeds the maximum message size " + std::to_string(maxMessage_));
  return Status::kDisconnected;
}

Status TcpConnection::malformedFrame(const std::string& why) {
  fault("malformed frame from " + what_ + ": " + why);
  return Status::kDisconnected;
}

Status TcpConnection::startBig(uint32_t frameBytes, IncomingMessage& out) {
  uint64_t have = std::min<uint64_t>(tail_ - parse_, frameBytes);
  // Memory for the frame comes as its bytes do (FrameAssembly), not for what it claims.
  if (!big_.begin(frameBytes, have)) {
    fault("no memory for a frame of " + std::to_string(frameBytes) + " bytes from " + what_);
    return Status::kDisconnected;
  }
  std::memcpy(big_.room().data(), ring_ + (parse_ & ringMask_), have);  // what already arrived
  big_.filledBy(have);
  afterBig_ = true;
  parse_ += have;
  // The rest of this frame goes straight into its own buffer; the next frame starts
  // in the ring on an 8-byte boundary again.
  if (parse_ == tail_) parse_ = tail_ = (tail_ + 7) & ~uint64_t{7};
  return continueBig(out);
}

[[gnu::noinline]] Status TcpConnection::continueBig(IncomingMessage& out) {
  // One call reads at most kBigReadPerCall: a peer streaming a large frame as fast as it
  // can must not keep a server's worker from its other connections until it is whole.
  for (uint64_t taken = 0; !big_.complete(); ) {
    if (taken >= kBigReadPerCall) return Status::kWouldBlock;
    auto room = big_.room();
    if (room.empty()) {
      fault("no memory to grow a frame of " + std::to_string(big_.size()) + " bytes from " + what_ +
            " past " + std::to_string(big_.filled()));
      big_.reset();
      return Status::kDisconnected;
    }
    ssize_t n = stream_->read(room.data(), std::min<uint64_t>(room.size(), kBigReadPerCall - taken));
    if (n > 0) {
      big_.filledBy(static_cast<size_t>(n));
      taken += static_cast<uint64_t>(n);
      continue;
    }
    if (n == 0) {
      eof_ = true;
      return Status::kWouldBlock;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return Status::kWouldBlock;
    fault(ioError("read from", errno));
    return Status::kDisconnected;
  }
  auto& slot = leases_.next();
  std::string why = parseFrame(std::span<const std::byte>(big_.data(), big_.size()), limits_, slot.frame);
  if (!why.empty()) {
    fault("malformed frame from " + what_ + ": " + why);
    big_.reset();
    return Status::kDisconnected;
  }
  slot.end = parse_;  // ring bytes this frame used (its first part) are free with it
  slot.owned = big_.take();
  out.attach(*this, leases_.push());
  return Status::kOk;
}

[[gnu::always_inline]] inline bool TcpConnection::readMore() {
  if (big_.active()) return false;
  if (leases_.empty()) {
    // Nothing held and nothing buffered: read into the ring's start again, where the last
    // frames left their lines in cache, rather than walking the whole (cold) ring.
    uint64_t to = parse_ == tail_ && (tail_ & ringMask_) ? (tail_ | ringMask_) + 1 : parse_;
    // Already there (the usual case while polling): no lock to take.
    if (head_.load(std::memory_order_relaxed) != to)
      leases_.syncHead(to, [&](uint64_t p) {  // only while no lease exists
        if (p != parse_) parse_ = tail_ = p;
        head_.store(p, std::memory_order_release);
      });
  }
  uint64_t head = head_.load(std::memory_order_acquire);
  uint64_t offset = tail_ & ringMask_;
  // A partial frame that would run past the end of the ring moves to the next lap.
  uint64_t avail = tail_ - parse_;
  uint64_t need = kFrameHeaderBytes;
  if (avail >= kFrameHeaderBytes) {
    uint32_t frameBytes;
    std::memcpy(&frameBytes, ring_ + (parse_ & ringMask_), sizeof frameBytes);
    if (frameBytes <= ringBytes_ / kRecordShare) need = frameBytes;
  }
  if ((parse_ & ringMask_) + need > ringBytes_) {
    uint64_t lap = (parse_ | ringMask_) + 1;
    if (lap + need - head > ringBytes_) return false;  // wait for leases to go
    std::memmove(ring_, ring_ + (parse_ & ringMask_), avail);
    parse_ = lap;
    tail_ = lap + avail;
    offset = tail_ & ringMask_;
  }
  uint64_t space = std::min(ringBytes_ - offset, head + ringBytes_ - tail_);
  // After a big frame, the next header is read alone: if that frame is big too, all of
  // it goes straight to its own buffer, rather than what one read brought into the ring
  // (often hundreds of KiB) being copied there. One more read per frame while big frames
  // come; small ones clear it.
  if (afterBig_ && avail == 0) space = std::min<uint64_t>(space, kFrameHeaderBytes);
  if (space == 0) return false;
  ssize_t n = stream_->read(ring_ + offset, space);
  if (n > 0) {
    tail_ += static_cast<uint64_t>(n);
    return true;
  }
  if (n == 0) {
    eof_ = true;
    return false;
  }
  if (errno == EINTR) return true;
  if (errno != EAGAIN) {
    fault(ioError("read from", errno));
    eof_ = true;
  }
  return false;
}

Status TcpConnection::drainedOrDisconnected(IncomingMessage&) {
  std::lock_guard lock(errorMutex_);
  if (error_.empty()) error_ = "peer closed the connection";
  closed_.store(true);
  return Status::kDisconnected;
}

}  // namespace zcrpc::tcp
