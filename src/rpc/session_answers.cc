// Session, answers: the calls this end serves -- dispatch to the bootstrap services,
// answers built in place (or in the backlog), deferred answers posted from any thread,
// CallContext and DeferredReply.
#include "rpc/session.h"

#include <unistd.h>

#include <algorithm>

#include <kj/common.h>
#include <kj/exception.h>

#include "rpc/frames.h"

namespace zcrpc {

namespace {
constexpr uint32_t kDefaultResponseWords = 64;
}  // namespace

OutgoingMessage& Session::startResponse(std::optional<OutgoingMessage>& slot, uint32_t hint) {
  if (slot) return *slot;
  openAnswer(slot, hint ? hint : kDefaultResponseWords);
  // The pointer outlives `slot` only until the caller's scope ends, where dispatch() and
  // processMail() restore the one before (GCC sees the store, not the restore).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
  if (!backlog_.holds(*slot)) inPlaceAnswer_ = &*slot;
#pragma GCC diagnostic pop
  return *slot;
}

void Session::openAnswer(std::optional<OutgoingMessage>& slot, uint32_t words) {
  slot.emplace();
  // A connection has one message open at a time: while a request of ours, or a handler's
  // answer, is open in transport memory (a handler waiting for its own synchronous call
  // dispatches what arrives meanwhile), answers go to the backlog.
  if (backlog_.empty() && !messageOpenHere()) {
    Status s = connection_->tryStartMessage(*slot, words);
    if (s == Status::kOk) {
      // The worker serves other connections too: growing this answer waits for room
      // in the client's memory only briefly (then the call fails with Overloaded).
      slot->setBuildWait(options_.answerRoomWait);
      return;
    }
    if (s == Status::kDisconnected) {
      slot.reset();
      failAll(ErrorKind::kDisconnected, connection_->lastError());
      throw Disconnected("connection " + connection_->endpoint() + " lost");
    }
  }
  backlog_.open(*slot, words, connection_->maxMessageBytes());
}

void Session::writeAnswerExtensions(OutgoingMessage& out) {
  if (backlog_.holds(out))
    throw Overloaded("the answer carries capabilities and " + connection_->endpoint() +
                     " has no room for it now (its peer is not reading its answers); an answer "
                     "with capabilities is never queued");
  writeExtensions(out, 0);
}

void Session::dropAnswer(std::optional<OutgoingMessage>& slot) noexcept {
  if (slot && inPlaceAnswer_ == &*slot) inPlaceAnswer_ = nullptr;
  slot.reset();
}

Status Session::sendAnswer(OutgoingMessage& out) {
  if (!backlog_.holds(out)) {
    unflushed_ = true;
    return connection_->send(out, false);
  }
  backlog_.push(out);
  return Status::kOk;
}

std::shared_ptr<DeferredState> Session::defer(CallContext& ctx) {
  if (deferred_.size() >= options_.maxDeferred)
    throw Overloaded("server connection " + connection_->endpoint() + " already has " +
                     std::to_string(options_.maxDeferred) + " deferred calls");
  auto state = std::make_shared<DeferredState>();
  state->owner = link_;
  state->connection = connection_;
  state->callId = ctx.callId();
  state->oneWay = ctx.isOneWay();
  state->trace = ctx.request().trace();
  state->mark = current_;
  current_.method = nullptr;  // the deferred call reports its own end
  current_.traced = false;
  state->request = std::move(ctx.request());
  deferred_[state->callId] = state;
  return state;
}

void Session::failDeferred(const std::string& why) {
  processMail();
  for (auto& [id, weak] : deferred_) {
    if (auto state = weak.lock(); state && !state->answered.exchange(true)) {
      // The handler's own later answer is then accepted and dropped quietly.
      state->answeredByServer.store(true, std::memory_order_release);
      // Given up by the client before it went: cancelled (see processMail()).
      const bool gaveUp = state->cancelled.exchange(true, std::memory_order_acq_rel);
      endCall(state->mark, false, gaveUp ? ErrorKind::kCancelled : ErrorKind::kDisconnected, 0);
      if (!state->oneWay) sendError(id, ErrorKind::kDisconnected, 0, why);
    }
  }
  deferred_.clear();
  (void)connection_->flush();
}

void Session::handleCall(IncomingMessage& msg) {
  const FrameHeader& h = msg.header();
  switch (static_cast<FrameKind>(h.kind)) {
    case FrameKind::kRequest:
    case FrameKind::kStreamRequest:
    case FrameKind::kOneWay:
      if (rejecting_) {
        if (h.kind != static_cast<uint8_t>(FrameKind::kOneWay))
          sendError(h.callId, ErrorKind::kDisconnected, 0, "server is shutting down");
        return;
      }
      dispatch(msg);
      return;
    case FrameKind::kCancel:
      if (auto it = deferred_.find(h.callId); it != deferred_.end())
        if (auto state = it->second.lock())
          state->cancelled.store(true, std::memory_order_release);
      return;
    case FrameKind::kPing: {
      uint64_t id = h.callId;
      msg.release();
      std::optional<OutgoingMessage> out;
      try {
        openAnswer(out, 1);
      } catch (const Disconnected&) {
        return;
      }
      out->header().kind = static_cast<uint8_t>(FrameKind::kPong);
      out->header().callId = id;
      out->initRoot<capnp::AnyPointer>();
      (void)sendAnswer(*out);
      return;
    }
    default:
      return;  // nothing else is meaningful from a client
  }
}

void Session::dispatch(IncomingMessage& msg) {
  const uint64_t callId = msg.header().callId;
  const uint64_t interfaceId = msg.header().interfaceId;
  const uint16_t methodId = msg.header().methodId;
  const bool oneWay = msg.header().kind == static_cast<uint8_t>(FrameKind::kOneWay);
  const bool chunk = msg.header().kind == static_cast<uint8_t>(FrameKind::kStreamRequest);
  // A handler's synchronous call dispatches the calls that arrive meanwhile on this same
  // thread (re-entrantly, kMaxDispatchDepth deep at most): the outer call's mark is kept.
  std::optional<CallMark> outer;
  if (dispatchDepth_ > 0) [[unlikely]] outer = current_;
  OutgoingMessage* const outerAnswer = inPlaceAnswer_;
  ++dispatchDepth_;
  KJ_DEFER({  // after `ctx` below (and the answer it holds) is gone
    --dispatchDepth_;
    inPlaceAnswer_ = outerAnswer;
    if (outer) current_ = *outer;
  });
  current_.method = nullptr;
  current_.traced = false;
  Service* service = nullptr;  // the export called, or the bootstrap service of the interface
  uint32_t target = 0;
  std::string refused;  // why the call cannot be dispatched, when its extension area says
  if (msg.header().flags & kFlagExtended) [[unlikely]] {
    try {
      target = readExtensions(msg);
      if (target != 0 && (service = exported(target)) == nullptr)
        refused = "export " + std::to_string(target) + " of " + connection_->endpoint() +
                  " does not exist (never exported, or released)";
    } catch (const Error& e) {
      refused = e.what();
    }
    if (disconnected_) return;  // the peer broke the protocol (dropPeer)
  }
  // On a connection that carries capabilities a handler may wait for calls of its own on
  // this connection, while everything that arrives meanwhile (answers, callbacks) queues
  // behind its request: the connection frees what it received in arrival order, so a
  // request held through max_leases later messages would stop the connection. Such a
  // request is copied out of transport memory before its handler reads it (which is why
  // no reader of it can exist yet), unless its object was exported in place: its handler
  // then may not wait on this connection (checkMayWait), and reads the request where it is.
  const bool inPlace = target != 0 && service != nullptr && exports_[target - 1].inPlace;
  if ((!imports_.empty() || target != 0 || msg.capTable() != nullptr) && !inPlace) [[unlikely]]
    msg.moveToHeap();
  inPlaceHeld_ += inPlace;
  KJ_DEFER(inPlaceHeld_ -= inPlace);
  if (dispatchDepth_ > kMaxDispatchDepth) [[unlikely]]
    refused = "calls nested " + std::to_string(dispatchDepth_) +
              " deep on one thread (a handler's synchronous call dispatching a call whose "
              "handler calls synchronously...): defer and use callAsync instead";
  if (target == 0 && refused.empty()) [[likely]]
    service = bootstrapService(interfaceId);
  if (answerMetrics_) {
    current_.method = &answerMetrics_->method(interfaceId, methodId);
    current_.method->countCall(msg.payloadBytes());
  }
  if (tracer_) [[unlikely]] {
    current_.traced = true;
    current_.trace = TracedCall{
        interfaceId, methodId,
        service ? service->methodName(interfaceId, methodId) : std::string_view(), callId,
        oneWay, msg.trace(), const_cast<Metadata*>(msg.metadata())};
    tracer_->onServerCallBegin(current_.trace);
    current_.trace.metadata = nullptr;  // the request's: not kept for the end
  }
  if (current_.method || current_.traced) current_.startTicks = ticks::now();
  CallContext ctx(*this, msg);
  ErrorKind kind = ErrorKind::kFailed;
  int32_t code = 0;
  std::string why;
  try {
    if (!refused.empty()) [[unlikely]] {
      kind = ErrorKind::kInvalidArgument;
      why = std::move(refused);
    } else if (!service || !service->dispatch(interfaceId, methodId, ctx)) {
      kind = ErrorKind::kUnimplemented;
      why = (!service ? "interface 0x" + hex(interfaceId) + " is not served by "
                      : "method " + std::to_string(methodId) + " of interface 0x" +
                            hex(interfaceId) + " is not implemented by ") +
            connection_->endpoint();
    } else {
      if (ctx.deferred_) return;  // defer() took over the call's mark
      if (oneWay) {
        endCall(current_, true, ErrorKind::kFailed, 0);
        return;
      }
      if (chunk && !ctx.response_) [[unlikely]] {
        // A stream chunk taken: no answer (the caller learns it from a later answer).
        endCall(current_, true, ErrorKind::kFailed, 0);
        return;
      }
      OutgoingMessage& out = startResponse(ctx.response_, 1);
      if (!out.isOpen()) return;
      // An untouched response goes as an empty message (segmentsForSend() gives it a null
      // root). Asking Cap'n Proto's builder for the root here would take the message over
      // from zcrpc's builder, which the handler may have used.
      out.header().kind = static_cast<uint8_t>(FrameKind::kResponse);
      out.header().callId = callId;
      if (out.outgoingCapTable()) [[unlikely]]
        writeAnswerExtensions(out);
      // The request is released after the answer is sent (by pump()), not before: the
      // answer may reference its bytes (Orphanage::referenceExternalData), which the
      // transport reads while sending.
      const Status sent = sendAnswer(out);
      // Counted once sent, overlapping with the caller's receipt. (The sizes come from
      // the builder's bookkeeping, not from transport memory.)
      endCall(current_, true, ErrorKind::kFailed,
              current_.method && sent == Status::kOk ? sentPayloadBytes(out) : 0);
      return;
    }
  } catch (const ApplicationError& e) {
    kind = ErrorKind::kApplication, code = e.code(), why = e.what();
  } catch (const Error& e) {
    kind = e.kind(), why = e.what();
  } catch (const kj::Exception& e) {
    kind = ErrorKind::kInvalidArgument;
    why = std::string("server could not read the request: ") + e.getDescription().cStr();
  } catch (const std::exception& e) {
    kind = ErrorKind::kApplication, why = e.what();
  }
  if (ctx.deferred_) return;  // a deferred call answers itself
  if (!oneWay && !disconnected_) {
    dropAnswer(ctx.response_);  // give back a half-built response first
    msg.release();
    sendError(callId, kind, code, why);
  }
  endCall(current_, false, kind, 0);
}

void Session::endCall(CallMark& mark, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept {
  if (!mark.method && !mark.traced) return;
  const uint64_t elapsed = ticks::now() - mark.startTicks;
  if (MethodMetrics* m = mark.method) {
    m->recordLatency(elapsed);
    if (ok)
      m->countResponse(responseBytes);
    else
      m->countError(kind);
    mark.method = nullptr;
  }
  if (mark.traced) {
    mark.traced = false;
    auto duration = std::chrono::nanoseconds(static_cast<int64_t>(ticks::toNanos(elapsed)));
    tracer_->onServerCallEnd(mark.trace, {ok, kind, duration});
  }
}

void Session::sendError(uint64_t callId, ErrorKind kind, int32_t code, const std::string& why) {
  if (disconnected_) return;
  std::optional<OutgoingMessage> out;
  try {
    openAnswer(out, 16 + static_cast<uint32_t>(std::min<size_t>(why.size(), 4000) / 8));
  } catch (const Disconnected&) {
    return;
  }
  writeError(*out, kind, code, why);
  out->header().kind = static_cast<uint8_t>(FrameKind::kError);
  out->header().callId = callId;
  (void)sendAnswer(*out);
}

size_t Session::processMail() {
  std::vector<Completion> mail;
  const size_t releasesBefore = releasesOut_.size();
  link_->take(mail, releasesOut_);
  const bool released = releasesOut_.size() != releasesBefore;
  if (released) sendReleases();
  for (Completion& c : mail) {
    deferred_.erase(c.state->callId);
    // Released once the answer is sent: `fill` may reference the request's bytes.
    KJ_DEFER(c.state->request.release());
    CallMark& mark = c.state->mark;
    // A call its client gave up on (cancelled it, or its deadline passed: both send a
    // cancel) is counted as cancelled however the handler ended it, and whether or not the
    // client has gone since: nobody waits for the answer, and it is neither a success nor
    // the service's failure. The answer still goes out (the client drops it), as before.
    const bool gaveUp = c.state->cancelled.load(std::memory_order_acquire);
    if (disconnected_) {
      endCall(mark, false, gaveUp ? ErrorKind::kCancelled : ErrorKind::kDisconnected, 0);
      continue;
    }
    if (c.state->oneWay) {
      endCall(mark, c.fill != nullptr, c.kind, 0);
      continue;
    }
    auto endGivenUp = [&](bool ok, ErrorKind kind, uint64_t bytes) {
      if (gaveUp)
        endCall(mark, false, ErrorKind::kCancelled, 0);
      else
        endCall(mark, ok, kind, bytes);
    };
    if (!c.fill) {
      sendError(c.state->callId, c.kind, c.code, c.message);
      endGivenUp(false, c.kind, 0);
      continue;
    }
    OutgoingMessage* const outerAnswer = inPlaceAnswer_;
    KJ_DEFER(inPlaceAnswer_ = outerAnswer);  // after `out` is gone
    std::optional<OutgoingMessage> out;
    ErrorKind kind = ErrorKind::kApplication;
    int32_t code = 0;
    std::string why;
    try {
      startResponse(out, 0);
      c.fill(*out);
      out->header().kind = static_cast<uint8_t>(FrameKind::kResponse);
      out->header().callId = c.state->callId;
      if (out->outgoingCapTable()) [[unlikely]]
        writeAnswerExtensions(*out);
      const Status sent = sendAnswer(*out);
      endGivenUp(true, ErrorKind::kFailed,
                 mark.method && sent == Status::kOk ? sentPayloadBytes(*out) : 0);
      continue;
    } catch (const ApplicationError& e) {
      code = e.code(), why = e.what();
    } catch (const Error& e) {
      kind = e.kind(), why = e.what();
    } catch (const std::exception& e) {
      why = e.what();
    } catch (const kj::Exception& e) {
      why = e.getDescription().cStr();
    }
    dropAnswer(out);
    if (!disconnected_) sendError(c.state->callId, kind, code, why);
    endGivenUp(false, kind, 0);
  }
  return mail.size() + released;
}

// ------------------------------------------------------------------------------------
// CallContext / DeferredReply

const Metadata& CallContext::metadata() const noexcept {
  static const Metadata kNone;
  const Metadata* m = request_.valid() ? request_.metadata() : nullptr;
  if (!m && deferred_ && deferred_->request.valid()) m = deferred_->request.metadata();
  return m ? *m : kNone;
}

const TraceContext& CallContext::trace() const noexcept {
  static constexpr TraceContext kNone{};
  if (request_.valid()) return request_.trace();
  return deferred_ ? deferred_->trace : kNone;
}

bool CallContext::isOneWay() const noexcept {
  return request_.valid() && request_.header().kind == static_cast<uint8_t>(FrameKind::kOneWay);
}

OutgoingMessage& CallContext::response(uint32_t sizeHintWords) {
  if (deferred_) throw InvalidArgument("response() after defer(): answer through the DeferredReply");
  if (isOneWay()) throw InvalidArgument("a one-way call has no response");
  return session_.startResponse(response_, sizeHintWords);
}

const PeerIdentity& CallContext::peer() const noexcept { return session_.connection().peer(); }

bool CallContext::isCancelled() const noexcept {
  return deferred_ && deferred_->cancelled.load(std::memory_order_acquire);
}

DeferredReply CallContext::defer() {
  if (deferred_) throw InvalidArgument("call " + std::to_string(callId()) + " deferred twice");
  session_.dropAnswer(response_);
  deferred_ = session_.defer(*this);
  return DeferredReply(deferred_);
}

DeferredReply& DeferredReply::operator=(DeferredReply&& other) noexcept {
  if (this != &other) {
    this->~DeferredReply();
    new (this) DeferredReply(std::move(other));
  }
  return *this;
}

DeferredReply::~DeferredReply() {
  if (state_ && !state_->answered.load())
    fail(ErrorKind::kFailed, "the handler dropped call " + std::to_string(state_->callId) +
                                 " without answering it");
}

IncomingMessage& DeferredReply::request() {
  if (!state_) throw InvalidArgument("empty DeferredReply");
  return state_->request;
}

const TraceContext& DeferredReply::trace() const noexcept {
  static constexpr TraceContext kNone{};
  return state_ ? state_->trace : kNone;
}

bool DeferredReply::isCancelled() const noexcept {
  return state_ && state_->cancelled.load(std::memory_order_acquire);
}

void DeferredReply::complete(std::function<void(OutgoingMessage&)> fill) {
  if (!state_) throw InvalidArgument("DeferredReply is empty");
  if (state_->answered.exchange(true)) {
    if (state_->answeredByServer.load(std::memory_order_acquire)) {
      state_.reset();  // the server already failed it (shutdown): nothing more to say
      return;
    }
    throw InvalidArgument("DeferredReply answered twice");
  }
  if (!fill) fill = [](OutgoingMessage&) {};
  auto owner = state_->owner;
  owner->post(Completion{std::move(state_), std::move(fill), ErrorKind::kFailed, 0, {}});
}

void DeferredReply::fail(ErrorKind kind, std::string message, int32_t code) {
  if (!state_ || state_->answered.exchange(true)) return;
  auto owner = state_->owner;
  owner->post(Completion{std::move(state_), {}, kind, code, std::move(message)});
}

}  // namespace zcrpc
