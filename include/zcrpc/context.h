// zcrpc — endpoints to connections: transport choice from configuration, with reasons.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zcrpc/config.h"

namespace zcrpc {

/// Transports compiled into this build, e.g. {"shm", "tcp", "rdma"}.
std::vector<std::string> compiledTransports();

/// What happened to one endpoint while choosing.
struct EndpointVerdict {
  std::string endpoint;
  std::string transport;
  bool chosen = false;
  std::string reason;  ///< why it was skipped (empty for the chosen one)
};

/// The outcome of choosing among a service's endpoints.
struct TransportChoice {
  std::vector<EndpointVerdict> verdicts;  ///< in the order they were considered
  const EndpointVerdict* chosen() const noexcept;
  /// One line per endpoint: "shm://x: chosen" / "tcp://h:1: skipped: <reason>".
  std::string describe() const;
};

/// Builds listeners and connections from endpoint URIs and a Config. URI query
/// parameters override the Config for that endpoint. Threads: any, after construction.
class Context final {
 public:
  explicit Context(Config config = Config::load());
  const Config& config() const noexcept { return config_; }

  /// Which endpoint `connect` would try first and why the others come later or not at
  /// all, without connecting: shm only when its socket exists on this host, rdma only
  /// when compiled in with a usable device and a resolvable address, tcp when the
  /// address resolves. Endpoints are ordered by the `transports` preference.
  TransportChoice choose(std::span<const std::string> endpoints) const;

  /// Connects to the first endpoint, in preference order, that works. Each endpoint
  /// skipped or failed is recorded in `choice` (if given) with its reason. Throws
  /// Failed listing every reason when none works.
  std::unique_ptr<Connection> connect(std::span<const std::string> endpoints,
                                      TransportChoice* choice = nullptr) const;
  std::unique_ptr<Connection> connect(std::string_view endpoint) const;

  /// A listener for `endpoint` (shm://name, tcp://host:port, rdma://host:port).
  std::unique_ptr<Listener> listen(std::string_view endpoint) const;

 private:
  Config configFor(const EndpointUri& uri, std::string_view text) const;
  std::string unusableReason(const EndpointUri& uri, const Config& config) const;
  Config config_;
};

}  // namespace zcrpc
