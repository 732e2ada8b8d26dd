// Server side of the RPC core: workers polling connections, dispatch, deferred answers,
// graceful shutdown.
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>

#include <capnp/serialize.h>
#include <kj/common.h>
#include <kj/exception.h>

#include "metrics/stats_service.h"
#include "os/os.h"
#include "os/spin.h"
#include "rpc/frames.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

namespace {
constexpr uint32_t kDefaultResponseWords = 64;
constexpr auto kSleepSlice = std::chrono::milliseconds(20);
constexpr auto kCongestedSlice = std::chrono::milliseconds(1);
constexpr uint32_t kClockEvery = 64;   // idle busy-poll rounds between clock reads
constexpr auto kYieldInterval = std::chrono::microseconds(20);  // longest spin between yields
constexpr auto kLivenessEvery = std::chrono::milliseconds(50);

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

/// Cap'n Proto payload of a message about to be sent (what the metrics call bytes).
uint64_t payloadBytes(OutgoingMessage& msg) {
  uint64_t words = 0;
  for (auto segment : msg.segmentsForSend()) words += segment.size();
  return words * sizeof(capnp::word) + msg.gatheredBytes();
}

/// Heap memory for an answer built while its connection had no room for it (the client
/// is not reading its answers): the handler fills it exactly as it would transport
/// memory; it then waits, flattened, in the connection's backlog. One answer at a time.
class SpillSource final : public SegmentSource {
 public:
  void open(OutgoingMessage& msg, uint32_t words, uint64_t maxMessageBytes) {
    chunks_.clear();
    header_ = FrameHeader{};
    allocated_ = 0;
    max_ = maxMessageBytes;
    open_ = &msg;
    msg.open(*this, header_, take(words));
  }
  bool holds(const OutgoingMessage& msg) const noexcept { return open_ == &msg; }
  /// The answer went to the backlog: its memory stays until the next open or reset.
  void sent() noexcept { open_ = nullptr; }
  void reset() noexcept {
    chunks_.clear();
    open_ = nullptr;
  }

  kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override {
    return take(std::max<uint64_t>(minWords, allocated_ / 8));
  }
  void abandon() noexcept override { reset(); }

 private:
  kj::ArrayPtr<capnp::word> take(uint64_t words) {
    if ((allocated_ + words) * 8 > max_) {
      if ((allocated_ + 1) * 8 > max_ || words == 0)
        throw InvalidArgument("answer exceeds the maximum message size " + std::to_string(max_));
      words = max_ / 8 - allocated_;
    }
    auto chunk = kj::heapArray<capnp::word>(words);
    std::memset(chunk.begin(), 0, words * sizeof(capnp::word));
    allocated_ += words;
    auto out = chunk.asPtr();
    chunks_.push_back(std::move(chunk));
    return out;
  }

  FrameHeader header_{};
  std::vector<kj::Array<capnp::word>> chunks_;
  uint64_t allocated_ = 0;
  uint64_t max_ = 0;
  const OutgoingMessage* open_ = nullptr;
};

/// What a call in progress must report when it ends (metrics and tracer).
struct CallMark {
  MethodMetrics* method = nullptr;  // borrowed from the connection's ConnectionMetrics
  uint64_t startTicks = 0;
  bool traced = false;
  TracedCall trace;
};
}  // namespace

struct Completion {
  std::shared_ptr<DeferredState> state;
  std::function<void(OutgoingMessage&)> fill;  // empty: an error answer
  ErrorKind kind = ErrorKind::kFailed;
  int32_t code = 0;
  std::string message;
};

struct DeferredState {
  std::shared_ptr<ServerConnection> owner;
  uint64_t callId = 0;
  bool oneWay = false;
  std::atomic<bool> cancelled{false};
  std::atomic<bool> answered{false};
  std::atomic<bool> answeredByServer{false};  // shutdown failed it on the handler's behalf
  TraceContext trace;  // what the request carried
  CallMark mark;       // worker thread only
  IncomingMessage request;  // declared after `owner`: released before the connection can go
};

