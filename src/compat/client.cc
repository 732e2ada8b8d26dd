// zcrpc — calling standard Cap'n Proto servers: the client end of a connection. Its RPC
// system bootstraps the server's main capability; each request frame the session sends
// becomes a call on it, and each answer (results or exception) a frame for the session.
// GCC 12 with -fsanitize=address at -O3 reports kj::Maybe<Capability::Client> and
// kj::Maybe<MessageSize> moves inside Cap'n Proto's own headers (capnp::makeRpcClient,
// typelessRequest) as maybe-uninitialized: a false positive of the sanitizer build only,
// which -Werror would turn into a failed build.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <unordered_map>
#include <vector>

#include "compat/connection.h"
#include "compat/errors.h"
#include "compat/sockets.h"
#include "zcrpc/capnp.h"

namespace zcrpc::compat {

namespace {

using VatId = capnp::rpc::twoparty::VatId;

/// The client end. Requests and one-way messages become calls on the server's bootstrap
/// capability with the frame's interface and method; a cancellation drops the call's
/// promise (Cap'n Proto then sends Finish, and a server that allows it cancels); a ping is
/// a Bootstrap round trip, which every server answers without an application handler.
///
/// Copies: the params are copied from the request frame into the Call message, and the
/// results out of the Return message into the answer frame (see CapnpServerConnection).
class CapnpClientConnection final : public CapnpConnection, private kj::TaskSet::ErrorHandler {
 public:
  CapnpClientConnection(std::unique_ptr<tcp::ByteStream> stream, std::string endpoint,
                        const CapnpOptions& options)
      : CapnpConnection(std::move(stream), capnp::rpc::twoparty::Side::CLIENT, endpoint, endpoint,
                        options, nullptr) {
    Scope scope(*this);
    scope.enter();
    rpc_ = kj::heap<capnp::RpcSystem<VatId>>(capnp::makeRpcClient(network()));
    oneWays_ = kj::heap<kj::TaskSet>(static_cast<kj::TaskSet::ErrorHandler&>(*this));
    main_ = bootstrap();
    started(scope);
  }
  ~CapnpClientConnection() noexcept override { tearDown(); }

 private:
  capnp::Capability::Client bootstrap() {
    capnp::word scratch[8];
    std::memset(scratch, 0, sizeof scratch);
    capnp::MallocMessageBuilder message(scratch);
    auto server = message.getRoot<VatId>();
    server.setSide(capnp::rpc::twoparty::Side::SERVER);
    return rpc_->bootstrap(server);
  }

  Status sendFrame(OutgoingMessage& msg) override {
    const FrameHeader h = msg.header();
    switch (static_cast<FrameKind>(h.kind)) {
      case FrameKind::kRequest:
      case FrameKind::kStreamRequest:  // answered one by one: capnp has no acks
      case FrameKind::kOneWay: {
        OwnFrameReader params(msg);
        auto request = main_.typelessRequest(h.interfaceId, h.methodId, params.size());
        request.set(params.root());
        auto promise = request.send();
        if (h.kind == static_cast<uint8_t>(FrameKind::kOneWay)) {
          oneWays_->add(promise.ignoreResult());  // its answer is dropped when it comes
        } else {
          const uint64_t id = h.callId;
          calls_.emplace(id, promise
                                 .then([this, h](capnp::Response<capnp::AnyPointer>&& results) {
                                   FrameHeader answer = h;
                                   answer.kind = static_cast<uint8_t>(FrameKind::kResponse);
                                   answer.flags = 0;
                                   finish(h.callId, [&] {
                                     return HeapFrame::copyOf(answer, results,
                                                              options().connection.maxMessageBytes,
                                                              options().connection.readerLimits);
                                   });
                                 },
                                       [this, id](kj::Exception&& e) { fail(id, e); })
                                 .eagerlyEvaluate(nullptr));
        }
        return Status::kOk;
      }
      case FrameKind::kCancel:
        calls_.erase(h.callId);  // dropping the call's promise makes the RPC system send Finish
        return Status::kOk;
      case FrameKind::kPing: {
        const uint64_t id = h.callId;
        calls_.emplace(id, bootstrap()
                               .whenResolved()
                               .then(
                                   [this, id] {
                                     FrameHeader pong{};
                                     pong.kind = static_cast<uint8_t>(FrameKind::kPong);
                                     pong.callId = id;
                                     finish(id, [&] {
                                       return HeapFrame::copyOf(pong, capnp::AnyPointer::Reader(), 1 << 10,
                                                                options().connection.readerLimits);
                                     });
                                   },
                                   [this, id](kj::Exception&& e) { fail(id, e); })
                               .eagerlyEvaluate(nullptr));
        return Status::kOk;
      }
      default:
        throw InvalidArgument("connection " + endpoint() + " (a standard Cap'n Proto server) carries no frame of kind " +
                              std::to_string(h.kind));
    }
  }

