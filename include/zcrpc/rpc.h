// zcrpc — the RPC core: client Channel, Server, and the pieces generated stubs use.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "zcrpc/capability.h"
#include "zcrpc/metrics.h"
#include "zcrpc/transport.h"

namespace zcrpc {

/// An error raised by a service handler for its caller: a message and an application
/// code. The caller receives it as `zcrpc::Error` with kind kApplication and `code()`.
class ApplicationError final : public Error {
 public:
  ApplicationError(int32_t code, std::string message)
      : Error(ErrorKind::kApplication, std::move(message)), code_(code) {}
  int32_t code() const noexcept { return code_; }

 private:
  int32_t code_;
};

/// One call as a Tracer sees it.
struct TracedCall {
  uint64_t interfaceId = 0;
  uint16_t methodId = 0;
  /// "Interface.method" (static storage) when known: a request made by a generated client
  /// stub, a call dispatched to a generated service. Empty otherwise.
  std::string_view methodName;
  uint64_t callId = 0;
  bool oneWay = false;
  /// Client, in onClientCallBegin: the context the caller set with setTrace() (or none);
  /// the tracer may replace it, and what it leaves there travels with the request.
  /// Server: the context the request carried (traceId 0: none).
  TraceContext trace;
  /// Client, in onClientCallBegin: the request's metadata, which the tracer may add to
  /// (a W3C `traceparent`, zcrpc/metadata.h); what it holds then travels with the request.
  /// Server: what the request carried (null: none), to read. Null in the End callbacks.
  Metadata* metadata = nullptr;
};

/// How a traced call ended.
struct TracedCallEnd {
  bool ok = true;
  ErrorKind error = ErrorKind::kFailed;  ///< when !ok
  /// Client: since the request was sent. Server: since dispatch (one-way: the handler).
  std::chrono::nanoseconds duration{0};
};

/// The user's tracer: told when calls begin and end, on the thread that runs them (the
/// Channel's; the server worker's). Callbacks must be quick and must not throw; they run
/// on the call path. Installing none (the default) costs one untaken branch per call.
class Tracer {
 public:
  virtual ~Tracer() = default;
  /// Before a request (or one-way message) is sent; may set `call.trace`.
  virtual void onClientCallBegin(TracedCall&) noexcept {}
  /// When the call finished: answered, failed, expired, cancelled or disconnected. A
  /// one-way message ends as soon as it is sent.
  virtual void onClientCallEnd(const TracedCall&, const TracedCallEnd&) noexcept {}
  /// Before the handler runs.
  virtual void onServerCallBegin(const TracedCall&) noexcept {}
  /// Just after the answer (or error) was handed to the transport; for a deferred call,
  /// when it completed.
  virtual void onServerCallEnd(const TracedCall&, const TracedCallEnd&) noexcept {}
};

/// Client-side settings of one Channel.
struct ChannelOptions {
  /// Timeout of a call that sets no deadline, counted from when its request is sent (or
  /// first waits for room, or RawRequest::deadline() is asked), never from earlier than
  /// newRequest: so no clock is read before the request leaves (where clock_gettime is a
  /// system call, as in VMs on an HPET clock source, that read costs a microsecond).
  std::chrono::nanoseconds defaultTimeout = std::chrono::seconds(10);
  /// Calls outstanding at once (power of two). More gives Overloaded.
  uint32_t window = 64;
  /// Count calls, errors, bytes and round-trip latency per method (see metrics()).
  bool metrics = true;
  /// Told about every call; borrowed, must outlive the Channel. nullptr: no tracing.
  Tracer* tracer = nullptr;
  /// Capabilities (docs/capabilities.md): objects this end exports on the connection at
  /// once, and the server's objects it holds at once (settings max_exports, max_imports).
  uint32_t maxExports = 65536;
  uint32_t maxImports = 65536;
  /// Streaming (`-> stream` methods): chunks one client may have in flight, in calls and in
  /// bytes (settings stream_window_calls, stream_window_bytes); a chunk past either waits.
  uint32_t streamWindowCalls = 512;
  uint64_t streamWindowBytes = 1 << 20;
};

class Channel;
class Session;

/// What a finished call produced: the response read in place (a lease), or an error.
/// Move-only. Threads: one at a time.
class CallResult final {
 public:
  CallResult() = default;
  explicit CallResult(IncomingMessage response) : response_(std::move(response)) {}
  CallResult(ErrorKind kind, int32_t code, std::string message)
      : kind_(kind), code_(code), message_(std::move(message)) {}

