// One connection's RPC state in both directions: the calls it makes (questions) and the
// calls it serves (answers). A Channel is a Session driven by the user's thread whose
// calls go to the peer's bootstrap services; a server connection is a Session driven by
// a worker whose bootstrap is the services added with Server::addService.
//
// The parts live in files of their own: session.cc (set-up, the receive loop, liveness),
// session_questions.cc (calls out: ids, window, deadlines, cancel, results) and
// session_answers.cc (calls in: dispatch, deferred answers, mail, the answer backlog,
// CallContext and DeferredReply).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "rpc/answer_backlog.h"
#include "rpc/thread_owner.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

class Session;

/// What a call in progress must report when it ends (metrics and tracer).
struct CallMark {
  MethodMetrics* method = nullptr;  // borrowed from the session's ConnectionMetrics
  uint64_t startTicks = 0;
  bool traced = false;
  TracedCall trace;
};

/// A deferred answer posted to the session's driver (see SessionLink::post).
struct Completion {
  std::shared_ptr<DeferredState> state;
  std::function<void(OutgoingMessage&)> fill;  // empty: an error answer
  ErrorKind kind = ErrorKind::kFailed;
  int32_t code = 0;
  std::string message;
};

/// References to one export of the peer that an import gives back (see ImportHook).
struct ReleaseNote {
  uint32_t id;
  uint32_t refs;
};

/// The part of a Session that other threads reach: its mail. Shared by the session, the
/// DeferredStates of its deferred calls and its imports, so none keeps the others alive.
/// Threads: post()/postRelease() from any thread; the rest from the session's driver.
class SessionLink final {
 public:
  /// `wakeFd` (an eventfd, borrowed: it must outlive every post(); -1: none, the driver
  /// polls hasMail()) is written when mail arrives, to wake the driver.
  SessionLink(Session& session, int wakeFd) : session_(&session), wakeFd_(wakeFd) {}

  /// Queues a deferred call's answer for the driver and wakes it. After close() the
  /// answer is dropped (outside the lock). Any thread.
  void post(Completion&& c);
  /// Queues the release of `refs` references to the peer's export `id` (an import's last
  /// handle went). Dropped after close(). Any thread.
  void postRelease(uint32_t id, uint32_t refs);
  bool hasMail() const noexcept { return hasMail_.load(std::memory_order_acquire); }
  /// Moves the queued mail into `out` and `releases`. Driver thread.
  void take(std::vector<Completion>& out, std::vector<ReleaseNote>& releases);
  /// The session is done: refuse later mail and drop what is queued, which would
  /// otherwise keep states alive (completion -> state). Driver thread.
  void close();
  /// The session, until close(); null after. Driver thread (which is why it may be read
  /// without a lock: close() runs there too).
  Session* session() const noexcept { return session_; }
  /// Why the session ended ("" before close()). Driver thread.
  const std::string& closedWhy() const noexcept { return closedWhy_; }
  void setClosedWhy(std::string why) { closedWhy_ = std::move(why); }

  /// Which thread drives the session: a Channel's user (who may hand it over between uses),
  /// or a server's worker (pinned: see ThreadOwner::pin()).
  ThreadOwner owner;

 private:
  Session* session_;
  std::string closedWhy_;
  std::mutex mutex_;
  std::vector<Completion> mail_;
  std::vector<ReleaseNote> releases_;
  bool closed_ = false;  // under mutex_
  std::atomic<bool> hasMail_{false};
  int wakeFd_;
};

/// An import: a reference to export `id` of the peer, received `refs` times. Shared by
/// every Capability copy and received message that holds it; when the last goes, its
/// references go back to the peer (SessionLink::postRelease). Threads: made and counted on
/// the driver thread; destroyed on any.
struct ImportHook final : wire::CapabilityHook {
  ImportHook(std::shared_ptr<SessionLink> l, uint32_t i) noexcept
      : CapabilityHook(Kind::kImport), link(std::move(l)), id(i) {}
  ~ImportHook() override;
  std::shared_ptr<SessionLink> link;
  uint32_t id;
  uint32_t refs = 0;  // driver thread, while a handle is held there
};

/// A local capability: an object this process serves (Capability::local).
struct LocalHook final : wire::CapabilityHook {
  LocalHook(std::shared_ptr<Service> o, bool p) noexcept
      : CapabilityHook(Kind::kLocal), object(std::move(o)), inPlace(p) {}
  std::shared_ptr<Service> object;
  bool inPlace;  // Capability::Requests::kInPlace
};

