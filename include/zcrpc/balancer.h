// zcrpc — one client over several servers of a service: round-robin or least-outstanding
// (power of two choices), skipping servers that are down or not serving (health checks),
// reconnecting them with bounded exponential back-off, and following host names (every
// address a name resolves to, SRV records) as servers come and go.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zcrpc/context.h"
#include "zcrpc/health.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

enum class BalancePolicy : uint8_t {
  kRoundRobin,        ///< each connected server in turn
  kLeastOutstanding,  ///< of two connected servers drawn at random, the one with fewer calls in flight
};
std::string_view balancePolicyName(BalancePolicy policy) noexcept;
/// Parses "round-robin" or "least-outstanding"; throws InvalidArgument naming the text.
BalancePolicy parseBalancePolicy(std::string_view text);

/// One SRV record's target (RFC 2782).
struct SrvTarget {
  std::string host;
  uint16_t port = 0;
  uint16_t priority = 0;
  uint16_t weight = 0;
};

/// Where a BalancedChannel looks names up. systemResolver() asks the system: getaddrinfo
/// for addresses (/etc/hosts and DNS, as /etc/nsswitch.conf says) and DNS itself for SRV
/// records (res_nquery, /etc/resolv.conf). Tests and programs with a resolver of their own
/// pass another. Threads: a balancer calls it from one thread at a time (its own at
/// construction, a resolving thread of its own after), never concurrently.
class Resolver {
 public:
  virtual ~Resolver() = default;
  /// Numeric addresses of `host` ("198.18.7.1", "fd00::1"), in the resolver's order.
  /// Throws Failed naming the host and why.
  virtual std::vector<std::string> addresses(const std::string& host) = 0;
  /// The SRV records of `name` ("_kv._tcp.example.com"). Throws Failed naming it and why.
  virtual std::vector<SrvTarget> srv(const std::string& name) = 0;
};
Resolver& systemResolver();

struct BalancerOptions {
  BalancePolicy policy = BalancePolicy::kRoundRobin;
  /// Wait before the first reconnection attempt to a server that went down (or could not
  /// be reached at first); each failed attempt doubles it, up to maxBackoff. A successful
  /// connection resets it.
  std::chrono::milliseconds initialBackoff{50};
  std::chrono::milliseconds maxBackoff{5000};
  /// Settings of every server's Channel; unset: the Context's configuration.
  std::optional<ChannelOptions> channel;
  /// Seed of the least-outstanding policy's random draws (0: from the clock).
  uint64_t seed = 0;

  /// Health checks (zcrpc/health.h): when set, each server's health service is asked about
  /// this service name ("" for the server as a whole) as soon as it connects, and every
  /// healthEvery after; a server that answers anything but serving, or does not answer
  /// within healthTimeout, is skipped until a later check finds it serving. A server
  /// without the health service (Unimplemented) counts as serving.
  std::optional<std::string> healthService;
  std::chrono::milliseconds healthEvery{1000};
  std::chrono::milliseconds healthTimeout{1000};

  /// Host names. A server given as a single tcp:// or rdma:// endpoint whose host is a
  /// name stands for every address the name resolves to, one server each, all with the
  /// endpoint's port and query. `tcp://_service._proto.domain` (a name starting with '_'
  /// and no port) asks for the name's SRV records instead: one server per target of the
  /// lowest priority present (the target's port; weights are not used). The names are
  /// resolved again every resolveEvery (zero: never) on a thread of the balancer's own:
  /// servers that appear are added, servers that vanish are dropped.
  std::chrono::milliseconds resolveEvery{30'000};
  /// Borrowed, must outlive the balancer; nullptr: systemResolver().
  Resolver* resolver = nullptr;
};

/// One server as the balancer sees it (a copy; see BalancedChannel::servers()).
struct BalancedServer {
  std::vector<std::string> endpoints;  ///< alternatives for reaching this one server
  std::string name;       ///< the host or SRV name it was resolved from ("" if given directly)
  bool connected = false;
  /// The health service's last answer (kUnknown before the first, or without health checks).
  ServingStatus health = ServingStatus::kUnknown;
  bool usable = false;    ///< connected and, with health checks, serving: pick() may choose it
  std::string endpoint;   ///< the endpoint in use (transport choice), when connected
  std::string lastError;  ///< why it is (or last was) down or not serving
  uint64_t picks = 0;     ///< times pick() chose it
  uint64_t connects = 0;  ///< successful connections, the first included
  uint32_t failedAttempts = 0;  ///< failed connection attempts since it was last up
  std::chrono::nanoseconds retryIn{0};  ///< until the next attempt, while down
};

/// Calls through several servers of one service, as through one Channel: `pick()` a
/// server's Channel (by the policy) and make the call on it, or use `call()`, which also
/// fails over. Each server has its own Channel, connected through the Context, so the
/// transport preference and URI settings apply to each. A server whose channel is found
/// disconnected (by a call, by poll(), or by a liveness check in poll()) is skipped and
/// reconnected later with back-off; in-flight calls on it fail with Disconnected. With
/// health checks, a server that is up but not serving is skipped too.
///
/// Threads: one at a time, like a Channel (make one per thread). Connecting and health
/// checks of new connections are done on the calling thread inside the constructor,
/// pick(), call() and poll() (which also polls the channel of a server that is not
/// serving while its next health check is out, so callbacks of calls made on it before
/// may run there): a server that is down costs a connection attempt (a refused
/// connect is quick; an unreachable host can take up to `connect_timeout`) only when its
/// back-off has run out. Names are resolved on the calling thread in the constructor and
/// on a thread of the balancer's own after that.
class BalancedChannel final {
 public:
  /// `servers`: for each server, its endpoints (alternatives, ordered by the transport
  /// preference as Context::connect does); a host name stands for its addresses (see
  /// BalancerOptions::resolveEvery). Connects to each now; one that cannot be reached (or
  /// a name that does not resolve) is retried later. Throws InvalidArgument for an empty
  /// list or a malformed endpoint. `context` must outlive this object.
  BalancedChannel(const Context& context, std::vector<std::vector<std::string>> servers,
                  BalancerOptions options = {});
  /// One endpoint per server.
  BalancedChannel(const Context& context, std::span<const std::string> servers,
                  BalancerOptions options = {});
  /// Waits for a resolution in flight (as long as the resolver takes).
  ~BalancedChannel();
  BalancedChannel(const BalancedChannel&) = delete;
  BalancedChannel& operator=(const BalancedChannel&) = delete;

