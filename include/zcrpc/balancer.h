// zcrpc — one client over several servers of a service: round-robin or least-outstanding
// (power of two choices), skipping servers that are down and reconnecting them with
// bounded exponential back-off.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zcrpc/context.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

enum class BalancePolicy : uint8_t {
  kRoundRobin,        ///< each connected server in turn
  kLeastOutstanding,  ///< of two connected servers drawn at random, the one with fewer calls in flight
};
std::string_view balancePolicyName(BalancePolicy policy) noexcept;
/// Parses "round-robin" or "least-outstanding"; throws InvalidArgument naming the text.
BalancePolicy parseBalancePolicy(std::string_view text);

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
};

/// One server as the balancer sees it (a copy; see BalancedChannel::servers()).
struct BalancedServer {
  std::vector<std::string> endpoints;  ///< alternatives for reaching this one server
  bool connected = false;
  std::string endpoint;   ///< the endpoint in use (transport choice), when connected
  std::string lastError;  ///< why it is (or last was) down
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
/// reconnected later with back-off; in-flight calls on it fail with Disconnected.
///
/// Threads: one at a time, like a Channel (make one per thread). Connecting is done on
/// the calling thread inside the constructor, pick(), call() and poll(): a server that is
/// down costs a connection attempt (a refused connect is quick; an unreachable host can
/// take up to `connect_timeout`) only when its back-off has run out.
class BalancedChannel final {
 public:
  /// `servers`: for each server, its endpoints (alternatives, ordered by the transport
  /// preference as Context::connect does). Connects to each now; one that cannot be
  /// reached is retried later. Throws InvalidArgument for an empty list or a malformed
  /// endpoint. `context` must outlive this object.
  BalancedChannel(const Context& context, std::vector<std::vector<std::string>> servers,
                  BalancerOptions options = {});
  /// One endpoint per server.
  BalancedChannel(const Context& context, std::span<const std::string> servers,
                  BalancerOptions options = {});
  ~BalancedChannel();
  BalancedChannel(const BalancedChannel&) = delete;
  BalancedChannel& operator=(const BalancedChannel&) = delete;

  /// The Channel of a connected server, chosen by the policy, after reconnecting servers
  /// whose back-off has run out. Throws Disconnected, naming each server's last error,
  /// when none is connected. The Channel (and PendingCalls on it) stays valid while this
  /// object lives, even after its server went down, unless that server has since been
  /// reconnected more than kRetainedChannels times.
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

  /// Polls every connected Channel (delivering asynchronous results and noticing servers
  /// that went away), checks idle ones' peers now and then, and reconnects servers that
  /// are due. Returns how many calls finished.
  size_t poll();

  size_t size() const noexcept { return servers_.size(); }
  size_t connectedCount() const noexcept;
  /// Server `i`'s Channel, or nullptr while it is down.
  Channel* channel(size_t i) noexcept;
  std::vector<BalancedServer> servers() const;
  const BalancerOptions& options() const noexcept { return options_; }

  static constexpr size_t kRetainedChannels = 16;

 private:
  struct Server {
    std::vector<std::string> endpoints;
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
  };

  bool usable(const Server& s) const noexcept { return s.channel && s.channel->connected(); }
  void tryConnect(Server& s, Clock::time_point now);
  void takeDown(Server& s, std::string why, Clock::time_point now);
  void markDown(Channel& channel);
  void maintain(Clock::time_point now);
  size_t pickIndex();
  uint64_t random() noexcept;

  const Context& context_;
  BalancerOptions options_;
  ChannelOptions channelOptions_;
  std::vector<Server> servers_;
  size_t next_ = 0;
  uint64_t rng_;
  Clock::time_point earliestAttempt_ = Clock::time_point::max();
};

}  // namespace zcrpc
