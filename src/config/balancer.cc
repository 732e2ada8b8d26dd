// BalancedChannel: policies, failover, reconnection with back-off, health checks, and
// servers that follow what host names (and SRV records) resolve to.
#include "zcrpc/balancer.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <resolv.h>

#include <algorithm>
#include <map>
#include <set>

#include "transport/address.h"

namespace zcrpc {

namespace {
constexpr auto kLivenessEvery = std::chrono::milliseconds(100);

/// True when `host` is a numeric IPv4 or IPv6 address, not a name to resolve.
bool isNumeric(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  return ::inet_pton(AF_INET, host.c_str(), &a4) == 1 || ::inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

/// "198.18.7.1:7000" / "[fd00::1]:7000".
std::string addressKey(const std::string& address, const std::string& port) {
  const bool v6 = address.find(':') != std::string::npos;
  return (v6 ? "[" + address + "]" : address) + ":" + port;
}

/// The system's resolver: getaddrinfo for addresses, res_nquery for SRV records.
class SystemResolver final : public Resolver {
 public:
  std::vector<std::string> addresses(const std::string& host) override {
    AddressList list;
    std::string why = tryResolve(HostPort{host, "0"}, /*passive=*/false, list);
    if (!why.empty()) throw Failed("host " + host + " does not resolve: " + why);
    std::vector<std::string> out;
    for (const addrinfo* a = list.first(); a; a = a->ai_next) {
      char text[INET6_ADDRSTRLEN] = {};
      const void* raw = a->ai_family == AF_INET6
                            ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr)
                            : static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr);
      if (!::inet_ntop(a->ai_family, raw, text, sizeof text)) continue;
      if (std::find(out.begin(), out.end(), text) == out.end()) out.push_back(text);
    }
    return out;
  }

  std::vector<SrvTarget> srv(const std::string& name) override {
    struct __res_state state {};
    if (::res_ninit(&state) != 0) throw Failed("SRV " + name + ": the resolver could not be set up");
    unsigned char answer[NS_PACKETSZ * 8];
    const int n = ::res_nquery(&state, name.c_str(), ns_c_in, ns_t_srv, answer, sizeof answer);
    const int herr = state.res_h_errno;
    ::res_nclose(&state);
    if (n < 0)
      throw Failed("SRV " + name + " does not resolve: " +
                   (herr == HOST_NOT_FOUND ? std::string("no such name")
                    : herr == NO_DATA      ? std::string("no SRV records")
                    : herr == TRY_AGAIN    ? std::string("no answer from the DNS server")
                                           : std::string(::hstrerror(herr))));
    // The answer is the DNS server's, so it is not trusted: ns_initparse and ns_parserr
    // check every length against the buffer, dn_expand every name.
    ns_msg msg;
    if (::ns_initparse(answer, std::min<int>(n, sizeof answer), &msg) != 0)
      throw Failed("SRV " + name + ": malformed DNS answer");
    std::vector<SrvTarget> out;
    for (int i = 0; i < ns_msg_count(msg, ns_s_an); ++i) {
      ns_rr rr;
      if (::ns_parserr(&msg, ns_s_an, i, &rr) != 0 || ns_rr_type(rr) != ns_t_srv) continue;
      if (ns_rr_rdlen(rr) < 7) continue;
      const unsigned char* d = ns_rr_rdata(rr);
      SrvTarget t;
      t.priority = static_cast<uint16_t>(ns_get16(d));
      t.weight = static_cast<uint16_t>(ns_get16(d + 2));
      t.port = static_cast<uint16_t>(ns_get16(d + 4));
      char target[NS_MAXDNAME];
      if (::dn_expand(ns_msg_base(msg), ns_msg_end(msg), d + 6, target, sizeof target) < 0) continue;
      t.host = target;
      if (t.host.empty() || t.host == ".") continue;  // "." : the service is not offered here
      out.push_back(std::move(t));
    }
    if (out.empty()) throw Failed("SRV " + name + ": no usable SRV records");
    return out;
  }
};

}  // namespace

