// zcrpc — what both ends of a standard Cap'n Proto connection share: the socket and its
// message stream, the KJ event loop Cap'n Proto's RPC system runs in, and the zcrpc frames
// waiting for the session above.
#pragma once

#include <capnp/rpc-twoparty.h>
#include <capnp/serialize.h>
#include <kj/async.h>

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "compat/errors.h"
#include "compat/heap_frame.h"
#include "compat/message_stream.h"
#include "os/os.h"
#include "zcrpc/capnp.h"
#include "zcrpc/transport.h"

#pragma GCC visibility push(hidden)
namespace zcrpc::compat {

/// Refusals of one listener, shared with the connections it accepted (a client that breaks
/// the protocol later is listed too). Threads: any.
class RefusalLog final {
 public:
  explicit RefusalLog(std::string endpoint) : endpoint_(std::move(endpoint)) {}
  void add(std::string why);
  std::vector<std::string> list() const;
  const std::string& endpoint() const noexcept { return endpoint_; }

 private:
  const std::string endpoint_;
  mutable std::mutex mutex_;
  std::deque<std::string> entries_;
};

/// The session's own frame `msg` read as a Cap'n Proto message, to be copied into an RPC
/// message: built in this process, so read without reader limits. Borrows `msg`'s memory.
class OwnFrameReader final {
 public:
  explicit OwnFrameReader(OutgoingMessage& msg) : OwnFrameReader(msg.segmentsForSend()) {}
  capnp::MessageReader& reader() noexcept { return reader_; }
  capnp::AnyPointer::Reader root() { return reader_.getRoot<capnp::AnyPointer>(); }
  /// The whole frame's size: room for a copy of its root.
  capnp::MessageSize size() const noexcept { return {words_, 0}; }

 private:
  explicit OwnFrameReader(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments);
  static capnp::ReaderOptions unlimited() noexcept;

  uint64_t words_ = 0;
  capnp::SegmentArrayMessageReader reader_;
};

/// A Connection whose wire is Cap'n Proto's two-party RPC protocol. The subclass owns the
/// RPC system (client or server side) and says what the session's calls without a target
/// go to; this base reads the socket, runs the event loop, queues the frames made for the
/// session, and translates between the session's frames and the RPC system's calls, in
/// both directions (either end may call the other once capabilities are passed):
///
/// * a capnp call on the server's bootstrap, or on a capability standing for one of the
///   session's exports (SessionObject), becomes a request frame for the session (with a
///   target record naming that export); the session's answer frame settles the call;
/// * a request, stream request or one-way frame of the session becomes a call on the
///   peer's bootstrap (no target) or on the peer capability its target names; the answer
///   becomes a frame for the session;
/// * capabilities in params and results: one of the peer's (a capnp::Capability::Client)
///   becomes an export of ours in the session's eyes (an id of `peerCaps_`, a
///   sender-hosted capTable entry), which the session releases with a release frame; one
///   the session exports becomes a SessionObject (a capnp::Capability::Server) whose end
///   (capnp dropped it) is a release frame for the session; each handed back is the
///   original again (a peer capability given back is the same Client, which the RPC system
///   turns into the peer's own object; a SessionObject coming back is the session's
///   export, a receiver-hosted entry).
///
/// The KJ event loop is entered only inside this object's own calls, for their duration,
/// on the calling thread (Scope): a server worker thread serves these connections among
/// its others, and a Channel's thread drives its own; no thread of their own, no hop. Those
/// calls must therefore not run on a thread inside another KJ event loop (e.g. in a
/// callback of capnp::EzRpcClient's); they throw InvalidArgument saying so. The sending
/// and receiving threads may differ (the Connection contract): entries are serialised.
///
/// Threads: as Connection; close(), lastError(), endpoint() from any thread.
class CapnpConnection : public Connection, private HeapFrame::Owner, private HeapFrame::CapWriter,
                        private kj::TaskSet::ErrorHandler {
 public:
  ~CapnpConnection() noexcept override;

  Status tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) override;
  Status startMessage(OutgoingMessage& msg, uint32_t firstSegmentWords, Deadline deadline) override;
  Status send(OutgoingMessage& msg, bool flush) final;
  Status flush() override;
  Status tryReceive(IncomingMessage& out) override;
  Status receive(IncomingMessage& out, Deadline deadline) override;
  int waitFd() const noexcept override { return epoll_.get(); }
  bool armWait() noexcept override;
  void disarmWait() noexcept override {}
  Status checkPeer() noexcept override;
  void close() noexcept override;
  std::string lastError() const override;
  std::string endpoint() const override { return endpoint_; }
  uint64_t maxMessageBytes() const noexcept override { return options_.connection.maxMessageBytes; }
  uint32_t maxLeases() const noexcept override { return options_.connection.maxLeases; }
  void setCallTargets(const CallTargets* targets) noexcept override;

