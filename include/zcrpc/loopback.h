// zcrpc — in-process transport with the shm transport's API and ring, for tests.
#pragma once

#include <memory>
#include <utility>

#include "zcrpc/transport.h"

namespace zcrpc {

/// Two connected ends in this process, over the same lock-free rings the shm transport
/// uses, in private memory. Closing or destroying one end disconnects the other.
std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>> makeLoopbackPair(
    const ConnectionOptions& options = {});

}  // namespace zcrpc
