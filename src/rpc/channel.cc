// Client side of the RPC core: Channel, RawRequest, PendingCall, ChannelPool.
#include <algorithm>
#include <utility>

#include "rpc/frames.h"
#include "rpc/thread_owner.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

namespace {
constexpr uint32_t kDefaultRequestWords = 64;

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
// Channel::Impl: the state behind a Channel

struct __attribute__((visibility("hidden"))) Channel::Impl final
    : private OutgoingMessage::RoomWaitHook {
  enum class SlotState : uint8_t { kFree, kPending, kDone };
  struct Slot {
    uint64_t callId = 0;
    SlotState state = SlotState::kFree;
    Deadline deadline{};
    CallCallback callback;
    CallResult result;
    MethodMetrics* method = nullptr;  // counters to charge when it ends (metrics on)
    uint64_t startTicks = 0;          // ticks::now() when sent (metrics or tracer on)
    bool traced = false;              // a tracer saw it begin
    bool pinned = false;              // kDone, its response still in transport memory
    TracedCall trace;                 // what the tracer saw (when traced)
  };

  /// What one run of the receive loop (run()) waits for.
  enum class Until : uint8_t {
    kPolled,       ///< poll(): what has arrived, without waiting
    kAnyFinished,  ///< pollUntil(): a call finished, none is outstanding, or the deadline
    kCallDone,     ///< waitFor(): call `callId` finished
    kSendRoom,     ///< waitForSendRoom(): `msg` could be started, or the deadline
  };
  struct Goal {
    Until until;
    Deadline deadline = kNoDeadline;    ///< kAnyFinished, kSendRoom
    uint64_t callId = 0;                ///< kCallDone
    OutgoingMessage* msg = nullptr;     ///< kSendRoom
    uint32_t words = 0;                 ///< kSendRoom
    Status status = Status::kOk;        ///< kSendRoom: the result of starting `msg`
    size_t finished = 0;                ///< calls finished during the run
  };

  Impl(std::unique_ptr<Connection> connection, ChannelOptions options);
  ~Impl();

  /// At every entry of the API (Channel, RawRequest, PendingCall): refuses a call from a
  /// thread other than the one using the channel, naming `where` (see ThreadOwner).
  void checkThread(const char* where) {
    owner_.check(where, [this] {
      return ThreadOwner::Use{"channel to " + connection_->endpoint(), inProgress()};
    });
  }
  /// What the channel's thread has in progress, for checkThread ("" when nothing).
  std::string inProgress() const;

  /// Opens `msg` for a call due at `deadline`, or when none is given, `timeout` after the
  /// request is sent (or first waits for room).
  void startMessage(OutgoingMessage& msg, uint32_t sizeHintWords, std::chrono::nanoseconds timeout,
                    std::optional<Deadline> deadline = std::nullopt);
  /// Waits for send room while taking the responses that arrive (see run()).
  Status waitForSendRoom(OutgoingMessage& msg, uint32_t sizeHintWords, Deadline deadline);
  /// Sends `msg`; the call is due at its build deadline (see RawRequest::deadline()).
  uint64_t send(OutgoingMessage& msg, FrameKind kind, CallCallback callback,
                std::string_view methodName = {});
  void finish(Slot& slot, CallResult&& result);
  void noteEnd(Slot& slot, CallResult& result) noexcept;
  /// noteEnd's work for an end by `kind` (kFailed: an answer of `responseBytes`).
  void noteEnd(Slot& slot, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept;
  bool handle(IncomingMessage& msg);  // true if it finished a call
  size_t expire(Clock::time_point now);
  void failAll(ErrorKind kind, const std::string& why);
  void sendCancel(uint64_t callId) noexcept;
  void sendQueuedCancels() noexcept;
  void requestAbandoned() noexcept;
  Slot* slotFor(uint64_t callId) noexcept;
  CallResult takeResult(uint64_t callId);
  IncomingMessage waitFor(uint64_t callId);
  size_t poll();
  size_t pollUntil(Deadline deadline);
  /// The one receive loop: takes and handles what arrives until `goal` (whose `until`
  /// is U) is met. Returns kCallDone's awaited response when it arrived as one (else
  /// the slot holds the result), otherwise an empty message.
  template <Until U>
  IncomingMessage run(Goal& goal);
  /// The deadline for one wait of the receive loop: nearestDeadline_, or sooner while
  /// uncollected responses hold transport memory (see unpinResults()).
  Deadline waitDeadline(Deadline& unpinAt);
  /// Moves uncollected responses out of transport memory to the heap (see channel.cc).
  void unpinResults();
  /// After a wait that timed out: unpins results if their time came, expires calls
  /// (returns how many).
  size_t afterTimeout(Deadline unpinAt);
  /// While a request being built waits for room: takes what arrived to the heap (early_).
  void whileWaitingForRoom() override;
  /// Handles the messages whileWaitingForRoom() took; returns how many calls finished.
  size_t takeEarly();

  std::unique_ptr<Connection> connection_;
  ChannelOptions options_;
  std::unique_ptr<Slot[]> slots_;
  uint64_t mask_;
  uint64_t nextCallId_ = 1;
  size_t outstanding_ = 0;
  size_t pinned_ = 0;  // slots with pinned results
  Deadline nearestDeadline_ = kNoDeadline;
  bool disconnected_ = false;
  std::string disconnectReason_;
  bool requestOpen_ = false;  // a RawRequest holds the connection's one open message
  std::vector<IncomingMessage> early_;  // received while a request waited for room, on the heap
  std::array<uint64_t, 64> cancelQueue_{};
  size_t queuedCancels_ = 0;
  std::unique_ptr<ConnectionMetrics> metrics_;
  Tracer* tracer_ = nullptr;
  ThreadOwner owner_;
};

// ------------------------------------------------------------------------------------
// RawRequest

RawRequest::RawRequest(Channel& channel, uint64_t interfaceId, uint16_t methodId,
                       uint32_t sizeHintWords, std::string_view methodName)
    : channel_(channel), methodName_(methodName) {
  channel_.impl_->checkThread("new request");
  channel_.impl_->startMessage(message_, sizeHintWords ? sizeHintWords : kDefaultRequestWords,
                               channel.impl_->options_.defaultTimeout);
  FrameHeader& h = message_.header();
  h.interfaceId = interfaceId;
  h.methodId = methodId;
}

RawRequest::~RawRequest() noexcept(false) {
  if (message_.isOpen()) channel_.impl_->requestAbandoned();  // the message gives its space back
}

IncomingMessage RawRequest::call() {
  Channel::Impl& channel = *channel_.impl_;
  channel.checkThread("call()");
  uint64_t id = channel.send(message_, FrameKind::kRequest, {}, methodName_);
  return channel.waitFor(id);
}

PendingCall RawRequest::callAsync(CallCallback callback) {
  channel_.impl_->checkThread("callAsync()");
  uint64_t id =
      channel_.impl_->send(message_, FrameKind::kRequest, std::move(callback), methodName_);
  return PendingCall(channel_, id);
}

void RawRequest::sendOneWay() {
  channel_.impl_->checkThread("sendOneWay()");
  channel_.impl_->send(message_, FrameKind::kOneWay, {}, methodName_);
}

// ------------------------------------------------------------------------------------
// PendingCall

bool PendingCall::done() const {
  if (channel_) channel_->impl_->checkThread("PendingCall::done()");
  auto* slot = channel_ ? channel_->impl_->slotFor(callId_) : nullptr;
  return !slot || slot->state != Channel::Impl::SlotState::kPending;
}

CallResult PendingCall::wait() {
  if (!channel_) return CallResult(ErrorKind::kFailed, 0, "PendingCall is empty");
  Channel::Impl& channel = *channel_->impl_;
  channel.checkThread("PendingCall::wait()");
  auto* slot = channel.slotFor(callId_);
  if (slot && slot->state == Channel::Impl::SlotState::kPending) {
    if (slot->callback)
      return CallResult(ErrorKind::kFailed, 0, "call completes through its callback");
    try {
      return CallResult(channel.waitFor(callId_));
    } catch (const ApplicationError& e) {
      return CallResult(ErrorKind::kApplication, e.code(), e.what());
    } catch (const Error& e) {
      return CallResult(e.kind(), 0, e.what());
    }
  }
  return channel.takeResult(callId_);
}

void PendingCall::cancel() {
  if (!channel_) return;
  Channel::Impl& channel = *channel_->impl_;
  channel.checkThread("PendingCall::cancel()");
  auto* slot = channel.slotFor(callId_);
  if (!slot || slot->state != Channel::Impl::SlotState::kPending) return;
  channel.sendCancel(callId_);
  channel.finish(*slot, CallResult(ErrorKind::kCancelled, 0,
                                   "call " + std::to_string(callId_) + " cancelled by the client"));
}

// ------------------------------------------------------------------------------------
// Channel

Channel::Channel(std::unique_ptr<Connection> connection, ChannelOptions options)
    : impl_(std::make_unique<Impl>(std::move(connection), options)) {}

Channel::~Channel() = default;

size_t Channel::poll() {
  impl_->checkThread("poll()");
  return impl_->poll();
}
size_t Channel::pollUntil(Deadline deadline) {
  impl_->checkThread("pollUntil()");
  return impl_->pollUntil(deadline);
}
size_t Channel::outstanding() const noexcept { return impl_->outstanding_; }
bool Channel::connected() const noexcept { return !impl_->disconnected_; }
Connection& Channel::connection() noexcept { return *impl_->connection_; }
const ChannelOptions& Channel::options() const noexcept { return impl_->options_; }
const ConnectionMetrics* Channel::metrics() const noexcept { return impl_->metrics_.get(); }

std::chrono::nanoseconds Channel::ping(Deadline deadline) {
  Impl& impl = *impl_;
  impl.checkThread("ping()");
  OutgoingMessage m;
  impl.startMessage(m, 1, {}, deadline);
  m.initRoot<capnp::AnyPointer>();
  const auto start = Clock::now();
  const uint64_t id = impl.send(m, FrameKind::kPing, {});
  (void)impl.waitFor(id);  // the pong; its lease goes at once
  return Clock::now() - start;
}

Channel::Impl::Impl(std::unique_ptr<Connection> connection, ChannelOptions options)
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

Channel::Impl::~Impl() {
  failAll(ErrorKind::kDisconnected, "channel to " + connection_->endpoint() + " destroyed");
  for (uint64_t i = 0; i <= mask_; ++i) slots_[i].result = CallResult();  // leases before connection
  connection_->close();
  if (metrics_) metrics_->markClosed();
}

std::string Channel::Impl::inProgress() const {
  if (requestOpen_) return "a request is being built";
  if (outstanding_)
    return std::to_string(outstanding_) + (outstanding_ == 1 ? " call" : " calls") + " outstanding";
  return {};
}

Channel::Impl::Slot* Channel::Impl::slotFor(uint64_t callId) noexcept {
  Slot& s = slots_[callId & mask_];
  return s.callId == callId && s.state != SlotState::kFree ? &s : nullptr;
}

void Channel::Impl::startMessage(OutgoingMessage& msg, uint32_t sizeHintWords,
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
/// move to the heap (see Channel::Impl::waitDeadline()).
constexpr auto kUnpinAfter = std::chrono::milliseconds(1);
}  // namespace

// The one receive loop behind poll(), pollUntil(), waitFor() and waitForSendRoom(). Each
// round hands over what early_ holds, stops if the goal is met, then takes one message --
// waiting for it by the connection's wait mode, or not while draining -- and handles it.
//
// * kCallDone waits for its answer straight away (nothing else usually arrives first) and
//   takes the awaited response directly, without the round through a CallResult in the
//   slot that finish() and takeResult() would make.
// * The other goals first drain what has arrived (at most kDrainBurst messages), then
//   expire overdue calls. kPolled stops there; kAnyFinished stops once a call finished
//   (or none is outstanding), else waits for the next message and drains again.
// * kSendRoom: the send ring (or socket) is full. Waiting for room without reading
//   responses would deadlock against a server that waits for room for those responses
//   while our unread ones fill its ring: so, while calls are outstanding, it alternates
//   between taking the responses that arrived and short waits for room, the slices
//   growing from 20 us to 1 ms so that a long stall does not spin; held responses are
//   unpinned after kUnpinAfter, as in any wait (they may be what blocks us).
// ------------------------------------------------------------------------------------
// ChannelPool
template <Channel::Impl::Until U>
IncomingMessage Channel::Impl::run(Goal& g) {
  constexpr int kDrainBurst = 256;
  Deadline unpinAt = kNoDeadline;
  auto slice = std::chrono::microseconds(20);  // kSendRoom's waits
  bool draining = U != Until::kCallDone;
  int drained = 0;  // messages taken in this drain
  IncomingMessage msg;  // the one every return hands back (named: no copy)
  for (;;) {
    if (!early_.empty()) [[unlikely]] g.finished += takeEarly();
    Slot* slot = nullptr;
    if constexpr (U == Until::kCallDone) {
      slot = slotFor(g.callId);
      if (!slot) throw Failed("call " + std::to_string(g.callId) + " is unknown to this channel");
      if (slot->state == SlotState::kDone) return msg;
      if (disconnected_) failAll(ErrorKind::kDisconnected, disconnectReason_);
    } else if constexpr (U == Until::kSendRoom) {
      if (!outstanding_) {
        g.status = connection_->startMessage(*g.msg, g.words, g.deadline);
        return msg;
      }
    }

    Status s;
    if (draining)
      s = connection_->tryReceive(msg);
    else if constexpr (U == Until::kCallDone)
      s = connection_->receive(msg, waitDeadline(unpinAt));
    else  // kAnyFinished (kSendRoom waits below, kPolled never)
      s = connection_->receive(msg, std::min(g.deadline, waitDeadline(unpinAt)));

    if (s == Status::kOk) {
      if constexpr (U == Until::kCallDone) {
        const FrameHeader& h = msg.header();
        if (h.callId == g.callId && h.kind == static_cast<uint8_t>(FrameKind::kResponse) &&
            !slot->callback) [[likely]] {
          if (slot->method || slot->traced)
            noteEnd(*slot, true, ErrorKind::kFailed, msg.payloadBytes());
          slot->state = SlotState::kFree;
          if (--outstanding_ == 0) nearestDeadline_ = kNoDeadline;
          return msg;
        }
        handle(msg);
        msg.release();
        continue;
      }
      g.finished += handle(msg);
      msg.release();
      if (!draining) {  // kAnyFinished woke up: take the rest that arrived with it
        draining = true;
        drained = 0;
      }
      if (++drained < kDrainBurst) continue;
    } else if (s == Status::kDisconnected) {
      g.finished += outstanding_;
      failAll(ErrorKind::kDisconnected, connection_->lastError());
      if constexpr (U == Until::kCallDone) continue;  // its slot is done now
      if constexpr (U == Until::kSendRoom) g.status = Status::kDisconnected;
      return msg;
    } else if (s == Status::kTimedOut) {  // a wait of kCallDone or kAnyFinished
      g.finished += afterTimeout(unpinAt);
      if (U == Until::kAnyFinished && (g.finished || !outstanding_ || Clock::now() >= g.deadline))
        return msg;
      continue;
    }

    // Drained: what had arrived is handled (kWouldBlock, or a full burst).
    const bool received = drained > 0;
    draining = false;
    drained = 0;
    if constexpr (U != Until::kSendRoom) {
      if (outstanding_ && Clock::now() >= nearestDeadline_) g.finished += expire(Clock::now());
      if (U == Until::kPolled || g.finished || !outstanding_) return msg;
      continue;  // kAnyFinished: wait for the next message
    } else {
      const auto now = Clock::now();
      if (outstanding_ && now >= nearestDeadline_) g.finished += expire(now);
      g.status = connection_->tryStartMessage(*g.msg, g.words);
      if (g.status != Status::kWouldBlock) return msg;
      if (now >= g.deadline) {
        g.status = Status::kTimedOut;
        return msg;
      }
      if (pinned_) {
        if (unpinAt == kNoDeadline)
          unpinAt = now + kUnpinAfter;
        else if (now >= unpinAt)
          unpinResults();
      }
      draining = true;
      if (received) continue;
      g.status = connection_->startMessage(
          *g.msg, g.words, std::min({g.deadline, nearestDeadline_, now + slice}));
      if (g.status != Status::kTimedOut) return msg;
      if (outstanding_) {
        Status r = connection_->receive(msg, std::min(g.deadline, Clock::now() + slice));
        if (r == Status::kOk) {
          g.finished += handle(msg);
          msg.release();
        } else if (r == Status::kDisconnected) {
          failAll(ErrorKind::kDisconnected, connection_->lastError());
          g.status = Status::kDisconnected;
          return msg;
        }
      }
      slice = std::min<std::chrono::microseconds>(slice * 2, std::chrono::milliseconds(1));
    }
  }
}

Status Channel::Impl::waitForSendRoom(OutgoingMessage& msg, uint32_t sizeHintWords, Deadline deadline) {
  Goal goal{Until::kSendRoom};
  goal.deadline = deadline;
  goal.msg = &msg;
  goal.words = sizeHintWords;
  (void)run<Until::kSendRoom>(goal);
  return goal.status;
}

uint64_t Channel::Impl::send(OutgoingMessage& msg, FrameKind kind, CallCallback callback,
                             std::string_view methodName) {
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
        MethodMetrics& m = metrics_->method(interfaceId, methodId, methodName);
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
  ++nextCallId_;
  h.kind = static_cast<uint8_t>(kind);
  h.callId = id;
  requestOpen_ = false;  // whatever happens next, this message is sent or gone
  TracedCall traced;
  const bool tracing = tracer_ && isCall;
  if (tracing) [[unlikely]] {
    traced = TracedCall{interfaceId, methodId, methodName, id, kind == FrameKind::kOneWay,
                        msg.trace()};
    tracer_->onClientCallBegin(traced);
    msg.setTrace(traced.trace);
  }
  const bool counted = metrics_ && isCall;
  const uint64_t start = counted || tracing ? ticks::now() : 0;
  if (connection_->send(msg) != Status::kOk) {
    if (counted) {
      MethodMetrics& m = metrics_->method(interfaceId, methodId, methodName);
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
    method = &metrics_->method(interfaceId, methodId, methodName);
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

void Channel::Impl::noteEnd(Slot& slot, CallResult& result) noexcept {
  noteEnd(slot, result.ok(), result.errorKind(), result.ok() ? result.response().payloadBytes() : 0);
}

void Channel::Impl::noteEnd(Slot& slot, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept {
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

void Channel::Impl::finish(Slot& slot, CallResult&& result) {
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

bool Channel::Impl::handle(IncomingMessage& msg) {
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

size_t Channel::Impl::expire(Clock::time_point now) {
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

void Channel::Impl::failAll(ErrorKind kind, const std::string& why) {
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

void Channel::Impl::sendCancel(uint64_t callId) noexcept {
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

void Channel::Impl::sendQueuedCancels() noexcept {
  size_t n = std::exchange(queuedCancels_, 0);
  for (size_t i = 0; i < n; ++i) sendCancel(cancelQueue_[i]);
}

void Channel::Impl::requestAbandoned() noexcept {
  requestOpen_ = false;
}

CallResult Channel::Impl::takeResult(uint64_t callId) {
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
Deadline Channel::Impl::waitDeadline(Deadline& unpinAt) {
  if (pinned_ == 0) [[likely]]
    return nearestDeadline_;
  if (unpinAt == kNoDeadline) unpinAt = Clock::now() + kUnpinAfter;
  return std::min(nearestDeadline_, unpinAt);
}

void Channel::Impl::unpinResults() {
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
void Channel::Impl::whileWaitingForRoom() {
  for (int i = 0; i < 256; ++i) {
    IncomingMessage in;
    if (connection_->tryReceive(in) != Status::kOk) break;  // a disconnect shows later
    in.moveToHeap();
    early_.push_back(std::move(in));
  }
  if (pinned_) unpinResults();
}

size_t Channel::Impl::takeEarly() {
  size_t n = 0;
  std::vector<IncomingMessage> early = std::move(early_);
  early_.clear();
  for (IncomingMessage& m : early) n += handle(m);
  return n;
}

size_t Channel::Impl::afterTimeout(Deadline unpinAt) {
  const auto now = Clock::now();
  if (pinned_ && now >= unpinAt) unpinResults();
  return expire(now);
}

IncomingMessage Channel::Impl::waitFor(uint64_t callId) {
  Goal goal{Until::kCallDone};
  goal.callId = callId;
  IncomingMessage answer = run<Until::kCallDone>(goal);
  if (!answer.valid()) [[unlikely]] {
    CallResult r = takeResult(callId);
    r.throwIfError();
    answer = std::move(r.response());
  }
  return answer;
}

size_t Channel::Impl::poll() {
  Goal goal{Until::kPolled};
  (void)run<Until::kPolled>(goal);
  return goal.finished;
}

size_t Channel::Impl::pollUntil(Deadline deadline) {
  Goal goal{Until::kAnyFinished};
  goal.deadline = deadline;
  (void)run<Until::kAnyFinished>(goal);
  return goal.finished;
}

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
