// zcrpc — the tcp listener: accept, handshakes in progress, listenTcp().
#include <sys/socket.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>

#include "os/os.h"
#include "transport/handshakes.h"
#include "transport/options.h"
#include "transport/tcp/tcp_connection.h"
#include "transport/tcp/tcp_setup.h"
#include "zcrpc/log.h"
#include "transport/tcp/tls_stream.h"

namespace zcrpc {

namespace {

using namespace tcp;

class TcpListener final : public Listener {
 public:
  TcpListener(std::string_view hostPort, const TcpOptions& options) : options_(options) {
    checkConnectionOptions(options_.connection, "tcp buffer");
    checkDeadPeerTimeout(options_.deadPeerTimeout);
    const HostPort hp = parseHostPort(hostPort, "tcp");
    const std::string what = withScheme(hostPort, "tcp");
    const AddressList addresses = resolve(hp, /*passive=*/true, what);
    socket_ = listenSocket(addresses.first(), what);
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    ::getsockname(socket_.get(), reinterpret_cast<sockaddr*>(&local), &len);
    endpoint_ = "tcp://" + addressText(reinterpret_cast<const sockaddr*>(&local));
    checkTokenPolicy(options_, endpoint_);
    if (options_.tls.enabled)
      tls_ = std::make_unique<tls::Context>(tls::Side::kServer, options_.tls, endpoint_);
  }

  /// Handshakes advance without blocking as their bytes arrive, each with its own
  /// deadline (connectTimeout), so a silent client holds up neither accept() nor others.
  std::unique_ptr<Connection> accept(Deadline deadline) override {
    return acceptWithHandshakes(
        deadline, pending_, "handshake",
        [&]() -> std::unique_ptr<Connection> {
          while (os::Fd client = os::acceptNonBlocking(socket_.get())) {
            Pending p;
            p.peer = peerAddress(client.get());
            p.what = endpoint_ + " (server, peer " + p.peer + ")";
            p.deadline = deadlineAfter(options_.connection.connectTimeout);
            setNoDelay(client.get());  // before any handshake: its flights must not wait
            if (tls_) {
              // Changed certificate, key or CA files take effect from the next client on.
              if (std::string why = tls_->reloadIfChanged(); !why.empty())
                remember("TLS credentials not reloaded (the old ones stay): " + why);
              try {
                auto stream = std::make_unique<TlsStream>(std::move(client), *tls_, "", "");
                p.tls = stream.get();
                p.stream = std::move(stream);
              } catch (const std::exception& e) {
                remember(std::string("refused ") + p.peer + ": " + e.what());
                continue;
              }
            } else {
              p.stream = std::make_unique<SocketStream>(std::move(client));
            }
            pending_.push_back(std::move(p));
          }
          return nullptr;
        },
        [&](Pending& p, std::unique_ptr<Connection>& c) { return (c = advance(p)) != nullptr; },
        [&](Pending& p, const std::string& why, bool) { remember("refused " + p.peer + ": " + why); },
        [&](std::vector<pollfd>& fds) { return addPollFds(fds); });
  }

  int pollFd() const noexcept override { return socket_.get(); }
  Deadline addPollFds(std::vector<pollfd>& fds) const override {
    return pollListenerAndHandshakes(socket_.get(), pending_, fds);
  }
  std::string endpoint() const override { return endpoint_; }
  std::vector<std::string> refusals() const override {
    std::lock_guard lock(mutex_);
    return {refusals_.begin(), refusals_.end()};
  }

 private:
  void remember(std::string why) {
    logMessage(LogLevel::kWarning, endpoint_ + ": " + why);
    std::lock_guard lock(mutex_);
    refusals_.push_back(std::move(why));
    if (refusals_.size() > 64) refusals_.pop_front();
  }

  struct Pending {
    std::unique_ptr<ByteStream> stream;
    TlsStream* tls = nullptr;  // stream, when TLS is on; its handshake comes first
    bool tlsStarted = false;   // bytes came and they were not a plain Hello
    bool tlsDone = false;
    int pollFd() const noexcept { return stream->fd(); }
    std::string peer;
    std::string what;
    Deadline deadline{};
    std::string received;  // Hello, then the token
  };