 protected:
  using AnyContext = capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer>;

/// One call's hold on the connection: the lock that serialises calls, and (enter()) the
  /// connection's event loop made current on this thread until the Scope goes.
  class Scope final {
   public:
    explicit Scope(CapnpConnection& c) : c_(c), lock_(c.scopeMutex_) {}
    ~Scope() {
      if (ws_) ws_->~WaitScope();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    /// Enters the loop; throws InvalidArgument when this thread runs another KJ event loop.
    void enter();
    /// Runs what is ready in the loop: the RPC system's reads, calls and answers.
    void poll() {
      enter();
      ws_->poll();
      c_.afterPoll();
    }
    kj::WaitScope& waitScope() {
      enter();
      return *ws_;
    }

   private:
    CapnpConnection& c_;
    std::unique_lock<std::mutex> lock_;
    kj::WaitScope* ws_ = nullptr;  // in space_ once entered
    alignas(kj::WaitScope) unsigned char space_[sizeof(kj::WaitScope)];
  };

  /// `side`: which end of the two-party network this is. The subclass then builds its RPC
  /// system on network() and calls started(), in one Scope.
  CapnpConnection(std::unique_ptr<tcp::ByteStream> stream, capnp::rpc::twoparty::Side side,
                  std::string endpoint, std::string peer, const CapnpOptions& options,
                  std::shared_ptr<RefusalLog> refusals);

  capnp::TwoPartyVatNetwork& network() noexcept { return *network_; }
  /// The RPC system is built (the subclass's, in `rpc_`): watch its end, send what it
  /// wrote (a client's Bootstrap).
  void started(Scope& scope);
  /// Ends the RPC system and everything of the loop before the loop goes (subclass
  /// destructor, first thing).
  void tearDown() noexcept;
  /// What the subclass keeps of the RPC system, dropped in scope by tearDown() before it.
  virtual void dropRpc() noexcept {}

  /// What the session's calls without a target go to: the peer's bootstrap capability
  /// (bootstrapped on first use). In the loop.
  capnp::Capability::Client peerBootstrap();

  /// A capnp call on this end's bootstrap (`target` 0) or on the SessionObject of export
  /// `target`: a request frame for the session; the promise settles with its answer (the
  /// call's results or exception are set by then). In the loop.
  kj::Promise<void> takeCall(uint32_t target, uint64_t interfaceId, uint16_t methodId, AnyContext& context);
  /// What a capnp call on this end's bootstrap (`target` 0) or on the SessionObject of
  /// export `target` is to Cap'n Proto's RPC system (Capability::Server::dispatchCall): the
  /// call as takeCall() makes it, and whether the method streams (the session says;
  /// rpc.capnp does not). Cap'n Proto's LocalClient, which holds each such object, then
  /// treats a streaming call as its own servers' are treated: the object's later calls wait
  /// until it is done, and once one failed every later call of that object fails with
  /// its exception. In the loop.
  capnp::Capability::Server::DispatchCallResult dispatchToSession(uint32_t target, uint64_t interfaceId,
                                                                  uint16_t methodId, AnyContext& context);

