// zcrpc — endpoints to connections: the transports a Context knows, and the choice among
// them from configuration, with reasons.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zcrpc/config.h"

namespace zcrpc {

/// What a transport can do, for callers that would otherwise know each one by name.
struct TransportTraits {
  bool compiledIn = true;     ///< false: this build lacks it (rdma without libibverbs)
  bool crossHost = false;     ///< reaches processes on other hosts
  bool sharedMemory = false;  ///< both processes map the messages: no copy between them
  /// OutgoingMessage::referenceData leaves data of this many bytes and more in the
  /// caller's memory until send(), which gathers it into the frame; UINT64_MAX: never (the
  /// data is copied in at once).
  uint64_t gathersFromBytes = UINT64_MAX;
  /// Carries the RPC core's frames only (requests, answers, errors, cancellations, pings),
  /// translated to a protocol of its own on the wire (capnp, capnp+unix: Cap'n Proto's RPC
  /// protocol), not plain messages (FrameKind::kData): give its connections to a Channel
  /// or a Server, not to the message API.
  bool rpcFramesOnly = false;
};

/// One transport as a Context uses it: its URI scheme, whether it can be used here (and
/// why not), how it connects and listens with the settings of a Config, and what it can
/// do. zcrpc's own are builtinTransports(); a program may hand a Context its own list
/// (fewer transports, or one of its own under a built-in scheme name, e.g. for tests).
///
/// Threads: const methods, callable from any thread at once.
class Transport {
 public:
  virtual ~Transport() = default;
  /// The URI scheme, e.g. "tcp" for tcp://host:port.
  virtual std::string_view scheme() const noexcept = 0;
  /// One line on what it is, for zcrpc-info.
  virtual std::string_view summary() const noexcept = 0;
  virtual TransportTraits traits() const noexcept = 0;
  /// The settings (settingsTable() names) it reads besides the connection settings every
  /// transport reads (ring_bytes, max_message_bytes, wait_mode, ...).
  virtual std::span<const std::string_view> settings() const noexcept = 0;
  /// Why it cannot be used on this host at all (not compiled in, no RDMA device, ...), or
  /// empty. May make system calls.
  virtual std::string unavailable(const Config& config) const = 0;
  /// Why `address` (the URI without "scheme://" and query) is not worth trying now (no
  /// listener of that name on this host, the address does not resolve, it is malformed),
  /// or empty. Called only when unavailable() is empty.
  virtual std::string unreachable(std::string_view address, const Config& config) const = 0;
  /// Connects or listens as the transport's own connect/listen function does, with
  /// `options` and the transport's own settings from `config`; throws as they do.
  virtual std::unique_ptr<Connection> connect(std::string_view address, const ConnectionOptions& options,
                                              const Config& config) const = 0;
  virtual std::unique_ptr<Listener> listen(std::string_view address, const ConnectionOptions& options,
                                           const Config& config) const = 0;
  /// An address on this host for a listener that a peer on this host can reach (a fresh
  /// shm name, 127.0.0.1:0 for tcp, an RDMA device's IPv4 address with port 0), or empty
  /// when there is none. For tests and tools that run both ends.
  virtual std::string localAddress() const = 0;
};

using TransportList = std::vector<std::shared_ptr<const Transport>>;

/// zcrpc's transports: shm, tcp, rdma. rdma is listed even in a build without it (its
/// traits say so, and unavailable() gives the reason). A plain function: nothing
/// registers itself behind the caller's back.
TransportList builtinTransports();

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

/// Builds listeners and connections from endpoint URIs and a Config, through the
/// transports it is given. URI query parameters override the Config for that endpoint.
/// Threads: any, after construction.
class Context final {
 public:
  /// With builtinTransports().
  explicit Context(Config config = Config::load());
  /// With `transports` only (each scheme once; the first of a scheme counts).
  Context(Config config, TransportList transports);
  const Config& config() const noexcept { return config_; }
  /// The transports this Context connects and listens through.
  const TransportList& transports() const noexcept { return transports_; }
  /// The transport for `scheme`, or nullptr.
  const Transport* transport(std::string_view scheme) const noexcept;

  /// Which endpoint `connect` would try first and why the others come later or not at
  /// all, without connecting: an endpoint is usable when its transport is available here
  /// and finds its address worth trying (shm: its socket exists on this host; rdma:
  /// compiled in with a usable device and a resolvable address; tcp: the address
  /// resolves). Endpoints are ordered by the `transports` preference.
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
  /// "unknown scheme 'x' (known: shm://, ...)" (with a suggestion), or empty when one of
  /// this Context's transports has `scheme`.
  std::string unknownScheme(std::string_view scheme) const;
  std::string unusableReason(const EndpointUri& uri, const Config& config) const;
  Config config_;
  TransportList transports_;
};

}  // namespace zcrpc
