// zcrpc-info — what this build of zcrpc can do and what it would decide here: transports
// compiled in, RDMA devices with their ports and first GIDs, the effective settings and
// where each came from, the generated settings reference (--settings), and for a list of
// endpoints which transport would be chosen and why each other one was skipped.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "zcrpc/context.h"

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

void printSettings(const zcrpc::Config& config) {
  auto rows = config.effective();
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

void printChoice(const zcrpc::Context& context, const std::vector<std::string>& endpoints) {
  zcrpc::TransportChoice choice = context.choose(endpoints);
  fmt::print("transport choice (preference: {}):\n", join(context.config().transports(), ","));
  size_t w = 8;
  for (const auto& v : choice.verdicts) w = std::max(w, v.endpoint.size());
  for (const auto& v : choice.verdicts)
    fmt::print("  {:<{}}  {:<5} {}\n", v.endpoint, w, v.transport,
               v.chosen ? std::string("chosen") : "skipped: " + v.reason);
  if (const auto* c = choice.chosen())
    fmt::print("would connect to {} over {}\n", c->endpoint, c->transport);
  else
    fmt::print("no endpoint is usable\n");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zcrpc-info: transports, RDMA devices, effective settings and transport choice"};
  bool reference = false;
  std::vector<std::string> endpoints;
  std::string configFile;
  app.add_flag("--settings", reference,
               "print the settings reference (Markdown: name, type, default, variable, meaning)");
  app.add_option("--config", configFile, "read this TOML file (as ZCRPC_CONFIG would)");
  app.add_option("endpoints", endpoints,
                 "endpoints of one service (shm://NAME, tcp://HOST:PORT, rdma://HOST:PORT): "
                 "show which would be chosen and why the others were skipped");
  CLI11_PARSE(app, argc, argv);

  if (reference) {
    fmt::print("{}", zcrpc::Config::reference());
    return 0;
  }
  try {
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
    if (!endpoints.empty()) {
      fmt::print("\n");
      printChoice(context, endpoints);
    }
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "zcrpc-info: {}\n", e.what());
    return 2;
  }
  return 0;
}