  /// Notes why the connection failed (first reason wins) and closes it.
  void fault(const std::string& why) noexcept;
  /// The socket reached its end (the peer closed it, or it failed).
  bool streamEnded() const noexcept { return stream_ && stream_->ended(); }
  /// Why the RPC system ended the connection, from what the stream saw.
  std::string endReason() const;
  const CapnpOptions& options() const noexcept { return options_; }
  /// Who the peer is (Connection::peer()): the transport (the endpoint's scheme) and the
  /// peer's address.
  const PeerIdentity& peer() const noexcept override { return identity_; }
  capnp::ReaderOptions readerOptions() const noexcept;

  kj::Own<capnp::RpcSystem<capnp::rpc::twoparty::VatId>> rpc_;  // the subclass builds it

 private:
  /// A capability standing, on the capnp side, for export `exportId` of the session: its
  /// calls are request frames with a target record; `refs` counts the references the
  /// session granted for it in the frames turned into it, which its end gives back (a
  /// release frame). Lives in the loop (the RPC system and the messages holding it).
  class SessionObject;
  /// One of the peer's capabilities the session holds as an export of ours (id in
  /// peerCaps_): the references the session was granted to it, and the Client.
  struct PeerCap {
    capnp::Capability::Client client;
    uint32_t refs = 0;
    const capnp::ClientHook* hook = nullptr;  // its key in peerCapIds_
  };
  /// A capnp call the session has not answered yet.
  struct Answering {
    Answering(AnyContext& c, kj::Own<kj::PromiseFulfiller<void>> f) : context(c), fulfiller(kj::mv(f)) {}
    AnyContext context;
    kj::Own<kj::PromiseFulfiller<void>> fulfiller;
  };
  /// A ping of the session: answered once its Bootstrap round trip came back and no stream
  /// chunk sent before it is still in flight (a pong confirms them, as over zcrpc's wire).
  struct Ping {
    uint64_t id;
    bool answered = false;
    bool failed = false;
    ZcrpcError error;
  };

  // ---- frames from the session to the wire (connection_calls.cc), in the loop
  /// The session's frame `msg` (opened by tryStartMessage): its extension records read,
  /// then a call or an answer on the wire. The frame's memory is freed afterwards.
  Status sendFrame(OutgoingMessage& msg);
  /// The capabilities of a frame's capTable record, as Cap'n Proto's (each sender-hosted
  /// one counted as a reference to its SessionObject).
  kj::Array<kj::Maybe<kj::Own<capnp::ClientHook>>> readCapTable(std::span<const std::byte> record);
  /// Gives back what a releases record of the session drops.
  void readReleases(std::span<const std::byte> record);
  /// A call of the session on the wire: `kind` request, stream request or one-way.
  void sendCall(const FrameHeader& h, uint32_t target, capnp::AnyPointer::Reader params, capnp::MessageSize size);
  /// The session's answer to call `h.callId` of ours.
  void sendAnswer(const FrameHeader& h, capnp::AnyPointer::Reader results, OwnFrameReader& frame);
  /// A new Bootstrap question to the peer.
  capnp::Capability::Client bootstrapRequest();
  /// The session's stream chunk `id` was answered (`e`: with an exception).
  void chunkDone(uint64_t id, const kj::Exception* e);
  void sendPing(uint64_t id);
  /// Answers the pings nothing holds back any more.
  void answerPings();
  /// A capnp answer (`results`) to the session's call `h`: a frame for the session.
  void answered(const FrameHeader& h, capnp::AnyPointer::Reader results);
  /// The session's call `id` failed on the wire with `e`.
  void failed(uint64_t id, const kj::Exception& e);
  /// Queues the answer `make()` builds for the session's call `id` (or an error frame
  /// when it cannot).
  template <typename Make>
  void finish(uint64_t id, Make&& make);

