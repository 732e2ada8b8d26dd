// zcrpc — rdma data path, sending: the send buffer, records and fragments posted as far as
// the peer's credits allow, credits posted and learnt, send completions.
#include <arpa/inet.h>

#include "transport/try_wait.h"
#include "transport/rdma/rdma_connection.h"

namespace zcrpc::rdma {

Status RdmaConnection::tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) {
  std::lock_guard lock(sendLock_);
  if (open_.msg) throw InvalidArgument("a message is already open on " + what_);
  if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
  if (firstSegmentWords == 0) firstSegmentWords = 1;
  uint64_t firstBytes = uint64_t{firstSegmentWords} * 8;
  if (firstBytes > maxMessage_)
    throw InvalidArgument("message of " + std::to_string(firstBytes) +
                          " bytes exceeds the maximum message size " + std::to_string(maxMessage_) +
                          " of " + what_);
  if (outCount()) {
    pump();  // records waiting for credits go first
    if (outCount() >= kOutQueue - 1) return blockedOrDisconnected();
  }
  bool inBuffer = kRecordHeaderBytes + kFrameHeaderBytes + firstBytes + kTableReserve <= sendBytes_ / kRecordShare;
  uint64_t need = kRecordHeaderBytes + kFrameHeaderBytes + kTableReserve + (inBuffer ? firstBytes : 0);
  uint64_t at = 0;
  if (!reserveSend(need, at)) {
    pollSend();
    if (!reserveSend(need, at)) {
      pump();
      forceSignal();
      return blockedOrDisconnected();
    }
  }
  open_ = OpenFrame{};
  open_.msg = &msg;
  open_.start = at;
  open_.end = at + kRecordHeaderBytes + kFrameHeaderBytes + (inBuffer ? firstBytes : 0);
  open_.limit = std::min((at | sendMask_) + 1, sendHead_ + sendBytes_);
  open_.allocated = firstBytes;
  open_.chunkBase = chunkSeq_;
  sendTail_ = open_.end;
  std::byte* base = send_ + (at & sendMask_);
  std::memset(base, 0, kRecordHeaderBytes + kFrameHeaderBytes);
  auto* header = reinterpret_cast<FrameHeader*>(base + kRecordHeaderBytes);
  header->kind = static_cast<uint8_t>(FrameKind::kData);
  capnp::word* first;
  if (inBuffer) {
    first = reinterpret_cast<capnp::word*>(base + kRecordHeaderBytes + kFrameHeaderBytes);
    std::memset(first, 0, firstBytes);
  } else {
    first = newChunk(firstSegmentWords);
  }
  msg.open(*this, *header, kj::ArrayPtr<capnp::word>(first, firstSegmentWords));
  return Status::kOk;
}

Status RdmaConnection::startMessage(OutgoingMessage& msg, uint32_t words, Deadline deadline) {
  return tryThenWait([&] { return tryStartMessage(msg, words); },
                     [&](auto ready, Deadline d) { return waitFor(ready, d, /*forWrite=*/true); },
                     deadline);
}

