// zcrpc — calling standard Cap'n Proto servers: the client end of a connection. Its RPC
// system bootstraps the server's main capability; each request frame the session sends
// becomes a call on it, and each answer (results or exception) a frame for the session.
// GCC 12 with -fsanitize=address at -O3 reports kj::Maybe<Capability::Client> and
// kj::Maybe<MessageSize> moves inside Cap'n Proto's own headers (capnp::makeRpcClient,
// typelessRequest) as maybe-uninitialized: a false positive of the sanitizer build only,
// which -Werror would turn into a failed build.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "compat/connection.h"
#include "compat/sockets.h"
#include "transport/tcp/tls_stream.h"
#include "zcrpc/capnp.h"

namespace zcrpc::compat {

namespace {

using VatId = capnp::rpc::twoparty::VatId;

/// The client end. Requests and one-way messages without a target become calls on the
/// server's bootstrap capability with the frame's interface and method (those with one, on
/// the server's object it names); a cancellation drops the call's promise (Cap'n Proto
/// then sends Finish, and a server that allows it cancels); a ping is a Bootstrap round
/// trip, which every server answers without an application handler. The server's calls on
/// the objects the channel passed it come in through the base (CapnpConnection).
///
/// Copies: the params are copied from the request frame into the Call message, and the
/// results out of the Return message into the answer frame (see CapnpServerConnection).
class CapnpClientConnection final : public CapnpConnection {
 public:
  CapnpClientConnection(std::unique_ptr<tcp::ByteStream> stream, std::string endpoint,
                        const CapnpOptions& options)
      : CapnpConnection(std::move(stream), capnp::rpc::twoparty::Side::CLIENT, endpoint, endpoint,
                        options, nullptr) {
    Scope scope(*this);
    scope.enter();
    rpc_ = kj::heap<capnp::RpcSystem<VatId>>(capnp::makeRpcClient(network()));
    (void)peerBootstrap();  // asked at once: the first call need not wait for it
    started(scope);
  }
  ~CapnpClientConnection() noexcept override { tearDown(); }
};

}  // namespace

}  // namespace zcrpc::compat

namespace zcrpc {

std::unique_ptr<Connection> connectCapnp(std::string_view hostPort, const CapnpOptions& options) {
  const Deadline deadline = deadlineAfter(options.connection.connectTimeout);
  const std::string what = withScheme(hostPort, compat::kTcpScheme);
  os::Fd fd = compat::connectTcpSocket(hostPort, options.connection.connectTimeout, options.deadPeerTimeout);
  std::unique_ptr<tcp::ByteStream> stream;
  if (options.tls.enabled) {
    // The server must prove it is the one named: tls.serverName, or the endpoint's host.
    const tls::Context context(tls::Side::kClient, options.tls, what);
    const std::string name = options.tls.serverName.empty()
                                 ? parseHostPort(hostPort, compat::kTcpScheme).forConnect().host
                                 : options.tls.serverName;
    auto tlsStream = std::make_unique<tcp::TlsStream>(std::move(fd), context, name, what);
    tlsStream->session().handshake(deadline);
    stream = std::move(tlsStream);
  } else {
    stream = std::make_unique<tcp::SocketStream>(std::move(fd));
  }
  return std::make_unique<compat::CapnpClientConnection>(std::move(stream), what, options);
}

std::unique_ptr<Connection> connectCapnpUnix(std::string_view path, const CapnpOptions& options) {
  compat::UnixAddress address(path);
  os::Fd fd = compat::connectUnixSocket(address, options.connection.connectTimeout);
  return std::make_unique<compat::CapnpClientConnection>(std::make_unique<tcp::SocketStream>(std::move(fd)),
                                                         address.endpoint(), options);
}

}  // namespace zcrpc
