// TLS sessions (src/transport/tls) over real loopback tcp sockets: verification of both
// ends, what the peer identity says, data both ways under back-pressure, reloading the
// server's certificate, and clear errors for everything that is refused.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <openssl/ssl.h>

#include "os/os.h"
#include "tls/test_pki.h"
#include "transport/tls/tls.h"

namespace zcrpc::tls {
namespace {

using namespace std::chrono_literals;
using test::TestPki;

/// A connected pair of non-blocking loopback tcp sockets.
struct SocketPair {
  os::Fd client, server;
};

SocketPair tcpPair() {
  os::Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::listen(listener.get(), 1), 0);
  socklen_t len = sizeof a;
  ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &len);
  SocketPair p;
  p.client = os::Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(::connect(p.client.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  p.server = os::Fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  for (int fd : {p.client.get(), p.server.get()}) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return p;
}

TlsOptions serverOptions(const TestPki& pki) {
  TlsOptions o;
  o.enabled = true;
  o.certFile = pki.server().cert;
  o.keyFile = pki.server().key;
  return o;
}

TlsOptions clientOptions(const TestPki& pki) {
  TlsOptions o;
  o.enabled = true;
  o.caFile = pki.caFile();
  return o;
}

/// Runs both handshakes to the end (or the first failure) on one thread, as the
/// listener's state machine and a client would. Returns the client's and server's
/// failure, empty when it succeeded.
std::pair<std::string, std::string> handshakeBoth(Session& client, Session& server) {
  std::string clientError, serverError;
  bool clientDone = false, serverDone = false;
  auto until = std::chrono::steady_clock::now() + 5s;
  while ((!clientDone || !serverDone) && std::chrono::steady_clock::now() < until) {
    if (!clientDone && clientError.empty()) {
      try {
        clientDone = client.handshake() == Session::Progress::kDone;
      } catch (const Failed& e) {
        clientError = e.what();
      }
    }
    if (!serverDone && serverError.empty()) {
      try {
        serverDone = server.handshake() == Session::Progress::kDone;
      } catch (const Failed& e) {
        serverError = e.what();
      }
    }
    if ((!clientError.empty() || clientDone) && (!serverError.empty() || serverDone)) break;
    std::this_thread::sleep_for(1ms);
  }
  return {clientError, serverError};
}

struct Pair {
  Pair(const Context& clientCtx, const Context& serverCtx, std::string_view name = "localhost")
      : sockets(tcpPair()),
        client(clientCtx, sockets.client.get(), name, "test client"),
        server(serverCtx, sockets.server.get(), "", "test server") {}
  SocketPair sockets;
  Session client;
  Session server;
};

/// Moves `data` from `from` to `to` with both non-blocking, in writev pieces shaped by
/// `pieces`; returns what arrived.
std::vector<char> transfer(Session& from, Session& to, const std::vector<char>& data,
                           const std::vector<size_t>& pieces) {
  std::vector<char> got;
  got.reserve(data.size());
  size_t sent = 0, piece = 0;
  char buf[7919];  // odd on purpose: records never line up with reads
  auto until = std::chrono::steady_clock::now() + 20s;
  while (got.size() < data.size() && std::chrono::steady_clock::now() < until) {
    if (sent < data.size()) {
      std::vector<iovec> iov;
      size_t at = sent;
      for (int k = 0; k < 5 && at < data.size(); ++k) {
        size_t n = std::min(pieces[piece++ % pieces.size()], data.size() - at);
        iov.push_back({const_cast<char*>(data.data() + at), n});
        at += n;
      }
      ssize_t n = from.writev(iov.data(), static_cast<int>(iov.size()));
      if (n > 0) sent += static_cast<size_t>(n);
      else EXPECT_EQ(errno, EAGAIN) << from.error();
    } else {
      from.flush();
    }
    ssize_t r = to.read(buf, sizeof buf);
    if (r > 0) got.insert(got.end(), buf, buf + r);
    else if (r < 0) EXPECT_EQ(errno, EAGAIN) << to.error();
    else ADD_FAILURE() << "unexpected end of stream";
  }
  return got;
}

std::vector<char> pattern(size_t n, unsigned seed) {
  std::vector<char> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<char>((i * 131 + seed * 7 + (i >> 11)) & 0xff);
  return v;
}

TEST(TlsSession, ClientVerifiesTheServerAndBytesFlowBothWays) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair p(clientCtx, serverCtx);
  auto [ce, se] = handshakeBoth(p.client, p.server);
  ASSERT_EQ(ce, "");
  ASSERT_EQ(se, "");

  PeerIdentity seenByClient, seenByServer;
  p.client.describePeer(seenByClient);
  p.server.describePeer(seenByServer);
  EXPECT_EQ(seenByClient.tlsProtocol, "TLSv1.3");
  EXPECT_EQ(seenByClient.tlsCipher, "TLS_AES_128_GCM_SHA256");
  EXPECT_EQ(seenByClient.certificateSubject, "CN=zcrpc-test-server,O=zcrpc tests");
  EXPECT_NE(std::find(seenByClient.certificateNames.begin(), seenByClient.certificateNames.end(),
                      "DNS:localhost"),
            seenByClient.certificateNames.end());
  EXPECT_EQ(seenByServer.tlsProtocol, "TLSv1.3");
  EXPECT_FALSE(seenByServer.hasCertificate());  // nobody asked the client for one

  auto up = pattern(3 << 20, 1), down = pattern(1 << 20, 2);
  EXPECT_TRUE(transfer(p.client, p.server, up, {32, 100, 24, 70000, 8, 1 << 20}) == up);
  EXPECT_TRUE(transfer(p.server, p.client, down, {1, 2, 3, 5000, 65536}) == down);
}

TEST(TlsSession, ServerAsksForAClientCertificateAndSeesItsNames) {
  TestPki pki;
  TlsOptions so = serverOptions(pki);
  so.caFile = pki.caFile();
  so.clientAuth = ClientAuth::kRequired;
  TlsOptions co = clientOptions(pki);
  co.certFile = pki.client().cert;
  co.keyFile = pki.client().key;
  Context serverCtx(Side::kServer, so, "server");
  Context clientCtx(Side::kClient, co, "client");
  Pair p(clientCtx, serverCtx, "127.0.0.1");  // verified against the IP SAN
  auto [ce, se] = handshakeBoth(p.client, p.server);
  ASSERT_EQ(ce, "");
  ASSERT_EQ(se, "");
  PeerIdentity id;
  p.server.describePeer(id);
  EXPECT_EQ(id.certificateSubject, "CN=zcrpc-test-client,O=zcrpc tests");
  ASSERT_EQ(id.certificateNames.size(), 1u);
  EXPECT_EQ(id.certificateNames[0], "URI:spiffe://zcrpc.test/client");
}

TEST(TlsSession, ClientRefusesAServerCertificateForAnotherName) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair p(clientCtx, serverCtx, "db7.example.com");
  auto [ce, se] = handshakeBoth(p.client, p.server);
  EXPECT_NE(ce.find("certificate verification failed: hostname mismatch"), std::string::npos) << ce;
  EXPECT_NE(se, "");  // the server learns of it through the client's alert
}