Status RdmaConnection::send(OutgoingMessage& msg, bool flushNow) {
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
  const auto extension = msg.extensions();
  std::unique_lock lock(sendLock_);
  const size_t n = segments.size();
  checkFrameShape(n, extension, maxExtensionBytes(), what_);
  const uint64_t extensionBytes = extension.size() * sizeof(capnp::word);
  uint64_t tablePos = open_.end;  // room was reserved
  auto* table = reinterpret_cast<SegmentEntry*>(send_ + (tablePos & sendMask_));
  OutEntry& e = out_[outTail_ % kOutQueue];
  e = OutEntry{};
  auto add = [&](const void* p, uint64_t bytes, uint32_t lkey) {
    if (!bytes) return;
    uint64_t addr = reinterpret_cast<uint64_t>(p);
    if (e.nsge && e.sge[e.nsge - 1].lkey == lkey &&
        e.sge[e.nsge - 1].addr + e.sge[e.nsge - 1].length == addr) {
      e.sge[e.nsge - 1].length += static_cast<uint32_t>(bytes);
    } else {
      e.sge[e.nsge++] = ibv_sge{addr, static_cast<uint32_t>(bytes), lkey};
    }
  };
  std::byte* recordStart = send_ + (open_.start & sendMask_);
  add(recordStart, kRecordHeaderBytes + kFrameHeaderBytes, sendMr_.lkey());
  uint64_t frameBytes = kFrameHeaderBytes;
  for (size_t i = 0; i < n; ++i) {
    uint64_t bytes = uint64_t{segments[i].size()} * 8;
    table[i] = {static_cast<uint32_t>(segments[i].size()), static_cast<uint32_t>(frameBytes / 8)};
    add(segments[i].begin(), bytes, lkeyOf(segments[i].begin()));
    frameBytes += bytes;
  }
  if (frameBytes - kFrameHeaderBytes > maxMessage_) {
    lock.unlock();
    throw InvalidArgument("message exceeds the maximum message size " + std::to_string(maxMessage_) +
                          " bytes of " + what_);
  }
  // Table, trace context and extension area follow the last segment in the reserved room
  // (an extension area larger than kExtensionRoom from a registered chunk of its own).
  const bool traced = msg.trace().valid();
  uint64_t tail = n * sizeof(SegmentEntry);
  if (traced) {
    std::memcpy(send_ + ((tablePos + tail) & sendMask_), &msg.trace(), sizeof(TraceContext));
    tail += sizeof(TraceContext);
  }
  add(table, tail, sendMr_.lkey());
  const uint64_t tableOffset = frameBytes;
  frameBytes += tail;
  if (extensionBytes) [[unlikely]] {
    std::byte* at;
    if (extensionBytes <= kExtensionRoom) {
      at = send_ + ((tablePos + tail) & sendMask_);
      tail += extensionBytes;
    } else {
      at = reinterpret_cast<std::byte*>(newChunk(static_cast<uint32_t>(extension.size())));
    }
    std::memcpy(at, extension.begin(), extensionBytes);
    add(at, extensionBytes, lkeyOf(at));
    frameBytes += extensionBytes;
  }
  FrameHeader& h = msg.header();
  h.frameBytes = static_cast<uint32_t>(frameBytes);
  h.segmentCount = static_cast<uint16_t>(n);
  h.tableOffset = static_cast<uint32_t>(tableOffset);
  h.flags = (traced ? kFlagTraced : 0) | (extensionBytes ? kFlagExtended : 0);
  h.reserved = 0;
  auto* rh = reinterpret_cast<RecordHeader*>(recordStart);
  rh->flags = 0;
  rh->frameBytes = static_cast<uint32_t>(frameBytes);
  e.header = rh;
  e.bytes = static_cast<uint32_t>(kRecordHeaderBytes + frameBytes);
  sendTail_ = tablePos + tail;
  e.sendEnd = sendTail_;
  e.chunkEnd = chunkSeq_;
  if (e.bytes > peerRingBytes_ / kRecordShare || e.nsge > maxSge_) makeBig(e, frameBytes);
  ++outTail_;
  open_.msg = nullptr;
  msg.markSent();
  // An unflushed record waits to share a doorbell with those sent after it (a stream
  // of sends, or the answers to requests that were received together). The first one
  // sent after taking the last message polled is an answer with nothing left to batch
  // it with: waiting would only cost the peer the time until flush() (for a server:
  // the rest of the handler, releasing the request, the next poll), so it goes now.
  bool answer = lastTaken_.load(std::memory_order_relaxed);
  if (answer) lastTaken_.store(false, std::memory_order_relaxed);
  if (flushNow || answer || outCount() >= kPostBatch) pump();
  return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
}

Status RdmaConnection::flush() {
  std::lock_guard lock(sendLock_);
  if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
  pump();
  return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
}

kj::ArrayPtr<capnp::word> RdmaConnection::allocateMore(uint32_t minWords) {
  std::lock_guard lock(sendLock_);
  uint64_t remaining = maxMessage_ - open_.allocated;
  uint64_t minBytes = uint64_t{minWords} * 8;
  if (minBytes > remaining)
    throw InvalidArgument("message exceeds the maximum message size " + std::to_string(maxMessage_) +
                          " bytes of " + what_);
  uint64_t want = std::min(std::max(minBytes, open_.allocated), remaining);
  uint64_t room = open_.limit > open_.end + kTableReserve ? open_.limit - open_.end - kTableReserve : 0;
  capnp::word* seg;
  auto inBuffer = [&](uint64_t bytes) {
    auto* p = send_ + (open_.end & sendMask_);
    std::memset(p, 0, bytes);
    open_.end += bytes;
    sendTail_ = open_.end;
    return reinterpret_cast<capnp::word*>(p);
  };
  if (want <= room && want <= sendBytes_ / kRecordShare) {
    seg = inBuffer(want);
  } else if (minBytes <= room && minBytes <= sendBytes_ / kRecordShare) {
    want = minBytes;
    seg = inBuffer(want);
  } else {
    seg = newChunk(static_cast<uint32_t>(want / 8));
  }
  open_.allocated += want;
  return kj::ArrayPtr<capnp::word>(seg, want / 8);
}

