// Session, questions: the calls this end makes -- ids, the window of outstanding calls,
// deadlines, cancellation, results.
#include <algorithm>
#include <utility>

#include "rpc/frames.h"
#include "rpc/session.h"

namespace zcrpc {

namespace {
std::chrono::nanoseconds sinceTicks(uint64_t start) noexcept {
  return std::chrono::nanoseconds(static_cast<int64_t>(ticks::toNanos(ticks::now() - start)));
}
}  // namespace

void Session::startMessage(OutgoingMessage& msg, uint32_t sizeHintWords,
                           std::chrono::nanoseconds timeout, std::optional<Deadline> deadline) {
  if (disconnected_)
    throw Disconnected("channel to " + connection_->endpoint() + " is disconnected: " +
                       disconnectReason_);
  if (inPlaceAnswer_ != nullptr && inPlaceAnswer_->isOpen()) [[unlikely]]
    throw InvalidArgument(
        "a handler started a call on its own connection (" + connection_->endpoint() +
        ") after it started its results: the answer is being built in transport memory, "
        "where a connection builds one message at a time. Make such calls before the first "
        "results() (compute, then set), or defer the answer and call with callAsync");
  Status s = connection_->tryStartMessage(msg, sizeHintWords);
  if (s == Status::kWouldBlock) {
    if (!deadline) deadline = deadlineAfter(timeout);  // waiting fixes a default deadline
    s = waitForSendRoom(msg, sizeHintWords, *deadline);
  }
  if (s == Status::kOk) {
    // The call's deadline is the message's build deadline: growing the request waits for
    // room no longer than the call. A default one is read off the clock when first needed.
    if (deadline)
      msg.setBuildDeadline(*deadline);
    else
      msg.setBuildTimeout(timeout);
    msg.setRoomWaitHook(this);
    requestOpen_ = true;
    return;
  }
  if (s == Status::kTimedOut)
    throw Overloaded("send ring of " + connection_->endpoint() +
                     " stayed full until the call's deadline");
  failAll(ErrorKind::kDisconnected, connection_->lastError());
  throw Disconnected("channel to " + connection_->endpoint() + " lost: " + disconnectReason_);
}

uint64_t Session::send(OutgoingMessage& msg, FrameKind kind, CallCallback callback,
                       std::string_view methodName, uint32_t target, SendHint hint) {
  if (disconnected_)
    throw Disconnected("channel to " + connection_->endpoint() + " is disconnected: " +
                       disconnectReason_);
  // The window's slots come with the first call that waits for an answer: a server's
  // sessions mostly never call back, and a thousand connections should not each carry
  // a window of empty slots. A one-way message gets no answer, nor does a stream request
  // that succeeds (see sendChunk): neither takes a slot.
  const bool answered = kind != FrameKind::kOneWay && kind != FrameKind::kStreamRequest;
  if (answered && !slots_) slots_ = std::make_unique<Slot[]>(options_.window);
  if (answered && outstanding_ <= mask_) {
    // Ids map to slots modulo the window: skip ids whose slot an older call still holds.
    while (slots_[nextCallId_ & mask_].state == SlotState::kPending) ++nextCallId_;
  }
  uint64_t id = nextCallId_;
  FrameHeader& h = msg.header();
  const bool isCall = kind == FrameKind::kRequest || kind == FrameKind::kOneWay ||
                      kind == FrameKind::kStreamRequest;
  const uint64_t interfaceId = h.interfaceId;  // copies: the header is the peer's once sent
  const uint16_t methodId = h.methodId;
  Slot* slot = nullptr;
  if (answered) {
    slot = &slots_[id & mask_];
    if (slot->state == SlotState::kPending || outstanding_ > mask_) {
      if (questionMetrics_ && isCall) {
        MethodMetrics& m = questionMetrics_->method(interfaceId, methodId, methodName);
        m.countCall(0);
        m.countError(ErrorKind::kOverloaded);
      }
      throw Overloaded("window of " + std::to_string(options_.window) +
                       " outstanding calls on " + connection_->endpoint() +
                       " is full: finished calls are taken (and their callbacks run) only "
                       "by poll() or pollUntil() on this thread, or PendingCall::wait(); "
                       "call one before starting more, or raise the window setting "
                       "(ZCRPC_WINDOW, ChannelOptions::window)");
    }
    // An uncollected old result gives way (a collected one was moved out already).
    if (slot->state == SlotState::kDone) {
      slot->result = CallResult();
      pinned_ -= std::exchange(slot->pinned, false);
    }
  }
  // The tracer first: it may add metadata, which goes in the extension area.
  TracedCall traced;
  const bool tracing = tracer_ && isCall;
  if (tracing) [[unlikely]] {
    traced = TracedCall{interfaceId, methodId, methodName, id, !answered, msg.trace(), &msg.metadata()};
    tracer_->onClientCallBegin(traced);
    traced.metadata = nullptr;  // the request's, gone once it is sent
    msg.setTrace(traced.trace);
  }
  // A call on a capability, one that carries some, or metadata: the extension area (which
  // may still refuse the message, leaving it open and nothing else changed).
  if (target != 0 || msg.outgoingCapTable() != nullptr || msg.outgoingMetadata() != nullptr)
      [[unlikely]]
    extendRequest(msg, target, tracing ? &traced : nullptr);
  ++nextCallId_;
  h.kind = static_cast<uint8_t>(kind);
  h.callId = id;
  requestOpen_ = false;  // whatever happens next, this message is sent or gone
  const bool counted = questionMetrics_ && isCall;
  const uint64_t start = counted || tracing ? ticks::now() : 0;
  const bool now = hint == SendHint::kNow;
  if ((now ? connection_->send(msg) : connection_->sendMore(msg)) != Status::kOk) {
    if (counted) {
      MethodMetrics& m = questionMetrics_->method(interfaceId, methodId, methodName);
      m.countCall(0);
      m.countError(ErrorKind::kDisconnected);
    }
    if (tracing)
      tracer_->onClientCallEnd(traced, {false, ErrorKind::kDisconnected, sinceTicks(start)});
    failAll(ErrorKind::kDisconnected, connection_->lastError());
    throw Disconnected("channel to " + connection_->endpoint() + " lost: " + disconnectReason_);
  }
  unflushed_ |= !now;  // run() sends it before this thread waits or returns
  if (queuedCancels_) sendQueuedCancels();
  // The request is on its way: what follows overlaps with the round trip. (The segment
  // sizes come from the builder's own bookkeeping, not from transport memory.)
  MethodMetrics* method = nullptr;
  if (counted) {
    method = &questionMetrics_->method(interfaceId, methodId, methodName);
    method->countCall(sentPayloadBytes(msg));
  }
  if (slot) {
    // A default deadline is fixed here if nothing asked for it before: once the request
    // is on its way.
    const Deadline at = msg.buildDeadline();
    slot->callId = id;
    slot->state = SlotState::kPending;
    slot->deadline = at;
    slot->callback = std::move(callback);
    slot->method = method;
    slot->startTicks = start;
    slot->traced = tracing;
    if (tracing) slot->trace = traced;
    ++outstanding_;
    nearestDeadline_ = std::min(nearestDeadline_, at);
  } else if (tracing) {
    tracer_->onClientCallEnd(traced, {true, ErrorKind::kFailed, sinceTicks(start)});
  }
  return id;
}

void Session::extendRequest(OutgoingMessage& msg, uint32_t target, const TracedCall* traced) {
  try {
    writeExtensions(msg, target);
  } catch (const Error& e) {
    if (traced) tracer_->onClientCallEnd(*traced, {false, e.kind(), {}});
    throw;
  }
}

void Session::noteEnd(Slot& slot, CallResult& result) noexcept {
  noteEnd(slot, result.ok(), result.errorKind(), result.ok() ? result.response().payloadBytes() : 0);
}

void Session::noteEnd(Slot& slot, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept {
  const uint64_t elapsed = ticks::now() - slot.startTicks;
  if (MethodMetrics* m = slot.method) {
    m->recordLatency(elapsed);
    if (ok)
      m->countResponse(responseBytes);
    else
      m->countError(kind);
    slot.method = nullptr;
  }
  if (slot.traced) {
    slot.traced = false;
    auto duration = std::chrono::nanoseconds(static_cast<int64_t>(ticks::toNanos(elapsed)));
    tracer_->onClientCallEnd(slot.trace, {ok, kind, duration});
  }
}

void Session::finish(Slot& slot, CallResult&& result) {
  if (slot.method || slot.traced) noteEnd(slot, result);
  --outstanding_;
  if (outstanding_ == 0) nearestDeadline_ = kNoDeadline;
  if (slot.stream) [[unlikely]] {
    endMark(slot, result.ok() ? nullptr : &result);
    return;
  }
  if (slot.callback) {
    CallCallback cb = std::move(slot.callback);
    slot.callback = nullptr;
    slot.state = SlotState::kFree;
    cb(std::move(result));
  } else {
    slot.result = std::move(result);
    slot.state = SlotState::kDone;
    slot.pinned = slot.result.ok();
    pinned_ += slot.pinned;
  }
}

bool Session::handleAnswer(IncomingMessage& msg) {
  const FrameHeader& h = msg.header();
  auto kind = static_cast<FrameKind>(h.kind);
  Slot* slot = slotFor(h.callId);
  if (!slot || slot->state != SlotState::kPending) {
    // A late answer of an expired call, or one of a stream request (which is answered only
    // when it fails or its handler deferred): an error goes to the stream it belongs to.
    if (kind == FrameKind::kError && chunkRunsEnd_ != 0) [[unlikely]] noteChunkError(msg);
    // Capabilities it carries are taken, so that they go back to the peer with it.
    if (h.flags & kFlagExtended) [[unlikely]] {
      try {
        (void)readExtensions(msg);
      } catch (const Error&) {
      }
    }
    return false;
  }
  if (h.flags & kFlagExtended) [[unlikely]] {
    try {
      if (readExtensions(msg) != 0) throw InvalidArgument("an answer names a target");
    } catch (const Error& e) {
      msg.release();
      if (disconnected_) return true;  // failAll() finished the call
      finish(*slot, CallResult(ErrorKind::kInvalidArgument, 0,
                               "the answer to call " + std::to_string(h.callId) + " from " +
                                   connection_->endpoint() + " was refused: " + e.what()));
      return true;
    }
  }
  if (kind == FrameKind::kError) {
    CallResult r = readError(msg);
    msg.release();
    finish(*slot, std::move(r));
  } else {
    finish(*slot, CallResult(std::move(msg)));
  }
  return true;
}

size_t Session::expire(Clock::time_point now) {
  size_t n = 0;
  // Callbacks run below may start calls (send() lowers nearestDeadline_ for them), in
  // slots this scan has passed: recompute into the member, never over it.
  nearestDeadline_ = kNoDeadline;
  for (uint64_t i = 0; slots_ && i <= mask_; ++i) {
    Slot& s = slots_[i];
    if (s.state != SlotState::kPending) continue;
    if (s.deadline <= now) {
      sendCancel(s.callId);
      finish(s, CallResult(ErrorKind::kDeadlineExceeded, 0,
                           "call " + std::to_string(s.callId) + " to " +
                               connection_->endpoint() + " passed its deadline"));
      ++n;
    } else {
      nearestDeadline_ = std::min(nearestDeadline_, s.deadline);
    }
  }
  if (!outstanding_) nearestDeadline_ = kNoDeadline;
  return n;
}

void Session::failAll(ErrorKind kind, const std::string& why) {
  if (kind == ErrorKind::kDisconnected && !disconnected_) {
    disconnected_ = true;
    disconnectReason_ = why.empty() ? "connection closed" : why;
  }
  for (uint64_t i = 0; slots_ && i <= mask_; ++i) {
    Slot& s = slots_[i];
    if (s.state == SlotState::kPending)
      finish(s, CallResult(kind, 0,
                           "call " + std::to_string(s.callId) + " to " +
                               connection_->endpoint() + ": " + disconnectReason_));
  }
}

void Session::sendCancel(uint64_t callId) noexcept {
  if (disconnected_) return;
  if (requestOpen_) {
    // The user is building a request on this connection (one open message at a time):
    // tell the server after that request goes. Best effort, like every cancel.
    if (queuedCancels_ < cancelQueue_.size()) cancelQueue_[queuedCancels_++] = callId;
    return;
  }
  try {
    OutgoingMessage m;
    if (connection_->tryStartMessage(m, 1) != Status::kOk) return;  // best effort
    FrameHeader& h = m.header();
    h.kind = static_cast<uint8_t>(FrameKind::kCancel);
    h.callId = callId;
    m.initRoot<capnp::AnyPointer>();
    (void)connection_->send(m);
  } catch (...) {
    // A cancel that cannot be sent only costs the server some work.
  }
}

void Session::sendQueuedCancels() noexcept {
  size_t n = std::exchange(queuedCancels_, 0);
  for (size_t i = 0; i < n; ++i) sendCancel(cancelQueue_[i]);
}

CallResult Session::takeResult(uint64_t callId) {
  Slot* slot = slotFor(callId);
  if (!slot || slot->state != SlotState::kDone)
    return CallResult(ErrorKind::kFailed, 0,
                      "result of call " + std::to_string(callId) + " is gone");
  slot->state = SlotState::kFree;
  pinned_ -= std::exchange(slot->pinned, false);
  return std::move(slot->result);
}

}  // namespace zcrpc