  bool ok() const noexcept { return response_.valid(); }
  ErrorKind errorKind() const noexcept { return kind_; }
  int32_t errorCode() const noexcept { return code_; }
  const std::string& errorMessage() const noexcept { return message_; }
  /// Throws the typed error (ApplicationError for kApplication) unless ok().
  void throwIfError() const;
  /// The response lease; throws the error if the call failed.
  IncomingMessage& response();
  /// The results read in place with zcrpc's accessors (IncomingMessage::read()).
  template <typename Results>
  wire::Reader<Results> results() {
    return response().read<Results>();
  }
  /// The results through Cap'n Proto's own reader.
  template <typename Results>
  typename Results::Reader resultsCapnp() {
    return response().getRoot<Results>();
  }

 private:
  IncomingMessage response_;
  ErrorKind kind_ = ErrorKind::kFailed;
  int32_t code_ = 0;
  std::string message_;
};

/// Called once when an asynchronous call finishes, on the thread polling the Channel.
using CallCallback = std::function<void(CallResult&&)>;

/// Handle of an asynchronous call. Cheap to copy; valid while its Channel (or, for a call on
/// a capability, that capability's connection) lives. Threads: the connection's thread.
class PendingCall final {
 public:
  PendingCall() = default;
  PendingCall(Channel& channel, uint64_t callId);
  uint64_t callId() const noexcept { return callId_; }
  /// True once the call has finished (its callback ran, or its result waits in wait()).
  bool done() const;
  /// Polls the channel until the call finishes; returns its result (calls started with
  /// a callback hand their result to the callback instead: then this returns an empty,
  /// failed CallResult with kind kFailed).
  CallResult wait();
  /// Cancels the call: its result becomes kCancelled and the server is told, so a
  /// handler still working on it sees `isCancelled()`.
  void cancel();

 private:
  friend class RawRequest;
  PendingCall(Session* session, uint64_t callId) noexcept : session_(session), callId_(callId) {}
  Session* session_ = nullptr;
  uint64_t callId_ = 0;
};

/// How a one-way message or a stream chunk leaves (RawRequest::sendOneWay,
/// StreamRequest::send), as gRPC's WriteOptions::set_buffer_hint.
enum class SendHint : uint8_t {
  /// Handed to the transport and the peer woken at once (the default).
  kNow,
  /// More is coming right after: the message may wait in this end's send buffer until
  /// something is sent with kNow (or as a call), or this thread waits for answers
  /// (poll(), pollUntil(), call(), a full stream window, StreamFlow::finish()). Over tcp a
  /// burst then leaves in one system call instead of one per message; over shm the burst
  /// is written into the ring at once and shown to the peer whole when it goes
  /// (Connection::sendMore: a peer that keeps up does not fight over each record's cache
  /// line while it is written). Give the last message of a burst kNow, or poll: nothing
  /// else sends what waits.
  kMoreComing,
};

/// A request being built in place in transport memory. Made by a generated client stub
/// (or `Channel::newRequest`), filled through `message()` / the typed `params()`, then
/// sent once by `call`, `callAsync` or `sendOneWay`. Not movable (the message lives in
/// place); threads: the Channel's thread.
class RawRequest final {
 public:
  /// `methodName`: "Interface.method" for metrics and tracers; must have static storage
  /// (generated stubs pass a string literal). Empty: metrics show the ids.
  RawRequest(Channel& channel, uint64_t interfaceId, uint16_t methodId, uint32_t sizeHintWords,
             std::string_view methodName = {});
  /// A request to the object `target` refers to, on its connection. Throws InvalidArgument
  /// for a null or local capability (call a local object directly), or from a thread that
  /// does not drive the connection; Disconnected when the connection is gone.
  RawRequest(const Capability& target, uint64_t interfaceId, uint16_t methodId,
             uint32_t sizeHintWords, std::string_view methodName = {});
  ~RawRequest() noexcept(false);