void RdmaConnection::abandon() noexcept {
  std::lock_guard lock(sendLock_);
  if (open_.msg) sendTail_ = open_.start;
  open_.msg = nullptr;
  while (chunkSeq_ > open_.chunkBase && !chunks_.empty() && chunks_.back().freeAfter == ~uint64_t{0}) {
    chunks_.pop_back();
    --chunkSeq_;
  }
}

void RdmaConnection::lazyCredit(bool any) noexcept {
  bool want = any ? releasedRecords_.load(std::memory_order_acquire) != creditSent_.load(std::memory_order_relaxed)
                  : creditWorthSending();
  if (!want) return;
  std::lock_guard lock(sendLock_);
  postCredit();
}

void RdmaConnection::postCredit() noexcept {
  if (closed_.load(std::memory_order_relaxed) || faulted_ || !peerAddr_) return;
  uint64_t r = releasedRecords_.load(std::memory_order_acquire);
  if (r == creditSent_.load(std::memory_order_relaxed)) return;
  if (postSeq_ - completedSeq_ >= kSendDepth - 1) {
    pollSend();
    if (postSeq_ - completedSeq_ >= kSendDepth - 1) return;  // the next data record carries it
  }
  *creditSource_ = static_cast<uint32_t>(r);
  ibv_sge sge{reinterpret_cast<uint64_t>(creditSource_), 4, sendMr_.lkey()};
  ibv_send_wr wr{};
  wr.wr_id = postSeq_;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_RDMA_WRITE;
  wr.send_flags = maxInline_ >= 4 ? IBV_SEND_INLINE : 0;
  if (postSeq_ - lastSignal_ >= kSignalEvery) wr.send_flags |= IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = peerAddr_ + peerRingBytes_;
  wr.wr.rdma.rkey = peerRkey_;
  marks_[postSeq_ % kSendDepth] = 0;
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(id_->qp, &wr, &bad)) {
    fault(os::errnoText("post credit write on " + what_, err));
    return;
  }
  if (wr.send_flags & IBV_SEND_SIGNALED) lastSignal_ = postSeq_;
  ++postSeq_;
  creditSent_.store(r, std::memory_order_relaxed);
  creditSentPos_.store(releasedPos_.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

void RdmaConnection::refreshCredit() noexcept {
  uint64_t inFlight = recordsSent_ - peerAcked_;
  if (!inFlight) return;
  // The credit word is written by the peer's NIC; read it once.
  uint32_t a = __atomic_load_n(creditWord_, __ATOMIC_ACQUIRE);
  uint32_t b = headerCredit_.load(std::memory_order_acquire);
  for (uint32_t v : {a, b}) {
    uint32_t delta = v - static_cast<uint32_t>(peerAcked_);
    if (delta && delta <= recordsSent_ - peerAcked_) peerAcked_ += delta;
  }
}

capnp::word* RdmaConnection::newChunk(uint32_t words) {
  uint64_t bytes = std::max<uint64_t>(uint64_t{words} * 8, 8);
  chunks_.push_back(Chunk{Registered(pd_, bytes, IBV_ACCESS_LOCAL_WRITE, what_ + " send chunk")});
  ++chunkSeq_;
  return reinterpret_cast<capnp::word*>(chunks_.back().mem.data());
}

uint32_t RdmaConnection::lkeyOf(const void* p) const noexcept {
  auto* b = static_cast<const std::byte*>(p);
  if (b >= send_ && b < send_ + sendBytes_) return sendMr_.lkey();
  for (auto it = chunks_.rbegin(); it != chunks_.rend(); ++it)
    if (b >= it->mem.data() && b < it->mem.data() + it->mem.size()) return it->mem.lkey();
  return sendMr_.lkey();  // an empty segment (size 0 is never added)
}

void RdmaConnection::makeBig(OutEntry& e, uint64_t frameBytes) {
  auto big = std::make_unique<BigSend>();
  big->frameBytes = frameBytes;
  for (uint32_t i = 0; i < e.nsge; ++i) big->pieces.push_back(e.sge[i]);
  big->pieces[0].addr += kRecordHeaderBytes;
  big->pieces[0].length -= kRecordHeaderBytes;
  uint64_t payload = peerRingBytes_ / kRecordShare - kRecordHeaderBytes;
  uint64_t worst = frameBytes / 8 + e.nsge + 1;  // a fragment per gather-limit too
  uint64_t fragments = std::min<uint64_t>((frameBytes + payload - 1) / payload + e.nsge, worst);
  // The headers live in a chunk, freed with the message's other chunks after completion.
  chunks_.push_back(Chunk{Registered(pd_, fragments * kRecordHeaderBytes, IBV_ACCESS_LOCAL_WRITE,
                                     what_ + " fragment headers")});
  ++chunkSeq_;
  big->headers = chunks_.back().mem.data();
  big->headersLkey = chunks_.back().mem.lkey();
  big->fragments = static_cast<uint32_t>(fragments);
  e.big = std::move(big);
  e.chunkEnd = chunkSeq_;
}

void RdmaConnection::pump() noexcept {
  if (closed_.load(std::memory_order_relaxed) && !draining_) return;
  if (faulted_ || !outCount()) return;
  std::array<ibv_send_wr, kPostBatch> wrs;
  std::array<std::array<ibv_sge, kLocalSge>, kPostBatch> fragSge;
  uint32_t n = 0;
  uint64_t creditPos = releasedPos_.load(std::memory_order_relaxed);
  uint64_t creditAll = releasedRecords_.load(std::memory_order_acquire);
  auto credit = static_cast<uint32_t>(creditAll);
  bool pollOnce = true;
  while (outCount() && n < kPostBatch) {
    if (postSeq_ + n - completedSeq_ >= kSendDepth - 2) {
      if (!pollOnce) break;
      pollOnce = false;
      pollSend();
      continue;
    }
    OutEntry& e = out_[outHead_ % kOutQueue];
    ibv_send_wr& wr = wrs[n];
    wr = ibv_send_wr{};
    uint32_t bytes;
    bool last = true;
    if (e.big) {
      if (!nextFragment(e, fragSge[n], wr, bytes, last)) break;
    } else {
      bytes = e.bytes;
      wr.sg_list = e.sge.data();
      wr.num_sge = static_cast<int>(e.nsge);
    }
    refreshCredit();
    if (recordsSent_ - peerAcked_ >= peerCredits_) break;
    uint64_t pos = peerTail_;
    if ((pos & peerMask_) + bytes > peerRingBytes_) pos = (pos | peerMask_) + 1;
    if (pos + bytes - peerHead() > peerRingBytes_) break;
    // committed
    RecordHeader* rh = e.big ? reinterpret_cast<RecordHeader*>(wr.sg_list[0].addr) : e.header;
    rh->credit = credit;
    if (e.big) commitFragment(e, bytes, last);
    wr.wr_id = postSeq_ + n;
    wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.imm_data = htonl(bytes / 8);
    wr.wr.rdma.remote_addr = peerAddr_ + (pos & peerMask_);
    wr.wr.rdma.rkey = peerRkey_;
    if (bytes <= maxInline_) wr.send_flags |= IBV_SEND_INLINE;
    uint64_t seq = postSeq_ + n;
    bool holdsChunks = last && e.chunkEnd > chunkFreed_;
    if (seq - lastSignal_ >= kSignalEvery || holdsChunks || e.big ||
        sendTail_ - sendHead_ >= sendBytes_ / 4) {
      wr.send_flags |= IBV_SEND_SIGNALED;
      lastSignal_ = seq;
    }
    marks_[seq % kSendDepth] = last ? e.sendEnd : 0;
    if (last) {
      for (auto i = chunkFreed_; i < e.chunkEnd; ++i) chunks_[i - chunkFront_].freeAfter = seq + 1;
      chunkFreed_ = std::max(chunkFreed_, e.chunkEnd);
    }
    recordEnds_[recordsSent_ & (peerCredits_ - 1)] = pos + bytes;
    ++recordsSent_;
    peerTail_ = pos + bytes;
    if (n) wrs[n - 1].next = &wr;
    ++n;
    if (last) {
      e.big.reset();
      ++outHead_;
    }
  }
  if (!n) return;
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(id_->qp, &wrs[0], &bad)) {
    fault(os::errnoText("ibv_post_send on " + what_, err));
    return;
  }
  postSeq_ += n;
  creditSent_.store(creditAll, std::memory_order_relaxed);
  creditSentPos_.store(creditPos, std::memory_order_relaxed);
}

