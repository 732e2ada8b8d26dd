// zcrpc's health service (schemas/health.capnp), as Server::enableHealth() registers it.
#pragma once

#include <memory>

#include "zcrpc/health.h"

namespace zcrpc {

/// A Service answering zcrpc.health.Health (kHealthInterfaceId) from `statuses`, which
/// must outlive it. Threads: any worker.
std::unique_ptr<Service> makeHealthService(const HealthStatus& statuses);

}  // namespace zcrpc
