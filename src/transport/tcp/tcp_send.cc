// zcrpc — sending on a tcp connection: the send buffer, the iovec queue and its writes.
#include <cstring>

#include "transport/try_wait.h"
#include "transport/tcp/tcp_connection.h"

namespace zcrpc::tcp {

namespace {

/// The padding that sends take from (never written to).
constexpr std::array<std::byte, kCopyAlignment> kPadding{};

}  // namespace

Status TcpConnection::tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) {
  std::lock_guard lock(sendLock_);
  if (open_.msg) throw InvalidArgument("a message is already open on " + what_);
  if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
  if (firstSegmentWords == 0) firstSegmentWords = 1;
  uint64_t firstBytes = uint64_t{firstSegmentWords} * 8;
  if (firstBytes > maxMessage_)
    throw InvalidArgument("message of " + std::to_string(firstBytes) +
                          " bytes exceeds the maximum message size " +
                          std::to_string(maxMessage_) + " of " + what_);
  if (pendingBytes_.load(std::memory_order_relaxed) > sendBytes_) {
    // Queued large messages count too: the peer is not reading, so stop here.
    writePending();
    if (pendingBytes_.load(std::memory_order_relaxed) > sendBytes_)
      return closed_.load() ? Status::kDisconnected : Status::kWouldBlock;
  }
  bool inBuffer = kFrameHeaderBytes + firstBytes + kTableReserveEntries * 8 <= sendBytes_ / kRecordShare;
  uint64_t need = kFrameHeaderBytes + kTableReserveEntries * 8 + (inBuffer ? firstBytes : 0);
  if (!roomInSendBuffer(need)) return closed_.load() ? Status::kDisconnected : Status::kWouldBlock;
  std::byte* base = send_ + used_;
  auto* header = reinterpret_cast<FrameHeader*>(base);
  std::memset(header, 0, kFrameHeaderBytes);
  header->kind = static_cast<uint8_t>(FrameKind::kData);
  capnp::word* first;
  if (inBuffer) {
    first = reinterpret_cast<capnp::word*>(base + kFrameHeaderBytes);
    std::memset(first, 0, firstBytes);
  } else {
    first = newChunk(firstSegmentWords);
  }
  open_ = OpenFrame{};
  open_.msg = &msg;
  open_.start = used_;
  open_.end = used_ + kFrameHeaderBytes + (inBuffer ? firstBytes : 0);
  open_.allocated = firstBytes;
  msg.open(*this, *header, kj::ArrayPtr<capnp::word>(first, firstSegmentWords));
  return Status::kOk;
}

Status TcpConnection::startMessage(OutgoingMessage& msg, uint32_t words, Deadline deadline) {
  return tryThenWait([&] { return tryStartMessage(msg, words); },
                     [&](auto ready, Deadline d) { return waitFor(ready, d, /*forWrite=*/true); },
                     deadline);
}

