// zcrpc's own transports as a Context sees them (builtinTransports()): for each, its scheme,
// whether it can be used here, the options it takes from a Config, and what it can do.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <fstream>

#include "transport/address.h"
#include "transport/ring/ring_connection.h"
#include "transport/tcp/tcp_connection.h"
#include "compat/sockets.h"
#include "zcrpc/capnp.h"
#include "zcrpc/context.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"
#ifdef ZCRPC_HAVE_RDMA
#include "transport/rdma/rdma_cm.h"
#include "zcrpc/rdma.h"
#endif

namespace zcrpc {

namespace {

/// Why a network endpoint's address is not usable (malformed, or it does not resolve), or
/// empty when it resolves.
std::string unresolvable(std::string_view address, std::string_view scheme) {
  try {
    AddressList addresses;
    std::string why = tryResolve(parseHostPort(address, scheme), /*passive=*/false, addresses);
    return why.empty() ? why : "address " + std::string(address) + " does not resolve: " + why;
  } catch (const InvalidArgument& e) {
    return e.what();
  }
}

/// True when an abstract unix socket "@zcrpc/<name>" is listening on this host (in this
/// network namespace). Reads /proc/net/unix instead of connecting, so probing leaves
/// no trace in the server's refusal log.
bool shmSocketExists(std::string_view name) {
  std::ifstream in("/proc/net/unix");
  std::string line, want = "@zcrpc/" + std::string(name);
  while (std::getline(in, line)) {
    if (line.size() >= want.size() && line.compare(line.size() - want.size(), want.size(), want) == 0 &&
        (line.size() == want.size() || line[line.size() - want.size() - 1] == ' '))
      return true;
  }
  return false;
}

class ShmTransport final : public Transport {
 public:
  std::string_view scheme() const noexcept override { return "shm"; }
  std::string_view summary() const noexcept override {
    return "lock-free rings in shared memory between processes on this host";
  }
  TransportTraits traits() const noexcept override {
    return {.compiledIn = true, .crossHost = false, .sharedMemory = true,
            .gathersFromBytes = ring::kGathersFromBytes};
  }
  std::span<const std::string_view> settings() const noexcept override { return kSettings; }
  std::string unavailable(const Config&) const override { return {}; }
  std::string unreachable(std::string_view address, const Config&) const override {
    if (!shmSocketExists(address)) return "no shm listener @zcrpc/" + std::string(address) + " on this host";
    return {};
  }
  std::unique_ptr<Connection> connect(std::string_view address, const ConnectionOptions& o,
                                      const Config&) const override {
    return connectShm(address, o);
  }
  std::unique_ptr<Listener> listen(std::string_view address, const ConnectionOptions& o,
                                   const Config& c) const override {
    ShmListenOptions l = c.shmListenOptions();
    l.connection = o;
    return listenShm(address, l);
  }
  std::string localAddress() const override {
    static std::atomic<uint32_t> next{0};
    return "zcrpc-local-" + std::to_string(::getpid()) + "-" + std::to_string(next++);
  }

 private:
  static constexpr std::array<std::string_view, 5> kSettings{"arena_bytes", "allow_same_uid", "allow_uids",
                                                             "allow_gids", "max_connections"};
};

class TcpTransport final : public Transport {
 public:
  std::string_view scheme() const noexcept override { return "tcp"; }
  std::string_view summary() const noexcept override { return "framed TCP streams to any host"; }
  TransportTraits traits() const noexcept override {
    return {.compiledIn = true, .crossHost = true, .sharedMemory = false,
            .gathersFromBytes = tcp::kWriteExternalBytes};
  }
  std::span<const std::string_view> settings() const noexcept override { return kSettings; }
  std::string unavailable(const Config&) const override { return {}; }
  std::string unreachable(std::string_view address, const Config&) const override {
    return unresolvable(address, scheme());
  }
  std::unique_ptr<Connection> connect(std::string_view address, const ConnectionOptions& o,
                                      const Config& c) const override {
    return connectTcp(address, options(o, c));
  }
  std::unique_ptr<Listener> listen(std::string_view address, const ConnectionOptions& o,
                                   const Config& c) const override {
    return listenTcp(address, options(o, c));
  }
  std::string localAddress() const override { return "127.0.0.1:0"; }