  OutgoingMessage& message() noexcept { return message_; }
  std::string_view methodName() const noexcept { return methodName_; }
  /// The call's deadline, which also bounds waits for room while the request grows (it
  /// is the message's build deadline).
  void setDeadline(Deadline deadline) noexcept { message_.setBuildDeadline(deadline); }
  void setTimeout(std::chrono::nanoseconds timeout) { message_.setBuildDeadline(deadlineAfter(timeout)); }
  /// The call's deadline (asking fixes a default one: see ChannelOptions::defaultTimeout).
  Deadline deadline() const noexcept { return message_.buildDeadline(); }
  /// Trace context sent with the request (a tracer may still replace it).
  void setTrace(TraceContext trace) noexcept { message_.setTrace(trace); }
  const TraceContext& trace() const noexcept { return message_.trace(); }
  /// Metadata sent with the request (zcrpc/metadata.h): `metadata().set("tenant", "a")`.
  Metadata& metadata() { return message_.metadata(); }

  /// Sends and waits: the response lease, or throws the typed error.
  IncomingMessage call();
  /// Sends and returns at once; the result goes to `callback` (if given) or waits in
  /// the PendingCall. Throws Overloaded when the window is full.
  PendingCall callAsync(CallCallback callback = {});
  /// Sends a request that gets no response.
  void sendOneWay(SendHint hint = SendHint::kNow);
  /// Sends one chunk of a stream (see StreamRequest::send).
  void sendStreaming(const std::shared_ptr<class StreamFlow>& flow, SendHint hint = SendHint::kNow);

 private:
  void start(uint64_t interfaceId, uint16_t methodId, uint32_t sizeHintWords);

  Session* session_;
  uint32_t target_ = 0;  // the export of the peer called; 0: its bootstrap services
  OutgoingMessage message_;
  std::string_view methodName_;
};

/// Typed request, as generated stubs return it. `params()` builds the params in place with
/// zcrpc's accessors (zcrpc/wire.h), `paramsCapnp()` with Cap'n Proto's own builder; see
/// OutgoingMessage for using both on one request.
template <typename Params, typename Results>
class Request final {
 public:
  Request(Channel& channel, uint64_t interfaceId, uint16_t methodId, uint32_t sizeHintWords,
          std::string_view methodName = {})
      : raw_(channel, interfaceId, methodId, sizeHintWords, methodName) {}
  Request(const Capability& target, uint64_t interfaceId, uint16_t methodId,
          uint32_t sizeHintWords, std::string_view methodName = {})
      : raw_(target, interfaceId, methodId, sizeHintWords, methodName) {}

  wire::Builder<Params> params() { return raw_.message().template build<Params>(); }
  typename Params::Builder paramsCapnp() { return raw_.message().getRoot<Params>(); }
  RawRequest& raw() noexcept { return raw_; }
  void setDeadline(Deadline d) noexcept { raw_.setDeadline(d); }
  void setTimeout(std::chrono::nanoseconds t) { raw_.setTimeout(t); }
  void setTrace(TraceContext trace) noexcept { raw_.setTrace(trace); }
  Metadata& metadata() { return raw_.metadata(); }

  /// The results, read in place; valid while the returned Response lives.
  class Response final {
   public:
    explicit Response(IncomingMessage m) : message_(std::move(m)) {}
    /// With zcrpc's accessors (zcrpc/wire.h).
    wire::Reader<Results> results() { return message_.template read<Results>(); }
    /// With Cap'n Proto's own reader.
    typename Results::Reader resultsCapnp() { return message_.getRoot<Results>(); }
    IncomingMessage& message() noexcept { return message_; }

   private:
    IncomingMessage message_;
  };

  Response call() { return Response(raw_.call()); }
  PendingCall callAsync(CallCallback callback = {}) { return raw_.callAsync(std::move(callback)); }
  void sendOneWay(SendHint hint = SendHint::kNow) { raw_.sendOneWay(hint); }

 private:
  RawRequest raw_;
};

/// Flow control of one client's streaming calls (`-> stream` methods): the chunks in flight
/// (sent and not yet known to be handled: calls and bytes, against the connection's stream
/// window) and the first error any of them met. Shared by a generated client and its
/// copies. Threads: the connection's.
class StreamFlow final : public std::enable_shared_from_this<StreamFlow> {
 public:
  /// Waits until the peer has handled every chunk sent; throws the first error one of them
  /// met (each later call on the client then fails with it too, as in Cap'n Proto).
  void finish();
  /// Throws the first error a chunk met, if one did.
  void throwIfFailed() const {
    if (failed_) [[unlikely]]
      throwFailed();
  }
  uint32_t inFlight() const noexcept { return static_cast<uint32_t>(sentCalls_ - doneCalls_); }
  uint64_t bytesInFlight() const noexcept { return sentBytes_ - doneBytes_; }

