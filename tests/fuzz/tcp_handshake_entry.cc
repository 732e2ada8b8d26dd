// Fuzz target: the tcp handshake from both sides (and, once a connection is made, the
// frames that follow on the stream). See fuzz_entries.h.
#include <sys/socket.h>

#include <memory>
#include <thread>

#include "fuzz_entries.h"
#include "fuzz_util.h"
#include "zcrpc/tcp.h"

namespace zcrpc::fuzz {
namespace {

using namespace std::chrono_literals;

constexpr size_t kMaxBytes = 256 << 10;
constexpr char kToken[] = "fuzz-token";

TcpOptions options() {
  TcpOptions o;
  o.token = kToken;
  o.allowPlaintextToken = true;  // the plain handshake is what is fuzzed here
  o.connection.ringBytes = 64 << 10;
  o.connection.maxMessageBytes = 128 << 10;
  o.connection.maxLeases = 16;
  o.connection.connectTimeout = 2s;
  o.deadPeerTimeout = 0ms;
  return o;
}

/// What a hostile client sends to a listener.
void asClient(std::span<const uint8_t> bytes) {
  static auto listener = listenTcp("127.0.0.1:0", options());
  static const uint16_t port = portOf(listener->endpoint());
  os::Fd c = connectLoopbackTcp(port);
  writeSome(c.get(), bytes, 1s);
  ::shutdown(c.get(), SHUT_WR);  // nothing more: the listener decides on what came
  // The listener answers (accepting or refusing) or hangs up once it has decided; an
  // accepted connection is returned by the same accept() call that answers.
  std::unique_ptr<Connection> conn;
  for (auto until = Clock::now() + 3s; !conn && Clock::now() < until;) {
    conn = listener->accept(deadlineAfter(2ms));
    if (!conn && readableOrClosed(c.get(), 0ms)) break;
  }
  if (conn) drainMessages(*conn, 50ms);
}

/// What a hostile server answers to connectTcp.
void asServer(std::span<const uint8_t> bytes) {
  static uint16_t port = 0;
  static os::Fd listening = listenLoopbackTcp(port);
  std::thread server([&] {
    if (!readableOrClosed(listening.get(), 3000ms)) return;
    os::Fd s(::accept4(listening.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!s) return;
    char hello[64];
    (void)::recv(s.get(), hello, sizeof hello, 0);  // Hello and token (34 bytes)
    writeSome(s.get(), bytes, 1s);
    ::shutdown(s.get(), SHUT_WR);
    // Wait for the client to finish with what it got (or give up on it).
    for (auto until = Clock::now() + 3s; Clock::now() < until;) {
      if (!readableOrClosed(s.get(), 100ms)) continue;
      char b[4096];
      if (::recv(s.get(), b, sizeof b, MSG_DONTWAIT) <= 0) break;
    }
  });
  try {
    auto conn = connectTcp("127.0.0.1:" + std::to_string(port), options());
    drainMessages(*conn, 50ms);
  } catch (const std::exception&) {
    // Refused, malformed, timed out: the expected outcome of most inputs.
  }
  server.join();
}

}  // namespace

void runTcpHandshakeInput(const uint8_t* data, size_t size) {
  if (size == 0) return;
  std::span<const uint8_t> bytes(data + 1, std::min(size - 1, kMaxBytes));
  if (data[0] & 1) asServer(bytes);
  else asClient(bytes);
}

}  // namespace zcrpc::fuzz