/// One client connection as a worker serves it.
class ServerConnection final : public std::enable_shared_from_this<ServerConnection> {
 public:
  ServerConnection(const std::unordered_map<uint64_t, Service*>& services,
                   std::unique_ptr<Connection> connection, int workerWake,
                   std::shared_ptr<ConnectionMetrics> metrics, Tracer* tracer,
                   size_t maxDeferred, std::chrono::milliseconds answerRoomWait)
      : services_(services), connection_(std::move(connection)), workerWake_(workerWake),
        metrics_(std::move(metrics)), tracer_(tracer), maxDeferred_(maxDeferred),
        answerRoomWait_(answerRoomWait) {}

  Connection& connection() noexcept { return *connection_; }
  const std::shared_ptr<ConnectionMetrics>& metrics() const noexcept { return metrics_; }
  bool disconnected() const noexcept { return disconnected_; }
  /// No deferred call open and no answer waiting for room.
  bool idle() const noexcept { return deferred_.empty() && backlog_.empty(); }
  /// Answers wait for room (the client is not reading them): poll, do not sleep on it.
  bool congested() const noexcept { return !backlog_.empty() && !disconnected_; }
  bool hasMail() const noexcept { return hasMail_.load(std::memory_order_acquire); }

  /// Handles up to `batch` received frames and every posted completion. Worker thread.
  size_t pump(size_t batch, bool rejecting) {
    size_t n = hasMail() ? processMail() : 0;
    if (!backlog_.empty()) n += drainBacklog();
    // While answers wait for room, take no new requests: they stay in the client's ring,
    // so a client that does not read its answers is held back by its own ring filling up,
    // and the worker goes on serving its other connections.
    const size_t take = backlog_.empty() ? batch : 0;
    IncomingMessage msg;  // one for the loop: handle() releases (or takes) each request
    for (size_t i = 0; i < take && !disconnected_; ++i) {
      Status s = connection_->tryReceive(msg);
      if (s == Status::kOk) {
        handle(msg, rejecting);
        msg.release();
        ++n;
      } else {
        if (s == Status::kDisconnected) disconnected_ = true;
        break;
      }
    }
    if (n && !disconnected_) (void)connection_->flush();
    return n;
  }

  void checkPeer() {
    if (!disconnected_ && connection_->checkPeer() == Status::kDisconnected) disconnected_ = true;
  }

  /// Answers every deferred call still open with an error (shutdown). Worker thread.
  void failDeferred(const std::string& why) {
    processMail();
    for (auto& [id, weak] : deferred_) {
      if (auto state = weak.lock(); state && !state->answered.exchange(true)) {
        // The handler's own later answer is then accepted and dropped quietly.
        state->answeredByServer.store(true, std::memory_order_release);
        state->cancelled.store(true, std::memory_order_release);
        endCall(state->mark, false, ErrorKind::kDisconnected, 0);
        if (!state->oneWay) sendError(id, ErrorKind::kDisconnected, 0, why);
      }
    }
    deferred_.clear();
    (void)connection_->flush();
  }

  void close() { connection_->close(); }

  /// The worker is done with this connection: refuse later completions and drop queued
  /// ones, which would otherwise keep it alive (completion -> state -> owner -> here).
  void closeMail() {
    std::vector<Completion> left;
    {
      std::lock_guard lock(mailMutex_);
      mailClosed_ = true;
      left.swap(mail_);
      hasMail_.store(false, std::memory_order_relaxed);
    }
  }

  /// Any thread.
  void post(Completion&& c) {
    {
      std::unique_lock lock(mailMutex_);
      if (mailClosed_) {
        // The worker let this connection go: queueing would keep it alive through the
        // state's owner pointer, forever. Drop the answer, outside the lock.
        lock.unlock();
        Completion dropped = std::move(c);
        return;
      }
      mail_.push_back(std::move(c));
    }
    hasMail_.store(true, std::memory_order_release);
    uint64_t one = 1;
    (void)!::write(workerWake_, &one, sizeof one);
  }

  OutgoingMessage& startResponse(std::optional<OutgoingMessage>& slot, uint32_t hint) {
    if (slot) return *slot;
    openAnswer(slot, hint ? hint : kDefaultResponseWords);
    return *slot;
  }

