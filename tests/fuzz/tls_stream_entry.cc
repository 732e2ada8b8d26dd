// Fuzz target: tcp with TLS on the listener's side (see fuzz_entries.h). Byte 0 bit 0
// chooses what the input is. 0: raw bytes a client sends to a TLS listener instead of
// (or as) its TLS handshake: OpenSSL's record and handshake parsing, and how the listener
// advances and drops handshakes. 1: what a client that completed a valid TLS handshake
// sends inside TLS (Hello, token, frames): the TLS-wrapped stream under the zcrpc
// handshake and the connection.
#include <fcntl.h>
#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <thread>

#include "fuzz_entries.h"
#include "fuzz_util.h"
#include "tls/test_pki.h"
#include "transport/tls/tls.h"
#include "zcrpc/tcp.h"

namespace zcrpc::fuzz {
namespace {

using namespace std::chrono_literals;

constexpr size_t kMaxBytes = 256 << 10;
constexpr char kToken[] = "fuzz-token";

/// Certificates made once per process, at test time (nothing secret is committed).
const test::TestPki& pki() {
  static const test::TestPki p;
  return p;
}

TcpOptions options(bool server) {
  TcpOptions o;
  o.token = kToken;
  o.connection.ringBytes = 64 << 10;
  o.connection.maxMessageBytes = 128 << 10;
  o.connection.maxLeases = 16;
  o.connection.connectTimeout = 2s;
  o.deadPeerTimeout = 0ms;
  o.tls.enabled = true;
  o.tls.caFile = pki().caFile();
  o.tls.reloadInterval = 0ms;
  if (server) {
    o.tls.certFile = pki().server().cert;
    o.tls.keyFile = pki().server().key;
  }
  return o;
}

Listener& listener() {
  static auto l = listenTcp("127.0.0.1:0", options(true));
  return *l;
}

/// The listener's side of one input, on its own thread: accepts until a connection comes
/// (then drains it), the client says it is done, or 3 s pass.
void serve(const std::atomic<bool>& clientDone) {
  std::unique_ptr<Connection> conn;
  for (auto until = Clock::now() + 3s; !conn && !clientDone && Clock::now() < until;)
    conn = listener().accept(deadlineAfter(2ms));
  if (conn) drainMessages(*conn, 50ms);
}

/// Reads what comes back on `read` until the end of the stream, an error or `timeout`.
template <typename Read>
void readToEnd(int fd, Read read, std::chrono::milliseconds timeout) {
  char b[4096];
  for (auto until = Clock::now() + timeout; Clock::now() < until;) {
    ssize_t n = read(b, sizeof b);
    if (n > 0) continue;
    if (n == 0 || errno != EAGAIN) return;
    (void)readableOrClosed(fd, 10ms);
  }
}

void rawClient(std::span<const uint8_t> bytes) {
  std::atomic<bool> done{false};
  std::thread server([&] { serve(done); });
  try {
    os::Fd c = connectLoopbackTcp(portOf(listener().endpoint()));
    writeSome(c.get(), bytes, 1s);
    ::shutdown(c.get(), SHUT_WR);  // nothing more: the listener decides on what came
    ::fcntl(c.get(), F_SETFL, ::fcntl(c.get(), F_GETFL) | O_NONBLOCK);
    readToEnd(c.get(), [&](char* b, size_t n) { return ::recv(c.get(), b, n, 0); }, 2s);
  } catch (const std::exception&) {
  }
  done = true;
  server.join();
}

void clientInsideTls(std::span<const uint8_t> bytes) {
  static const tls::Context context(tls::Side::kClient, options(false).tls, "fuzz client");
  std::atomic<bool> done{false};
  std::thread server([&] { serve(done); });
  try {
    os::Fd c = connectLoopbackTcp(portOf(listener().endpoint()));
    ::fcntl(c.get(), F_SETFL, ::fcntl(c.get(), F_GETFL) | O_NONBLOCK);
    tls::Session session(context, c.get(), "127.0.0.1", "fuzz client");
    session.handshake(deadlineAfter(2s));
    for (auto until = Clock::now() + 1s; !bytes.empty() && Clock::now() < until;) {
      iovec v{const_cast<uint8_t*>(bytes.data()), bytes.size()};
      ssize_t n = session.writev(&v, 1);
      if (n > 0) {
        bytes = bytes.subspan(static_cast<size_t>(n));
        continue;
      }
      if (errno != EAGAIN) break;
      session.flush();
      (void)readableOrClosed(c.get(), 1ms);
    }
    for (auto until = Clock::now() + 1s; !session.flush() && Clock::now() < until;)
      (void)readableOrClosed(c.get(), 1ms);
    session.shutdown();  // close_notify: the end of what this client sends
    readToEnd(c.get(), [&](char* b, size_t n) { return session.read(b, n); }, 2s);
  } catch (const std::exception&) {
    // The handshake failed or timed out: not the finding this target looks for.
  }
  done = true;
  server.join();
}

}  // namespace

void runTlsStreamInput(const uint8_t* data, size_t size) {
  if (size == 0) return;
  std::span<const uint8_t> bytes(data + 1, std::min(size - 1, kMaxBytes));
  if (data[0] & 1) clientInsideTls(bytes);
  else rawClient(bytes);
}

}  // namespace zcrpc::fuzz