TEST(TlsSession, ClientRefusesAServerSignedByAnotherCa) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  TlsOptions co = clientOptions(pki);
  co.caFile = pki.otherCaFile();
  Context clientCtx(Side::kClient, co, "client");
  Pair p(clientCtx, serverCtx);
  auto [ce, se] = handshakeBoth(p.client, p.server);
  EXPECT_NE(ce.find("certificate verification failed: unable to get local issuer certificate"),
            std::string::npos)
      << ce;
}

TEST(TlsSession, ClientRefusesAnExpiredServerCertificate) {
  TestPki pki;
  auto expired = pki.issue("expired", {"old-server", {"DNS:localhost"}, -20, -10});
  TlsOptions so = serverOptions(pki);
  so.certFile = expired.cert;
  so.keyFile = expired.key;
  Context serverCtx(Side::kServer, so, "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair p(clientCtx, serverCtx);
  auto [ce, se] = handshakeBoth(p.client, p.server);
  EXPECT_NE(ce.find("certificate has expired"), std::string::npos) << ce;
}

TEST(TlsSession, ServerRefusesAClientWithoutCertificateWhenOneIsRequired) {
  TestPki pki;
  TlsOptions so = serverOptions(pki);
  so.caFile = pki.caFile();
  so.clientAuth = ClientAuth::kRequired;
  Context serverCtx(Side::kServer, so, "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair p(clientCtx, serverCtx);
  auto [ce, se] = handshakeBoth(p.client, p.server);
  EXPECT_NE(se.find("peer did not return a certificate"), std::string::npos) << se;
  // TLS 1.3: the client has finished its side before the server's verdict; it learns
  // of it from the alert on its first read.
  if (ce.empty()) {
    char b[16];
    ssize_t r = p.client.read(b, sizeof b);
    for (int i = 0; i < 500 && r < 0 && errno == EAGAIN; ++i) {
      std::this_thread::sleep_for(1ms);
      r = p.client.read(b, sizeof b);
    }
    EXPECT_LE(r, 0) << errno;
    EXPECT_NE(p.client.error().find("certificate required"), std::string::npos)
        << p.client.error() << " r=" << r << " errno=" << errno;
  }
}

TEST(TlsSession, ServerAdmitsAClientWithoutCertificateWhenItIsOptional) {
  TestPki pki;
  TlsOptions so = serverOptions(pki);
  so.caFile = pki.caFile();
  so.clientAuth = ClientAuth::kOptional;
  Context serverCtx(Side::kServer, so, "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair p(clientCtx, serverCtx);
  auto [ce, se] = handshakeBoth(p.client, p.server);
  EXPECT_EQ(ce, "");
  EXPECT_EQ(se, "");
  PeerIdentity id;
  p.server.describePeer(id);
  EXPECT_FALSE(id.hasCertificate());
}

TEST(TlsSession, ServerRefusesAClientCertificateFromAnotherCa) {
  TestPki pki;
  TlsOptions so = serverOptions(pki);
  so.caFile = pki.caFile();
  so.clientAuth = ClientAuth::kOptional;  // optional, yet a bad one is refused
  TlsOptions co = clientOptions(pki);
  co.certFile = pki.otherClient().cert;
  co.keyFile = pki.otherClient().key;
  Context serverCtx(Side::kServer, so, "server");
  Context clientCtx(Side::kClient, co, "client");
  Pair p(clientCtx, serverCtx);
  auto [ce, se] = handshakeBoth(p.client, p.server);
  EXPECT_NE(se.find("certificate verification failed"), std::string::npos) << se;
}

TEST(TlsSession, OnlyTls13IsSpoken) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  auto sockets = tcpPair();
  Session server(serverCtx, sockets.server.get(), "", "test server");
  // A client that offers TLS 1.2 at most.
  SSL_CTX* old = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_max_proto_version(old, TLS1_2_VERSION);
  SSL_CTX_set_verify(old, SSL_VERIFY_NONE, nullptr);
  SSL* ssl = SSL_new(old);
  SSL_set_fd(ssl, sockets.client.get());
  std::string serverError;
  for (int i = 0; i < 2000 && serverError.empty(); ++i) {
    (void)SSL_connect(ssl);
    try {
      if (server.handshake() == Session::Progress::kDone) break;
    } catch (const Failed& e) {
      serverError = e.what();
    }
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_NE(serverError.find("unsupported protocol"), std::string::npos) << serverError;
  SSL_free(ssl);
  SSL_CTX_free(old);
}

TEST(TlsSession, GarbageInsteadOfAHandshakeIsRefusedWithTheReason) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  auto sockets = tcpPair();
  Session server(serverCtx, sockets.server.get(), "", "test server");
  const char hello[] = "tzcrcp1\0 this is the plain tcp handshake, not TLS";
  ASSERT_GT(::send(sockets.client.get(), hello, sizeof hello, 0), 0);
  std::string error;
  for (int i = 0; i < 2000 && error.empty(); ++i) {
    try {
      if (server.handshake() == Session::Progress::kDone) break;
    } catch (const Failed& e) {
      error = e.what();
    }
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_NE(error.find("TLS handshake failed"), std::string::npos) << error;
}

TEST(TlsSession, PeerClosingDuringTheHandshakeIsNamed) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  auto sockets = tcpPair();
  Session server(serverCtx, sockets.server.get(), "", "test server");
  sockets.client.reset();
  std::string error;
  for (int i = 0; i < 2000 && error.empty(); ++i) {
    try {
      (void)server.handshake();
    } catch (const Failed& e) {
      error = e.what();
    }
  }
  EXPECT_NE(error.find("closed the connection during the TLS handshake"), std::string::npos) << error;
}

TEST(TlsSession, SettingsThatDoNotFitAreRefusedNamingTheSetting) {
  TestPki pki;
  TlsOptions none;
  none.enabled = true;
  try {
    Context c(Side::kServer, none, "tcp://0.0.0.0:1");
    FAIL() << "a server without a certificate was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("tls_cert_file"), std::string::npos) << e.what();
  }
  TlsOptions noCa = serverOptions(pki);
  noCa.clientAuth = ClientAuth::kRequired;
  EXPECT_THROW(Context(Side::kServer, noCa, "s"), InvalidArgument);
  TlsOptions missing = serverOptions(pki);
  missing.certFile = pki.dir() + "/nowhere.pem";
  try {
    Context c(Side::kServer, missing, "s");
    FAIL();
  } catch (const Failed& e) {
    EXPECT_NE(std::string(e.what()).find("nowhere.pem"), std::string::npos) << e.what();
  }
  TlsOptions mismatch = serverOptions(pki);
  mismatch.keyFile = pki.client().key;
  try {
    Context c(Side::kServer, mismatch, "s");
    FAIL();
  } catch (const Failed& e) {
    EXPECT_NE(std::string(e.what()).find("does not belong"), std::string::npos) << e.what();
  }
  TlsOptions suites = clientOptions(pki);
  suites.ciphersuites = "TLS_NO_SUCH_SUITE";
  EXPECT_THROW(Context(Side::kClient, suites, "c"), Failed);
}

TEST(TlsSession, ReloadServesTheNewCertificateToNewSessionsOnly) {
  TestPki pki;
  auto first = pki.issue("rotating", {"first", {"DNS:localhost"}});
  TlsOptions so = serverOptions(pki);
  so.certFile = first.cert;
  so.keyFile = first.key;
  so.reloadInterval = 1ms;
  Context serverCtx(Side::kServer, so, "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair before(clientCtx, serverCtx);
  ASSERT_EQ(handshakeBoth(before.client, before.server).first, "");

  EXPECT_EQ(serverCtx.reloadIfChanged(), "");  // nothing changed: nothing done
  EXPECT_EQ(serverCtx.loads(), 1u);
  pki.issue("rotating", {"second", {"DNS:localhost"}});
  std::this_thread::sleep_for(2ms);
  EXPECT_EQ(serverCtx.reloadIfChanged(), "");
  EXPECT_EQ(serverCtx.loads(), 2u);

  Pair after(clientCtx, serverCtx);
  ASSERT_EQ(handshakeBoth(after.client, after.server).first, "");
  PeerIdentity oldId, newId;
  before.client.describePeer(oldId);
  after.client.describePeer(newId);
  EXPECT_EQ(oldId.certificateSubject, "CN=first,O=zcrpc tests");
  EXPECT_EQ(newId.certificateSubject, "CN=second,O=zcrpc tests");
  // The old session goes on working with what it started with.
  auto data = pattern(100000, 3);
  EXPECT_TRUE(transfer(before.client, before.server, data, {4096}) == data);

  // A broken file does not take the server down: the reload fails, the old one stays.
  {
    FILE* f = std::fopen(first.cert.c_str(), "w");
    std::fputs("-----BEGIN CERTIFICATE-----\nnot base64\n", f);
    std::fclose(f);
  }
  std::this_thread::sleep_for(2ms);
  std::string why = serverCtx.reloadIfChanged();
  EXPECT_NE(why.find("rotating.pem"), std::string::npos) << why;
  EXPECT_EQ(serverCtx.loads(), 2u);
  Pair still(clientCtx, serverCtx);
  ASSERT_EQ(handshakeBoth(still.client, still.server).first, "");
}

TEST(TlsSession, OneThreadReadsWhileAnotherWrites) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair p(clientCtx, serverCtx);
  ASSERT_EQ(handshakeBoth(p.client, p.server).first, "");
  // Full duplex: each side writes from one thread and reads on another at once.
  const auto up = pattern(2 << 20, 4), down = pattern(2 << 20, 5);
  auto writer = [](Session& s, const std::vector<char>& data) {
    size_t sent = 0;
    auto until = std::chrono::steady_clock::now() + 20s;
    while (sent < data.size() && std::chrono::steady_clock::now() < until) {
      iovec iov{const_cast<char*>(data.data() + sent), std::min<size_t>(50000, data.size() - sent)};
      ssize_t n = s.writev(&iov, 1);
      if (n > 0) sent += static_cast<size_t>(n);
      else std::this_thread::yield();
    }
    while (!s.flush() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  };
  auto reader = [](Session& s, size_t want, std::vector<char>& got) {
    char buf[16384];
    auto until = std::chrono::steady_clock::now() + 20s;
    while (got.size() < want && std::chrono::steady_clock::now() < until) {
      ssize_t n = s.read(buf, sizeof buf);
      if (n > 0) got.insert(got.end(), buf, buf + n);
      else std::this_thread::yield();
    }
  };
  std::vector<char> atServer, atClient;
  std::thread t1(writer, std::ref(p.client), std::cref(up));
  std::thread t2(writer, std::ref(p.server), std::cref(down));
  std::thread t3(reader, std::ref(p.server), up.size(), std::ref(atServer));
  std::thread t4(reader, std::ref(p.client), down.size(), std::ref(atClient));
  t1.join(), t2.join(), t3.join(), t4.join();
  EXPECT_TRUE(atServer == up);
  EXPECT_TRUE(atClient == down);
}

TEST(TlsSession, CloseNotifyEndsTheStream) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair p(clientCtx, serverCtx);
  ASSERT_EQ(handshakeBoth(p.client, p.server).first, "");
  p.client.shutdown();
  char b[8];
  ssize_t r = -1;
  for (int i = 0; i < 1000 && r < 0; ++i, std::this_thread::sleep_for(1ms)) r = p.server.read(b, sizeof b);
  EXPECT_EQ(r, 0);
}

TEST(TlsSession, WritesStopAtTheOutputLimitWhileThePeerDoesNotRead) {
  TestPki pki;
  Context serverCtx(Side::kServer, serverOptions(pki), "server");
  Context clientCtx(Side::kClient, clientOptions(pki), "client");
  Pair p(clientCtx, serverCtx);
  ASSERT_EQ(handshakeBoth(p.client, p.server).first, "");
  auto data = pattern(1 << 20, 6);
  size_t sent = 0;
  int refused = 0;
  for (int i = 0; i < 400 && refused < 3; ++i) {
    iovec iov{data.data(), data.size()};
    ssize_t n = p.client.writev(&iov, 1);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else {
      ++refused;
      EXPECT_EQ(errno, EAGAIN);
    }
  }
  EXPECT_EQ(refused, 3);  // the peer does not read: it stops taking, it never fails
  EXPECT_LE(p.client.pendingOutputBytes(), Session::kOutputLimit + (64 << 10) + 4096);
  EXPECT_GT(sent, 0u);
}

}  // namespace
}  // namespace zcrpc::tls