  // ---- capnp calls into the session
  /// A call of ours whose promise went: answered (nothing to do), or the peer cancelled it
  /// (its Finish came first): the session's handler sees isCancelled(), or never runs
  /// when the session has not taken the request yet.
  void callGone(uint64_t id) noexcept;
  /// The SessionObject of export `exportId`, granted one more reference.
  capnp::Capability::Client sessionObject(uint32_t exportId);
  /// The SessionObject of `exportId` went (capnp holds it no more): its references go back.
  void sessionObjectGone(uint32_t exportId, uint32_t refs) noexcept;
  // CapWriter: capnp's capabilities in a copy for the session, as a capTable record.
  void writeCapTable(kj::ArrayPtr<kj::Maybe<kj::Own<capnp::ClientHook>>> found,
                     RecordWords& records) override;
  /// Takes back the references of the capTable in `frame` (a frame the session never got).
  void unwriteCapTable(IncomingMessage& frame) noexcept;
  /// Drops `refs` of the session's references to peer capability `id` (the Client at
  /// zero); false when it holds fewer.
  bool dropPeerCap(uint32_t id, uint32_t refs) noexcept;
  // kj::TaskSet::ErrorHandler: a one-way call's error (nobody waits for it).
  void taskFailed(kj::Exception&&) override {}

  /// Queues a frame for the session (in scope).
  void deliver(IncomingMessage frame) { incoming_.push_back(std::move(frame)); }
  /// Takes back the queued request `callId` if the session has not received it yet.
  bool withdraw(uint64_t callId);
  /// After each run of the loop (in scope): drops the calls it answered.
  void afterPoll();
  /// Drops the calls and capabilities of both directions (in scope, before the RPC system).
  void dropCalls() noexcept;

  /// Reads the socket once, runs the loop, writes what it produced. In scope.
  void pump(Scope& scope);
  /// Opens `msg` on a frame of its own for the session.
  Status open(OutgoingMessage& msg, uint32_t words);
  void abandoned(HeapFrame& frame) noexcept override;

  const std::string endpoint_;
  const std::string peer_;
  const capnp::rpc::twoparty::Side side_;
  PeerIdentity identity_;
  const CapnpOptions options_;
  std::shared_ptr<RefusalLog> refusals_;
  os::Fd epoll_;
  uint32_t epollEvents_ = 0;
  kj::EventLoop loop_;
  std::mutex scopeMutex_;
  std::unique_ptr<SocketMessageStream> stream_;
  kj::Own<capnp::TwoPartyVatNetwork> network_;
  kj::Maybe<kj::Promise<void>> disconnectWatch_;
  std::deque<IncomingMessage> incoming_;
  const CallTargets* targets_ = nullptr;  // the session's, while it lasts (under the scope lock)

  // Calls and capabilities (in the loop, under the scope lock)
  std::unordered_map<uint64_t, Answering> answering_;  // capnp calls by the call id we gave them
  uint64_t nextCallId_ = 1;
  std::unordered_map<uint64_t, kj::Promise<void>> asking_;  // the session's calls by its call id
  std::vector<uint64_t> done_;           // asking_ answered in this run of the loop, dropped after it
  std::vector<uint64_t> chunks_;         // the session's stream chunks in flight (call ids, in order)
  std::deque<Ping> pings_;
  kj::Own<kj::TaskSet> oneWays_;
  std::optional<capnp::Capability::Client> peerMain_;  // the peer's bootstrap, once asked
  std::unordered_map<uint32_t, PeerCap> peerCaps_;                  // by the id the session knows
  std::unordered_map<const capnp::ClientHook*, uint32_t> peerCapIds_;  // the same, by hook
  uint32_t nextPeerCap_ = 1;
  std::unordered_map<uint32_t, SessionObject*> sessionObjects_;           // by export id
  std::unordered_map<const capnp::ClientHook*, uint32_t> sessionObjectIds_;  // their hooks
  bool dropping_ = false;  // tearing down: calls and objects go without telling the session

  std::mutex openMutex_;
  std::vector<std::unique_ptr<HeapFrame>> open_;  // frames the session builds, under openMutex_
  bool broken_ = false;
  std::atomic<bool> closed_{false};
  mutable std::mutex errorMutex_;
  std::string error_;

  friend class Scope;
};

}  // namespace zcrpc::compat
#pragma GCC visibility pop
