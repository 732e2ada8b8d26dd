// zcrpc — serving standard Cap'n Proto clients: the capnp listeners and the server end of a
// connection, whose bootstrap capability turns each call into a request frame for the
// zcrpc session above (the same dispatch as zcrpc's own transports) and each answer frame
// the session sends back into the call's results or exception.
#include <poll.h>
#include <unistd.h>

#include <algorithm>


#include "compat/connection.h"
#include "compat/errors.h"
#include "compat/sockets.h"
#include "rpc/frames.h"
#include "transport/handshakes.h"
#include "transport/options.h"
#include "transport/tcp/tls_stream.h"
#include "transport/tcp/tcp_setup.h"
#include "zcrpc/capnp.h"

namespace zcrpc::compat {

namespace {

using VatId = capnp::rpc::twoparty::VatId;

/// The server end. The bootstrap capability (Bootstrap) answers every interface id: each
/// call becomes a request frame (FrameKind::kRequest) whose interface and method are the
/// call's, and the session dispatches it by interface id to the service added for it, as it
/// does zcrpc's own frames (an interface no service serves gets Unimplemented, as there).
/// Calls on the objects the session exports, and the session's calls on the client's
/// objects, go through the base (CapnpConnection). For Cap'n Proto it is one object: its
/// streaming calls (the session says which) run one at a time, and once one failed its
/// later calls fail (CapnpConnection::dispatchToSession).
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
    DispatchCallResult dispatchCall(uint64_t interfaceId, uint16_t methodId, AnyContext context) override {
      return c_.dispatchToSession(0, interfaceId, methodId, context);
    }

   private:
    CapnpServerConnection& c_;
  };
};

/// Accepts standard Cap'n Proto clients on a TCP or unix stream socket. There is no
/// handshake of zcrpc's: a capnp+unix client is checked against the credential policy
/// (SO_PEERCRED) and then served; a capnp:// client on a TLS listener first completes its
/// TLS handshake (advanced without blocking as its bytes arrive, within connectTimeout);
/// the RPC protocol itself starts with the client's first message.
///
/// Threads: accept() and addPollFds() from the one thread that accepts; refusals() from any.
class CapnpListener final : public Listener {
 public:
  CapnpListener(std::string_view address, bool unix, const CapnpOptions& options) : options_(options) {
    checkConnectionOptions(options_.connection, "capnp buffer");
    if (unix) {
      if (options_.tls.enabled)
        throw InvalidArgument(std::string(kUnixScheme) + "://" + std::string(address) +
                              ": TLS is for capnp:// (TCP); unix socket clients are checked by the credential policy");
      unix_.emplace(address);
      socket_ = listenUnixSocket(*unix_);
      endpoint_ = unix_->endpoint();
    } else {
      tcp::checkDeadPeerTimeout(options_.deadPeerTimeout);
      socket_ = listenTcpSocket(address, endpoint_);
      if (options_.tls.enabled) tls_ = std::make_unique<tls::Context>(tls::Side::kServer, options_.tls, endpoint_);
    }
    refusals_ = std::make_shared<RefusalLog>(endpoint_);
  }

  ~CapnpListener() override {
    if (unix_ && !unix_->abstract()) ::unlink(unix_->path().c_str());
  }

  std::unique_ptr<Connection> accept(Deadline deadline) override {
    return acceptWithHandshakes(
        deadline, pending_, "TLS handshake",
        [&]() -> std::unique_ptr<Connection> {
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
              if (tls_) {
                // Changed certificate, key or CA files take effect from the next client on.
                if (std::string why = tls_->reloadIfChanged(); !why.empty())
                  refusals_->add("TLS credentials not reloaded (the old ones stay): " + why);
                try {
                  Pending p;
                  p.stream = std::make_unique<tcp::TlsStream>(std::move(client), *tls_, "", "");
                  p.peer = std::move(peer);
                  p.deadline = deadlineAfter(options_.connection.connectTimeout);
                  pending_.push_back(std::move(p));
                } catch (const std::exception& e) {
                  refusals_->add("refused " + peer + ": " + e.what());
                }
                continue;
              }
            }
            if (auto c = serve(std::make_unique<tcp::SocketStream>(std::move(client)), peer)) return c;
          }
          return nullptr;
        },
        [&](Pending& p, std::unique_ptr<Connection>& c) {
          if (p.stream->session().handshake() != tls::Session::Progress::kDone) return false;
          c = serve(std::move(p.stream), p.peer);  // null when refused (serve() says why)
          return true;
        },
        [&](Pending& p, const std::string& why, bool) { refusals_->add("refused " + p.peer + ": " + why); },
        [&](std::vector<pollfd>& fds) { return addPollFds(fds); });
  }

  int pollFd() const noexcept override { return socket_.get(); }
  Deadline addPollFds(std::vector<pollfd>& fds) const override {
    return pollListenerAndHandshakes(socket_.get(), pending_, fds);
  }
  std::string endpoint() const override { return endpoint_; }
  std::vector<std::string> refusals() const override { return refusals_->list(); }

 private:
  /// A client whose TLS handshake is under way.
  struct Pending {
    std::unique_ptr<tcp::TlsStream> stream;
    std::string peer;
    Deadline deadline;
    int pollFd() const noexcept { return stream->fd(); }
  };

  /// The connection serving `stream` (null, refused with the reason, when it cannot be made).
  std::unique_ptr<Connection> serve(std::unique_ptr<tcp::ByteStream> stream, const std::string& peer) {
    try {
      return std::make_unique<CapnpServerConnection>(std::move(stream), endpoint_ + " (server, peer " + peer + ")",
                                                     peer, options_, refusals_);
    } catch (const std::exception& e) {
      refusals_->add("could not serve " + peer + ": " + e.what());
      return nullptr;
    }
  }

  CapnpOptions options_;
  std::optional<UnixAddress> unix_;
  os::Fd socket_;
  std::string endpoint_;
  std::unique_ptr<tls::Context> tls_;  // capnp:// with TLS on: the server's configuration
  std::vector<Pending> pending_;       // TLS handshakes in progress
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