 private:
  friend class RawRequest;
  friend class Session;
  /// The peer handled the chunks up to `calls` and `bytes` (counted since the flow began),
  /// those whose call ids are below `callId` (the mark that said so).
  void confirm(uint64_t calls, uint64_t bytes, uint64_t callId) noexcept {
    doneCalls_ = std::max(doneCalls_, calls);
    doneBytes_ = std::max(doneBytes_, bytes);
    doneBelowId_ = std::max(doneBelowId_, callId);
  }
  /// A chunk failed: the first failure is kept.
  void fail(const CallResult& failure);
  [[noreturn]] void throwFailed() const;
  Session* session_ = nullptr;  // of the last chunk sent (a client's chunks share one)
  uint64_t sentCalls_ = 0, sentBytes_ = 0;  // since the flow began
  uint64_t doneCalls_ = 0, doneBytes_ = 0;  // of those, confirmed handled
  uint64_t doneBelowId_ = 0;                 // every chunk with a smaller call id was handled
  bool failed_ = false;
  ErrorKind kind_ = ErrorKind::kFailed;
  int32_t code_ = 0;
  std::string message_;
};

/// One chunk of a stream, as generated stubs return it for a `-> stream` method: built in
/// place like a Request, sent with send(), which returns as soon as the stream window
/// lets another chunk go (never a round trip per chunk). An error of any chunk fails the
/// next send() or the next ordinary call on the client. Threads: the connection's.
template <typename Params>
class StreamRequest final {
 public:
  StreamRequest(Channel& channel, uint64_t interfaceId, uint16_t methodId, uint32_t sizeHintWords,
                std::string_view methodName, std::shared_ptr<StreamFlow> flow)
      : raw_((flow->throwIfFailed(), channel), interfaceId, methodId, sizeHintWords, methodName),
        flow_(std::move(flow)) {}
  StreamRequest(const Capability& target, uint64_t interfaceId, uint16_t methodId,
                uint32_t sizeHintWords, std::string_view methodName,
                std::shared_ptr<StreamFlow> flow)
      : raw_((flow->throwIfFailed(), target), interfaceId, methodId, sizeHintWords, methodName),
        flow_(std::move(flow)) {}

  wire::Builder<Params> params() { return raw_.message().template build<Params>(); }
  typename Params::Builder paramsCapnp() { return raw_.message().getRoot<Params>(); }
  RawRequest& raw() noexcept { return raw_; }
  void setTimeout(std::chrono::nanoseconds t) { raw_.setTimeout(t); }
  Metadata& metadata() { return raw_.metadata(); }
  /// Sends the chunk; returns once the window has room for the next (handling what
  /// arrives meanwhile). Throws the error an earlier chunk met.
  void send(SendHint hint = SendHint::kNow) { raw_.sendStreaming(flow_, hint); }

 private:
  RawRequest raw_;
  std::shared_ptr<StreamFlow> flow_;
};

/// Client end of one connection: call ids, the window of outstanding calls, deadlines
/// and cancellation. Cheap; one per thread (see ChannelPool for sharing a service
/// between threads). Threads: one at a time, and callbacks run on it. It may move to
/// another thread between uses (no request open, no call outstanding; the hand-over
/// ordered, e.g. by a mutex or a queue); a call from another thread while its thread is in
/// one of its functions, has a request open or calls outstanding throws InvalidArgument
/// saying so (its own, its requests' and its PendingCalls' entries check the thread; of
/// two threads that use it at once, at least one is refused before either touches it).
class Channel final {
 public:
  explicit Channel(std::unique_ptr<Connection> connection, ChannelOptions options = {});
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  RawRequest newRequest(uint64_t interfaceId, uint16_t methodId, uint32_t sizeHintWords = 0) {
    return RawRequest(*this, interfaceId, methodId, sizeHintWords);
  }

  /// Delivers responses that have arrived and expires overdue calls, without waiting.
  /// Returns how many calls finished.
  size_t poll();
  /// As poll(), waiting up to `deadline` for at least one call to finish.
  size_t pollUntil(Deadline deadline);
  size_t outstanding() const noexcept;
  bool connected() const noexcept;
  Connection& connection() noexcept;
  const ChannelOptions& options() const noexcept;