/// `h` as the RPC layer's hook of kind T (ImportHook or LocalHook), or null.
template <class T>
T* hookAs(wire::CapabilityHook* h) noexcept {
  constexpr auto kind = std::is_same_v<T, ImportHook> ? wire::CapabilityHook::Kind::kImport
                                                      : wire::CapabilityHook::Kind::kLocal;
  static_assert(std::is_same_v<T, ImportHook> || std::is_same_v<T, LocalHook>);
  return h && h->hookKind() == kind ? static_cast<T*>(h) : nullptr;
}

/// A call whose handler deferred its answer: shared by the DeferredReply (any thread) and
/// the session (driver thread).
struct DeferredState {
  std::shared_ptr<SessionLink> owner;
  std::shared_ptr<Connection> connection;  // holds the memory `request` lies in
  uint64_t callId = 0;
  bool oneWay = false;
  std::atomic<bool> cancelled{false};
  std::atomic<bool> answered{false};
  std::atomic<bool> answeredByServer{false};  // shutdown failed it on the handler's behalf
  TraceContext trace;  // what the request carried
  CallMark mark;       // driver thread only
  IncomingMessage request;  // declared after `connection`: released before it can go
};

/// How a Session is set up (see Session).
struct SessionOptions {
  /// Calls out: outstanding at once (a power of two), and the timeout of a call that sets
  /// no deadline (ChannelOptions).
  uint32_t window = 64;
  std::chrono::nanoseconds defaultTimeout = std::chrono::seconds(10);
  /// Calls in: the bootstrap services by interface id (borrowed; null: none), deferred
  /// calls open at once, how long building an answer may wait for room (ServerOptions).
  const std::unordered_map<uint64_t, Service*>* services = nullptr;
  size_t maxDeferred = 1024;
  std::chrono::milliseconds answerRoomWait{100};
  /// While answers wait for room, take nothing from the connection (a server: a client
  /// that does not read its answers is held back by its own ring filling up).
  bool holdWhileCongested = false;
  /// Told about calls in both directions; borrowed.
  Tracer* tracer = nullptr;
  /// Written when mail arrives for the driver (borrowed; must outlive the session).
  int wakeFd = -1;
  /// Capabilities: objects this end exports at once, and the peer's objects it imports at
  /// once (more is an error: a call fails, a message carrying them is refused).
  uint32_t maxExports = 65536;
  uint32_t maxImports = 65536;
  /// Streaming calls this end makes: chunks in flight per client, in calls and bytes.
  uint32_t streamWindowCalls = 512;
  uint64_t streamWindowBytes = 1 << 20;
};

/// Chunks one stream may have in flight. (Chunks take no place in the call window; only
/// a stream's marks do, two at most per stream.)
inline uint32_t streamWindowCalls(const SessionOptions& o) noexcept {
  return std::max<uint32_t>(1, o.streamWindowCalls);
}

