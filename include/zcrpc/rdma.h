// zcrpc — RDMA transport (`rdma://host:port`) over libibverbs RC queue pairs, set up with
// librdmacm. Present only in builds where meson found libibverbs and librdmacm
// (`-Drdma=auto|enabled`); see docs/rdma.md for the protocol.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "zcrpc/transport.h"

namespace zcrpc {

struct RdmaOptions {
  /// ringBytes sizes the receive ring the peer writes into and the local send buffer
  /// (both registered). A message whose frame exceeds a quarter of the ring travels in
  /// fragments and is reassembled in a buffer of its own on receipt (one copy); smaller
  /// ones are read in place in the ring. Wait modes: busy-poll spins on the completion
  /// queue; blocking sleeps on the completion channel (ibv_req_notify_cq); spin-then-sleep
  /// spins for spinTime and then sleeps. arenaBytes is not used.
  ConnectionOptions connection;
  /// RDMA device to use, e.g. "mlx5_0" or "rxe0". Empty: the one the address routes to.
  /// When set, a client binds to that device's IPv4 address (its RoCE v2 GID), so the
  /// device really is the one used; a listener refuses connections arriving elsewhere.
  std::string device;
  /// Port of the device (1-based). Checked against the port the route uses.
  int port = 1;
  /// GID table index; -1 picks the GID librdmacm resolved from the address (for RoCE v2
  /// the IPv4-mapped GID). When set, the resolved GID must be the one at this index.
  int gidIndex = -1;
  /// Access token (empty: none). A listener with one refuses, with the reason and before
  /// any queue pair exists for it, every client whose connection request does not prove
  /// the same token; a client sends that proof (16 bytes of a SHA-256 of the token, not
  /// the token: see docs/security.md, rdma traffic is not encrypted).
  std::string token;
};

/// Listens on `host:port` (`rdma://` prefix optional; IPv4 address of an RDMA-capable
/// interface, or 0.0.0.0 for every device; port 0 picks one, which endpoint() reports).
/// Throws Failed naming the address when no RDMA device exists or the bind fails.
std::unique_ptr<Listener> listenRdma(std::string_view hostPort, const RdmaOptions& options = {});

/// Connects to `host:port` within options.connection.connectTimeout. Throws Failed naming
/// the address, the device looked for and the reason (no device, unreachable, rejected).
std::unique_ptr<Connection> connectRdma(std::string_view hostPort, const RdmaOptions& options = {});

/// Names of the RDMA devices present (empty without any, or without an RDMA-capable
/// kernel). Thread-safe.
std::vector<std::string> rdmaDevices();

}  // namespace zcrpc
