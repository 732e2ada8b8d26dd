// Client side of the RPC core: Channel, RawRequest, PendingCall, ChannelPool.
#include <algorithm>
#include <utility>

#include "rpc/frames.h"
#include "rpc/session.h"
#include "rpc/thread_owner.h"
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
    return s;
  }

  /// At every entry of the API (Channel, RawRequest, PendingCall): refuses a call from a
  /// thread other than the one using the channel, naming `where` (see ThreadOwner).
  void checkThread(const char* where) {
    owner.check(where, [this] {
      return ThreadOwner::Use{"channel to " + session.connection().endpoint(), inProgress()};
    });
  }
  /// What the channel's thread has in progress, for checkThread ("" when nothing).
  std::string inProgress() const {
    if (session.requestOpen()) return "a request is being built";
    const size_t n = session.outstanding();
    if (n) return std::to_string(n) + (n == 1 ? " call" : " calls") + " outstanding";
    return {};
  }

  ChannelOptions options;
  Session session;
  ThreadOwner owner;
};

// ------------------------------------------------------------------------------------
// RawRequest

RawRequest::RawRequest(Channel& channel, uint64_t interfaceId, uint16_t methodId,
                       uint32_t sizeHintWords, std::string_view methodName)
    : channel_(channel), methodName_(methodName) {
  channel_.impl_->checkThread("new request");
  channel_.impl_->session.startMessage(
      message_, sizeHintWords ? sizeHintWords : kDefaultRequestWords,
      channel.impl_->options.defaultTimeout);
  FrameHeader& h = message_.header();
  h.interfaceId = interfaceId;
  h.methodId = methodId;
}

RawRequest::~RawRequest() noexcept(false) {
  if (message_.isOpen()) channel_.impl_->session.requestAbandoned();  // the message gives its space back
}

IncomingMessage RawRequest::call() {
  channel_.impl_->checkThread("call()");
  Session& channel = channel_.impl_->session;
  uint64_t id = channel.send(message_, FrameKind::kRequest, {}, methodName_);
  return channel.waitFor(id);
}

PendingCall RawRequest::callAsync(CallCallback callback) {
  channel_.impl_->checkThread("callAsync()");
  uint64_t id = channel_.impl_->session.send(message_, FrameKind::kRequest, std::move(callback),
                                              methodName_);
  return PendingCall(channel_, id);
}

void RawRequest::sendOneWay() {
  channel_.impl_->checkThread("sendOneWay()");
  channel_.impl_->session.send(message_, FrameKind::kOneWay, {}, methodName_);
}

// ------------------------------------------------------------------------------------
// PendingCall

bool PendingCall::done() const {
  if (channel_) channel_->impl_->checkThread("PendingCall::done()");
  auto* slot = channel_ ? channel_->impl_->session.slotFor(callId_) : nullptr;
  return !slot || slot->state != Session::SlotState::kPending;
}

CallResult PendingCall::wait() {
  if (!channel_) return CallResult(ErrorKind::kFailed, 0, "PendingCall is empty");
  channel_->impl_->checkThread("PendingCall::wait()");
  Session& channel = channel_->impl_->session;
  auto* slot = channel.slotFor(callId_);
  if (slot && slot->state == Session::SlotState::kPending) {
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
  channel_->impl_->checkThread("PendingCall::cancel()");
  Session& channel = channel_->impl_->session;
  auto* slot = channel.slotFor(callId_);
  if (!slot || slot->state != Session::SlotState::kPending) return;
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
  return impl_->session.poll();
}
size_t Channel::pollUntil(Deadline deadline) {
  impl_->checkThread("pollUntil()");
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
  impl_->checkThread("ping()");
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