  /// Sends a ping frame and waits for the server's pong (answered by the server's
  /// polling thread, no handler involved); returns the round trip. Calls already
  /// outstanding keep going and may finish meanwhile. Throws DeadlineExceeded,
  /// Disconnected or Overloaded (window full) as a call would.
  std::chrono::nanoseconds ping(Deadline deadline);
  std::chrono::nanoseconds ping() { return ping(deadlineAfter(options().defaultTimeout)); }

  /// This channel's counters (nullptr when options().metrics is false). The object
  /// lives as long as the Channel; its snapshot() may be taken from any thread.
  const ConnectionMetrics* metrics() const noexcept;

 private:
  friend class RawRequest;
  friend class PendingCall;
  struct Impl;  // src/rpc/channel.cc
  std::unique_ptr<Impl> impl_;
};

/// Hands each thread its own Channel to one endpoint, created on first use by `connect`.
/// Threads: any; `channel()` returns the calling thread's Channel, which only that thread
/// may use. Channels close when the pool is destroyed (threads must be done with them).
class ChannelPool final {
 public:
  using Connector = std::function<std::unique_ptr<Connection>()>;
  explicit ChannelPool(Connector connect, ChannelOptions options = {});
  ~ChannelPool();
  Channel& channel();
  /// Drops the calling thread's channel (e.g. after Disconnected), so the next
  /// `channel()` reconnects.
  void resetThisThread();

 private:
  Connector connect_;
  ChannelOptions options_;
  std::mutex mutex_;
  std::unordered_map<std::thread::id, std::unique_ptr<Channel>> channels_;
  uint64_t generation_;
};

// ------------------------------------------------------------------------------------
// Server side

class Session;
struct DeferredState;
class HealthStatus;  // zcrpc/health.h

/// One call as its handler sees it: the request read in place, the response built in
/// place (started on first use of `response()`), cancellation, deferral.
/// Threads: the thread that dispatched it (the server's worker; a Channel's user), for
/// the duration of the handler.
class CallContext final {
 public:
  CallContext(Session& session, IncomingMessage& request) noexcept
      : session_(session), request_(request) {}
  ~CallContext() noexcept(false) = default;

  uint64_t callId() const noexcept { return request_.header().callId; }
  uint64_t interfaceId() const noexcept { return request_.header().interfaceId; }
  uint16_t methodId() const noexcept { return request_.header().methodId; }
  /// The trace context the caller sent (traceId 0: none); also after defer().
  const TraceContext& trace() const noexcept;
  /// The metadata the caller sent (empty: none). Valid while the request is held (after
  /// defer(), DeferredReply::request().metadata()).
  const Metadata& metadata() const noexcept;
  bool isOneWay() const noexcept;
  IncomingMessage& request() noexcept { return request_; }
  /// The response message in transport memory, reserved on first use. It may reference
  /// the request's bytes (Orphanage::referenceExternalData): the request is held until the
  /// response is sent.
  OutgoingMessage& response(uint32_t sizeHintWords = 0);
  /// True when the client cancelled this call (or gave up on it) before it completed.
  bool isCancelled() const noexcept;
  /// Who called: the authenticated identity of the connection the call came on (a TLS
  /// client's verified certificate, an shm client's uid/gid, whether it presented the
  /// token), for services that authorise per method. Valid while the call is.
  const PeerIdentity& peer() const noexcept;

  /// Completes the call later, from any thread: see DeferredReply. The request lease
  /// moves into it. After this the handler must return without touching response().
  class DeferredReply defer();

 private:
  friend class Session;
  Session& session_;
  IncomingMessage& request_;
  std::optional<OutgoingMessage> response_;
  std::shared_ptr<DeferredState> deferred_;
};

/// A call whose handler returned without answering. Move-only; any thread.
/// Exactly one of complete() / fail() should be called; dropping it unanswered fails
/// the call with kFailed so no caller waits forever.
class DeferredReply final {
 public:
  DeferredReply() = default;
  explicit DeferredReply(std::shared_ptr<DeferredState> state) : state_(std::move(state)) {}
  DeferredReply(DeferredReply&&) noexcept = default;
  DeferredReply& operator=(DeferredReply&&) noexcept;
  ~DeferredReply();

