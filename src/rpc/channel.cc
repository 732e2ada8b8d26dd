// Client side of the RPC core: Channel, RawRequest, PendingCall, ChannelPool.
#include <algorithm>
#include <utility>

#include "rpc/frames.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

namespace {
constexpr uint32_t kDefaultRequestWords = 64;

/// Cap'n Proto payload of a message about to be sent (what the metrics call bytes).
uint64_t payloadBytes(OutgoingMessage& msg) {
  uint64_t words = 0;
  for (auto segment : msg.segmentsForSend()) words += segment.size();
  return words * sizeof(capnp::word) + msg.gatheredBytes();
}

std::chrono::nanoseconds sinceTicks(uint64_t start) noexcept {
  return std::chrono::nanoseconds(static_cast<int64_t>(ticks::toNanos(ticks::now() - start)));
}
}  // namespace

// ------------------------------------------------------------------------------------
// CallResult

void CallResult::throwIfError() const {
  if (ok()) return;
  if (kind_ == ErrorKind::kApplication) throw ApplicationError(code_, message_);
  throwError(kind_, message_);
}

IncomingMessage& CallResult::response() {
  throwIfError();
  return response_;
}

// ------------------------------------------------------------------------------------
// RawRequest

RawRequest::RawRequest(Channel& channel, uint64_t interfaceId, uint16_t methodId,
                       uint32_t sizeHintWords)
    : channel_(channel) {
  channel_.startMessage(message_, sizeHintWords ? sizeHintWords : kDefaultRequestWords,
                        channel.options().defaultTimeout);
  FrameHeader& h = message_.header();
  h.interfaceId = interfaceId;
  h.methodId = methodId;
}

RawRequest::~RawRequest() noexcept(false) {
  if (message_.isOpen()) channel_.requestAbandoned();  // the message gives its space back
}

IncomingMessage RawRequest::call() {
  uint64_t id = channel_.send(message_, FrameKind::kRequest, {});
  return channel_.waitFor(id);
}

PendingCall RawRequest::callAsync(CallCallback callback) {
  uint64_t id = channel_.send(message_, FrameKind::kRequest, std::move(callback));
  return PendingCall(channel_, id);
}

void RawRequest::sendOneWay() { channel_.send(message_, FrameKind::kOneWay, {}); }

// ------------------------------------------------------------------------------------
// PendingCall

bool PendingCall::done() const {
  auto* slot = channel_ ? channel_->slotFor(callId_) : nullptr;
  return !slot || slot->state != Channel::SlotState::kPending;
}

CallResult PendingCall::wait() {
  if (!channel_) return CallResult(ErrorKind::kFailed, 0, "PendingCall is empty");
  auto* slot = channel_->slotFor(callId_);
  if (slot && slot->state == Channel::SlotState::kPending) {
    if (slot->callback)
      return CallResult(ErrorKind::kFailed, 0, "call completes through its callback");
    try {
      return CallResult(channel_->waitFor(callId_));
    } catch (const ApplicationError& e) {
      return CallResult(ErrorKind::kApplication, e.code(), e.what());
    } catch (const Error& e) {
      return CallResult(e.kind(), 0, e.what());
    }
  }
  return channel_->takeResult(callId_);
}

void PendingCall::cancel() {
  auto* slot = channel_ ? channel_->slotFor(callId_) : nullptr;
  if (!slot || slot->state != Channel::SlotState::kPending) return;
  channel_->sendCancel(callId_);
  channel_->finish(*slot, CallResult(ErrorKind::kCancelled, 0,
                                     "call " + std::to_string(callId_) + " cancelled by the client"));
}

// ------------------------------------------------------------------------------------
// Channel

