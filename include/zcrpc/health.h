// zcrpc — health checks, after gRPC's health protocol: a server says per service name
// whether it serves now; clients (zcrpc-ping --health, BalancedChannel) ask before they
// send it calls, so an endpoint that is up but not serving is skipped.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "zcrpc/rpc.h"

namespace zcrpc {

/// A service's state as the health service reports it (health_types.capnp ServingStatus).
enum class ServingStatus : uint8_t {
  kUnknown = 0,         ///< not said yet
  kServing = 1,
  kNotServing = 2,      ///< up, but not taking calls for it (starting, draining, degraded)
  kServiceUnknown = 3,  ///< no service of that name
};
/// "unknown", "serving", "not serving", "service unknown".
std::string_view servingStatusName(ServingStatus status) noexcept;

/// Id of zcrpc's health interface `zcrpc.health.Health` (schemas/health.capnp); method 0:
/// check. A Server answers it after enableHealth().
inline constexpr uint64_t kHealthInterfaceId = 0xa7eed31e72987dcfull;

/// The serving status of each service name a server reports: "" is the server as a whole
/// (kServing from Server::enableHealth() until shutdown() begins), any other name is what
/// set() made it, kServiceUnknown until then. Names are the application's choice (the
/// interface's name, "Inventory", is a good one).
/// Threads: any; one mutex, taken by set()/get() and by each health check, never by other calls.
class HealthStatus final {
 public:
  void set(std::string_view service, ServingStatus status);
  /// Forgets `service`: it reports kServiceUnknown again.
  void clear(std::string_view service);
  ServingStatus get(std::string_view service) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, ServingStatus, std::less<>> statuses_;
};

/// Asks the health service behind `channel` about `service` ("" for the whole server) and
/// waits for the answer. Throws as a call does: Unimplemented when the server does not
/// serve health checks (no enableHealth()), DeadlineExceeded, Disconnected.
/// Threads: the channel's.
ServingStatus checkHealth(Channel& channel, std::string_view service, Deadline deadline);

/// The same without waiting: `done` gets the status, or kUnknown and the failed result,
/// when the call ends (inside the channel's polls, as every callback).
using HealthCallback = std::function<void(ServingStatus status, const CallResult& result)>;
PendingCall checkHealthAsync(Channel& channel, std::string_view service, Deadline deadline,
                             HealthCallback done);

}  // namespace zcrpc
