// zcrpc — serving standard Cap'n Proto clients: the capnp listeners and the server end of a
// connection, whose bootstrap capability turns each call into a request frame for the
// zcrpc session above (the same dispatch as zcrpc's own transports) and each answer frame
// the session sends back into the call's results or exception.
#include <unistd.h>

#include <unordered_map>

#include "compat/connection.h"
#include "compat/errors.h"
#include "compat/sockets.h"
#include "rpc/frames.h"
#include "transport/options.h"
#include "transport/tcp/tcp_setup.h"
#include "zcrpc/capnp.h"

namespace zcrpc::compat {

namespace {

using VatId = capnp::rpc::twoparty::VatId;

/// The server end. The bootstrap capability (Bootstrap) answers every interface id: each
/// call becomes a request frame (FrameKind::kRequest) whose interface and method are the
/// call's, and the session dispatches it by interface id to the service added for it, as it
/// does zcrpc's own frames (an interface no service serves gets Unimplemented, as there).
///
/// Copies: the params are copied out of the Call message into the request frame, and the
/// answer frame's results into the Return message, because a zcrpc frame's root is the
/// message root while Cap'n Proto's params and results lie inside its RPC message
/// (Payload.content), in messages its RPC system allocates.
class CapnpServerConnection final : public CapnpConnection {
 public:
  CapnpServerConnection(std::unique_ptr<tcp::ByteStream> stream, std::string endpoint, std::string peer,
                        const CapnpOptions& options, std::shared_ptr<RefusalLog> refusals)
      : CapnpConnection(std::move(stream), capnp::rpc::twoparty::Side::SERVER, std::move(endpoint),
                        std::move(peer), options, std::move(refusals)) {
    Scope scope(*this);
    scope.enter();
    rpc_ = kj::heap<capnp::RpcSystem<VatId>>(
        capnp::makeRpcServer(network(), capnp::Capability::Client(kj::heap<Bootstrap>(*this))));
    // Calls whose params are not answered yet stop the reading of further messages past
    // this many words: a client that floods us with calls is held back by its own socket.
    rpc_->setFlowLimit(std::max<uint64_t>(2 * options.connection.maxMessageBytes, 64 << 20) / 8);
    started(scope);
  }
  ~CapnpServerConnection() noexcept override { tearDown(); }

 private:
  class Bootstrap final : public capnp::Capability::Server {
   public:
    explicit Bootstrap(CapnpServerConnection& c) : c_(c) {}
    DispatchCallResult dispatchCall(uint64_t interfaceId, uint16_t methodId,
                                    capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context) override {
      return {c_.startCall(interfaceId, methodId, context), false};
    }

   private:
    CapnpServerConnection& c_;
  };

  /// A call the session has not answered yet.
  struct Call {
    Call(capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer>& c,
         kj::Own<kj::PromiseFulfiller<void>> f)
        : context(c), fulfiller(kj::mv(f)) {}
    capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer> context;
    kj::Own<kj::PromiseFulfiller<void>> fulfiller;
  };

  kj::Promise<void> startCall(uint64_t interfaceId, uint16_t methodId,
                              capnp::CallContext<capnp::AnyPointer, capnp::AnyPointer>& context) {
    const uint64_t id = nextCallId_++;
    FrameHeader h{};
    h.kind = static_cast<uint8_t>(FrameKind::kRequest);
    h.callId = id;
    h.interfaceId = interfaceId;
    h.methodId = methodId;
    IncomingMessage request;
    try {
      request = HeapFrame::copyOf(h, context.getParams(), options().connection.maxMessageBytes,
                                  options().connection.readerLimits);
    } catch (const Error& e) {  // InvalidArgument (over a limit) or Unimplemented (a capability)
      return toCapnp(e.kind(), 0, std::string("server could not take the request: ") + e.what());
    } catch (kj::Exception& e) {  // the params broke a reader limit (or were malformed)
      // (A context added with wrapContext() would not travel: rpc.capnp carries the reason.)
      const auto& limits = options().connection.readerLimits;
      return kj::Exception(e.getType(), "(zcrpc)", 0,
                           kj::str("server could not read the request (traversal_limit_words ",
                                   limits.traversalLimitWords, ", nesting_limit ", limits.nestingLimit,
                                   "): ", e.getDescription()));
    }
    context.releaseParams();  // copied: the Call message may go
    // zcrpc's cancellation is a flag the handler may look at (isCancelled()), never an
    // interruption, so a client's Finish may drop this promise at any time: callGone()
    // then tells the session.
    context.allowCancellation();
    auto paf = kj::newPromiseAndFulfiller<void>();
    calls_.emplace(id, Call(context, kj::mv(paf.fulfiller)));
    deliver(std::move(request));
    return paf.promise.attach(kj::defer([this, id] { callGone(id); }));
  }