  /// The Channel of a usable server, chosen by the policy, after reconnecting servers
  /// whose back-off has run out (and taking the results of health checks and name
  /// resolutions that finished). Throws Disconnected, naming each server's last error,
  /// when none is usable. The Channel (and PendingCalls on it) stays valid while this
  /// object lives, even after its server went down or was dropped, unless that server has
  /// since been reconnected (or kRetainedChannels other servers dropped) more than
  /// kRetainedChannels times.
  Channel& pick();

  /// Runs `f(pick())`; when it throws Disconnected (the server went away before or while
  /// answering) runs it again on another server, `attempts` times in all. Use it for
  /// idempotent calls only: a call that reached a dying server may have taken effect.
  template <typename F>
  decltype(auto) call(F&& f, int attempts = 3) {
    for (int attempt = 1;; ++attempt) {
      Channel& channel = pick();
      try {
        return f(channel);
      } catch (const Disconnected&) {
        markDown(channel);
        if (attempt >= attempts) throw;
      }
    }
  }

  /// Polls every connected Channel (delivering asynchronous results, health answers, and
  /// noticing servers that went away), checks idle ones' peers now and then, sends the
  /// health checks that are due, takes finished name resolutions, and reconnects servers
  /// that are due. Returns how many calls finished.
  size_t poll();

  size_t size() const noexcept { return servers_.size(); }
  size_t connectedCount() const noexcept;
  /// Server `i`'s Channel, or nullptr while it is down or not serving. Indices change
  /// when name resolution adds or drops servers.
  Channel* channel(size_t i) noexcept;
  std::vector<BalancedServer> servers() const;
  const BalancerOptions& options() const noexcept { return options_; }

  static constexpr size_t kRetainedChannels = 16;

 private:
  /// A health answer, written by a check's callback and read by the balancer (the
  /// callback keeps it alive if the server is dropped first).
  struct HealthCell {
    ServingStatus status = ServingStatus::kUnknown;
    std::string error;
    bool answered = false;
  };
  struct Server {
    std::vector<std::string> endpoints;
    size_t group = SIZE_MAX;  // index into groups_ when it came from a name
    std::string address;      // its resolved address, "198.18.7.1:7000" (named servers)
    std::unique_ptr<Channel> channel;  // null while down
    std::deque<std::unique_ptr<Channel>> retired;  // earlier channels, kept for callers
    std::string endpoint;
    std::string lastError;
    uint64_t picks = 0;
    uint64_t connects = 0;
    uint32_t failedAttempts = 0;
    std::chrono::nanoseconds backoff{0};
    Clock::time_point nextAttempt{};
    Clock::time_point nextLivenessCheck{};
    ServingStatus health = ServingStatus::kUnknown;
    Clock::time_point nextHealthCheck{};
    std::shared_ptr<HealthCell> healthCheck;  // in flight (null: none)
  };
  /// A name given as a server: what it resolves to becomes servers.
  struct Group {
    std::string scheme;  // "tcp", "rdma"
    std::string host;    // the name, or the SRV name
    std::string port;    // "" for SRV
    std::string query;   // "" or "k=v&..." kept on every server
    bool srv = false;
    std::string lastError;  // why it last did not resolve
  };
  /// One resolution of every group: per group the endpoint of each server, keyed by its
  /// address, or the error.
  struct Resolved {
    std::vector<std::vector<std::pair<std::string, std::string>>> servers;  // (address, endpoint)
    std::vector<std::string> errors;
  };

  bool usable(const Server& s) const noexcept;
  void tryConnect(Server& s, Clock::time_point now);
  void takeDown(Server& s, std::string why, Clock::time_point now);
  void markDown(Channel& channel);
  void maintain(Clock::time_point now);
  void checkHealthNow(Server& s, Clock::time_point now);
  void sendHealthCheck(Server& s, Clock::time_point now);
  void takeHealthAnswer(Server& s);
  static Resolved resolveAll(const std::vector<Group>& groups, Resolver& resolver);
  void apply(Resolved resolved, Clock::time_point now);
  void drop(size_t index);
  size_t pickIndex();
  uint64_t random() noexcept;

  const Context& context_;
  BalancerOptions options_;
  ChannelOptions channelOptions_;
  Resolver& resolver_;
  std::vector<Server> servers_;
  std::vector<Group> groups_;
  std::deque<std::unique_ptr<Channel>> dropped_;  // channels of dropped servers, for callers
  size_t next_ = 0;
  uint64_t rng_;
  Clock::time_point earliestAttempt_ = Clock::time_point::max();
  Clock::time_point nextResolve_ = Clock::time_point::max();
  std::future<Resolved> resolving_;  // a resolution in flight on its own thread
};

}  // namespace zcrpc
