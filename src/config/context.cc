#include "zcrpc/context.h"

#include <algorithm>
#include <fstream>

#include "transport/address.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"
#ifdef ZCRPC_HAVE_RDMA
#include "zcrpc/rdma.h"
#endif

namespace zcrpc {

namespace {

/// True when an abstract unix socket "@zcrpc/<name>" is listening on this host (in this
/// network namespace). Reads /proc/net/unix instead of connecting, so probing leaves
/// no trace in the server's refusal log.
bool shmSocketExists(const std::string& name) {
  std::ifstream in("/proc/net/unix");
  std::string line, want = "@zcrpc/" + name;
  while (std::getline(in, line)) {
    if (line.size() >= want.size() && line.compare(line.size() - want.size(), want.size(), want) == 0 &&
        (line.size() == want.size() || line[line.size() - want.size() - 1] == ' '))
      return true;
  }
  return false;
}

/// Why a network endpoint's address is not usable (malformed, or it does not resolve), or
/// empty when it resolves.
std::string unresolvable(const EndpointUri& uri) {
  try {
    AddressList addresses;
    std::string why = tryResolve(parseHostPort(uri.address, uri.scheme), /*passive=*/false, addresses);
    return why.empty() ? why : "address " + uri.address + " does not resolve: " + why;
  } catch (const InvalidArgument& e) {
    return e.what();
  }
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ",") + i;
  return out;
}

#ifdef ZCRPC_HAVE_RDMA
RdmaOptions rdmaOptionsOf(const Config& c) {
  RdmaOptions o;
  o.connection = c.connectionOptions();
  o.device = c.text("rdma_device");
  o.port = static_cast<int>(c.integer("rdma_port"));
  o.gidIndex = static_cast<int>(c.integer("rdma_gid_index"));
  return o;
}
#endif

}  // namespace

std::vector<std::string> compiledTransports() {
  std::vector<std::string> t{"shm", "tcp"};
#ifdef ZCRPC_HAVE_RDMA
  t.push_back("rdma");
#endif
  return t;
}

const EndpointVerdict* TransportChoice::chosen() const noexcept {
  for (const auto& v : verdicts)
    if (v.chosen) return &v;
  return nullptr;
}

std::string TransportChoice::describe() const {
  std::string out;
  for (const auto& v : verdicts)
    out += v.endpoint + ": " + (v.chosen ? "chosen" : "skipped: " + v.reason) + "\n";
  return out;
}

Context::Context(Config config) : config_(std::move(config)) {}

Config Context::configFor(const EndpointUri& uri, std::string_view text) const {
  Config c = config_;
  if (!uri.query.empty()) c.applyQuery(uri.query, text);
  return c;
}

std::string Context::unusableReason(const EndpointUri& uri, [[maybe_unused]] const Config& config) const {
  auto compiled = compiledTransports();
  if (std::find(compiled.begin(), compiled.end(), uri.scheme) == compiled.end()) {
    if (uri.scheme == "rdma") return "rdma transport not compiled in (built without libibverbs/librdmacm)";
    return "unknown transport '" + uri.scheme + "'";
  }
  if (uri.scheme == "shm") {
    if (!shmSocketExists(uri.address))
      return "no shm listener @zcrpc/" + uri.address + " on this host";
    return {};
  }
#ifdef ZCRPC_HAVE_RDMA
  if (uri.scheme == "rdma") {
    auto devices = rdmaDevices();
    if (devices.empty()) return "no RDMA device found (ibv_get_device_list is empty)";
    const std::string& want = config.text("rdma_device");
    if (!want.empty() && std::find(devices.begin(), devices.end(), want) == devices.end())
      return "RDMA device '" + want + "' (rdma_device) not found";
  }
#endif
  return unresolvable(uri);
}

TransportChoice Context::choose(std::span<const std::string> endpoints) const {
  TransportChoice choice;
  auto prefs = config_.transports();
  std::vector<std::pair<size_t, std::string>> ordered;
  for (const auto& e : endpoints) {
    EndpointUri uri = parseEndpoint(e);
    auto it = std::find(prefs.begin(), prefs.end(), uri.scheme);
    if (it == prefs.end()) {
      choice.verdicts.push_back({e, uri.scheme, false,
                                 "transport '" + uri.scheme + "' is not in the preference list (transports = " +
                                     joined(prefs) + ")"});
      continue;
    }
    ordered.push_back({static_cast<size_t>(it - prefs.begin()), e});
  }
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](auto& a, auto& b) { return a.first < b.first; });
  bool found = false;
  for (auto& [rank, e] : ordered) {
    EndpointUri uri = parseEndpoint(e);
    if (found) {
      choice.verdicts.push_back({e, uri.scheme, false, "an earlier preference was chosen"});
      continue;
    }
    std::string why = unusableReason(uri, config_);
    choice.verdicts.push_back({e, uri.scheme, why.empty(), why});
    found = why.empty();
  }
  return choice;
}

std::unique_ptr<Connection> Context::connect(std::string_view endpoint) const {
  std::string e(endpoint);
  return connect(std::span<const std::string>(&e, 1));
}

std::unique_ptr<Connection> Context::connect(std::span<const std::string> endpoints,
                                             TransportChoice* out) const {
  TransportChoice planned = choose(endpoints);
  TransportChoice result;
  std::unique_ptr<Connection> conn;
  for (auto& v : planned.verdicts) {
    EndpointVerdict verdict = v;
    verdict.chosen = false;
    if (!conn && (v.chosen || v.reason == "an earlier preference was chosen")) {
      EndpointUri uri = parseEndpoint(v.endpoint);
      std::string why = v.chosen ? std::string() : unusableReason(uri, config_);
      if (why.empty()) {
        try {
          Config c = configFor(uri, v.endpoint);
          if (uri.scheme == "shm") conn = connectShm(uri.address, c.connectionOptions());
          else if (uri.scheme == "tcp") conn = connectTcp(uri.address, c.tcpOptions());
#ifdef ZCRPC_HAVE_RDMA
          else if (uri.scheme == "rdma") conn = connectRdma(uri.address, rdmaOptionsOf(c));
#endif
          else why = "transport '" + uri.scheme + "' cannot connect yet";
        } catch (const std::exception& e) {
          why = std::string("connect failed: ") + e.what();
        }
      }
      verdict.chosen = conn != nullptr;
      verdict.reason = why;
    }
    result.verdicts.push_back(std::move(verdict));
  }
  if (out) *out = result;
  if (!conn) throw Failed("no endpoint could be reached:\n" + result.describe());
  return conn;
}

std::unique_ptr<Listener> Context::listen(std::string_view endpoint) const {
  EndpointUri uri = parseEndpoint(endpoint);
  Config c = configFor(uri, endpoint);
  if (uri.scheme == "shm") return listenShm(uri.address, c.shmListenOptions());
  if (uri.scheme == "tcp") return listenTcp(uri.address, c.tcpOptions());
#ifdef ZCRPC_HAVE_RDMA
  if (uri.scheme == "rdma") return listenRdma(uri.address, rdmaOptionsOf(c));
#endif
  throw InvalidArgument("cannot listen on '" + std::string(endpoint) + "': transport '" +
                        uri.scheme + "' is " +
                        (uri.scheme == "rdma" ? "not compiled in" : "unknown"));
}

}  // namespace zcrpc
