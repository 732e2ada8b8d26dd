// The built-in admin service (schemas/admin.capnp) that Server::enableStats() registers.
#pragma once

#include <functional>
#include <memory>

#include "zcrpc/rpc.h"

namespace zcrpc {

/// A Service answering zcrpc.admin.Admin (kAdminInterfaceId) from `source`, which runs
/// on the worker thread of the calling connection and must be thread-safe.
std::unique_ptr<Service> makeStatsService(std::function<ServerStats()> source,
                                          uint32_t workerThreads);

}  // namespace zcrpc
