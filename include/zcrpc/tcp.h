// zcrpc — TCP transport (`tcp://host:port`), for hosts that share no memory and have no RDMA.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "zcrpc/tls.h"
#include "zcrpc/transport.h"

namespace zcrpc {

struct TcpOptions {
  /// ringBytes sizes the per-connection receive and send buffers (frames larger than a
  /// quarter of it get a buffer of their own); maxMessageBytes is enforced on every
  /// frame before anything is allocated for it. Wait modes: busy-poll spins on
  /// non-blocking reads; the others spin for spinTime (spin-then-sleep) and then sleep
  /// in poll(). Output the kernel does not take at once (a large message, a slow peer)
  /// stays queued and moves on the connection's next call (send, flush, startMessage, and
  /// tryReceive / receive once no received frame is left to hand out, so answers to
  /// requests that arrived together leave in one write) or when an event loop sleeping on
  /// waitFd() wakes, which it does for writability while output is queued. A sender that
  /// goes fully idle right after send() must keep calling flush() until its peer has it
  /// (the RPC core always waits for the answer, which does this). Queued output beyond
  /// the buffer size makes tryStartMessage() return kWouldBlock.
  ConnectionOptions connection;
  /// TLS 1.3 (see zcrpc/tls.h): with `tls.enabled` the connection starts with a TLS
  /// handshake, and the zcrpc handshake, the token and every frame travel inside it. Both
  /// ends must agree: a TLS listener refuses a plain client and the other way round.
  TlsOptions tls;
  /// Shared access token; empty = none. A client whose token differs is refused before
  /// any call is dispatched (compared in constant time) and the refusal is logged with
  /// its address. It travels inside TLS; over plain tcp it would travel in clear text,
  /// so a listener or client with a token and without TLS refuses to start unless
  /// `allowPlaintextToken` says otherwise.
  std::string token;
  bool allowPlaintextToken = false;
  /// Listener only: connections (handshakes in progress included) it lets live at once;
  /// more are refused with the reason. 0: defaultMaxConnections().
  uint32_t maxConnections = 0;
  /// A peer that goes silent is dropped after about this long: the kernel probes an idle
  /// connection (TCP keepalive, first probe after half of it) and ends the connection,
  /// as it does one whose sent data stays unacknowledged or unsent (the peer's window
  /// closed) this long (TCP_USER_TIMEOUT). A host that vanishes (power lost, link down)
  /// then ends its connections with Disconnected within about this time plus a probe
  /// interval, instead of never while idle or after ~15 minutes of retransmissions. Set
  /// on both sides; 1 s to 24 h, or 0 for the kernel's defaults (no probes).
  std::chrono::milliseconds deadPeerTimeout{30'000};
};

/// Listens on `host:port` (IPv4 or IPv6, `[::1]:0` style for IPv6; port 0 picks an
/// ephemeral port, which endpoint() then reports). Throws Failed / InvalidArgument
/// naming the address.
std::unique_ptr<Listener> listenTcp(std::string_view hostPort, const TcpOptions& options = {});

/// Connects to `host:port` within options.connection.connectTimeout, presenting the
/// token. Throws Failed naming the address and the reason (refused, timed out, bad token).
std::unique_ptr<Connection> connectTcp(std::string_view hostPort, const TcpOptions& options = {});

}  // namespace zcrpc