bool RdmaConnection::nextFragment(OutEntry& e, std::array<ibv_sge, kLocalSge>& sge, ibv_send_wr& wr, uint32_t& bytes,
                  bool& last) noexcept {
  BigSend& b = *e.big;
  uint64_t payloadMax = peerRingBytes_ / kRecordShare - kRecordHeaderBytes;
  if (b.fragment >= b.fragments) return false;
  auto* rh = reinterpret_cast<RecordHeader*>(b.headers) + b.fragment;
  sge[0] = ibv_sge{reinterpret_cast<uint64_t>(rh), kRecordHeaderBytes, b.headersLkey};
  uint32_t ns = 1;
  uint64_t payload = 0;
  size_t piece = b.piece;
  uint32_t offset = b.pieceOffset;
  while (piece < b.pieces.size() && payload < payloadMax && ns < maxSge_) {
    const ibv_sge& p = b.pieces[piece];
    uint64_t take = std::min<uint64_t>(p.length - offset, payloadMax - payload);
    sge[ns++] = ibv_sge{p.addr + offset, static_cast<uint32_t>(take), p.lkey};
    payload += take;
    offset += static_cast<uint32_t>(take);
    if (offset == p.length) ++piece, offset = 0;
  }
  rh->flags = static_cast<uint16_t>(kFragment | (b.sent == 0 ? kFirst : 0));
  rh->frameBytes = static_cast<uint32_t>(b.frameBytes);
  rh->reserved = 0;
  rh->reserved2 = 0;
  last = b.sent + payload == b.frameBytes;
  if (last) rh->flags |= kLast;
  wr.sg_list = sge.data();
  wr.num_sge = static_cast<int>(ns);
  bytes = static_cast<uint32_t>(kRecordHeaderBytes + payload);
  b.nextPiece = piece;
  b.nextOffset = offset;
  return true;
}