Status TcpConnection::send(OutgoingMessage& msg, bool flushNow) {
  // open_ is written only by this, the sending thread (under the lock, which the
  // receiving thread takes to read it): reading it here needs no lock.
  if (open_.msg != &msg)
    throw InvalidArgument("send: message was not started on " + what_ + " or already sent");
  if (closed_.load(std::memory_order_relaxed)) {
    msg.markSent();
    abandon();
    return Status::kDisconnected;
  }
  auto segments = msg.segmentsForSend();  // may allocate through allocateMore(), which locks
  auto refs = msg.references();
  const auto extension = msg.extensions();
  std::unique_lock lock(sendLock_);
  const size_t n = segments.size();
  checkFrameShape(n, extension, maxExtensionBytes(), what_);
  // Data given to referenceData() goes at the end of the segment that holds its field,
  // unless the field was set again since (its placeholder is gone): that value wins.
  constexpr uint8_t kReplaced = 0xff;
  std::array<uint8_t, OutgoingMessage::kMaxReferences> refSegment{};
  uint64_t referenced = 0;
  for (size_t r = 0; r < refs.size(); ++r) {
    const int s = OutgoingMessage::gatherSegment(refs[r], segments);
    refSegment[r] = s < 0 ? kReplaced : static_cast<uint8_t>(s);
    if (s >= 0) referenced += (refs[r].bytes.size() + 7) & ~uint64_t{7};
  }
  // The table goes right after the last segment when that one lies in the buffer (the
  // unused end of its reservation is free now), so a small frame is one contiguous
  // range; otherwise after the open region (room was reserved either way).
  uint64_t tableAt = open_.end;
  if (n) {
    auto* lastEnd = reinterpret_cast<const std::byte*>(segments[n - 1].end());
    if (lastEnd > send_ + open_.start && lastEnd <= send_ + open_.end)
      tableAt = static_cast<uint64_t>(lastEnd - send_);
  }
  if (tableAt + n * sizeof(SegmentEntry) + sizeof(TraceContext) > sendBytes_)
    throw Overloaded("no send buffer room for the segment table on " + what_);
  auto* table = reinterpret_cast<SegmentEntry*>(send_ + tableAt);
  uint64_t payload = referenced;
  for (size_t i = 0; i < n; ++i) payload += uint64_t{segments[i].size()} * 8;
  if (payload > maxMessage_) {
    lock.unlock();
    throw InvalidArgument("message exceeds the maximum message size " +
                          std::to_string(maxMessage_) + " bytes of " + what_);
  }
  uint64_t slack = maxMessage_ - payload;  // for the padding before referenced data
  uint64_t gathered = 0;
  uint64_t frameBytes = kFrameHeaderBytes;
  pushIov(send_ + open_.start, kFrameHeaderBytes);
  size_t external = 0;  // ranges sent from the caller's memory: external_[0, external)
  for (size_t i = 0; i < n; ++i) {
    const capnp::word* seg = segments[i].begin();
    uint64_t bytes = uint64_t{segments[i].size()} * 8;
    bool byReference = false;
    if (bytes && !ownsMemory(seg)) {
      // External data (Orphanage::referenceExternalData). The caller may reuse its buffer
      // once send() returns. A large one (or any, when the frame is written now anyway)
      // goes to the kernel straight from there and only what the kernel did not take is
      // copied before returning; a small one is copied now and coalesced with others.
      if (flushNow || bytes >= kWriteExternalBytes) {
        byReference = true;
        external_[external++] = {reinterpret_cast<const std::byte*>(seg), bytes};
        if (bytes >= kWriteExternalBytes) {
          const uint64_t pad = alignmentPadding(seg);
          pushIov(kPadding.data(), pad, /*joinable=*/false);
          frameBytes += pad;
        }
      } else {
        capnp::word* copy = newChunk(static_cast<uint32_t>(segments[i].size()));
        std::memcpy(copy, seg, bytes);
        seg = copy;
      }
    }
    const uint64_t segmentAt = frameBytes;
    pushIov(seg, bytes, /*joinable=*/!byReference);
    frameBytes += bytes;
    for (size_t r = 0; r < refs.size(); ++r) {
      if (refSegment[r] != i) continue;
      const kj::byte* data = refs[r].bytes.begin();
      const uint64_t size = refs[r].bytes.size();
      uint64_t pad = alignmentPadding(data);
      if (pad > slack) pad = 0;  // inside the segment, so it counts as payload
      slack -= pad;
      pushIov(kPadding.data(), pad, /*joinable=*/false);
      frameBytes += pad;
      // The field points at the data right here, in its segment.
      OutgoingMessage::pointAtGathered(refs[r], segments[i].begin(),
                                       (frameBytes - segmentAt) / 8);
      external_[external++] = {reinterpret_cast<const std::byte*>(data), size};
      pushIov(data, size, /*joinable=*/false);
      const uint64_t tail = (8 - size % 8) % 8;
      pushIov(kPadding.data(), tail, /*joinable=*/false);
      frameBytes += size + tail;
      gathered += pad + size + tail;
    }
    table[i] = {static_cast<uint32_t>((frameBytes - segmentAt) / 8),
                static_cast<uint32_t>(segmentAt / 8)};
  }
  const bool traced = msg.trace().valid();
  const uint64_t tail = n * sizeof(SegmentEntry) + (traced ? sizeof(TraceContext) : 0);
  if (traced) std::memcpy(send_ + tableAt + n * sizeof(SegmentEntry), &msg.trace(), sizeof(TraceContext));
  pushIov(table, tail);
  used_ = tableAt + tail;
  // The extension area ends the frame: after the table in the buffer when it fits there,
  // else from a chunk of its own.
  const uint64_t extensionBytes = extension.size() * sizeof(capnp::word);
  if (extensionBytes) [[unlikely]] {
    std::byte* at = send_ + used_;
    if (used_ + extensionBytes <= sendBytes_)
      used_ += extensionBytes;
    else
      at = reinterpret_cast<std::byte*>(newChunk(static_cast<uint32_t>(extension.size())));
    std::memcpy(at, extension.begin(), extensionBytes);
    pushIov(at, extensionBytes);
  }
  frameBytes += tail + extensionBytes;
  FrameHeader& h = msg.header();
  h.frameBytes = static_cast<uint32_t>(frameBytes);
  h.segmentCount = static_cast<uint16_t>(n);
  h.tableOffset = static_cast<uint32_t>(frameBytes - tail - extensionBytes);
  h.flags = (traced ? kFlagTraced : 0) | (extensionBytes ? kFlagExtended : 0);
  h.reserved = 0;
  open_.msg = nullptr;
  msg.setGatheredBytes(gathered);
  msg.markSent();
  if (flushNow || external || pending_.size() > kMaxIov - kMaxSegments - 2) writePending();
  if (external && pendingBytes_.load(std::memory_order_relaxed)) copyUnsentExternal(external);
  return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
}

Status TcpConnection::flush() {
  std::lock_guard lock(sendLock_);
  if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
  writePending();
  return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
}