 private:
  static TcpOptions options(const ConnectionOptions& o, const Config& c) {
    TcpOptions t = c.tcpOptions();
    t.connection = o;
    return t;
  }
  static constexpr std::array<std::string_view, 13> kSettings{
      "token",           "allow_plaintext_token", "tls",         "tls_cert_file",       "tls_key_file",
      "tls_ca_file",     "tls_server_name",       "tls_client_auth", "tls_ktls",        "tls_ciphersuites",
      "tls_reload_interval", "max_connections",   "dead_peer_timeout"};
};

class RdmaTransport final : public Transport {
 public:
  std::string_view scheme() const noexcept override { return "rdma"; }
  std::string_view summary() const noexcept override {
    return "RDMA WRITE into the peer's registered ring (libibverbs RC queue pairs, librdmacm)";
  }
  TransportTraits traits() const noexcept override {
    return {.compiledIn = kCompiledIn, .crossHost = true, .sharedMemory = false,
            .gathersFromBytes = UINT64_MAX};
  }
  std::span<const std::string_view> settings() const noexcept override { return kSettings; }
  std::string unavailable([[maybe_unused]] const Config& config) const override {
#ifdef ZCRPC_HAVE_RDMA
    auto devices = rdmaDevices();
    if (devices.empty()) return "no RDMA device found (ibv_get_device_list is empty)";
    const std::string& want = config.text("rdma_device");
    if (!want.empty() && std::find(devices.begin(), devices.end(), want) == devices.end())
      return "RDMA device '" + want + "' (rdma_device) not found";
    return {};
#else
    return "rdma transport not compiled in (built without libibverbs/librdmacm)";
#endif
  }
  std::string unreachable(std::string_view address, const Config&) const override {
    return unresolvable(address, scheme());
  }
  std::unique_ptr<Connection> connect([[maybe_unused]] std::string_view address,
                                      [[maybe_unused]] const ConnectionOptions& o,
                                      [[maybe_unused]] const Config& c) const override {
#ifdef ZCRPC_HAVE_RDMA
    return connectRdma(address, options(o, c));
#else
    throw InvalidArgument("cannot connect to 'rdma://" + std::string(address) +
                          "': transport 'rdma' is not compiled in");
#endif
  }
  std::unique_ptr<Listener> listen([[maybe_unused]] std::string_view address,
                                   [[maybe_unused]] const ConnectionOptions& o,
                                   [[maybe_unused]] const Config& c) const override {
#ifdef ZCRPC_HAVE_RDMA
    return listenRdma(address, options(o, c));
#else
    throw InvalidArgument("cannot listen on 'rdma://" + std::string(address) +
                          "': transport 'rdma' is not compiled in");
#endif
  }
  std::string localAddress() const override {
#ifdef ZCRPC_HAVE_RDMA
    std::string ip = rdma::firstDeviceIpv4();
    return ip.empty() ? ip : ip + ":0";
#else
    return {};
#endif
  }