  /// Opens an answer without ever waiting: in transport memory when there is room now
  /// (and no older answer waits), else in the spill memory, to wait in the backlog.
  /// Throws Disconnected when the connection is gone.
  void openAnswer(std::optional<OutgoingMessage>& slot, uint32_t words) {
    slot.emplace();
    if (backlog_.empty()) {
      Status s = connection_->tryStartMessage(*slot, words);
      if (s == Status::kOk) {
        // The worker serves other connections too: growing this answer waits for room
        // in the client's memory only briefly (then the call fails with Overloaded).
        slot->setBuildWait(answerRoomWait_);
        return;
      }
      if (s == Status::kDisconnected) {
        slot.reset();
        disconnected_ = true;
        throw Disconnected("connection " + connection_->endpoint() + " lost");
      }
    }
    spill_.open(*slot, words, connection_->maxMessageBytes());
  }

  /// Sends an answer opened by openAnswer, or puts it in the backlog.
  Status sendAnswer(OutgoingMessage& out) {
    if (!spill_.holds(out)) return connection_->send(out, false);
    const FrameHeader& h = out.header();
    backlog_.push_back({h.kind, h.callId, capnp::messageToFlatArray(out.segmentsForSend())});
    out.markSent();
    spill_.sent();
    return Status::kOk;
  }

  /// Moves waiting answers, oldest first, into transport memory as room appears (a copy:
  /// only answers that found no room pay it). Worker thread.
  size_t drainBacklog() {
    size_t n = 0;
    while (!backlog_.empty() && !disconnected_) {
      Backlogged& b = backlog_.front();
      OutgoingMessage out;
      Status s = connection_->tryStartMessage(out, static_cast<uint32_t>(b.flat.size()));
      if (s == Status::kWouldBlock) break;
      if (s != Status::kOk) {
        disconnected_ = true;
        break;
      }
      capnp::ReaderOptions options;
      options.traversalLimitInWords = kj::maxValue;  // our own handler's answer
      options.nestingLimit = 1024;
      capnp::FlatArrayMessageReader reader(b.flat, options);
      out.getRoot<capnp::AnyPointer>().set(reader.getRoot<capnp::AnyPointer>());
      out.header().kind = b.kind;
      out.header().callId = b.callId;
      (void)connection_->send(out, false);
      backlog_.pop_front();
      ++n;
    }
    if (disconnected_) backlog_.clear();
    if (backlog_.empty()) spill_.reset();
    return n;
  }

