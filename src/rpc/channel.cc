// Client side of the RPC core: Channel, RawRequest, PendingCall, ChannelPool.
#include <algorithm>
#include <utility>

#include "rpc/frames.h"
#include "rpc/session.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

namespace {
constexpr uint32_t kDefaultRequestWords = 64;
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
// Channel::Impl: a Session driven by the user's thread

struct __attribute__((visibility("hidden"))) Channel::Impl final {
  Impl(std::unique_ptr<Connection> connection, const ChannelOptions& o)
      : options(o),
        session(std::move(connection), sessionOptions(o),
                o.metrics ? std::make_shared<ConnectionMetrics>("", MetricsSide::kClient)
                          : nullptr,
                nullptr) {}
  ~Impl() {
    session.failAll(ErrorKind::kDisconnected,
                    "channel to " + session.connection().endpoint() + " destroyed");
    if (auto* m = session.questionMetrics()) const_cast<ConnectionMetrics*>(m)->markClosed();
  }

  static SessionOptions sessionOptions(const ChannelOptions& o) {
    SessionOptions s;
    s.window = o.window;
    s.defaultTimeout = o.defaultTimeout;
    s.tracer = o.tracer;
    s.maxExports = o.maxExports;
    s.maxImports = o.maxImports;
    s.streamWindowCalls = o.streamWindowCalls;
    s.streamWindowBytes = o.streamWindowBytes;
    return s;
  }

