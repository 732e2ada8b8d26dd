// Streams (`-> stream` methods) in a Session: the caller's chunks and the flow they free
// room in, and the answers the receiver holds for chunks that succeeded and sends
// together in one ack frame (docs/wire-format.md, "Streams"). Threads: the session's driver.
#include <string>

#include "rpc/frames.h"
#include "rpc/session.h"

namespace zcrpc {

// ------------------------------------------------------------------------------------
// The caller: chunks out, answers and acks in

void Session::sendChunk(OutgoingMessage& msg, const std::shared_ptr<StreamFlow>& flow,
                        std::string_view methodName, uint32_t target) {
  const uint64_t bytes = sentPayloadBytes(msg);
  // The chunk that takes the flow to half its window, and the one that fills it, ask
  // for their answers at once (a request, whose answer brings the acks held before it);
  // the others' answers may wait for an ack with others (a stream request). So a flow
  // that runs ahead gets its room back halfway, and one that waits gets it whole.
  const uint32_t limit = streamWindowCalls(options_);
  const uint64_t calls = flow->calls_ + uint64_t{1}, total = flow->bytes_ + bytes;
  const uint64_t halfBytes = options_.streamWindowBytes / 2;
  const bool askNow = (calls == (limit + 1) / 2) || calls >= limit ||
                      (flow->bytes_ < halfBytes && total >= halfBytes) ||
                      total >= options_.streamWindowBytes;
  const uint64_t id = send(msg, askNow ? FrameKind::kRequest : FrameKind::kStreamRequest, {},
                           methodName, target);
  Slot& slot = slots_[id & mask_];
  slot.stream = flow;
  slot.streamBytes = bytes;
  flow->session_ = this;
  ++flow->calls_;
  flow->bytes_ += bytes;
}

void Session::askForAcks() {
  OutgoingMessage m;
  startMessage(m, 1, options_.defaultTimeout);
  m.initRoot<capnp::AnyPointer>();
  (void)send(m, FrameKind::kPing, [](CallResult&&) {});  // the pong itself says nothing
}

void Session::endChunk(Slot& slot, const CallResult* failure) noexcept {
  std::shared_ptr<StreamFlow> flow = std::move(slot.stream);
  slot.state = SlotState::kFree;
  flow->chunkDone(slot.streamBytes, failure);
}

size_t Session::handleAcks(IncomingMessage& msg) {
  size_t finished = 0;
  try {
    // Read with zcrpc's reader (bounds, element size and traversal checked); each id is
    // read from transport memory once.
    const wire::ListReader ids =
        msg.wireContext().rootPointer().readList(wire::ElementSize::kEightBytes, nullptr);
    for (uint32_t i = 0; i < ids.size(); ++i) {
      const auto id = ids.dataElement<uint64_t>(i);
      Slot* slot = slotFor(id);
      if (!slot || slot->state != SlotState::kPending) continue;  // expired meanwhile
      if (!slot->stream) {
        dropPeer("an ack frame names call " + std::to_string(id) + ", which is not a stream chunk");
        return finished;
      }
      if (slot->method || slot->traced) noteEnd(*slot, true, ErrorKind::kFailed, 0);
      if (--outstanding_ == 0) nearestDeadline_ = kNoDeadline;
      endChunk(*slot, nullptr);
      ++finished;
    }
  } catch (const kj::Exception& e) {
    dropPeer(std::string("an ack frame is malformed: ") + e.getDescription().cStr());
  } catch (const Error& e) {
    dropPeer(std::string("an ack frame is malformed: ") + e.what());
  }
  return finished;
}

// ------------------------------------------------------------------------------------
// The receiver: held answers

void Session::holdAck(uint64_t callId) {
  if (acksOut_.empty()) acksHeldSince_ = Clock::now();
  acksOut_.push_back(callId);
  if (acksOut_.size() >= kMaxHeldAcks) sendAcks();
}

void Session::settleAcks(bool mayHold, bool busy) {
  // Held longer only while the driver keeps polling, nothing else is going to the peer
  // now and there is room for more: as long as messages keep coming (the clock is not
  // read then), else until the first has waited kAckHold.
  if (mayHold && !unflushed_ && acksOut_.size() < kMaxHeldAcks &&
      (busy || Clock::now() - acksHeldSince_ < kAckHold))
    return;
  sendAcks();
}

void Session::sendHeldAcks() {
  if (acksOut_.empty()) return;
  sendAcks();
  if (unflushed_ && !disconnected_) (void)connection_->flush(), unflushed_ = false;
}

void Session::sendAcks() {
  if (disconnected_) {
    acksOut_.clear();
    return;
  }
  const auto n = static_cast<uint32_t>(acksOut_.size());
  std::optional<OutgoingMessage> out;
  try {
    openAnswer(out, 2 + n);  // root pointer, list, ids
  } catch (const Disconnected&) {
    acksOut_.clear();
    return;
  }
  wire::ListBuilder ids = out->initRootList(wire::ElementSize::kEightBytes, n);
  for (uint32_t i = 0; i < n; ++i) ids.setDataElement<uint64_t>(i, acksOut_[i]);
  out->header().kind = static_cast<uint8_t>(FrameKind::kAck);
  out->header().callId = 0;
  acksOut_.clear();
  (void)sendAnswer(*out);
}

}  // namespace zcrpc
