// zcrpc — shared-memory transport (`shm://name`).
#pragma once

#include <memory>
#include <string_view>

#include "zcrpc/transport.h"

namespace zcrpc {

struct ShmListenOptions {
  ConnectionOptions connection;  ///< the server's sizes are the connection's sizes
  CredentialPolicy policy;
  /// Connections (handshakes in progress included) this listener lets live at once;
  /// more are refused with the reason. 0: a quarter of the process's descriptor limit
  /// (RLIMIT_NOFILE) at the time the listener starts (see defaultMaxConnections()).
  uint32_t maxConnections = 0;
};

/// Listens on the abstract unix socket `@zcrpc/<name>` (no file on disk). Throws Failed
/// naming the endpoint when the name is taken, InvalidArgument when it is invalid.
std::unique_ptr<Listener> listenShm(std::string_view name, const ShmListenOptions& options = {});

/// Connects to `shm://<name>`: credential check, memfd hand-over, header validation.
/// Throws Failed / Disconnected naming the endpoint and the reason (refused, timed out,
/// bad header). Ring, arena and maximum message sizes come from the server (checked
/// against zcrpc's absolute limits); `options` supplies the wait mode, leases, reader
/// limits and the connect timeout.
std::unique_ptr<Connection> connectShm(std::string_view name, const ConnectionOptions& options = {});

}  // namespace zcrpc