Channel::Channel(std::unique_ptr<Connection> connection, ChannelOptions options)
    : connection_(std::move(connection)), options_(options) {
  if (!connection_) throw InvalidArgument("Channel needs a connection");
  if (options_.window == 0 || (options_.window & (options_.window - 1)))
    throw InvalidArgument("channel window " + std::to_string(options_.window) +
                          " must be a power of two");
  if (options_.window > connection_->maxLeases())
    throw InvalidArgument("channel window " + std::to_string(options_.window) +
                          " exceeds the " + std::to_string(connection_->maxLeases()) +
                          " received messages " + connection_->endpoint() +
                          " may hold (max_leases): raise max_leases or lower window");
  slots_ = std::make_unique<Slot[]>(options_.window);
  mask_ = options_.window - 1;
  if (options_.metrics)
    metrics_ = std::make_unique<ConnectionMetrics>(connection_->endpoint(), MetricsSide::kClient);
  tracer_ = options_.tracer;
}

Channel::~Channel() {
  failAll(ErrorKind::kDisconnected, "channel to " + connection_->endpoint() + " destroyed");
  for (uint64_t i = 0; i <= mask_; ++i) slots_[i].result = CallResult();  // leases before connection
  connection_->close();
  if (metrics_) metrics_->markClosed();
}

Channel::Slot* Channel::slotFor(uint64_t callId) noexcept {
  Slot& s = slots_[callId & mask_];
  return s.callId == callId && s.state != SlotState::kFree ? &s : nullptr;
}

