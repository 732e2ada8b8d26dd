// zcrpc-info — what this build of zcrpc can do and what it would decide here: transports
// compiled in, RDMA devices with their ports and first GIDs, the effective settings and
// where each came from (sizes in KiB/MiB/GiB), what the configuration ignored (misspelt
// variables, tables outside [zcrpc]), the generated settings reference (--settings), and
// for a list of endpoints whether each one works (it connects to every one, handshake
// included) and which a client would choose.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "zcrpc/context.h"
#include "zcrpc/log.h"

#ifdef ZCRPC_HAVE_RDMA
#include <arpa/inet.h>
#include <infiniband/verbs.h>
#endif

namespace {

/// GID table entries shown per port: the first few hold the link-local and RoCE v1/v2
/// addresses; the full table can have hundreds of empty entries.
constexpr int kGidsShown = 4;

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : sep) + i;
  return out;
}

#ifdef ZCRPC_HAVE_RDMA
const char* portState(ibv_port_state s) {
  switch (s) {
    case IBV_PORT_DOWN: return "down";
    case IBV_PORT_INIT: return "init";
    case IBV_PORT_ARMED: return "armed";
    case IBV_PORT_ACTIVE: return "active";
    case IBV_PORT_ACTIVE_DEFER: return "active-defer";
    default: return "unknown";
  }
}

const char* linkLayer(uint8_t l) {
  switch (l) {
    case IBV_LINK_LAYER_INFINIBAND: return "InfiniBand";
    case IBV_LINK_LAYER_ETHERNET: return "Ethernet (RoCE)";
    default: return "unspecified";
  }
}

void printRdmaDevices() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list || n == 0) {
    fmt::print("RDMA devices: none found{}\n", list ? "" : " (no RDMA support in this kernel)");
    if (list) ibv_free_device_list(list);
    return;
  }
  fmt::print("RDMA devices:\n");
  for (int i = 0; i < n; ++i) {
    const char* name = ibv_get_device_name(list[i]);
    ibv_context* ctx = ibv_open_device(list[i]);
    if (!ctx) {
      fmt::print("  {}: cannot be opened\n", name);
      continue;
    }
    ibv_device_attr attr{};
    if (ibv_query_device(ctx, &attr) != 0) {
      fmt::print("  {}: cannot be queried\n", name);
      ibv_close_device(ctx);
      continue;
    }
    fmt::print("  {}: {} port(s), firmware {}\n", name, attr.phys_port_cnt, attr.fw_ver);
    for (uint8_t port = 1; port <= attr.phys_port_cnt; ++port) {
      ibv_port_attr pa{};
      if (ibv_query_port(ctx, port, &pa) != 0) {
        fmt::print("    port {}: cannot be queried\n", port);
        continue;
      }
      fmt::print("    port {}: {}, {}, MTU {}, {} GID entries\n", port,
                 portState(pa.state), linkLayer(pa.link_layer), 128 << pa.active_mtu,
                 pa.gid_tbl_len);
      for (int g = 0; g < std::min<int>(pa.gid_tbl_len, kGidsShown); ++g) {
        ibv_gid gid{};
        if (ibv_query_gid(ctx, port, g, &gid) != 0) continue;
        bool empty = std::all_of(std::begin(gid.raw), std::end(gid.raw), [](uint8_t b) { return b == 0; });
        if (empty) continue;
        char text[INET6_ADDRSTRLEN] = {};
        inet_ntop(AF_INET6, gid.raw, text, sizeof text);
        fmt::print("      gid[{}] {}\n", g, text);
      }
    }
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
}
#endif

/// A size setting's bytes as people write them: "1MiB", "136MiB", "4KiB"; sizes that are
/// no whole number of a unit get one decimal and their bytes: "1.4MiB (1500000)".
std::string humanSize(const std::string& bytesText) {
  uint64_t bytes = 0;
  try {
    bytes = std::stoull(bytesText);
  } catch (const std::exception&) {
    return bytesText;
  }
  constexpr std::pair<uint64_t, const char*> kUnits[] = {
      {uint64_t{1} << 30, "GiB"}, {uint64_t{1} << 20, "MiB"}, {uint64_t{1} << 10, "KiB"}};
  for (auto [unit, name] : kUnits) {
    if (bytes < unit) continue;
    if (bytes % unit == 0) return fmt::format("{}{}", bytes / unit, name);
    return fmt::format("{:.1f}{} ({})", static_cast<double>(bytes) / static_cast<double>(unit),
                       name, bytes);
  }
  return fmt::format("{} bytes", bytes);
}