  /// The request, still in place in transport memory.
  IncomingMessage& request();
  /// The trace context the caller sent (traceId 0: none).
  const TraceContext& trace() const noexcept;
  bool isCancelled() const noexcept;
  /// Posts the answer: `fill` runs later on the connection's polling thread and writes
  /// the results into the response built in place. It may reference the request's bytes
  /// (readers taken from request() before this call): the request is held until the
  /// answer is sent.
  void complete(std::function<void(OutgoingMessage&)> fill);
  /// Posts an error answer.
  void fail(ErrorKind kind, std::string message, int32_t code = 0);

 private:
  std::shared_ptr<DeferredState> state_;
};

/// Typed view of a call for generated service classes. `params()` and `results()` read and
/// build in place with zcrpc's accessors (zcrpc/wire.h); `paramsCapnp()` and
/// `resultsCapnp()` with Cap'n Proto's own reader and builder (see OutgoingMessage for
/// using both builders on one response).
template <typename Params, typename Results>
class ServerCall final {
 public:
  explicit ServerCall(CallContext& context) noexcept : context_(context) {}
  wire::Reader<Params> params() { return context_.request().template read<Params>(); }
  wire::Builder<Results> results(uint32_t sizeHintWords = 0) {
    return context_.response(sizeHintWords).template build<Results>();
  }
  typename Params::Reader paramsCapnp() { return context_.request().getRoot<Params>(); }
  typename Results::Builder resultsCapnp(uint32_t sizeHintWords = 0) {
    return context_.response(sizeHintWords).template getRoot<Results>();
  }
  CallContext& context() noexcept { return context_; }
  const TraceContext& trace() const noexcept { return context_.trace(); }
  const PeerIdentity& peer() const noexcept { return context_.peer(); }
  bool isCancelled() const noexcept { return context_.isCancelled(); }
  DeferredReply defer() { return context_.defer(); }

 private:
  CallContext& context_;
};

/// A streaming call as its handler sees it: the chunk's params, read in place. Chunks of
/// one connection are handled in the order they were sent; a handler that throws fails
/// the client's next chunk or call.
template <typename Params>
class StreamCall final {
 public:
  explicit StreamCall(CallContext& context) noexcept : context_(context) {}
  wire::Reader<Params> params() { return context_.request().template read<Params>(); }
  typename Params::Reader paramsCapnp() { return context_.request().getRoot<Params>(); }
  CallContext& context() noexcept { return context_; }
  const PeerIdentity& peer() const noexcept { return context_.peer(); }
  DeferredReply defer() { return context_.defer(); }

 private:
  CallContext& context_;
};

/// A service object: generated `FooService` classes implement this.
class Service {
 public:
  virtual ~Service() = default;
  /// Interface ids this object answers: its own and those it extends.
  virtual std::span<const uint64_t> interfaceIds() const noexcept = 0;
  /// Runs the handler of (interfaceId, methodId). Returns false when the method is
  /// unknown (the caller gets Unimplemented).
  virtual bool dispatch(uint64_t interfaceId, uint16_t methodId, CallContext& context) = 0;
  /// "Interface.method" (static storage, or storage that lives as long as the service) of
  /// a method this service dispatches, for metrics, zcrpc-stat and tracers; empty when it
  /// has no name for it (the default). Generated services return their schema's names.
  /// Any thread.
  virtual std::string_view methodName(uint64_t interfaceId, uint16_t methodId) const noexcept {
    (void)interfaceId;
    (void)methodId;
    return {};
  }
  /// True when (interfaceId, methodId) is a `-> stream` method of this service (false for
  /// any other, the default). zcrpc's own wire needs no such question (a chunk says it is
  /// one, and the client keeps a failed stream's error); a connection that translates a
  /// protocol whose calls do not say so asks it (capnp://: after a streaming call failed,
  /// Cap'n Proto fails every later call on that object). Generated services answer from
  /// their schema. Any thread.
  virtual bool streams(uint64_t interfaceId, uint16_t methodId) const noexcept {
    (void)interfaceId;
    (void)methodId;
    return false;
  }
};

struct ServerOptions {
  /// Threads polling connections. 0: none; your own thread drives the server from its
  /// event loop with Server::poll(), armWait() and waitFd().
  size_t workerThreads = 1;
  /// Calls a connection may have deferred at once; more are refused with Overloaded.
  size_t maxDeferredPerConnection = 1024;
  /// Received messages handled per connection before moving to the next.
  size_t batch = 32;
  /// How an idle worker waits: busy-poll, spin (at most `spinTime`, by `spinPolicy`)
  /// then sleep, or sleep.
  WaitMode idleMode = WaitMode::kSpinThenSleep;
  std::chrono::nanoseconds spinTime = std::chrono::microseconds(50);
  SpinPolicy spinPolicy = SpinPolicy::kAdaptive;
  /// How long building or sending an answer may wait for room in the client's memory (a
  /// large answer the client's unread messages leave no room for). Past it the call fails
  /// with Overloaded and the worker goes on with its other connections, so a client that
  /// stops reading holds up the others for at most this long per answer.
  std::chrono::milliseconds answerRoomWait{100};
  /// Count calls, errors, bytes and handler time per connection and method (stats()).
  bool metrics = true;
  /// Told about every dispatched call; borrowed, must outlive the Server.
  Tracer* tracer = nullptr;
  /// Capabilities (docs/capabilities.md), per connection: objects the server exports at
  /// once, and the client's objects it holds at once (settings max_exports, max_imports).
  uint32_t maxExportsPerConnection = 65536;
  uint32_t maxImportsPerConnection = 65536;
  /// Streaming calls the server makes on its clients' objects (see ChannelOptions).
  uint32_t streamWindowCalls = 512;
  uint64_t streamWindowBytes = 1 << 20;
};

/// Dispatches calls from any number of connections to registered services.
/// Threads: set up (addService, addListener) before start(); shutdown() from any thread.
class Server final {
 public:
  explicit Server(ServerOptions options = {});
  ~Server();