void Channel::startMessage(OutgoingMessage& msg, uint32_t sizeHintWords,
                           std::chrono::nanoseconds timeout, std::optional<Deadline> deadline) {
  if (disconnected_)
    throw Disconnected("channel to " + connection_->endpoint() + " is disconnected: " +
                       disconnectReason_);
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

namespace {
/// How long a wait may last while uncollected responses hold transport memory before they
/// move to the heap (see Channel::waitDeadline()).
constexpr auto kUnpinAfter = std::chrono::milliseconds(1);
}  // namespace

Status Channel::waitForSendRoom(OutgoingMessage& msg, uint32_t sizeHintWords, Deadline deadline) {
  // The send ring (or socket) is full. Waiting for room without reading responses would
  // deadlock against a server that waits for room for those responses while our unread
  // ones fill its ring: so, while calls are outstanding, alternate between taking the
  // responses that arrived and short waits for room, the slices growing from 20 us to
  // 1 ms so that a long stall does not spin.
  auto slice = std::chrono::microseconds(20);
  Deadline unpinAt = kNoDeadline;  // as in waitFor(): held responses may be what blocks us
  for (;;) {
    if (!early_.empty()) [[unlikely]] takeEarly();
    if (!outstanding_) return connection_->startMessage(msg, sizeHintWords, deadline);
    IncomingMessage in;
    bool received = false;
    for (int i = 0; i < 256; ++i) {
      Status r = connection_->tryReceive(in);
      if (r != Status::kOk) {
        if (r == Status::kDisconnected) return Status::kDisconnected;
        break;
      }
      handle(in);
      in.release();
      received = true;
    }
    const auto now = Clock::now();
    if (outstanding_ && now >= nearestDeadline_) expire(now);
    Status s = connection_->tryStartMessage(msg, sizeHintWords);
    if (s != Status::kWouldBlock) return s;
    if (now >= deadline) return Status::kTimedOut;
    if (pinned_) {
      if (unpinAt == kNoDeadline)
        unpinAt = now + kUnpinAfter;
      else if (now >= unpinAt)
        unpinResults();
    }
    if (received) continue;
    const Deadline until = std::min({deadline, nearestDeadline_, now + slice});
    s = connection_->startMessage(msg, sizeHintWords, until);
    if (s != Status::kTimedOut) return s;
    if (!outstanding_) continue;
    Status r = connection_->receive(in, std::min(deadline, Clock::now() + slice));
    if (r == Status::kOk) {
      handle(in);
      in.release();
    } else if (r == Status::kDisconnected) {
      return Status::kDisconnected;
    }
    slice = std::min<std::chrono::microseconds>(slice * 2, std::chrono::milliseconds(1));
  }
}

uint64_t Channel::send(OutgoingMessage& msg, FrameKind kind, CallCallback callback) {
  if (disconnected_)
    throw Disconnected("channel to " + connection_->endpoint() + " is disconnected: " +
                       disconnectReason_);
  if (kind != FrameKind::kOneWay && outstanding_ <= mask_) {
    // Ids map to slots modulo the window: skip ids whose slot an older call still holds.
    while (slots_[nextCallId_ & mask_].state == SlotState::kPending) ++nextCallId_;
  }
  uint64_t id = nextCallId_;
  FrameHeader& h = msg.header();
  const bool isCall = kind == FrameKind::kRequest || kind == FrameKind::kOneWay;
  const uint64_t interfaceId = h.interfaceId;  // copies: the header is the peer's once sent
  const uint16_t methodId = h.methodId;
  Slot* slot = nullptr;
  if (kind != FrameKind::kOneWay) {
    slot = &slots_[id & mask_];
    if (slot->state == SlotState::kPending || outstanding_ > mask_) {
      if (metrics_ && isCall) {
        MethodMetrics& m = metrics_->method(interfaceId, methodId);
        m.countCall(0);
        m.countError(ErrorKind::kOverloaded);
      }
      throw Overloaded("window of " + std::to_string(options_.window) +
                       " outstanding calls on " + connection_->endpoint() + " is full");
    }
    // An uncollected old result gives way (a collected one was moved out already).
    if (slot->state == SlotState::kDone) {
      slot->result = CallResult();
      pinned_ -= std::exchange(slot->pinned, false);
    }
  }
  ++nextCallId_;
  h.kind = static_cast<uint8_t>(kind);
  h.callId = id;
  requestOpen_ = false;  // whatever happens next, this message is sent or gone
  TracedCall traced;
  const bool tracing = tracer_ && isCall;
  if (tracing) [[unlikely]] {
    traced = TracedCall{interfaceId, methodId, id, kind == FrameKind::kOneWay, msg.trace()};
    tracer_->onClientCallBegin(traced);
    msg.setTrace(traced.trace);
  }
  const bool counted = metrics_ && isCall;
  const uint64_t start = counted || tracing ? ticks::now() : 0;
  if (connection_->send(msg) != Status::kOk) {
    if (counted) {
      MethodMetrics& m = metrics_->method(interfaceId, methodId);
      m.countCall(0);
      m.countError(ErrorKind::kDisconnected);
    }
    if (tracing)
      tracer_->onClientCallEnd(traced, {false, ErrorKind::kDisconnected, sinceTicks(start)});
    failAll(ErrorKind::kDisconnected, connection_->lastError());
    throw Disconnected("channel to " + connection_->endpoint() + " lost: " + disconnectReason_);
  }
  if (queuedCancels_) sendQueuedCancels();
  // The request is on its way: what follows overlaps with the round trip. (The segment
  // sizes come from the builder's own bookkeeping, not from transport memory.)
  MethodMetrics* method = nullptr;
  if (counted) {
    method = &metrics_->method(interfaceId, methodId);
    method->countCall(payloadBytes(msg));
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

void Channel::noteEnd(Slot& slot, CallResult& result) noexcept {
  noteEnd(slot, result.ok(), result.errorKind(), result.ok() ? result.response().payloadBytes() : 0);
}

void Channel::noteEnd(Slot& slot, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept {
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

void Channel::finish(Slot& slot, CallResult&& result) {
  if (slot.method || slot.traced) noteEnd(slot, result);
  --outstanding_;
  if (outstanding_ == 0) nearestDeadline_ = kNoDeadline;
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

bool Channel::handle(IncomingMessage& msg) {
  const FrameHeader& h = msg.header();
  auto kind = static_cast<FrameKind>(h.kind);
  if (kind != FrameKind::kResponse && kind != FrameKind::kError && kind != FrameKind::kPong)
    return false;  // a server never sends anything else to a client: ignore it
  Slot* slot = slotFor(h.callId);
  if (!slot || slot->state != SlotState::kPending) return false;  // late answer of an expired call
  if (kind == FrameKind::kError) {
    CallResult r = readError(msg);
    msg.release();
    finish(*slot, std::move(r));
  } else {
    finish(*slot, CallResult(std::move(msg)));
  }
  return true;
}

size_t Channel::expire(Clock::time_point now) {
  size_t n = 0;
  // Callbacks run below may start calls (send() lowers nearestDeadline_ for them), in
  // slots this scan has passed: recompute into the member, never over it.
  nearestDeadline_ = kNoDeadline;
  for (uint64_t i = 0; i <= mask_; ++i) {
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

void Channel::failAll(ErrorKind kind, const std::string& why) {
  if (kind == ErrorKind::kDisconnected && !disconnected_) {
    disconnected_ = true;
    disconnectReason_ = why.empty() ? "connection closed" : why;
  }
  for (uint64_t i = 0; i <= mask_; ++i) {
    Slot& s = slots_[i];
    if (s.state == SlotState::kPending)
      finish(s, CallResult(kind, 0,
                           "call " + std::to_string(s.callId) + " to " +
                               connection_->endpoint() + ": " + disconnectReason_));
  }
}

void Channel::sendCancel(uint64_t callId) noexcept {
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

void Channel::sendQueuedCancels() noexcept {
  size_t n = std::exchange(queuedCancels_, 0);
  for (size_t i = 0; i < n; ++i) sendCancel(cancelQueue_[i]);
}

void Channel::requestAbandoned() noexcept {
  requestOpen_ = false;
}

CallResult Channel::takeResult(uint64_t callId) {
  Slot* slot = slotFor(callId);
  if (!slot || slot->state != SlotState::kDone)
    return CallResult(ErrorKind::kFailed, 0,
                      "result of call " + std::to_string(callId) + " is gone");
  slot->state = SlotState::kFree;
  pinned_ -= std::exchange(slot->pinned, false);
  return std::move(slot->result);
}

// Responses that arrived for calls nobody has collected yet (PendingCall::wait() not yet
// called) stay where they arrived, which is right for the usual short wait. But a ring
// reclaims space in arrival order, so while the caller waits for an earlier call, later
// answers held this way can take all of it, and the awaited answer then has no room to
// arrive in (over tcp it stays in the kernel; over shm the server holds it back). So a
// wait that lasts kUnpinAfter while such responses are held copies them to the heap.
Deadline Channel::waitDeadline(Deadline& unpinAt) {
  if (pinned_ == 0) [[likely]]
    return nearestDeadline_;
  if (unpinAt == kNoDeadline) unpinAt = Clock::now() + kUnpinAfter;
  return std::min(nearestDeadline_, unpinAt);
}

void Channel::unpinResults() {
  for (uint64_t i = 0; i <= mask_ && pinned_; ++i) {
    Slot& slot = slots_[i];
    if (!slot.pinned) continue;
    slot.result.response().moveToHeap();
    slot.pinned = false;
    --pinned_;
  }
}

// A request that grows past its first segment may wait for room in the server's memory
// that the server frees only when it releases earlier requests, which it does once their
// answers are sent, which may need room in our memory that unread answers fill: a cycle
// that only the server's answerRoomWait broke, failing a call. So while a request waits
// for room, answers are taken out of transport memory: those that arrived to the heap
// (handled later, since a callback must not run while a request is open, in arrival
// order before anything received after them), and held results as unpinResults() does.
void Channel::whileWaitingForRoom() {
  for (int i = 0; i < 256; ++i) {
    IncomingMessage in;
    if (connection_->tryReceive(in) != Status::kOk) break;  // a disconnect shows later
    in.moveToHeap();
    early_.push_back(std::move(in));
  }
  if (pinned_) unpinResults();
}

size_t Channel::takeEarly() {
  size_t n = 0;
  std::vector<IncomingMessage> early = std::move(early_);
  early_.clear();
  for (IncomingMessage& m : early) n += handle(m);
  return n;
}

size_t Channel::afterTimeout(Deadline unpinAt) {
  const auto now = Clock::now();
  if (pinned_ && now >= unpinAt) unpinResults();
  return expire(now);
}

IncomingMessage Channel::waitFor(uint64_t callId) {
  Deadline unpinAt = kNoDeadline;
  for (;;) {
    if (!early_.empty()) [[unlikely]] takeEarly();
    Slot* slot = slotFor(callId);
    if (!slot) throw Failed("call " + std::to_string(callId) + " is unknown to this channel");
    if (slot->state == SlotState::kDone) {
      CallResult r = takeResult(callId);
      r.throwIfError();
      return std::move(r.response());
    }
    if (disconnected_) failAll(ErrorKind::kDisconnected, disconnectReason_);
    IncomingMessage msg;
    Status s = connection_->receive(msg, waitDeadline(unpinAt));
    if (s == Status::kOk) {
      const FrameHeader& h = msg.header();
      if (h.callId == callId && h.kind == static_cast<uint8_t>(FrameKind::kResponse) &&
          !slot->callback) [[likely]] {
        // The answer awaited: to the caller directly, as finish() and takeResult() would
        // hand it over, without the round through a CallResult in the slot.
        if (slot->method || slot->traced) noteEnd(*slot, true, ErrorKind::kFailed, msg.payloadBytes());
        slot->state = SlotState::kFree;
        if (--outstanding_ == 0) nearestDeadline_ = kNoDeadline;
        return msg;
      }
      handle(msg);
    } else if (s == Status::kTimedOut) {
      afterTimeout(unpinAt);
    } else if (s == Status::kDisconnected) {
      failAll(ErrorKind::kDisconnected, connection_->lastError());
    }
  }
}

std::chrono::nanoseconds Channel::ping(Deadline deadline) {
  OutgoingMessage m;
  startMessage(m, 1, {}, deadline);
  m.initRoot<capnp::AnyPointer>();
  const auto start = Clock::now();
  const uint64_t id = send(m, FrameKind::kPing, {});
  (void)waitFor(id);  // the pong; its lease goes at once
  return Clock::now() - start;
}

size_t Channel::poll() {
  size_t n = early_.empty() ? 0 : takeEarly();
  IncomingMessage msg;
  for (int i = 0; i < 256; ++i) {
    Status s = connection_->tryReceive(msg);
    if (s == Status::kOk) {
      n += handle(msg);
      msg.release();
      continue;
    }
    if (s == Status::kDisconnected && !disconnected_) {
      n += outstanding_;
      failAll(ErrorKind::kDisconnected, connection_->lastError());
    }
    break;
  }
  if (outstanding_ && Clock::now() >= nearestDeadline_) n += expire(Clock::now());
  return n;
}

size_t Channel::pollUntil(Deadline deadline) {
  size_t n = poll();
  Deadline unpinAt = kNoDeadline;
  while (n == 0 && outstanding_) {
    if (!early_.empty()) [[unlikely]] {  // a callback built a request meanwhile
      n += takeEarly();
      continue;
    }
    IncomingMessage msg;
    Status s = connection_->receive(msg, std::min(deadline, waitDeadline(unpinAt)));
    if (s == Status::kOk) {
      n += handle(msg);
      msg.release();
      n += poll();
    } else if (s == Status::kDisconnected) {
      n += outstanding_;
      failAll(ErrorKind::kDisconnected, connection_->lastError());
    } else if (s == Status::kTimedOut) {
      n += afterTimeout(unpinAt);
      if (Clock::now() >= deadline) break;
    }
  }
  return n;
}

// ------------------------------------------------------------------------------------
// ChannelPool

namespace {
std::atomic<uint64_t> poolGenerations{1};
struct PoolCache {
  uint64_t generation = 0;
  Channel* channel = nullptr;
};
thread_local PoolCache tlsPoolCache;
}  // namespace

ChannelPool::ChannelPool(Connector connect, ChannelOptions options)
    : connect_(std::move(connect)), options_(options), generation_(poolGenerations++) {}

ChannelPool::~ChannelPool() = default;

Channel& ChannelPool::channel() {
  if (tlsPoolCache.generation == generation_ && tlsPoolCache.channel)
    return *tlsPoolCache.channel;
  std::lock_guard lock(mutex_);
  auto& slot = channels_[std::this_thread::get_id()];
  if (!slot) slot = std::make_unique<Channel>(connect_(), options_);
  tlsPoolCache = {generation_, slot.get()};
  return *slot;
}

void ChannelPool::resetThisThread() {
  std::lock_guard lock(mutex_);
  channels_.erase(std::this_thread::get_id());
  if (tlsPoolCache.generation == generation_) tlsPoolCache = {};
}

}  // namespace zcrpc