bool isSize(const std::string& name) {
  for (const auto& s : zcrpc::settingsTable())
    if (s.name == name) return s.type == zcrpc::SettingType::kSize;
  return false;
}

void printSettings(const zcrpc::Config& config) {
  auto rows = config.effective();
  for (auto& r : rows)
    if (isSize(r.name)) r.value = humanSize(r.value);
  size_t wName = 7, wValue = 5, wSource = 6;
  for (const auto& r : rows) {
    wName = std::max(wName, r.name.size());
    wValue = std::max(wValue, r.value.size());
    wSource = std::max(wSource, zcrpc::settingSourceName(r.source).size());
  }
  fmt::print("effective settings:\n");
  fmt::print("  {:<{}}  {:<{}}  {:<{}}  {}\n", "setting", wName, "value", wValue, "source",
             wSource, "origin");
  for (const auto& r : rows)
    fmt::print("  {:<{}}  {:<{}}  {:<{}}  {}\n", r.name, wName, r.value.empty() ? "\"\"" : r.value,
               wValue, zcrpc::settingSourceName(r.source), wSource, r.origin);
}

/// The Context's transports: whether each can be used here (or why not), what it can do
/// and the settings of its own it reads.
void printTransports(const zcrpc::Context& context) {
  fmt::print("transports:\n");
  for (const auto& t : context.transports()) {
    const zcrpc::TransportTraits traits = t->traits();
    std::string why = t->unavailable(context.config());
    fmt::print("  {:<5} {}\n", t->scheme(), why.empty() ? std::string("available") : "unavailable: " + why);
    std::vector<std::string> can;
    can.push_back(traits.crossHost ? "other hosts" : "this host only");
    if (traits.sharedMemory) can.push_back("shared memory");
    can.push_back(traits.gathersFromBytes == UINT64_MAX
                      ? std::string("copies referenceData at once")
                      : "gathers referenceData from " + std::to_string(traits.gathersFromBytes) + " B");
    fmt::print("        {}; {}\n", t->summary(), join(can, ", "));
    std::vector<std::string> settings(t->settings().begin(), t->settings().end());
    fmt::print("        settings: the connection settings{}{}\n", settings.empty() ? "" : ", ",
               join(settings, ", "));
  }
}

void printWarnings(const zcrpc::Config& config) {
  if (config.warnings().empty()) return;
  fmt::print("\nignored (warnings):\n");
  for (const auto& w : config.warnings()) fmt::print("  {}\n", w);
}

/// Settings that weaken security on purpose: said out loud, because they work silently.
void printSecurityWarnings(const zcrpc::Config& config) {
  if (config.text("token").empty() || config.flag("tls") || !config.flag("allow_plaintext_token")) return;
  fmt::print("\nWARNING: allow_plaintext_token=true and tls is off: the tcp access token crosses the "
             "network in clear text, readable by anyone on the path (turn tls on)\n");
}

/// What one endpoint does when a client connects to it.
struct Trial {
  bool works = false;
  std::string detail;  // "connected in 0.3 ms", or why it fails
};

/// Connects to `endpoint` alone (handshake included) and closes again.
Trial tryEndpoint(const zcrpc::Context& context, const std::string& endpoint) {
  zcrpc::TransportChoice one;
  const auto start = std::chrono::steady_clock::now();
  try {
    auto connection = context.connect(std::span<const std::string>(&endpoint, 1), &one);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    // Who answered, as the transport authenticated it: TLS protocol, cipher, kernel TLS and
    // the server's verified certificate, or shm's credentials.
    std::string peer = connection->peer().describe();
    connection->close();
    return {true, fmt::format("connected in {:.1f} ms; server: {}", ms, peer)};
  } catch (const std::exception& e) {
    if (!one.verdicts.empty() && !one.verdicts[0].reason.empty()) return {false, one.verdicts[0].reason};
    return {false, e.what()};
  }
}