  /// Reads what has arrived; answers once Hello and token are complete. Throws to drop.
  std::unique_ptr<Connection> advance(Pending& p) {
    if (p.tls && !p.tlsDone) {
      if (!p.tlsStarted) {
        // A plain zcrpc client gets the reason in its own protocol, not a TLS alert.
        // Decided on the first bytes, peeked: until they tell a plain Hello from a TLS
        // ClientHello, the handshake must not start (it would read a plain Hello as a bad
        // TLS record and drop the client without its reason).
        uint64_t magic = 0;
        ssize_t n = ::recv(p.stream->fd(), &magic, sizeof magic, MSG_PEEK | MSG_DONTWAIT);
        if ((n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) ||
            (n > 0 && n < static_cast<ssize_t>(sizeof magic) &&
                      std::memcmp(&magic, &kHelloMagic, static_cast<size_t>(n)) == 0))
          return nullptr;  // nothing yet, or the start of a Hello: wait for more
        if (n == static_cast<ssize_t>(sizeof magic) && magic == kHelloMagic) {
          Answer a;
          std::snprintf(a.reason, sizeof a.reason, "%s", "this listener speaks TLS: connect with tls=on");
          SocketStream plain(os::Fd(::dup(p.stream->fd())));
          try {
            writeAll(plain, &a, sizeof a, deadlineAfter(std::chrono::milliseconds(100)), p.what);
          } catch (...) {
          }
          throw Failed("plain client on a TLS listener (told to connect with tls=on)");
        }
        p.tlsStarted = n > 0;
      }
      // TLS first (throws Failed with the reason: a bad client certificate, a protocol error).
      if (p.tls->session().handshake() != tls::Session::Progress::kDone) return nullptr;
      p.tlsDone = true;
    }
    size_t need = sizeof(Hello);
    for (;;) {
      if (p.received.size() >= sizeof(Hello)) {
        Hello hello;
        std::memcpy(&hello, p.received.data(), sizeof hello);
        if (hello.magic != kHelloMagic) {
          // A TLS ClientHello: a record of type 22 (handshake), version 3.x.
          if (p.received[0] == 0x16 && p.received[1] == 0x03)
            throw Failed("client started a TLS handshake, but TLS is off on this listener");
          throw Failed("peer is not speaking the zcrpc tcp handshake");
        }
        if (hello.tokenBytes > kMaxToken)
          return refuse(p, "token longer than " + std::to_string(kMaxToken) + " bytes");
        need = sizeof(Hello) + hello.tokenBytes;
        if (p.received.size() >= need) return answer(p, hello);
      }
      char buf[sizeof(Hello) + kMaxToken];
      ssize_t n = p.stream->read(buf, need - p.received.size());
      if (n > 0) {
        p.received.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) throw Disconnected("peer closed during the handshake");
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return nullptr;
      throw Disconnected(os::errnoText("handshake receive", errno));
    }
  }

  std::unique_ptr<Connection> refuse(Pending& p, const std::string& why) {
    Answer a;
    std::snprintf(a.reason, sizeof a.reason, "%s", why.c_str());
    try {
      writeAll(*p.stream, &a, sizeof a, deadlineAfter(std::chrono::milliseconds(100)), p.what);
    } catch (...) {
    }
    throw Failed(why);
  }

  std::unique_ptr<Connection> answer(Pending& p, const Hello& hello) {
    if (hello.version != kHelloVersion)
      return refuse(p, "handshake version " + std::to_string(hello.version) + " not supported");
    std::string_view token(p.received.data() + sizeof(Hello), hello.tokenBytes);
    if (!tokensEqual(token, options_.token)) return refuse(p, "access token does not match");
    if (hello.maxMessageBytes < 64) return refuse(p, "client's maximum message size is below 64 bytes");
    // Both sides send and accept at most the smaller of the two limits.
    uint64_t maxMessage =
        std::min<uint64_t>(hello.maxMessageBytes, options_.connection.maxMessageBytes);
    Answer a;
    a.accepted = 1;
    a.maxMessageBytes = maxMessage;
    setDeadPeerTimeout(p.stream->fd(), options_.deadPeerTimeout);
    writeAll(*p.stream, &a, sizeof a, p.deadline, p.what);
    PeerIdentity peer;
    peer.transport = "tcp";
    peer.address = p.peer;
    peer.tokenVerified = !options_.token.empty();
    if (p.tls) p.tls->session().describePeer(peer);
    return std::make_unique<TcpConnection>(std::move(p.stream), p.what, options_.connection, maxMessage,
                                           options_.deadPeerTimeout, std::move(peer));
  }

  TcpOptions options_;
  std::unique_ptr<tls::Context> tls_;  // when TLS is on: the server's configuration
  os::Fd socket_;
  std::string endpoint_;
  std::vector<Pending> pending_;
  mutable std::mutex mutex_;
  std::deque<std::string> refusals_;
};

}  // namespace

std::unique_ptr<Listener> listenTcp(std::string_view hostPort, const TcpOptions& options) {
  return std::make_unique<TcpListener>(hostPort, options);
}

}  // namespace zcrpc
