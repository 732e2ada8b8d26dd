// BalancedChannel: policies, failover, reconnection with back-off.
#include "zcrpc/balancer.h"

#include <algorithm>

namespace zcrpc {

namespace {
constexpr auto kLivenessEvery = std::chrono::milliseconds(100);
}

std::string_view balancePolicyName(BalancePolicy policy) noexcept {
  switch (policy) {
    case BalancePolicy::kRoundRobin: return "round-robin";
    case BalancePolicy::kLeastOutstanding: return "least-outstanding";
  }
  return "?";
}

BalancePolicy parseBalancePolicy(std::string_view text) {
  if (text == "round-robin") return BalancePolicy::kRoundRobin;
  if (text == "least-outstanding") return BalancePolicy::kLeastOutstanding;
  throw InvalidArgument("balance policy '" + std::string(text) +
                        "': expected round-robin or least-outstanding");
}

BalancedChannel::BalancedChannel(const Context& context, std::span<const std::string> servers,
                                 BalancerOptions options)
    : BalancedChannel(context,
                      [&] {
                        std::vector<std::vector<std::string>> each;
                        for (const auto& s : servers) each.push_back({s});
                        return each;
                      }(),
                      std::move(options)) {}

BalancedChannel::BalancedChannel(const Context& context,
                                 std::vector<std::vector<std::string>> servers,
                                 BalancerOptions options)
    : context_(context), options_(std::move(options)),
      channelOptions_(options_.channel ? *options_.channel : context.config().channelOptions()),
      rng_(options_.seed ? options_.seed
                         : static_cast<uint64_t>(Clock::now().time_since_epoch().count()) | 1) {
  if (servers.empty()) throw InvalidArgument("a balanced channel needs at least one server");
  if (options_.initialBackoff <= std::chrono::milliseconds(0) ||
      options_.maxBackoff < options_.initialBackoff)
    throw InvalidArgument("balancer back-off: need 0 < initialBackoff <= maxBackoff");
  for (auto& endpoints : servers) {
    if (endpoints.empty()) throw InvalidArgument("a balanced server needs at least one endpoint");
    for (const auto& e : endpoints) (void)parseEndpoint(e);  // malformed: InvalidArgument now
    Server s;
    s.endpoints = std::move(endpoints);
    servers_.push_back(std::move(s));
  }
  const auto now = Clock::now();
  for (auto& s : servers_) tryConnect(s, now);
}

BalancedChannel::~BalancedChannel() = default;

uint64_t BalancedChannel::random() noexcept {
  // xorshift64*: enough to spread the two draws of the least-outstanding policy.
  rng_ ^= rng_ >> 12;
  rng_ ^= rng_ << 25;
  rng_ ^= rng_ >> 27;
  return rng_ * 0x2545f4914f6cdd1dull;
}

void BalancedChannel::tryConnect(Server& s, Clock::time_point now) {
  try {
    TransportChoice choice;
    auto connection = context_.connect(s.endpoints, &choice);
    s.channel = std::make_unique<Channel>(std::move(connection), channelOptions_);
    s.endpoint = choice.chosen() ? choice.chosen()->endpoint : s.endpoints.front();
    s.failedAttempts = 0;
    s.backoff = std::chrono::nanoseconds(0);
    s.nextLivenessCheck = now + kLivenessEvery;
    ++s.connects;
  } catch (const std::exception& e) {
    s.lastError = e.what();
    while (!s.lastError.empty() && s.lastError.back() == '\n') s.lastError.pop_back();
    ++s.failedAttempts;
    s.backoff = s.backoff.count() == 0
                    ? std::chrono::nanoseconds(options_.initialBackoff)
                    : std::min<std::chrono::nanoseconds>(s.backoff * 2, options_.maxBackoff);
    s.nextAttempt = now + s.backoff;
    earliestAttempt_ = std::min(earliestAttempt_, s.nextAttempt);
  }
}

void BalancedChannel::takeDown(Server& s, std::string why, Clock::time_point now) {
  if (!s.channel) return;
  s.lastError = std::move(why);
  s.retired.push_back(std::move(s.channel));
  while (s.retired.size() > kRetainedChannels) s.retired.pop_front();
  // First attempt after the initial back-off: a server that just died is rarely back at
  // once, and a restart loop must not turn into a connection storm.
  s.backoff = std::chrono::nanoseconds(options_.initialBackoff);
  s.nextAttempt = now + s.backoff;
  earliestAttempt_ = std::min(earliestAttempt_, s.nextAttempt);
}

void BalancedChannel::markDown(Channel& channel) {
  for (auto& s : servers_)
    if (s.channel.get() == &channel)
      takeDown(s, channel.connected() ? "call failed: disconnected"
                                      : "disconnected: " + channel.connection().lastError(),
               Clock::now());
}

void BalancedChannel::maintain(Clock::time_point now) {
  if (now < earliestAttempt_) return;
  earliestAttempt_ = Clock::time_point::max();
  for (auto& s : servers_) {
    if (s.channel) continue;
    if (now >= s.nextAttempt) tryConnect(s, now);
    if (!s.channel) earliestAttempt_ = std::min(earliestAttempt_, s.nextAttempt);
  }
}

size_t BalancedChannel::connectedCount() const noexcept {
  size_t n = 0;
  for (const auto& s : servers_) n += usable(s);
  return n;
}

Channel* BalancedChannel::channel(size_t i) noexcept {
  return i < servers_.size() && usable(servers_[i]) ? servers_[i].channel.get() : nullptr;
}

size_t BalancedChannel::pickIndex() {
  const size_t n = servers_.size();
  if (options_.policy == BalancePolicy::kRoundRobin) {
    for (size_t k = 0; k < n; ++k) {
      size_t i = next_++;
      if (next_ >= n) next_ = 0;
      if (usable(servers_[i])) return i;
    }
    return n;
  }
  // Least outstanding, power of two choices: two distinct connected servers at random.
  const size_t up = connectedCount();
  if (up == 0) return n;
  auto nth = [&](size_t k) {
    for (size_t i = 0; i < n; ++i)
      if (usable(servers_[i]) && k-- == 0) return i;
    return n;
  };
  const size_t a = random() % up;
  if (up == 1) return nth(a);
  size_t b = random() % (up - 1);
  if (b >= a) ++b;
  const size_t ia = nth(a), ib = nth(b);
  return servers_[ib].channel->outstanding() < servers_[ia].channel->outstanding() ? ib : ia;
}

Channel& BalancedChannel::pick() {
  bool anyDown = false;
  for (auto& s : servers_) {
    if (s.channel && !s.channel->connected())
      takeDown(s, "disconnected: " + s.channel->connection().lastError(), Clock::now());
    anyDown |= !s.channel;
  }
  if (anyDown) maintain(Clock::now());
  size_t i = pickIndex();
  if (i >= servers_.size()) {
    std::string why = "no server of the balanced channel is connected:";
    for (const auto& s : servers_) {
      why += "\n  " + s.endpoints.front();
      for (size_t k = 1; k < s.endpoints.size(); ++k) why += "," + s.endpoints[k];
      why += ": " + (s.lastError.empty() ? std::string("down") : s.lastError);
    }
    throw Disconnected(why);
  }
  ++servers_[i].picks;
  return *servers_[i].channel;
}

size_t BalancedChannel::poll() {
  size_t finished = 0;
  const auto now = Clock::now();
  for (auto& s : servers_) {
    if (!s.channel) continue;
    finished += s.channel->poll();
    // A server that died while this side had nothing in flight shows only when asked.
    if (s.channel->connected() && s.channel->outstanding() == 0 && now >= s.nextLivenessCheck) {
      s.nextLivenessCheck = now + kLivenessEvery;
      if (s.channel->connection().checkPeer() == Status::kDisconnected) {
        std::string why = s.channel->connection().lastError();
        takeDown(s, "peer gone" + (why.empty() ? std::string() : ": " + why), now);
        continue;
      }
    }
    if (!s.channel->connected())
      takeDown(s, "disconnected: " + s.channel->connection().lastError(), now);
  }
  maintain(now);
  return finished;
}

std::vector<BalancedServer> BalancedChannel::servers() const {
  std::vector<BalancedServer> out;
  const auto now = Clock::now();
  for (const auto& s : servers_) {
    BalancedServer b;
    b.endpoints = s.endpoints;
    b.connected = usable(s);
    b.endpoint = s.channel ? s.endpoint : std::string();
    b.lastError = s.lastError;
    b.picks = s.picks;
    b.connects = s.connects;
    b.failedAttempts = s.failedAttempts;
    b.retryIn = s.channel ? std::chrono::nanoseconds(0)
                          : std::max<std::chrono::nanoseconds>(std::chrono::nanoseconds(0),
                                                               s.nextAttempt - now);
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace zcrpc