Resolver& systemResolver() {
  static SystemResolver resolver;  // stateless: one for every balancer and thread
  return resolver;
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
      resolver_(options_.resolver ? *options_.resolver : systemResolver()),
      rng_(options_.seed ? options_.seed
                         : static_cast<uint64_t>(Clock::now().time_since_epoch().count()) | 1) {
  if (servers.empty()) throw InvalidArgument("a balanced channel needs at least one server");
  if (options_.initialBackoff <= std::chrono::milliseconds(0) ||
      options_.maxBackoff < options_.initialBackoff)
    throw InvalidArgument("balancer back-off: need 0 < initialBackoff <= maxBackoff");
  if (options_.healthService &&
      (options_.healthEvery <= std::chrono::milliseconds(0) ||
       options_.healthTimeout <= std::chrono::milliseconds(0)))
    throw InvalidArgument("balancer health checks: need healthEvery and healthTimeout > 0");
  if (options_.resolveEvery < std::chrono::milliseconds(0))
    throw InvalidArgument("balancer resolveEvery: must not be negative");
  for (auto& endpoints : servers) {
    if (endpoints.empty()) throw InvalidArgument("a balanced server needs at least one endpoint");
    for (const auto& e : endpoints) (void)parseEndpoint(e);  // malformed: InvalidArgument now
    EndpointUri uri = parseEndpoint(endpoints.front());
    if (endpoints.size() == 1 && (uri.scheme == "tcp" || uri.scheme == "rdma")) {
      Group g;
      g.scheme = uri.scheme;
      g.query = uri.query;
      if (uri.address.starts_with('_') && uri.address.find(':') == std::string::npos) {
        g.srv = true;
        g.host = uri.address;
      } else {
        HostPort hp = parseHostPort(uri.address, uri.scheme).forConnect();
        g.host = hp.host;
        g.port = hp.port;
      }
      if (g.srv || !isNumeric(g.host)) {
        groups_.push_back(std::move(g));
        continue;
      }
    }
    Server s;
    s.endpoints = std::move(endpoints);
    servers_.push_back(std::move(s));
  }
  const auto now = Clock::now();
  if (!groups_.empty()) {
    if (options_.resolveEvery.count() > 0) nextResolve_ = now + options_.resolveEvery;
    apply(resolveAll(groups_, resolver_), now);
  }
  for (auto& s : servers_)
    if (!s.channel) tryConnect(s, now);
}

BalancedChannel::~BalancedChannel() = default;  // resolving_'s destructor waits for it

uint64_t BalancedChannel::random() noexcept {
  // xorshift64*: enough to spread the two draws of the least-outstanding policy.
  rng_ ^= rng_ >> 12;
  rng_ ^= rng_ << 25;
  rng_ ^= rng_ >> 27;
  return rng_ * 0x2545f4914f6cdd1dull;
}

bool BalancedChannel::usable(const Server& s) const noexcept {
  return s.channel && s.channel->connected() &&
         (!options_.healthService || s.health == ServingStatus::kServing);
}

// ------------------------------------------------------------------------------------
// Connections

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
    if (options_.healthService) checkHealthNow(s, now);
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
  s.health = ServingStatus::kUnknown;
  s.healthCheck.reset();  // its answer, if one still comes, is for the old connection
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

// ------------------------------------------------------------------------------------
// Health checks

void BalancedChannel::checkHealthNow(Server& s, Clock::time_point now) {
  // A new connection is checked before it is used: the one round trip it costs is paid
  // where the connection was made.
  try {
    s.health = checkHealth(*s.channel, *options_.healthService, deadlineAfter(options_.healthTimeout));
    if (s.health != ServingStatus::kServing)
      s.lastError = "health: " + std::string(servingStatusName(s.health));
  } catch (const Unimplemented&) {
    s.health = ServingStatus::kServing;  // no health service: up is all it can tell
  } catch (const Disconnected& e) {
    takeDown(s, std::string("health check: ") + e.what(), now);
    return;
  } catch (const Error& e) {
    s.health = ServingStatus::kNotServing;
    s.lastError = std::string("health check failed: ") + e.what();
  }
  s.nextHealthCheck = now + options_.healthEvery;
}

void BalancedChannel::sendHealthCheck(Server& s, Clock::time_point now) {
  auto cell = std::make_shared<HealthCell>();
  try {
    (void)checkHealthAsync(*s.channel, *options_.healthService,
                           deadlineAfter(options_.healthTimeout),
                           [cell](ServingStatus status, const CallResult& result) {
                             cell->answered = true;
                             if (result.ok() || result.errorKind() == ErrorKind::kUnimplemented) {
                               cell->status = result.ok() ? status : ServingStatus::kServing;
                             } else {
                               cell->status = ServingStatus::kNotServing;
                               cell->error = "health check failed: " + result.errorMessage();
                             }
                           });
    s.healthCheck = std::move(cell);
  } catch (const Overloaded&) {
    // The window is full of the caller's calls: the server answers those, so it is not
    // checked now; next time.
  } catch (const Disconnected& e) {
    takeDown(s, std::string("health check: ") + e.what(), now);
    return;
  }
  s.nextHealthCheck = now + options_.healthEvery;
}

void BalancedChannel::takeHealthAnswer(Server& s) {
  if (!s.healthCheck || !s.healthCheck->answered) return;
  const HealthCell& cell = *s.healthCheck;
  const bool was = s.health == ServingStatus::kServing;
  s.health = cell.status;
  if (!cell.error.empty())
    s.lastError = cell.error;
  else if (s.health != ServingStatus::kServing)
    s.lastError = "health: " + std::string(servingStatusName(s.health));
  else if (!was)
    s.lastError.clear();
  s.healthCheck.reset();
}

// ------------------------------------------------------------------------------------
// Names

BalancedChannel::Resolved BalancedChannel::resolveAll(const std::vector<Group>& groups,
                                                      Resolver& resolver) {
  Resolved out;
  out.servers.resize(groups.size());
  out.errors.resize(groups.size());
  for (size_t i = 0; i < groups.size(); ++i) {
    const Group& g = groups[i];
    try {
      std::vector<std::pair<std::string, std::string>> found;  // (host, port)
      if (g.srv) {
        auto targets = resolver.srv(g.host);
        uint16_t best = UINT16_MAX;
        for (const auto& t : targets) best = std::min(best, t.priority);
        for (const auto& t : targets)
          if (t.priority == best) found.push_back({t.host, std::to_string(t.port)});
      } else {
        found.push_back({g.host, g.port});
      }
      for (const auto& [host, port] : found) {
        std::vector<std::string> addresses =
            isNumeric(host) ? std::vector<std::string>{host} : resolver.addresses(host);
        for (const auto& a : addresses) {
          std::string key = addressKey(a, port);
          std::string endpoint = g.scheme + "://" + key + (g.query.empty() ? "" : "?" + g.query);
          auto& list = out.servers[i];
          if (std::none_of(list.begin(), list.end(), [&](auto& e) { return e.first == key; }))
            list.push_back({key, endpoint});
        }
      }
      if (out.servers[i].empty()) out.errors[i] = g.host + " resolves to no address";
    } catch (const std::exception& e) {
      out.errors[i] = e.what();
    }
  }
  return out;
}

void BalancedChannel::apply(Resolved resolved, Clock::time_point now) {
  for (size_t g = 0; g < groups_.size(); ++g) {
    // A name that did not resolve is tried again within maxBackoff, not resolveEvery.
    if (!resolved.errors[g].empty() && options_.resolveEvery.count() > 0)
      nextResolve_ = std::min(nextResolve_, now + options_.maxBackoff);
    // A name that does not resolve now keeps the servers it had: DNS that fails for a
    // moment must not take a working service away.
    groups_[g].lastError = resolved.errors[g];
    if (!resolved.errors[g].empty()) continue;
    const auto& found = resolved.servers[g];
    for (size_t i = servers_.size(); i-- > 0;) {
      const Server& s = servers_[i];
      if (s.group != g) continue;
      if (std::none_of(found.begin(), found.end(), [&](auto& f) { return f.first == s.address; }))
        drop(i);
    }
    for (const auto& [address, endpoint] : found) {
      const std::string& at = address;  // a lambda captures no structured binding before clang 16
      if (std::any_of(servers_.begin(), servers_.end(),
                      [&](const Server& s) { return s.group == g && s.address == at; }))
        continue;
      Server s;
      s.endpoints = {endpoint};
      s.group = g;
      s.address = address;
      s.nextAttempt = now;  // connect at once (maintain(), or the constructor)
      servers_.push_back(std::move(s));
      earliestAttempt_ = now;
    }
  }
}

void BalancedChannel::drop(size_t index) {
  Server& s = servers_[index];
  for (auto& c : s.retired) dropped_.push_back(std::move(c));
  if (s.channel) dropped_.push_back(std::move(s.channel));
  while (dropped_.size() > kRetainedChannels) dropped_.pop_front();
  servers_.erase(servers_.begin() + static_cast<ptrdiff_t>(index));
  if (next_ > index) --next_;
  if (next_ >= servers_.size()) next_ = 0;
}

// ------------------------------------------------------------------------------------
// Upkeep and picking

void BalancedChannel::maintain(Clock::time_point now) {
  if (resolving_.valid() &&
      resolving_.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
    apply(resolving_.get(), now);
  } else if (!resolving_.valid() && now >= nextResolve_) {
    nextResolve_ = now + options_.resolveEvery;
    resolving_ = std::async(std::launch::async, [groups = groups_, &resolver = resolver_] {
      return resolveAll(groups, resolver);
    });
  }
  if (options_.healthService) {
    for (auto& s : servers_) {
      if (!s.channel) continue;
      // Nobody calls through a server that is not serving, so nothing else would take
      // its health answer off the connection.
      if (s.healthCheck && !s.healthCheck->answered && !usable(s)) s.channel->poll();
      takeHealthAnswer(s);
      if (s.channel && !s.healthCheck && now >= s.nextHealthCheck && s.channel->connected())
        sendHealthCheck(s, now);
    }
  }
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
  if (n == 0) return 0;
  if (options_.policy == BalancePolicy::kRoundRobin) {
    for (size_t k = 0; k < n; ++k) {
      size_t i = next_++;
      if (next_ >= n) next_ = 0;
      if (usable(servers_[i])) return i;
    }
    return n;
  }
  // Least outstanding, power of two choices: two distinct usable servers at random.
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
  // Health answers, resolutions and reconnections are looked at only when some of them
  // can be due, so a plain pick() reads no clock.
  if (anyDown || options_.healthService || !groups_.empty()) maintain(Clock::now());
  size_t i = pickIndex();
  if (i >= servers_.size()) {
    std::string why = "no server of the balanced channel is usable:";
    for (const auto& s : servers_) {
      why += "\n  " + s.endpoints.front();
      for (size_t k = 1; k < s.endpoints.size(); ++k) why += "," + s.endpoints[k];
      why += ": " + (s.lastError.empty() ? std::string("down") : s.lastError);
    }
    for (const auto& g : groups_)
      if (!g.lastError.empty()) why += "\n  " + g.scheme + "://" + g.host + ": " + g.lastError;
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
    b.name = s.group < groups_.size() ? groups_[s.group].host : std::string();
    b.connected = s.channel && s.channel->connected();
    b.health = s.health;
    b.usable = usable(s);
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