 private:
#ifdef ZCRPC_HAVE_RDMA
  static constexpr bool kCompiledIn = true;
  static RdmaOptions options(const ConnectionOptions& o, const Config& c) {
    RdmaOptions r;
    r.connection = o;
    r.device = c.text("rdma_device");
    r.port = static_cast<int>(c.integer("rdma_port"));
    r.gidIndex = static_cast<int>(c.integer("rdma_gid_index"));
    r.token = c.text("token");
    return r;
  }
#else
  static constexpr bool kCompiledIn = false;
#endif
  static constexpr std::array<std::string_view, 4> kSettings{"rdma_device", "rdma_port",
                                                             "rdma_gid_index", "token"};
};

/// Standard Cap'n Proto peers (zcrpc/capnp.h): Cap'n Proto's own RPC protocol over TCP
/// (capnp://host:port) or a unix stream socket (capnp+unix:///path, capnp+unix://@name).
class CapnpTransport final : public Transport {
 public:
  explicit CapnpTransport(bool unix) : unix_(unix) {}
  std::string_view scheme() const noexcept override {
    return unix_ ? compat::kUnixScheme : compat::kTcpScheme;
  }
  std::string_view summary() const noexcept override {
    return unix_ ? "Cap'n Proto's own RPC protocol on a unix socket, to and from standard Cap'n Proto peers"
                 : "Cap'n Proto's own RPC protocol over TCP, to and from standard Cap'n Proto peers";
  }
  TransportTraits traits() const noexcept override {
    return {.compiledIn = true, .crossHost = !unix_, .sharedMemory = false,
            .gathersFromBytes = UINT64_MAX, .rpcFramesOnly = true};
  }
  std::span<const std::string_view> settings() const noexcept override {
    return unix_ ? std::span<const std::string_view>(kUnixSettings) : std::span<const std::string_view>(kTcpSettings);
  }
  std::string unavailable(const Config&) const override { return {}; }
  std::string unreachable(std::string_view address, const Config&) const override {
    if (!unix_) return unresolvable(address, scheme());
    try {
      compat::UnixAddress a(address);
      if (!a.abstract() && ::access(a.path().c_str(), F_OK) != 0)
        return "no socket " + a.path() + " on this host";
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    return {};
  }
  std::unique_ptr<Connection> connect(std::string_view address, const ConnectionOptions& o,
                                      const Config& c) const override {
    return unix_ ? connectCapnpUnix(address, options(o, c)) : connectCapnp(address, options(o, c));
  }
  std::unique_ptr<Listener> listen(std::string_view address, const ConnectionOptions& o,
                                   const Config& c) const override {
    if (!unix_ && !c.text("token").empty())
      // A token guards the server's tcp listeners; a standard client has no way to present
      // it (rpc.capnp has no such field), so serving it here would bypass the token.
      throw InvalidArgument(withScheme(address, scheme()) +
                            ": the server has an access token (token), and standard Cap'n Proto clients cannot present "
                            "one; serve them on capnp+unix:// (checked by the credential policy), or say " +
                            withScheme(address, scheme()) + "?token= to serve this listener without it");
    return unix_ ? listenCapnpUnix(address, options(o, c)) : listenCapnp(address, options(o, c));
  }
  std::string localAddress() const override {
    if (!unix_) return "127.0.0.1:0";
    static std::atomic<uint32_t> next{0};
    return "@zcrpc-capnp-local-" + std::to_string(::getpid()) + "-" + std::to_string(next++);
  }

 private:
  CapnpOptions options(const ConnectionOptions& o, const Config& c) const {
    CapnpOptions out;
    out.connection = o;
    out.policy = c.credentialPolicy();
    out.deadPeerTimeout = c.tcpOptions().deadPeerTimeout;
    if (!unix_) out.tls = c.tcpOptions().tls;  // unix sockets: the credential policy instead
    return out;
  }
  static constexpr std::array<std::string_view, 11> kTcpSettings{
      "token",           "dead_peer_timeout", "tls",      "tls_cert_file",    "tls_key_file",       "tls_ca_file",
      "tls_server_name", "tls_client_auth",   "tls_ktls", "tls_ciphersuites", "tls_reload_interval"};
  static constexpr std::array<std::string_view, 3> kUnixSettings{"allow_same_uid", "allow_uids",
                                                                 "allow_gids"};
  bool unix_;
};

}  // namespace

TransportList builtinTransports() {
  return {std::make_shared<ShmTransport>(), std::make_shared<TcpTransport>(),
          std::make_shared<RdmaTransport>(), std::make_shared<CapnpTransport>(false),
          std::make_shared<CapnpTransport>(true)};
}

std::vector<std::string> compiledTransports() {
  std::vector<std::string> out;
  for (const auto& t : builtinTransports())
    if (t->traits().compiledIn) out.emplace_back(t->scheme());
  return out;
}

}  // namespace zcrpc