  /// Queues the answer `make()` builds for call `id` (or an error frame when it cannot).
  template <typename Make>
  void finish(uint64_t id, Make&& make) {
    try {
      deliver(make());
    } catch (const Error& e) {
      deliver(HeapFrame::error(id, e.kind() == ErrorKind::kApplication ? ErrorKind::kFailed : e.kind(), 0,
                               std::string("answer could not be read: ") + e.what(),
                               options().connection.readerLimits));
    } catch (const kj::Exception& e) {
      deliver(HeapFrame::error(id, ErrorKind::kInvalidArgument, 0,
                               std::string("answer could not be read: ") + e.getDescription().cStr(),
                               options().connection.readerLimits));
    }
    done_.push_back(id);
  }

  void fail(uint64_t id, const kj::Exception& e) {
    if (e.getType() == kj::Exception::Type::DISCONNECTED && streamEnded()) {
      // The connection itself ended (the RPC system fails every call so): the channel
      // learns it from the connection, as over zcrpc's own transports, and fails its calls.
      fault(endReason());
      return;
    }
    ZcrpcError z = fromCapnp(e);
    deliver(HeapFrame::error(id, z.kind, z.code, z.message, options().connection.readerLimits));
    done_.push_back(id);
  }

  void afterPoll() override {
    for (uint64_t id : done_) calls_.erase(id);
    done_.clear();
  }

  void taskFailed(kj::Exception&&) override {}  // a one-way call's error: nobody waits for it

  void dropRpc() noexcept override {
    calls_.clear();
    done_.clear();
    oneWays_ = nullptr;
    main_ = nullptr;
    rpc_ = nullptr;
  }

  kj::Own<capnp::RpcSystem<VatId>> rpc_;
  capnp::Capability::Client main_ = nullptr;  // the server's bootstrap capability
  std::unordered_map<uint64_t, kj::Promise<void>> calls_;
  std::vector<uint64_t> done_;  // calls answered in this poll, dropped from calls_ after it
  kj::Own<kj::TaskSet> oneWays_;
};

}  // namespace

}  // namespace zcrpc::compat

namespace zcrpc {

std::unique_ptr<Connection> connectCapnp(std::string_view hostPort, const CapnpOptions& options) {
  os::Fd fd = compat::connectTcpSocket(hostPort, options.connection.connectTimeout, options.deadPeerTimeout);
  return std::make_unique<compat::CapnpClientConnection>(std::make_unique<tcp::SocketStream>(std::move(fd)),
                                                         withScheme(hostPort, compat::kTcpScheme), options);
}

std::unique_ptr<Connection> connectCapnpUnix(std::string_view path, const CapnpOptions& options) {
  compat::UnixAddress address(path);
  os::Fd fd = compat::connectUnixSocket(address, options.connection.connectTimeout);
  return std::make_unique<compat::CapnpClientConnection>(std::make_unique<tcp::SocketStream>(std::move(fd)),
                                                         address.endpoint(), options);
}

}  // namespace zcrpc