/// One connection's RPC state in both directions. Threads: its driver thread (the
/// Channel's user, or the worker), one at a time; SessionLink::post from any.
class __attribute__((visibility("hidden"))) Session final : private OutgoingMessage::RoomWaitHook,
                                                             private CallTargets {
 public:
  /// `questionMetrics` counts the calls this end makes, `answerMetrics` those it serves
  /// (either may be null: not counted).
  Session(std::unique_ptr<Connection> connection, SessionOptions options,
          std::shared_ptr<ConnectionMetrics> questionMetrics,
          std::shared_ptr<ConnectionMetrics> answerMetrics);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  Connection& connection() noexcept { return *connection_; }
  const SessionOptions& options() const noexcept { return options_; }
  bool disconnected() const noexcept { return disconnected_; }
  const std::shared_ptr<SessionLink>& link() const noexcept { return link_; }

  // ---------------------------------------------------------------------------------
  // Questions: calls out (session_questions.cc)

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
    /// A stream's mark (a chunk sent as a request, or finish()'s ping): its answer confirms
    /// the flow's chunks up to these counts (the peer handles a connection's calls in order).
    std::shared_ptr<StreamFlow> stream;
    uint64_t streamCalls = 0;
    uint64_t streamBytes = 0;
  };

  /// Opens `msg` for a call due at `deadline`, or when none is given, `timeout` after the
  /// request is sent (or first waits for room).
  void startMessage(OutgoingMessage& msg, uint32_t sizeHintWords, std::chrono::nanoseconds timeout,
                    std::optional<Deadline> deadline = std::nullopt);
  /// Sends `msg`; the call is due at its build deadline (see RawRequest::deadline()).
  /// `methodName` ("Interface.method", static storage, or empty) names the call for
  /// metrics and the tracer.
  /// `target`: the peer's export called (0: its bootstrap services). `hint` kMoreComing:
  /// the transport may keep the message until a later send, or run() flushes it.
  uint64_t send(OutgoingMessage& msg, FrameKind kind, CallCallback callback,
                std::string_view methodName = {}, uint32_t target = 0,
                SendHint hint = SendHint::kNow);
  /// send()'s rare part, out of line: the extension area of a request (writeExtensions);
  /// a refusal is the end of the traced call, when `traced`.
  [[gnu::noinline]] void extendRequest(OutgoingMessage& msg, uint32_t target, const TracedCall* traced);
  /// Sends `msg`, a chunk of a stream whose flow is `flow` (see RawRequest::sendStreaming):
  /// mostly as a stream request, which the peer answers only when it fails; the chunk that
  /// takes the flow to half its window and the one that fills it go as requests (marks),
  /// whose answers confirm every chunk before them. Returns true when the flow's window
  /// is full with it (the sender then waits for room).
  bool sendChunk(OutgoingMessage& msg, const std::shared_ptr<StreamFlow>& flow,
                 std::string_view methodName, uint32_t target, SendHint hint);
  /// Sends a ping as a mark of `flow`: its pong confirms every chunk sent before it
  /// (StreamFlow::finish()). No request of ours may be open.
  void confirmChunks(StreamFlow& flow);
  /// A request opened by startMessage() was dropped unsent.
  void requestAbandoned() noexcept {
    requestOpen_ = false;
    owner_->settle();
  }
  Slot* slotFor(uint64_t callId) noexcept {
    if (!slots_) return nullptr;
    Slot& s = slots_[callId & mask_];
    return s.callId == callId && s.state != SlotState::kFree ? &s : nullptr;
  }
  void finish(Slot& slot, CallResult&& result);
  CallResult takeResult(uint64_t callId);
  void sendCancel(uint64_t callId) noexcept;
  /// Waits for call `callId` (taking and handling everything else that arrives); returns
  /// its response or throws its error. Inline: it is the synchronous call's path.
  IncomingMessage waitFor(uint64_t callId) {
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
  size_t outstanding() const noexcept { return outstanding_; }
  /// A RawRequest holds the connection's one open message.
  bool requestOpen() const noexcept { return requestOpen_; }
  const std::string& disconnectReason() const noexcept { return disconnectReason_; }
  const ConnectionMetrics* questionMetrics() const noexcept { return questionMetrics_.get(); }

  // ---------------------------------------------------------------------------------
  // The receive loop (session.cc)

  /// Handles what has arrived without waiting (at most `batch` messages; posted mail and
  /// answers waiting for room first) and expires overdue calls. Returns how many of our
  /// calls finished.
  size_t poll(size_t batch = 256);
  /// As poll(), for a worker: returns how much was done (messages, mail, answers sent
  /// from the backlog, calls finished), so it knows whether to spin or sleep.
  size_t pump(size_t batch);
  /// As poll(), waiting up to `deadline` for at least one call to finish.
  size_t pollUntil(Deadline deadline);
  /// Checks now whether the peer is still there (a system call).
  void checkPeer();
  /// Fails every call still outstanding (`kind`: kDisconnected also marks the session
  /// disconnected, with `why`).
  void failAll(ErrorKind kind, const std::string& why);

  // ---------------------------------------------------------------------------------
  // Answers: calls in (session_answers.cc)

  /// No deferred call open and no answer waiting for room.
  bool idle() const noexcept { return deferred_.empty() && backlog_.empty(); }
  /// Answers wait for room (the peer is not reading them): poll, do not sleep on it.
  bool congested() const noexcept { return !backlog_.empty() && !disconnected_; }
  bool hasMail() const noexcept { return link_->hasMail(); }
  /// From now on, refuse calls that arrive (shutdown): requests get kDisconnected.
  void reject() noexcept { rejecting_ = true; }
  /// Answers every deferred call still open with an error (shutdown).
  void failDeferred(const std::string& why);
  /// Closes the connection and the mail: the driver is done with the session.
  void close();
  const std::shared_ptr<ConnectionMetrics>& answerMetrics() const noexcept { return answerMetrics_; }

  /// The response of the call being dispatched, opened on first use.
  OutgoingMessage& startResponse(std::optional<OutgoingMessage>& slot, uint32_t hint);
  /// Takes over the call being dispatched for CallContext::defer().
  std::shared_ptr<DeferredState> defer(CallContext& ctx);

  // ---------------------------------------------------------------------------------
  // Capabilities (session_caps.cc)

  /// Throws InvalidArgument while a handler of an object exported with
  /// Capability::Requests::kInPlace runs on this connection: waiting on it then would hold
  /// its request in transport memory while later messages queue behind it.
  void checkMayWait(const char* where) const {
    if (inPlaceHeld_ > 0) [[unlikely]]
      refuseWaitInPlace(where);
  }
  [[noreturn]] void refuseWaitInPlace(const char* where) const;

  /// A Channel API function's hold on this session, from its entry to its return: refuses
  /// a thread that does not drive the session (ThreadOwner::enter()) and, when the
  /// outermost one returns, says what it left in progress (ThreadOwner::leave()).
  class ApiScope final {
   public:
    [[gnu::always_inline]] ApiScope(Session& s, ThreadOwner::Doing what) : s_(s) { s.enterApi(what); }
    [[gnu::always_inline]] ~ApiScope() { s_.leaveApi(); }
    ApiScope(const ApiScope&) = delete;
    ApiScope& operator=(const ApiScope&) = delete;

   private:
    Session& s_;
  };
  [[gnu::always_inline]] void enterApi(ThreadOwner::Doing what) {
    owner_->enter(what, {this, &Session::askForOwner});
  }
  static std::string askForOwner(const void* session, ThreadOwner::Ask what);
  [[gnu::always_inline]] void leaveApi() noexcept { owner_->leave(); }
  /// After enterApi() of a new request: runs `start`, then leaves with the request open
  /// (ThreadOwner::leaveBusy()), or as leaveApi() if `start` throws.
  template <typename Start>
  [[gnu::always_inline]] void openRequest(Start&& start) {
    try {
      start();
    } catch (...) {
      leaveApi();
      throw;
    }
    owner_->leaveBusy();
  }
  /// What the driver has in progress ("" when nothing), for a ThreadOwner refusal.
  std::string inProgress() const;
  /// A message of ours is open in transport memory (a request being built, or a handler's
  /// answer): the connection takes no other until it is sent.
  bool messageOpenHere() const noexcept {
    return requestOpen_ || (inPlaceAnswer_ != nullptr && inPlaceAnswer_->isOpen());
  }
  /// Exports and imports open now (tests, zcrpc-info).
  size_t exportCount() const noexcept { return liveExports_; }
  size_t importCount() const noexcept { return imports_.size(); }
 private:
  /// What one run of the receive loop (run()) waits for.
  enum class Until : uint8_t {
    kPolled,       ///< poll(): what has arrived, without waiting
    kAnyFinished,  ///< pollUntil(): a call finished, none is outstanding, or the deadline
    kCallDone,     ///< waitFor(): call `callId` finished
    kSendRoom,     ///< waitForSendRoom(): `msg` could be started, or the deadline
  };
  struct Goal {
    Until until;
    Deadline deadline = kNoDeadline;  ///< kAnyFinished, kSendRoom
    uint64_t callId = 0;              ///< kCallDone
    OutgoingMessage* msg = nullptr;   ///< kSendRoom
    uint32_t words = 0;               ///< kSendRoom
    size_t batch = 256;               ///< messages taken per drain, at most
    Status status = Status::kOk;      ///< kSendRoom: the result of starting `msg`
    size_t finished = 0;              ///< calls of ours finished
    size_t worked = 0;                ///< messages handled, mail and backlog served
  };

  /// The one receive loop: takes and handles what arrives until `goal` (whose `until`
  /// is U) is met. Returns kCallDone's awaited response when it arrived as one (else the
  /// slot holds the result), otherwise an empty message.
  template <Until U>
  IncomingMessage run(Goal& goal);
  /// Handles one received message of any kind; returns how many calls of ours it finished.
  size_t handle(IncomingMessage& msg);

  // questions
  Status waitForSendRoom(OutgoingMessage& msg, uint32_t sizeHintWords, Deadline deadline);
  void noteEnd(Slot& slot, CallResult& result) noexcept;
  /// noteEnd's work for an end by `kind` (kFailed: an answer of `responseBytes`).
  void noteEnd(Slot& slot, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept;
  /// A response, error or pong: finishes its call; true if it did.
  bool handleAnswer(IncomingMessage& msg);
  /// A stream's mark was answered (`failure`: with that error, or null): confirms the
  /// flow's chunks before it and frees the slot.
  void endMark(Slot& slot, const CallResult* failure);
  /// An error answer without a slot: the stream chunk it names failed (chunkRuns_).
  void noteChunkError(IncomingMessage& msg);
  size_t expire(Clock::time_point now);
  void sendQueuedCancels() noexcept;
  /// The deadline for one wait of the receive loop: nearestDeadline_, or sooner while
  /// uncollected responses hold transport memory (see unpinResults()).
  Deadline waitDeadline(Deadline& unpinAt);
  /// Moves uncollected responses out of transport memory to the heap.
  void unpinResults();
  /// After a wait that timed out: unpins results if their time came, expires calls
  /// (returns how many).
  size_t afterTimeout(Deadline unpinAt);
  /// While a request being built waits for room: takes what arrived to the heap (early_).
  void whileWaitingForRoom() override;
  /// Handles the messages whileWaitingForRoom() took; returns how many calls finished.
  size_t takeEarly();

  // answers
  /// A request, one-way, cancel or ping from the peer.
  void handleCall(IncomingMessage& msg);
  void dispatch(IncomingMessage& msg);
  /// Opens an answer without ever waiting: in transport memory when there is room now
  /// (and no older answer waits, and no message of ours is open there), else in the
  /// backlog's memory. Throws Disconnected when the connection is gone.
  void openAnswer(std::optional<OutgoingMessage>& slot, uint32_t words);
  /// An answer's capability table, before it is sent (see writeExtensions); refused with
  /// Overloaded when the answer would wait in the backlog.
  void writeAnswerExtensions(OutgoingMessage& out);
  /// Abandons an answer opened by startResponse (it must not stay inPlaceAnswer_ once gone).
  void dropAnswer(std::optional<OutgoingMessage>& slot) noexcept;
  /// Sends an answer opened by openAnswer, or queues it in the backlog.
  Status sendAnswer(OutgoingMessage& out);
  /// Charges the call's counters and tells the tracer.
  void endCall(CallMark& mark, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept;
  void sendError(uint64_t callId, ErrorKind kind, int32_t code, const std::string& why);
  size_t processMail();

  // capabilities
  /// The records of a received call or answer's extension area: its target (returns the
  /// export called; 0 the bootstrap), its capability table (into the message), releases.
  /// Throws InvalidArgument naming what was wrong (an export it does not have, a bad
  /// table); a protocol fault that leaves the connection untrustworthy closes it.
  uint32_t readExtensions(IncomingMessage& msg);
  std::unique_ptr<wire::CapTable> readCapTable(std::span<const std::byte> record);
  /// The peer gives back references to our exports.
  void readReleases(std::span<const std::byte> record);
  /// Builds `msg`'s extension area: the call's target (0: none) and the capabilities set in
  /// its interface fields (exporting local ones). Throws InvalidArgument for a capability
  /// that cannot go on this connection.
  void writeExtensions(OutgoingMessage& msg, uint32_t target);
  /// `inPlace`: its requests are read in place (an object exported both ways on this
  /// connection is read copied).
  uint32_t exportObject(const std::shared_ptr<Service>& object, bool inPlace);
  /// Takes back `refs` references to export `id` (which has at least that many); the
  /// export goes at zero.
  void dropExportRef(uint32_t id, uint32_t refs = 1);
  Capability importCapability(uint32_t id);
  /// Sends the releases queued by imports that went (as many frames as it takes), unless
  /// a message of ours is open; what cannot go now stays queued.
  void sendReleases();
  /// Ends the mail and the imports' way to this session (their calls fail with why it ended).
  void closeLink();
  /// The peer broke the protocol: the connection is closed with `why`.
  void dropPeer(const std::string& why);
  Service* exported(uint32_t id) const noexcept {
    return id != 0 && id <= exports_.size() ? exports_[id - 1].object.get() : nullptr;
  }
  /// The service a call without a target goes to: the one added for `interfaceId` (null:
  /// none, or a session that serves nothing).
  Service* bootstrapService(uint64_t interfaceId) const noexcept {
    if (const auto* services = options_.services) [[likely]] {
      auto it = services->find(interfaceId);
      if (it != services->end()) return it->second;
    }
    return nullptr;
  }
  // CallTargets: asked by a connection that translates another protocol (session.cc).
  bool streams(uint32_t target, uint64_t interfaceId, uint16_t methodId) const noexcept override;
  /// Posted mail and the answer backlog: what a round of the loop does before it receives.
  size_t serveQueued();

  friend class zcrpc::CallContext;

  std::shared_ptr<Connection> connection_;  // shared with DeferredStates holding requests
  SessionOptions options_;
  bool disconnected_ = false;
  std::string disconnectReason_;
  Tracer* tracer_ = nullptr;

  // questions
  std::shared_ptr<ConnectionMetrics> questionMetrics_;  // null: not counted
  std::unique_ptr<Slot[]> slots_;  // options_.window of them, from the first call out
  uint64_t mask_;
  uint64_t nextCallId_ = 1;
  size_t outstanding_ = 0;
  size_t pinned_ = 0;  // slots with pinned results
  Deadline nearestDeadline_ = kNoDeadline;
  bool requestOpen_ = false;  // a RawRequest holds the connection's one open message
  std::vector<IncomingMessage> early_;  // received while a request waited for room, on the heap
  std::array<uint64_t, 64> cancelQueue_{};
  size_t queuedCancels_ = 0;

  // answers
  std::shared_ptr<ConnectionMetrics> answerMetrics_;  // null: not counted
  std::shared_ptr<SessionLink> link_;
  ThreadOwner* owner_;  // &link_->owner (one load less on every call's thread check)
  std::unordered_map<uint64_t, std::weak_ptr<DeferredState>> deferred_;
  bool rejecting_ = false;
  bool unflushed_ = false;  // answers sent without waking the peer
  CallMark current_;        // the call being dispatched
  AnswerBacklog backlog_;
  static constexpr int kMaxDispatchDepth = 16;
  /// The handler's answer being built in transport memory (startResponse), while its
  /// scope lasts; null otherwise. With requestOpen_, what messageOpenHere() reads.
  OutgoingMessage* inPlaceAnswer_ = nullptr;
  int dispatchDepth_ = 0;   // handlers running (a handler's sync call dispatches re-entrantly)
  int inPlaceHeld_ = 0;     // of them, handlers of in-place exports: no wait on us meanwhile

  // capabilities
  struct Export {
    std::shared_ptr<Service> object;  // null: a free id
    uint32_t refs = 0;                // times put in a capability table, less releases
    bool inPlace = false;             // its requests are read in place (Requests::kInPlace)
  };
  std::vector<Export> exports_;  // export id - 1
  std::vector<uint32_t> freeExports_;
  std::unordered_map<const Service*, uint32_t> exportIds_;
  size_t liveExports_ = 0;
  std::unordered_map<uint32_t, std::weak_ptr<ImportHook>> imports_;
  std::vector<ReleaseNote> releasesOut_;  // queued by imports that went, not yet sent
  /// The last writeExtensions(), until sent: words (uint64_t, as capnp::word cannot be
  /// copied into a vector's new storage), handed over as capnp::word (extensionArea()).
  std::vector<uint64_t> extensionWords_;
  kj::ArrayPtr<const capnp::word> extensionArea() const noexcept {
    return kj::arrayPtr(reinterpret_cast<const capnp::word*>(extensionWords_.data()), extensionWords_.size());
  }

  // streams
  /// Call ids of stream requests sent, by flow: consecutive chunks of one flow extend the
  /// last run. The rare error answer of a stream request finds its flow here. A run goes
  /// once all its chunks were confirmed (newChunkRun); an error naming a chunk after that
  /// (a handler that deferred it) is dropped.
  struct ChunkRun {
    uint64_t first = 0, last = 0;
    const StreamFlow* key = nullptr;  // which flow (compared, never followed)
    std::weak_ptr<StreamFlow> flow;
  };
  ChunkRun& newChunkRun();
  static constexpr size_t kFirstChunkRuns = 16;  // a power of two, as every size after
  std::vector<ChunkRun> chunkRuns_;  // a ring (empty until a stream): the last at chunkRunsEnd_ - 1
  uint64_t chunkRunsEnd_ = 0;        // runs ever started
};

}  // namespace zcrpc