  ChannelOptions options;
  Session session;
};

// ------------------------------------------------------------------------------------
// RawRequest

[[gnu::always_inline]] inline void RawRequest::start(uint64_t interfaceId, uint16_t methodId, uint32_t sizeHintWords) {
  session_->startMessage(message_, sizeHintWords ? sizeHintWords : kDefaultRequestWords,
                         session_->options().defaultTimeout);
  FrameHeader& h = message_.header();
  h.interfaceId = interfaceId;
  h.methodId = methodId;
}


RawRequest::RawRequest(Channel& channel, uint64_t interfaceId, uint16_t methodId,
                       uint32_t sizeHintWords, std::string_view methodName)
    : session_(&channel.impl_->session), methodName_(methodName) {
  session_->enterApi(ThreadOwner::kNewRequest);
  session_->openRequest([&] { start(interfaceId, methodId, sizeHintWords); });
}

namespace {
/// ThreadOwner::Subject of a call on an import: its connection's session.
std::string askForImportOwner(const void* hook, ThreadOwner::Ask what) {
  const auto& import = *static_cast<const ImportHook*>(hook);
  if (what == ThreadOwner::Ask::kName) return "capability " + std::to_string(import.id) + " of a connection";
  const Session* s = import.link->session();
  return s ? s->inProgress() : "";
}
}  // namespace

RawRequest::RawRequest(const Capability& target, uint64_t interfaceId, uint16_t methodId,
                       uint32_t sizeHintWords, std::string_view methodName)
    : methodName_(methodName) {
  const auto* import = hookAs<ImportHook>(target.hook().get());
  if (!import)
    throw InvalidArgument(!target ? "call on a null capability"
                                  : "call on a local capability: call the object itself (a "
                                    "local capability is for passing in messages)");
  ThreadOwner& owner = import->link->owner;
  owner.enter(ThreadOwner::kCapabilityCall, {import, &askForImportOwner});
  session_ = import->link->session();
  if (!session_) {
    owner.leave();
    throw Disconnected("capability " + std::to_string(import->id) + "'s connection is gone: " +
                       import->link->closedWhy());
  }
  target_ = import->id;
  session_->openRequest([&] { start(interfaceId, methodId, sizeHintWords); });
}

RawRequest::~RawRequest() noexcept(false) {
  if (message_.isOpen()) session_->requestAbandoned();  // the message gives its space back
}

IncomingMessage RawRequest::call() {
  Session::ApiScope scope(*session_, ThreadOwner::kCall);
  session_->checkMayWait("call()");  // before anything is sent
  uint64_t id = session_->send(message_, FrameKind::kRequest, {}, methodName_, target_);
  return session_->waitFor(id);
}

PendingCall RawRequest::callAsync(CallCallback callback) {
  Session::ApiScope scope(*session_, ThreadOwner::kCallAsync);
  uint64_t id =
      session_->send(message_, FrameKind::kRequest, std::move(callback), methodName_, target_);
  return PendingCall(session_, id);
}

void RawRequest::sendOneWay(SendHint hint) {
  Session::ApiScope scope(*session_, ThreadOwner::kSendOneWay);
  session_->send(message_, FrameKind::kOneWay, {}, methodName_, target_, hint);
}

void RawRequest::sendStreaming(const std::shared_ptr<StreamFlow>& flow, SendHint hint) {
  Session::ApiScope scope(*session_, ThreadOwner::kStreamSend);
  flow->throwIfFailed();
  if (!session_->sendChunk(message_, flow, methodName_, target_, hint)) [[likely]]
    return;
  const SessionOptions& o = session_->options();
  while ((flow->inFlight() >= streamWindowCalls(o) || flow->bytesInFlight() >= o.streamWindowBytes) &&
         flow->inFlight() > 0)
    session_->pollUntil(deadlineAfter(o.defaultTimeout));
}

void StreamFlow::fail(const CallResult& failure) {
  if (failed_) return;
  failed_ = true;
  kind_ = failure.errorKind();
  code_ = failure.errorCode();
  message_ = failure.errorMessage();
}

void StreamFlow::throwFailed() const {
  const std::string why = "an earlier chunk of this stream failed: " + message_;
  if (kind_ == ErrorKind::kApplication) throw ApplicationError(code_, why);
  throwError(kind_, why);
}

void StreamFlow::finish() {
  if (inFlight() > 0) {
    Session::ApiScope scope(*session_, ThreadOwner::kStreamFinish);
    session_->confirmChunks(*this);
    while (inFlight() > 0) session_->pollUntil(deadlineAfter(session_->options().defaultTimeout));
  }
  throwIfFailed();
}

// ------------------------------------------------------------------------------------
// PendingCall

PendingCall::PendingCall(Channel& channel, uint64_t callId)
    : session_(&channel.impl_->session), callId_(callId) {}

bool PendingCall::done() const {
  if (!session_) return true;
  Session::ApiScope scope(*session_, ThreadOwner::kDone);
  auto* slot = session_->slotFor(callId_);
  return !slot || slot->state != Session::SlotState::kPending;
}

CallResult PendingCall::wait() {
  if (!session_) return CallResult(ErrorKind::kFailed, 0, "PendingCall is empty");
  Session::ApiScope scope(*session_, ThreadOwner::kWait);
  Session& session = *session_;
  auto* slot = session.slotFor(callId_);
  if (slot && slot->state == Session::SlotState::kPending) {
    if (slot->callback)
      return CallResult(ErrorKind::kFailed, 0, "call completes through its callback");
    try {
      return CallResult(session.waitFor(callId_));
    } catch (const ApplicationError& e) {
      return CallResult(ErrorKind::kApplication, e.code(), e.what());
    } catch (const Error& e) {
      return CallResult(e.kind(), 0, e.what());
    }
  }
  return session.takeResult(callId_);
}

void PendingCall::cancel() {
  if (!session_) return;
  Session::ApiScope scope(*session_, ThreadOwner::kCancel);
  Session& session = *session_;
  auto* slot = session.slotFor(callId_);
  if (!slot || slot->state != Session::SlotState::kPending) return;
  session.sendCancel(callId_);
  session.finish(*slot, CallResult(ErrorKind::kCancelled, 0,
                                   "call " + std::to_string(callId_) + " cancelled by the client"));
}

// ------------------------------------------------------------------------------------
// Channel

Channel::Channel(std::unique_ptr<Connection> connection, ChannelOptions options)
    : impl_(std::make_unique<Impl>(std::move(connection), options)) {}

Channel::~Channel() = default;

size_t Channel::poll() {
  Session::ApiScope scope(impl_->session, ThreadOwner::kPoll);
  return impl_->session.poll();
}
size_t Channel::pollUntil(Deadline deadline) {
  Session::ApiScope scope(impl_->session, ThreadOwner::kPollUntil);
  return impl_->session.pollUntil(deadline);
}
size_t Channel::outstanding() const noexcept { return impl_->session.outstanding(); }
bool Channel::connected() const noexcept { return !impl_->session.disconnected(); }
Connection& Channel::connection() noexcept { return impl_->session.connection(); }
const ChannelOptions& Channel::options() const noexcept { return impl_->options; }
const ConnectionMetrics* Channel::metrics() const noexcept {
  return impl_->session.questionMetrics();
}

std::chrono::nanoseconds Channel::ping(Deadline deadline) {
  Session::ApiScope scope(impl_->session, ThreadOwner::kPing);
  Session& impl = impl_->session;
  OutgoingMessage m;
  impl.startMessage(m, 1, {}, deadline);
  m.initRoot<capnp::AnyPointer>();
  const auto start = Clock::now();
  const uint64_t id = impl.send(m, FrameKind::kPing, {});
  (void)impl.waitFor(id);  // the pong; its lease goes at once
  return Clock::now() - start;
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
