// TLS on the tcp transport, end to end: what crosses the wire (the token only inside
// TLS), mutual TLS and the peer identity a handler sees, refusals and their reasons on
// both ends, certificate reload without a restart, and the settings that turn it on.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "conformance/support.h"
#include "tls/test_pki.h"
#include "transport/tcp/tcp_setup.h"
#include "transport/token.h"
#include "zcrpc/config.h"
#include "zcrpc/context.h"
#include "zcrpc/rpc.h"
#include "zcrpc/tcp.h"

namespace zcrpc::conformance {
namespace {

using namespace std::chrono_literals;
using test::TestPki;

/// Forwards one client's bytes to `port` and back, keeping a copy of what the client sent:
/// what an eavesdropper on the wire would read.
class WireTap final {
 public:
  explicit WireTap(uint16_t target) {
    listen_ = OwnedFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_.get(), 1) != 0 ||
        ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("tap: listen failed");
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this, target] { run(target); });
  }
  ~WireTap() {
    stop_ = true;
    thread_.join();
  }
  uint16_t port() const { return port_; }
  std::string clientBytes() {
    std::lock_guard lock(mutex_);
    return seen_;
  }

 private:
  void run(uint16_t target) {
    pollfd lp{listen_.get(), POLLIN, 0};
    if (::poll(&lp, 1, 5000) <= 0) return;
    OwnedFd client(::accept(listen_.get(), nullptr, nullptr));
    OwnedFd server = rawConnect(target);
    if (!client || !server) return;
    char buf[65536];
    for (auto until = Clock::now() + 20s; !stop_ && Clock::now() < until;) {
      pollfd fds[2] = {{client.get(), POLLIN, 0}, {server.get(), POLLIN, 0}};
      if (::poll(fds, 2, 20) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, 0);
        if (n <= 0) return;
        if (i == 0) {
          std::lock_guard lock(mutex_);
          seen_.append(buf, static_cast<size_t>(n));
        }
        if (!writeExactly(fds[1 - i].fd, buf, static_cast<size_t>(n))) return;
      }
    }
  }

  OwnedFd listen_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::string seen_;
  std::thread thread_;
};

/// Records who called, as the handler sees it.
class WhoService final : public Service {
 public:
  std::span<const uint64_t> interfaceIds() const noexcept override { return ids_; }
  bool dispatch(uint64_t interfaceId, uint16_t, CallContext& context) override {
    if (interfaceId != kEchoInterface) return false;
    {
      std::lock_guard lock(mutex_);
      last_ = context.peer();
    }
    context.response().initRoot<bench::Payload>().setSeq(7);
    return true;
  }
  PeerIdentity last() {
    std::lock_guard lock(mutex_);
    return last_;
  }

 private:
  const uint64_t ids_[1] = {kEchoInterface};
  std::mutex mutex_;
  PeerIdentity last_;
};

TcpOptions clientTls(const TestPki& pki) {
  TcpOptions o;
  o.connection = tlsTransport().options;
  o.connection.connectTimeout = 3000ms;
  o.tls.enabled = true;
  o.tls.caFile = pki.caFile();
  return o;
}

/// As clientTls(), with the server's certificate and key.
TcpOptions serverTls(const TestPki& pki) {
  TcpOptions o = clientTls(pki);
  o.tls.certFile = pki.server().cert;
  o.tls.keyFile = pki.server().key;
  return o;
}

/// A Server with `service` behind one tcp listener.
struct RunningServer {
  RunningServer(Service& service, const TcpOptions& options) : server(ServerOptions{}) {
    server.addService(service);
    auto l = listenTcp("127.0.0.1:0", options);
    endpoint = l->endpoint();
    port = portOf(endpoint);
    server.addListener(std::move(l));
    server.start();
  }
  Server server;
  std::string endpoint;
  uint16_t port = 0;
};

bool callWorks(std::unique_ptr<Connection> c) {
  Channel channel(std::move(c));
  auto req = channel.newRequest(kEchoInterface, kEcho, 8);
  req.message().initRoot<bench::Payload>().setSeq(1);
  try {
    auto resp = req.call();
    return resp.getRoot<bench::Payload>().getSeq() == 7;
  } catch (const std::exception&) {
    return false;
  }
}