  std::shared_ptr<DeferredState> defer(CallContext& ctx) {
    if (deferred_.size() >= maxDeferred_)
      throw Overloaded("server connection " + connection_->endpoint() + " already has " +
                       std::to_string(maxDeferred_) + " deferred calls");
    auto state = std::make_shared<DeferredState>();
    state->owner = shared_from_this();
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

 private:
  void handle(IncomingMessage& msg, bool rejecting) {
    const FrameHeader& h = msg.header();
    switch (static_cast<FrameKind>(h.kind)) {
      case FrameKind::kRequest:
      case FrameKind::kOneWay:
        if (rejecting) {
          if (h.kind == static_cast<uint8_t>(FrameKind::kRequest))
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

  void dispatch(IncomingMessage& msg) {
    const uint64_t callId = msg.header().callId;
    const uint64_t interfaceId = msg.header().interfaceId;
    const uint16_t methodId = msg.header().methodId;
    const bool oneWay = msg.header().kind == static_cast<uint8_t>(FrameKind::kOneWay);
    current_.method = nullptr;
    current_.traced = false;
    if (metrics_) {
      current_.method = &metrics_->method(interfaceId, methodId);
      current_.method->countCall(msg.payloadBytes());
    }
    if (tracer_) [[unlikely]] {
      current_.traced = true;
      current_.trace = TracedCall{interfaceId, methodId, callId, oneWay, msg.trace()};
      tracer_->onServerCallBegin(current_.trace);
    }
    if (current_.method || current_.traced) current_.startTicks = ticks::now();
    CallContext ctx(*this, msg);
    ErrorKind kind = ErrorKind::kFailed;
    int32_t code = 0;
    std::string why;
    try {
      auto it = services_.find(interfaceId);
      if (it == services_.end() || !it->second->dispatch(interfaceId, methodId, ctx)) {
        kind = ErrorKind::kUnimplemented;
        why = (it == services_.end() ? "interface 0x" + hex(interfaceId) + " is not served by "
                                     : "method " + std::to_string(methodId) + " of interface 0x" +
                                           hex(interfaceId) + " is not implemented by ") +
              connection_->endpoint();
      } else {
        if (ctx.deferred_) return;  // defer() took over the call's mark
        if (oneWay) {
          endCall(current_, true, ErrorKind::kFailed, 0);
          return;
        }
        OutgoingMessage& out = startResponse(ctx.response_, 1);
        if (!out.isOpen()) return;
        out.getRoot<capnp::AnyPointer>();  // an untouched response is an empty message
        out.header().kind = static_cast<uint8_t>(FrameKind::kResponse);
        out.header().callId = callId;
        // The request is released after the answer is sent (by pump()), not before: the
        // answer may reference its bytes (Orphanage::referenceExternalData), which the
        // transport reads while sending.
        const Status sent = sendAnswer(out);
        // Counted once sent, overlapping with the caller's receipt. (The sizes come from
        // the builder's bookkeeping, not from transport memory.)
        endCall(current_, true, ErrorKind::kFailed,
                current_.method && sent == Status::kOk ? payloadBytes(out) : 0);
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
      ctx.response_.reset();  // give back a half-built response first
      msg.release();
      sendError(callId, kind, code, why);
    }
    endCall(current_, false, kind, 0);
  }

  /// Charges the call's counters and tells the tracer. Worker thread.
  void endCall(CallMark& mark, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept {
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

  void sendError(uint64_t callId, ErrorKind kind, int32_t code, const std::string& why) {
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

  size_t processMail() {
    std::vector<Completion> mail;
    {
      std::lock_guard lock(mailMutex_);
      mail.swap(mail_);
      hasMail_.store(false, std::memory_order_relaxed);
    }
    for (Completion& c : mail) {
      deferred_.erase(c.state->callId);
      // Released once the answer is sent: `fill` may reference the request's bytes.
      KJ_DEFER(c.state->request.release());
      CallMark& mark = c.state->mark;
      if (disconnected_) {
        endCall(mark, false, ErrorKind::kDisconnected, 0);
        continue;
      }
      if (c.state->oneWay) {
        endCall(mark, c.fill != nullptr, c.kind, 0);
        continue;
      }
      if (!c.fill) {
        sendError(c.state->callId, c.kind, c.code, c.message);
        endCall(mark, false, c.kind, 0);
        continue;
      }
      std::optional<OutgoingMessage> out;
      ErrorKind kind = ErrorKind::kApplication;
      int32_t code = 0;
      std::string why;
      try {
        startResponse(out, 0);
        c.fill(*out);
        out->getRoot<capnp::AnyPointer>();
        out->header().kind = static_cast<uint8_t>(FrameKind::kResponse);
        out->header().callId = c.state->callId;
        const Status sent = sendAnswer(*out);
        endCall(mark, true, ErrorKind::kFailed,
                mark.method && sent == Status::kOk ? payloadBytes(*out) : 0);
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
      out.reset();
      if (!disconnected_) sendError(c.state->callId, kind, code, why);
      endCall(mark, false, kind, 0);
    }
    return mail.size();
  }

  friend class zcrpc::CallContext;
  const std::unordered_map<uint64_t, Service*>& services_;
  std::unique_ptr<Connection> connection_;
  int workerWake_;
  bool disconnected_ = false;
  std::unordered_map<uint64_t, std::weak_ptr<DeferredState>> deferred_;
  std::mutex mailMutex_;
  std::vector<Completion> mail_;
  bool mailClosed_ = false;  // under mailMutex_
  std::atomic<bool> hasMail_{false};
  std::shared_ptr<ConnectionMetrics> metrics_;  // null: metrics off
  Tracer* tracer_;
  size_t maxDeferred_;
  std::chrono::milliseconds answerRoomWait_;
  CallMark current_;  // the call being dispatched

  /// An answer that found no room: flattened, waiting for room in arrival order.
  struct Backlogged {
    uint8_t kind;
    uint64_t callId;
    kj::Array<capnp::word> flat;  // capnp::messageToFlatArray
  };
  SpillSource spill_;
  std::deque<Backlogged> backlog_;
};

// ------------------------------------------------------------------------------------
// CallContext / DeferredReply

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
  return connection_.startResponse(response_, sizeHintWords);
}

bool CallContext::isCancelled() const noexcept {
  return deferred_ && deferred_->cancelled.load(std::memory_order_acquire);
}

DeferredReply CallContext::defer() {
  if (deferred_) throw InvalidArgument("call " + std::to_string(callId()) + " deferred twice");
  response_.reset();
  deferred_ = connection_.defer(*this);
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

// ------------------------------------------------------------------------------------
// Server

namespace {

class Worker final {
 public:
  Worker(const std::unordered_map<uint64_t, Service*>& services, const ServerOptions& options,
         MetricsRegistry& registry)
      : services_(services), options_(options), registry_(registry),
        wake_(ZCRPC_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd for worker")) {}

  void adopt(std::unique_ptr<Connection> c) {
    {
      std::lock_guard lock(inboxMutex_);
      inbox_.push_back(std::move(c));
      ++count_;
    }
    hasInbox_.store(true, std::memory_order_release);
    wake();
  }

  void start() { thread_ = std::thread([this] { run(); }); }
  void stop(Deadline deadline) {
    drainDeadline_ = deadline;
    stopping_.store(true, std::memory_order_release);
    wake();
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  size_t connections() const { return count_.load(std::memory_order_relaxed); }

 private:
  void wake() {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }

  void adoptInbox() {
    if (!hasInbox_.load(std::memory_order_acquire)) return;
    std::lock_guard lock(inboxMutex_);
    for (auto& c : inbox_) {
      auto metrics = options_.metrics ? registry_.open(c->endpoint(), MetricsSide::kServer) : nullptr;
      connections_.push_back(std::make_shared<ServerConnection>(
          services_, std::move(c), wake_.get(), std::move(metrics), options_.tracer,
          options_.maxDeferredPerConnection, options_.answerRoomWait));
    }
    inbox_.clear();
    hasInbox_.store(false, std::memory_order_relaxed);
  }

  size_t pumpAll(bool rejecting) {
    size_t n = 0;
    for (auto& c : connections_) n += c->pump(options_.batch, rejecting);
    return n;
  }

  void reap() {
    auto gone = std::remove_if(connections_.begin(), connections_.end(), [this](auto& c) {
      if (!c->disconnected() || !c->idle() || c->hasMail()) return false;
      c->close();
      c->closeMail();
      registry_.retire(c->metrics());
      return true;
    });
    count_ -= static_cast<size_t>(connections_.end() - gone);
    connections_.erase(gone, connections_.end());
  }

  void sleep() {
    std::vector<pollfd>& fds = pollFds_;  // reused: no allocation per sleep
    fds.clear();
    fds.push_back({wake_.get(), POLLIN, 0});
    bool ready = false;
    bool congested = false;
    size_t armed = 0;
    for (auto& c : connections_) {
      if (c->disconnected()) continue;
      if (c->congested()) {
        // Its requests wait unread and nothing signals freed room: look again soon.
        congested = true;
        continue;
      }
      if (!c->connection().armWait()) {
        ready = true;
        break;
      }
      ++armed;
      fds.push_back({c->connection().waitFd(), POLLIN | POLLRDHUP, 0});
    }
    if (!ready) {
      int r;
      // Slices bound the liveness checks of connections; with none, only wake() ends it.
      const int ms = congested              ? static_cast<int>(kCongestedSlice.count())
                     : connections_.empty() ? -1
                                            : static_cast<int>(kSleepSlice.count());
      do r = ::poll(fds.data(), fds.size(), ms);
      while (r < 0 && errno == EINTR);
    }
    size_t i = 0;
    for (auto& c : connections_) {
      if (c->disconnected() || c->congested()) continue;
      if (i++ >= armed) break;
      c->connection().disarmWait();
    }
    for (size_t k = 1; k < fds.size(); ++k)
      if (fds[k].revents & (POLLHUP | POLLRDHUP | POLLERR))
        for (auto& c : connections_)
          if (c->connection().waitFd() == fds[k].fd) c->checkPeer();
    uint64_t count;
    (void)!::read(wake_.get(), &count, sizeof count);
  }

  void run() {
    auto nextLiveness = Clock::now();
    Clock::time_point idleSince, lastYield;
    uint32_t idleRounds = 0;  // polling rounds that found nothing, since the last work
    bool slept = false;       // ... and whether a sleep() ended one of them
    const bool spins = options_.idleMode != WaitMode::kBlocking;
    while (!stopping_.load(std::memory_order_acquire)) {
      adoptInbox();
      if (pumpAll(false)) {
        idleRounds = 0;
        slept = false;
        continue;
      }
      const uint32_t round = idleRounds++;
      // While spinning, an idle round reads the clock only every kClockEvery-th time:
      // where clock_gettime is a syscall (VMs on an HPET or ACPI clock source) it would
      // make every round slow and every arriving request wait for the round to end.
      if (spins && !slept && (round & (kClockEvery - 1)) != 0) {
        os::idleSpin(round + 1);  // yields now and then: see idleSpin
        continue;
      }
      const auto now = Clock::now();
      if (round == 0) idleSince = now;
      if (now >= nextLiveness) {
        for (auto& c : connections_) c->checkPeer();
        nextLiveness = now + kLivenessEvery;
        reap();
      }
      if (!slept && (options_.idleMode == WaitMode::kBusyPoll ||
                     (options_.idleMode == WaitMode::kSpinThenSleep &&
                      now - idleSince < options_.spinTime))) {
        // The rounds between clock reads yield now and then (idleSpin); this one yields
        // when kYieldInterval has passed since the last yield here: a round over tcp
        // connections is a recv() each, so kYieldEvery of them take far longer.
        if (now - lastYield >= kYieldInterval) {
          ::sched_yield();
          lastYield = now;
        } else {
          os::cpuRelax();
        }
        continue;
      }
      sleep();
      slept = true;
    }
    drain();
  }

  /// Graceful end: keep answering until quiet and every deferred call is answered (or
  /// the deadline passes), then fail what is left, refuse what still arrives, close.
  void drain() {
    adoptInbox();
    for (;;) {
      size_t n = pumpAll(false);
      bool deferredLeft = false;
      for (auto& c : connections_) deferredLeft |= !c->idle() && !c->disconnected();
      if (!n && !deferredLeft) break;
      if (Clock::now() >= drainDeadline_) break;
      if (!n) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    for (auto& c : connections_) {
      c->failDeferred("server shut down before answering");
      c->pump(SIZE_MAX / 2, /*rejecting=*/true);
      c->close();
      c->closeMail();
      registry_.retire(c->metrics());
    }
    connections_.clear();
    count_ = 0;
  }

  const std::unordered_map<uint64_t, Service*>& services_;
  const ServerOptions& options_;
  MetricsRegistry& registry_;
  os::Fd wake_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  Deadline drainDeadline_{};
  std::mutex inboxMutex_;
  std::vector<std::unique_ptr<Connection>> inbox_;
  std::atomic<bool> hasInbox_{false};
  std::atomic<size_t> count_{0};
  std::vector<std::shared_ptr<ServerConnection>> connections_;
  std::vector<pollfd> pollFds_;  // sleep()'s, kept for its capacity
};

}  // namespace

struct Server::Impl {
  ServerOptions options;
  std::unordered_map<uint64_t, Service*> services;
  MetricsRegistry registry;
  std::unique_ptr<Service> statsService;
  std::vector<std::string> endpointNames;  // fixed at start(): read by workers without a lock
  std::atomic<bool> endpointsFixed{false};
  std::vector<std::unique_ptr<Listener>> listeners;
  std::vector<std::unique_ptr<Worker>> workers;
  std::thread acceptor;
  os::Fd acceptorWake;
  std::atomic<bool> stopping{false};
  bool started = false;
  bool stopped = false;
  std::mutex mutex;

  Worker& leastLoaded() {
    return **std::min_element(workers.begin(), workers.end(), [](auto& a, auto& b) {
      return a->connections() < b->connections();
    });
  }

  void acceptLoop() {
    std::vector<pollfd> fds;
    while (!stopping.load(std::memory_order_acquire)) {
      fds.clear();
      fds.push_back({acceptorWake.get(), POLLIN, 0});
      // Sleeps until a client or a handshake in progress has something, or a handshake's
      // deadline: no periodic wake-up to take a core from a busy-polling worker.
      Deadline wakeAt = kNoDeadline;
      for (auto& l : listeners) wakeAt = std::min(wakeAt, l->addPollFds(fds));
      int ms = -1;
      if (wakeAt != kNoDeadline) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(wakeAt - Clock::now());
        ms = static_cast<int>(std::clamp<int64_t>(left.count(), 0, 60'000));
      }
      if (::poll(fds.data(), fds.size(), ms) < 0) continue;
      for (auto& l : listeners) {
        try {
          if (auto c = l->accept(Clock::now())) leastLoaded().adopt(std::move(c));
        } catch (const std::exception& e) {
          std::fprintf(stderr, "zcrpc: accept on %s failed: %s\n", l->endpoint().c_str(),
                       e.what());
        }
      }
    }
  }
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>()) {
  if (options.workerThreads == 0) throw InvalidArgument("a server needs at least one worker thread");
  impl_->options = options;
  impl_->acceptorWake =
      os::Fd(ZCRPC_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd for acceptor"));
  for (size_t i = 0; i < options.workerThreads; ++i)
    impl_->workers.push_back(
        std::make_unique<Worker>(impl_->services, impl_->options, impl_->registry));
}

Server::~Server() { shutdown(deadlineAfter(std::chrono::seconds(1))); }

void Server::addService(Service& service) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->started) throw InvalidArgument("addService after start()");
  for (uint64_t id : service.interfaceIds()) {
    if (impl_->services.count(id))
      throw InvalidArgument("interface 0x" + hex(id) + " is already served by another service");
  }
  for (uint64_t id : service.interfaceIds()) impl_->services[id] = &service;
}

void Server::addListener(std::unique_ptr<Listener> listener) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->started) throw InvalidArgument("addListener after start()");
  impl_->listeners.push_back(std::move(listener));
}

void Server::addConnection(std::unique_ptr<Connection> connection) {
  impl_->leastLoaded().adopt(std::move(connection));
}

void Server::enableStats() {
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->statsService) return;
    if (impl_->started) throw InvalidArgument("enableStats after start()");
    impl_->statsService = makeStatsService(
        [this] { return stats(); }, static_cast<uint32_t>(impl_->options.workerThreads));
  }
  addService(*impl_->statsService);
  (void)ticks::nanosPerTick();  // calibrate now rather than in the first stats call
}

ServerStats Server::stats() const {
  // No lock of the server's own: workers call this (the stats service) while shutdown()
  // holds it waiting for them.
  ServerStats s = impl_->options.metrics ? impl_->registry.snapshot() : ServerStats{};
  if (impl_->endpointsFixed.load(std::memory_order_acquire))  // pairs with start()'s store
    s.endpoints = impl_->endpointNames;
  return s;
}

void Server::start() {
  std::lock_guard lock(impl_->mutex);
  if (impl_->started) return;
  impl_->started = true;
  for (auto& l : impl_->listeners) impl_->endpointNames.push_back(l->endpoint());
  impl_->endpointsFixed.store(true, std::memory_order_release);  // pairs with stats()
  for (auto& w : impl_->workers) w->start();
  impl_->acceptor = std::thread([this] { impl_->acceptLoop(); });
}

void Server::shutdown(Deadline deadline) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->stopping.store(true, std::memory_order_release);
  uint64_t one = 1;
  (void)!::write(impl_->acceptorWake.get(), &one, sizeof one);
  if (impl_->acceptor.joinable()) impl_->acceptor.join();
  impl_->listeners.clear();  // no new clients from here on
  for (auto& w : impl_->workers) w->stop(deadline);
  if (impl_->started)
    for (auto& w : impl_->workers) w->join();
}

size_t Server::connectionCount() const {
  size_t n = 0;
  for (auto& w : impl_->workers) n += w->connections();
  return n;
}

std::vector<std::string> Server::endpoints() const {
  std::vector<std::string> out;
  for (auto& l : impl_->listeners) out.push_back(l->endpoint());
  return out;
}

}  // namespace zcrpc