  /// The call's promise went: answered (nothing to do), or the client cancelled it (its
  /// Finish came first): the session's handler sees isCancelled(), or never runs when the
  /// session has not taken the request yet.
  void callGone(uint64_t id) noexcept {
    if (dropping_) return;
    auto it = calls_.find(id);
    if (it == calls_.end()) return;
    calls_.erase(it);
    if (withdraw(id)) return;
    FrameHeader h{};
    h.kind = static_cast<uint8_t>(FrameKind::kCancel);
    h.callId = id;
    try {
      deliver(HeapFrame::copyOf(h, capnp::AnyPointer::Reader(), 1 << 10, options().connection.readerLimits));
    } catch (...) {
      // No memory for a cancellation notice: the handler finishes unaware, as if late.
    }
  }

  Status sendFrame(OutgoingMessage& msg) override {
    const FrameHeader& h = msg.header();
    const auto kind = static_cast<FrameKind>(h.kind);
    if (kind == FrameKind::kPong) return Status::kOk;  // never asked: no pings in rpc.capnp
    if (kind != FrameKind::kResponse && kind != FrameKind::kError)
      throw InvalidArgument("connection " + endpoint() + " (a standard Cap'n Proto client) carries no frame of kind " +
                            std::to_string(h.kind));
    auto it = calls_.find(h.callId);
    if (it == calls_.end()) return Status::kOk;  // cancelled by the client meanwhile
    Call call = std::move(it->second);
    calls_.erase(it);
    OwnFrameReader answer(msg);
    if (kind == FrameKind::kError) {
      CallResult e = readError(answer.reader());
      call.fulfiller->reject(toCapnp(e.errorKind(), e.errorCode(), e.errorMessage()));
      return Status::kOk;
    }
    try {
      call.context.getResults(answer.size()).set(answer.root());
      call.fulfiller->fulfill();
    } catch (kj::Exception& e) {
      call.fulfiller->reject(kj::mv(e));
    }
    return Status::kOk;
  }

  void dropRpc() noexcept override {
    dropping_ = true;
    calls_.clear();
    rpc_ = nullptr;
  }

  std::unordered_map<uint64_t, Call> calls_;
  uint64_t nextCallId_ = 1;
  bool dropping_ = false;
  kj::Own<capnp::RpcSystem<VatId>> rpc_;
};

/// Accepts standard Cap'n Proto clients on a TCP or unix stream socket. There is no
/// handshake: a capnp+unix client is checked against the credential policy (SO_PEERCRED)
/// and then served; the RPC protocol itself starts with the client's first message.
class CapnpListener final : public Listener {
 public:
  CapnpListener(std::string_view address, bool unix, const CapnpOptions& options) : options_(options) {
    checkConnectionOptions(options_.connection, "capnp buffer");
    if (unix) {
      unix_.emplace(address);
      socket_ = listenUnixSocket(*unix_);
      endpoint_ = unix_->endpoint();
    } else {
      tcp::checkDeadPeerTimeout(options_.deadPeerTimeout);
      socket_ = listenTcpSocket(address, endpoint_);
    }
    refusals_ = std::make_shared<RefusalLog>(endpoint_);
  }

  ~CapnpListener() override {
    if (unix_ && !unix_->abstract()) ::unlink(unix_->path().c_str());
  }

  std::unique_ptr<Connection> accept(Deadline deadline) override {
    for (;;) {
      while (os::Fd client = os::acceptNonBlocking(socket_.get())) {
        std::string peer;
        if (unix_) {
          const os::PeerCredentials cred = os::peerCredentials(client.get());
          peer = "pid " + std::to_string(cred.pid) + " uid " + std::to_string(cred.uid);
          if (!options_.policy.admits(cred.uid, cred.gid)) {
            refusals_->add("refused " + peer + " gid " + std::to_string(cred.gid) +
                           ": not admitted by the credential policy");
            continue;  // closed: the client sees its connection end
          }
        } else {
          peer = peerAddress(client.get());
          tcp::setNoDelay(client.get());
          tcp::setDeadPeerTimeout(client.get(), options_.deadPeerTimeout);
        }
        try {
          return std::make_unique<CapnpServerConnection>(
              std::make_unique<tcp::SocketStream>(std::move(client)), endpoint_ + " (server, peer " + peer + ")",
              peer, options_, refusals_);
        } catch (const std::exception& e) {
          refusals_->add("could not serve " + peer + ": " + e.what());
        }
      }
      const auto now = Clock::now();
      if (now >= deadline) return nullptr;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      os::pollOne(socket_.get(), POLLIN, std::min<std::chrono::milliseconds>(
                                             left + std::chrono::milliseconds(1), std::chrono::seconds(1)));
    }
  }

  int pollFd() const noexcept override { return socket_.get(); }
  std::string endpoint() const override { return endpoint_; }
  std::vector<std::string> refusals() const override { return refusals_->list(); }

 private:
  CapnpOptions options_;
  std::optional<UnixAddress> unix_;
  os::Fd socket_;
  std::string endpoint_;
  std::shared_ptr<RefusalLog> refusals_;
};

}  // namespace

}  // namespace zcrpc::compat

namespace zcrpc {

std::unique_ptr<Listener> listenCapnp(std::string_view hostPort, const CapnpOptions& options) {
  return std::make_unique<compat::CapnpListener>(hostPort, false, options);
}

std::unique_ptr<Listener> listenCapnpUnix(std::string_view path, const CapnpOptions& options) {
  return std::make_unique<compat::CapnpListener>(path, true, options);
}

}  // namespace zcrpc