void RdmaConnection::commitFragment(OutEntry& e, uint32_t bytes, bool) noexcept {
  BigSend& b = *e.big;
  b.sent += bytes - kRecordHeaderBytes;
  b.piece = b.nextPiece;
  b.pieceOffset = b.nextOffset;
  ++b.fragment;
}

void RdmaConnection::forceSignal() noexcept {
  if (faulted_ || !peerAddr_ || postSeq_ == 0 || lastSignal_ + 1 == postSeq_) return;
  if (postSeq_ - completedSeq_ >= kSendDepth) return;
  ibv_send_wr wr{};
  wr.wr_id = postSeq_;
  wr.opcode = IBV_WR_RDMA_WRITE;
  wr.num_sge = 0;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = peerAddr_ + peerRingBytes_;
  wr.wr.rdma.rkey = peerRkey_;
  marks_[postSeq_ % kSendDepth] = 0;
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(id_->qp, &wr, &bad)) {
    fault(os::errnoText("post signalled write on " + what_, err));
    return;
  }
  lastSignal_ = postSeq_;
  ++postSeq_;
}

void RdmaConnection::pollSend() noexcept {
  if (completedSeq_ == postSeq_) return;
  ibv_wc wc[16];
  int n = ibv_poll_cq(sendCq_, 16, wc);
  if (n < 0) {
    fault(what_ + ": ibv_poll_cq (send) failed");
    return;
  }
  for (int i = 0; i < n; ++i) {
    if (wc[i].status != IBV_WC_SUCCESS) {
      fault(what_ + ": send failed: " + ibv_wc_status_str(wc[i].status));
      return;
    }
    uint64_t done = wc[i].wr_id + 1;
    for (uint64_t s = completedSeq_; s < done; ++s)
      if (uint64_t m = marks_[s % kSendDepth]) sendHead_ = std::max(sendHead_, m);
    completedSeq_ = std::max(completedSeq_, done);
  }
  while (!chunks_.empty() && chunks_.front().freeAfter <= completedSeq_) {
    chunks_.pop_front();
    ++chunkFront_;
  }
  if (!open_.msg && completedSeq_ == postSeq_ && !outCount()) sendHead_ = sendTail_;
}

}  // namespace zcrpc::rdma