std::string connectError(const std::string& hostPort, const TcpOptions& options) {
  try {
    connectTcp(hostPort, options);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

/// The token's comparisons (tcp: tokensEqual; rdma: the proof in the connection request).
TEST(Token, EqualityAndProofsDependOnEveryByte) {
  EXPECT_TRUE(tokensEqual("s3cret", "s3cret"));
  EXPECT_FALSE(tokensEqual("s3cret", "s3creT"));
  EXPECT_FALSE(tokensEqual("s3cret", "s3cret "));
  EXPECT_FALSE(tokensEqual("", "x"));
  const TokenProof p = tokenProof("s3cret");
  EXPECT_EQ(p, tokenProof("s3cret"));
  EXPECT_NE(p, tokenProof("s3creT"));
  EXPECT_NE(p, tokenProof(""));
  EXPECT_TRUE(proofMatches(p, "s3cret"));
  EXPECT_FALSE(proofMatches(p, "s3cret2"));
  for (size_t i = 0; i < p.size(); ++i) {
    TokenProof q = p;
    q[i] ^= 1;
    EXPECT_FALSE(proofMatches(q, "s3cret")) << "byte " << i;
  }
  // The proof does not carry the token's bytes.
  EXPECT_NE(std::string(reinterpret_cast<const char*>(p.data()), 6), "s3cret");
}

/// /proc/net/tls_stat's counter `name` (kernel TLS), or -1 when the kernel has none.
int64_t tlsStat(const std::string& name) {
  std::ifstream in("/proc/net/tls_stat");
  if (!in) return -1;
  std::string key;
  int64_t value = 0;
  while (in >> key >> value)
    if (key == name) return value;
  return -1;
}

/// Kernel TLS where the kernel has it (Debian's tls module; tests/tls/ktls_vm.sh runs this
/// in a qemu guest that loads it): after the handshake both ends hand their send keys to
/// the kernel, which encrypts what zcrpc writes from the message segments (no user-space
/// copy), and echo calls of every size still arrive intact. Without the
/// module it is skipped with the reason; ZCRPC_EXPECT_KTLS=1 makes that a failure.
TEST(TlsTcp, KernelTlsEncryptsWhatIsSentWhereTheKernelHasIt) {
  const char* expect = std::getenv("ZCRPC_EXPECT_KTLS");
  const bool mustHave = expect && std::string(expect) == "1";
  if (tlsStat("TlsTxSw") < 0) {
    if (mustHave) FAIL() << "ZCRPC_EXPECT_KTLS=1 but /proc/net/tls_stat is missing (tls module not loaded)";
    GTEST_SKIP() << "no kernel TLS on this kernel (/proc/net/tls_stat is missing: the tls module is not loaded)";
  }
  const int64_t before = tlsStat("TlsTxSw");
  TestPki pki;
  EchoService echo;
  RunningServer s(echo, serverTls(pki));
  auto conn = connectTcp(s.endpoint, clientTls(pki));
  const PeerIdentity peer = conn->peer();
  EXPECT_TRUE(peer.kernelTlsSend) << peer.describe();
  EXPECT_EQ(peer.tlsProtocol, "TLSv1.3");
  Channel channel(std::move(conn));
  uint64_t seq = 1;
  for (size_t size : {size_t{64}, size_t{4096}, size_t{65536}, size_t{1} << 20, size_t{4} << 20})
    EXPECT_TRUE(echoCall(channel, seq++, size, 20s)) << size << " bytes";
  // Both ends' sessions went to the kernel for sending.
  EXPECT_GE(tlsStat("TlsTxSw") - before, 2) << "TlsTxSw before " << before;
}

TEST(TlsTcp, TheTokenCrossesTheWireOnlyInsideTls) {
  TestPki pki;
  const std::string token = "s3cret-t0ken-zcrpc";
  WhoService who;
  // Plain tcp, allowed explicitly: the tap reads the token byte for byte.
  TcpOptions plain;
  plain.connection = tlsTransport().options;
  plain.token = token;
  plain.allowPlaintextToken = true;
  RunningServer clear(who, plain);
  {
    WireTap tap(clear.port);
    EXPECT_TRUE(callWorks(connectTcp("127.0.0.1:" + std::to_string(tap.port()), plain)));
    EXPECT_NE(tap.clientBytes().find(token), std::string::npos) << "the tap saw nothing";
  }
  // TLS: the same call works and the token is nowhere on the wire.
  TcpOptions so = serverTls(pki), co = clientTls(pki);
  so.token = co.token = token;
  RunningServer secure(who, so);
  WireTap tap(secure.port);
  EXPECT_TRUE(callWorks(connectTcp("127.0.0.1:" + std::to_string(tap.port()), co)));
  std::string wire = tap.clientBytes();
  EXPECT_GT(wire.size(), 200u);
  EXPECT_EQ(wire.find(token), std::string::npos) << "the token crossed the wire in clear text";
  EXPECT_EQ(wire.find("tzcrcp1"), std::string::npos) << "the zcrpc handshake crossed in clear text";
  EXPECT_TRUE(who.last().tokenVerified);
}

TEST(TlsTcp, ATokenWithoutTlsIsRefusedUnlessPlainTextIsAllowed) {
  TcpOptions o;
  o.token = "abc";
  try {
    listenTcp("127.0.0.1:0", o);
    FAIL() << "a plain tcp listener with a token started";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("allow_plaintext_token"), std::string::npos) << e.what();
  }
  std::string error = connectError("127.0.0.1:1", o);
  EXPECT_NE(error.find("clear text"), std::string::npos) << error;
  o.allowPlaintextToken = true;
  EXPECT_NO_THROW(listenTcp("127.0.0.1:0", o));
}

TEST(TlsTcp, AWrongTokenInsideTlsIsRefusedWithTheReason) {
  TestPki pki;
  WhoService who;
  TcpOptions so = serverTls(pki), co = clientTls(pki);
  so.token = "right";
  co.token = "wrong";
  RunningServer server(who, so);
  std::string error = connectError(server.endpoint, co);
  EXPECT_NE(error.find("access token does not match"), std::string::npos) << error;
}

TEST(TlsTcp, MutualTlsGivesTheHandlerTheClientsCertificate) {
  TestPki pki;
  WhoService who;
  TcpOptions so = serverTls(pki), co = clientTls(pki);
  so.tls.clientAuth = ClientAuth::kRequired;
  co.tls.certFile = pki.client().cert;
  co.tls.keyFile = pki.client().key;
  RunningServer server(who, so);
  auto conn = connectTcp(server.endpoint, co);
  // The client knows whom it talks to.
  EXPECT_EQ(conn->peer().tlsProtocol, "TLSv1.3");
  EXPECT_EQ(conn->peer().certificateSubject, "CN=zcrpc-test-server,O=zcrpc tests");
  ASSERT_TRUE(callWorks(std::move(conn)));
  // And the handler knows who called.
  PeerIdentity id = who.last();
  EXPECT_EQ(id.transport, "tcp");
  EXPECT_EQ(id.certificateSubject, "CN=zcrpc-test-client,O=zcrpc tests");
  ASSERT_EQ(id.certificateNames.size(), 1u);
  EXPECT_EQ(id.certificateNames[0], "URI:spiffe://zcrpc.test/client");
  EXPECT_NE(id.describe().find("certificate CN=zcrpc-test-client"), std::string::npos) << id.describe();
}

TEST(TlsTcp, AClientWithoutTheRequiredCertificateIsToldWhy) {
  TestPki pki;
  WhoService who;
  TcpOptions so = serverTls(pki);
  so.tls.clientAuth = ClientAuth::kRequired;
  RunningServer server(who, so);
  std::string error = connectError(server.endpoint, clientTls(pki));
  EXPECT_NE(error.find("certificate required"), std::string::npos) << error;
}

TEST(TlsTcp, AClientRefusesAServerItCannotVerify) {
  TestPki pki;
  WhoService who;
  RunningServer server(who, serverTls(pki));
  TcpOptions co = clientTls(pki);
  co.tls.caFile = pki.otherCaFile();
  std::string error = connectError(server.endpoint, co);
  EXPECT_NE(error.find("certificate verification failed"), std::string::npos) << error;
  co = clientTls(pki);
  co.tls.serverName = "billing.example.com";
  error = connectError(server.endpoint, co);
  EXPECT_NE(error.find("hostname mismatch"), std::string::npos) << error;
}

TEST(TlsTcp, APlainClientWhoseHelloComesLateStillGetsTheReason) {
  // The listener must not start its TLS handshake before the first bytes tell a plain
  // Hello from a ClientHello: here they come 50 ms after the connection, in two pieces
  // (a handshake started early reads them as a bad TLS record and drops the client).
  TestPki pki;
  WhoService who;
  RunningServer secure(who, serverTls(pki));
  OwnedFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(secure.port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const uint64_t magic = tcp::kHelloMagic;
  std::this_thread::sleep_for(50ms);
  ASSERT_EQ(::send(fd.get(), &magic, 3, MSG_NOSIGNAL), 3);
  std::this_thread::sleep_for(50ms);
  ASSERT_EQ(::send(fd.get(), reinterpret_cast<const char*>(&magic) + 3, 5, MSG_NOSIGNAL), 5);
  std::string answer;
  char buf[512];
  pollfd pfd{fd.get(), POLLIN, 0};
  while (answer.find("speaks TLS") == std::string::npos && ::poll(&pfd, 1, 3000) > 0) {
    const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  EXPECT_NE(answer.find("this listener speaks TLS"), std::string::npos)
      << "the listener answered " << answer.size() << " bytes";
}

TEST(TlsTcp, PlainAndTlsEndsThatMeetAreRefusedWithTheReason) {
  TestPki pki;
  WhoService who;
  RunningServer secure(who, serverTls(pki));
  TcpOptions plain;
  plain.connection = tlsTransport().options;
  plain.connection.connectTimeout = 3000ms;
  std::string error = connectError(secure.endpoint, plain);
  EXPECT_NE(error.find("TLS"), std::string::npos) << error;

  auto listener = listenTcp("127.0.0.1:0", plain);
  std::string endpoint = listener->endpoint();
  std::thread acceptor([&] { (void)listener->accept(deadlineAfter(3s)); });
  error = connectError(endpoint, clientTls(pki));
  acceptor.join();
  EXPECT_NE(error, "");
  auto refusals = listener->refusals();
  ASSERT_FALSE(refusals.empty());
  EXPECT_NE(refusals.back().find("client started a TLS handshake, but TLS is off"), std::string::npos)
      << refusals.back();
}

TEST(TlsTcp, ANewCertificateIsServedWithoutARestart) {
  TestPki pki;
  auto first = pki.issue("rotating", {"before", {"DNS:localhost", "IP:127.0.0.1"}});
  WhoService who;
  TcpOptions so = serverTls(pki);
  so.tls.certFile = first.cert;
  so.tls.keyFile = first.key;
  so.tls.reloadInterval = 1ms;
  RunningServer server(who, so);
  auto before = connectTcp(server.endpoint, clientTls(pki));
  EXPECT_EQ(before->peer().certificateSubject, "CN=before,O=zcrpc tests");
  pki.issue("rotating", {"after", {"DNS:localhost", "IP:127.0.0.1"}});
  std::this_thread::sleep_for(5ms);
  auto after = connectTcp(server.endpoint, clientTls(pki));
  EXPECT_EQ(after->peer().certificateSubject, "CN=after,O=zcrpc tests");
  EXPECT_TRUE(callWorks(std::move(before)));  // the old connection goes on
  EXPECT_TRUE(callWorks(std::move(after)));
}

TEST(TlsTcp, SettingsAndEndpointQueriesTurnItOn) {
  TestPki pki;
  Config config;
  config.set("tls_cert_file", pki.server().cert, SettingSource::kCode, "test");
  config.set("tls_key_file", pki.server().key, SettingSource::kCode, "test");
  config.set("tls_ca_file", pki.caFile(), SettingSource::kCode, "test");
  config.set("token", "from-settings", SettingSource::kCode, "test");
  Context context(config);
  WhoService who;
  Server server(ServerOptions{});
  server.addService(who);
  auto l = context.listen("tcp://127.0.0.1:0?tls=on");
  std::string endpoint = l->endpoint();
  server.addListener(std::move(l));
  server.start();
  EXPECT_TRUE(callWorks(context.connect(endpoint + "?tls=on")));
  EXPECT_TRUE(who.last().tokenVerified);
  EXPECT_EQ(who.last().tlsProtocol, "TLSv1.3");
  // Without tls=on the token would go in clear: refused before anything is sent.
  EXPECT_THROW(context.connect(endpoint), Failed);
}

}  // namespace
}  // namespace zcrpc::conformance