/// Every endpoint in the order a client considers them: each one that the preference list
/// admits is tried for real, so "chosen" is the first that connects (an address that
/// merely resolves is not enough), and the others say whether they would work too.
/// `plan`: choose() only, without connecting. Returns true when some endpoint works.
bool printChoice(const zcrpc::Context& context, const std::vector<std::string>& endpoints, bool plan) {
  zcrpc::TransportChoice choice = context.choose(endpoints);
  fmt::print("transport choice (preference: {}){}:\n", join(context.config().transports(), ","),
             plan ? ", planned without connecting" : ", each endpoint tried");
  size_t w = 8;
  for (const auto& v : choice.verdicts) w = std::max(w, v.endpoint.size());
  const zcrpc::EndpointVerdict* chosen = nullptr;
  const std::vector<std::string> prefs = context.config().transports();
  for (const auto& v : choice.verdicts) {
    std::string verdict;
    // The preference list holds known transports only: an endpoint outside it (or of an
    // unknown scheme) is never used, so it is not tried either.
    const bool considered = std::find(prefs.begin(), prefs.end(), v.transport) != prefs.end();
    if (plan) {
      verdict = v.chosen ? "chosen" : "skipped: " + v.reason;
      if (v.chosen) chosen = &v;
    } else if (!considered) {
      verdict = "skipped: " + v.reason;
    } else {
      Trial t = tryEndpoint(context, v.endpoint);
      if (t.works && !chosen) {
        chosen = &v;
        verdict = "chosen (" + t.detail + ")";
      } else if (t.works) {
        verdict = "works too (" + t.detail + "); an earlier preference is chosen";
      } else {
        verdict = "fails: " + t.detail;
      }
    }
    fmt::print("  {:<{}}  {:<5} {}\n", v.endpoint, w, v.transport, verdict);
  }
  if (chosen)
    fmt::print("would connect to {} over {}\n", chosen->endpoint, chosen->transport);
  else
    fmt::print("no endpoint {}\n", plan ? "is usable" : "works");
  return chosen != nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zcrpc-info: transports, RDMA devices, effective settings and transport choice"};
  bool reference = false;
  std::vector<std::string> endpoints;
  std::string configFile;
  bool plan = false;
  app.add_flag("--no-connect", plan,
               "choose among the endpoints without connecting to any (shm: its listener "
               "exists; rdma and tcp: the address resolves)");
  app.add_flag("--settings", reference,
               "print the settings reference (Markdown: name, type, default, variable, meaning)");
  app.add_option("--config", configFile, "read this TOML file (as ZCRPC_CONFIG would)");
  app.add_option("endpoints", endpoints,
                 "endpoints of one service (shm://NAME, tcp://HOST:PORT, rdma://HOST:PORT): "
                 "connect to each, show which works and which a client would choose; exit "
                 "status 1 when none works");
  CLI11_PARSE(app, argc, argv);

  if (reference) {
    fmt::print("{}", zcrpc::Config::reference());
    return 0;
  }
  bool anyWorks = true;
  try {
    // What the configuration ignores is printed below, not logged on stderr as well.
    zcrpc::setLogLevel(zcrpc::LogLevel::kError);
    zcrpc::Config config = zcrpc::Config::load();
    if (!configFile.empty()) config.loadFile(configFile);
    fmt::print("zcrpc {}\n", ZCRPC_VERSION);
    fmt::print("transports compiled in: {}\n", join(zcrpc::compiledTransports(), ", "));
#ifdef ZCRPC_HAVE_RDMA
    printRdmaDevices();
#else
    fmt::print("RDMA devices: not looked for (rdma transport not compiled in)\n");
#endif
    zcrpc::Context context(config);
    printTransports(context);
    fmt::print("\n");
    printSettings(config);
    printWarnings(config);
    printSecurityWarnings(config);
    if (!endpoints.empty()) {
      fmt::print("\n");
      anyWorks = printChoice(context, endpoints, plan);
    }
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "zcrpc-info: {}\n", e.what());
    return 2;
  }
  return anyWorks ? 0 : 1;
}