kj::ArrayPtr<capnp::word> TcpConnection::allocateMore(uint32_t minWords) {
  std::lock_guard lock(sendLock_);
  uint64_t remaining = maxMessage_ - open_.allocated;
  uint64_t minBytes = uint64_t{minWords} * 8;
  if (minBytes > remaining)
    throw InvalidArgument("message exceeds the maximum message size " +
                          std::to_string(maxMessage_) + " bytes of " + what_);
  uint64_t want = std::min(std::max(minBytes, open_.allocated), remaining);
  capnp::word* seg;
  uint64_t room = sendBytes_ - open_.end;
  uint64_t reserve = kTableRoom;
  if (want + reserve <= room && want <= sendBytes_ / kRecordShare) {
    auto* p = send_ + open_.end;
    std::memset(p, 0, want);
    seg = reinterpret_cast<capnp::word*>(p);
    open_.end += want;
  } else if (minBytes + reserve <= room && minBytes <= sendBytes_ / kRecordShare) {
    want = minBytes;
    auto* p = send_ + open_.end;
    std::memset(p, 0, want);
    seg = reinterpret_cast<capnp::word*>(p);
    open_.end += want;
  } else {
    seg = newChunk(static_cast<uint32_t>(want / 8));
  }
  open_.allocated += want;
  return kj::ArrayPtr<capnp::word>(seg, want / 8);
}

void TcpConnection::abandon() noexcept {
  std::lock_guard lock(sendLock_);
  open_.msg = nullptr;
  // Chunks made for this message and not queued: drop them.
  while (!chunks_.empty() && chunks_.back().queuedAt == kNotQueued) chunks_.pop_back();
}

capnp::word* TcpConnection::newChunk(uint32_t words) {
  chunks_.push_back(Chunk{std::unique_ptr<capnp::word[]>(new capnp::word[words]()), kNotQueued});
  return chunks_.back().words.get();
}

bool TcpConnection::roomInSendBuffer(uint64_t need) {
  if (used_ + need + kTableRoom <= sendBytes_) return true;
  writePending();
  return used_ + need + kTableRoom <= sendBytes_;
}

inline void TcpConnection::pushIov(const void* p, uint64_t bytes, bool joinable) {
  if (!bytes) return;
  auto* b = const_cast<void*>(p);
  if (!pending_.empty() && joinable && lastJoinable_) {
    iovec& last = pending_.back();
    if (static_cast<std::byte*>(last.iov_base) + last.iov_len == b) {
      last.iov_len += bytes;
      pendingBytes_ += bytes;
      return;
    }
  }
  lastJoinable_ = joinable;
  pending_.push_back({b, bytes});
  pendingBytes_ += bytes;
  for (auto& c : chunks_)
    if (c.queuedAt == kNotQueued && reinterpret_cast<void*>(c.words.get()) == b)
      c.queuedAt = sentTotal_ + pendingBytes_;
}

bool TcpConnection::ownsMemory(const capnp::word* p) const noexcept {
  auto* b = reinterpret_cast<const std::byte*>(p);
  if (b >= send_ && b < send_ + sendBytes_) return true;
  for (auto& c : chunks_)
    if (c.words.get() == p) return true;
  return false;
}

void TcpConnection::copyUnsentExternal(size_t external) {
  uint64_t at = sentTotal_;
  for (iovec& v : pending_) {
    at += v.iov_len;
    auto* b = static_cast<const std::byte*>(v.iov_base);
    for (size_t e = 0; e < external; ++e) {
      const std::byte* begin = external_[e].begin;
      if (b < begin || b >= begin + external_[e].bytes) continue;
      auto* copy = newChunk(static_cast<uint32_t>((v.iov_len + 7) / 8));
      std::memcpy(copy, b, v.iov_len);
      v.iov_base = copy;
      chunks_.back().queuedAt = at;
      break;
    }
  }
}

void TcpConnection::writePending() {
  while (!pending_.empty()) {
    ssize_t n = stream_->write(pending_.data(), pending_.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      fault(ioError("write to", errno));
      return;
    }
    size_t left = static_cast<size_t>(n);
    sentTotal_ += left;
    pendingBytes_ -= left;
    size_t i = 0;
    while (i < pending_.size() && left >= pending_[i].iov_len) left -= pending_[i++].iov_len;
    if (i < pending_.size() && left) {
      pending_[i].iov_base = static_cast<std::byte*>(pending_[i].iov_base) + left;
      pending_[i].iov_len -= left;
    }
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(i));
  }
  // A layer with buffers (TLS) took it all: push out what it holds for the socket.
  if (streamBuffers_ && !stream_->flushOutput() && !stream_->failure().empty()) {
    fault(ioError("write to", EPROTO));
    return;
  }
  // Everything is in the kernel (or encrypted in the layer's own memory): the buffer and
  // the chunks are free again.
  if (!open_.msg) used_ = 0;
  while (!chunks_.empty() && chunks_.front().queuedAt != kNotQueued &&
         chunks_.front().queuedAt <= sentTotal_)
    chunks_.pop_front();
}

}  // namespace zcrpc::tcp
