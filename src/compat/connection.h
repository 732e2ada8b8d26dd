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
#include <string>
#include <vector>

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
/// RPC system (client or server side) and turns the session's frames into its calls and
/// answers (send()); this base reads the socket, runs the event loop and queues the frames
/// made for the session.
///
/// The KJ event loop is entered only inside this object's own calls, for their duration,
/// on the calling thread (Scope): a server worker thread serves these connections among
/// its others, and a Channel's thread drives its own; no thread of their own, no hop. Those
/// calls must therefore not run on a thread inside another KJ event loop (e.g. in a
/// callback of capnp::EzRpcClient's); they throw InvalidArgument saying so. The sending
/// and receiving threads may differ (the Connection contract): entries are serialised.
///
/// Threads: as Connection; close(), lastError(), endpoint() from any thread.
class CapnpConnection : public Connection, private HeapFrame::Owner {
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
  /// zcrpc's frame extension records (capability tables, targets, releases) are not
  /// translated to rpc.capnp yet: none can be sent (send() refuses a message with any).
  uint32_t maxExtensionBytes() const noexcept override { return 0; }

 protected:
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
  /// The RPC system is built: watch its end, send what it wrote (a client's Bootstrap).
  void started(Scope& scope);
  /// Ends the RPC system and everything of the loop before the loop goes (subclass
  /// destructor, first thing).
  void tearDown() noexcept;
  /// The subclass's RPC system and what it keeps of calls, dropped in scope by tearDown().
  virtual void dropRpc() noexcept = 0;
  /// After each run of the loop (in scope): what the subclass could not do inside it.
  virtual void afterPoll() {}

  /// The session's frame `msg` (opened by tryStartMessage), in scope: becomes a call or an
  /// answer on the wire. The frame's memory is freed afterwards.
  virtual Status sendFrame(OutgoingMessage& msg) = 0;

  /// Queues a frame for the session (in scope).
  void deliver(IncomingMessage frame) { incoming_.push_back(std::move(frame)); }
  /// Takes back the queued request `callId` if the session has not received it yet.
  bool withdraw(uint64_t callId);
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

 private:
  /// Reads the socket once, runs the loop, writes what it produced. In scope.
  void pump(Scope& scope);
  /// Opens `msg` on a frame of its own for the session.
  Status open(OutgoingMessage& msg, uint32_t words);
  void abandoned(HeapFrame& frame) noexcept override;

  const std::string endpoint_;
  const std::string peer_;
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