  /// Registers `service` for every interface id it reports. The service must outlive the
  /// server (or be shut down first). Throws InvalidArgument on a duplicate interface.
  void addService(Service& service);
  void addListener(std::unique_ptr<Listener> listener);
  /// Serves an already-connected Connection (e.g. one end of a loopback pair).
  void addConnection(std::unique_ptr<Connection> connection);
  /// Serves zcrpc's admin interface (schemas/admin.capnp, kAdminInterfaceId) on every
  /// endpoint and connection of this server, answering with stats(); zcrpc-stat reads
  /// it. Before start(). Idempotent.
  void enableStats();
  /// Serves zcrpc's health-check interface (zcrpc/health.h, schemas/health.capnp) on
  /// every endpoint and connection of this server, answering from the returned statuses:
  /// "" (the server as a whole) is kServing until shutdown() begins, then kNotServing;
  /// other names report what the application set. Before start(). Idempotent. The
  /// statuses live as long as the server; set them from any thread.
  HealthStatus& enableHealth();
  /// Starts the accept thread and the worker threads.
  void start();
  /// Stops accepting, answers or fails every call in flight (deferred calls get until
  /// `deadline`), then closes all connections. Idempotent. A server without worker
  /// threads drains on the calling thread: call it from the thread that polls it.
  void shutdown(Deadline deadline = deadlineAfter(std::chrono::seconds(5)));

  /// Driving a server from your own event loop (ServerOptions::workerThreads = 0, after
  /// start()). The loop:
  ///
  ///     server.poll();                       // serves what is there, never waits
  ///     auto left = server.armWait();        // zero: more is there, poll() again
  ///     epoll_wait(... waitFd() among yours ..., timeout <= left)
  ///
  /// poll() takes what arrived on every connection (calls, answers to the server's own
  /// calls on its clients' objects, hang-ups), adopts the connections the listeners
  /// accepted and sends the answers deferred calls completed, running the handlers on
  /// this thread; it returns how much it did. armWait() readies the server for a wait:
  /// waitFd() (an epoll descriptor) becomes readable when there is work. The listeners
  /// still accept on a thread of their own. One thread drives a server (the first to
  /// call poll()); handlers, callbacks and shutdown() run there. Throws InvalidArgument on
  /// a server that has worker threads, or before start().
  size_t poll();
  std::chrono::milliseconds armWait();
  int waitFd() const;

  size_t connectionCount() const;
  std::vector<std::string> endpoints() const;
  /// Counters of every open connection and per-method totals over all connections since
  /// start (empty when options.metrics is false). Any thread; takes a lock only to copy
  /// the list of connections, never one their workers take per call.
  ServerStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zcrpc
