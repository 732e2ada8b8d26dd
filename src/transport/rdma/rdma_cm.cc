// zcrpc — rdma connection management: devices, addresses and cm events; the listener,
// listenRdma() and connectRdma().
#include "transport/rdma/rdma_cm.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>

#include "os/os.h"
#include "transport/rdma/rdma_connection.h"
#include "zcrpc/log.h"

namespace zcrpc {
namespace rdma {

void setNonBlocking(int fd, const std::string& what) {
  int flags = ZCRPC_SYSCALL(::fcntl(fd, F_GETFL), what + ": F_GETFL");
  ZCRPC_SYSCALL(::fcntl(fd, F_SETFL, flags | O_NONBLOCK), what + ": F_SETFL");
  ZCRPC_SYSCALL(::fcntl(fd, F_SETFD, FD_CLOEXEC), what + ": F_SETFD");
}

EventChannel::EventChannel(const std::string& what) {
  ch = rdma_create_event_channel();
  if (!ch)
    throw Failed(os::errnoText(what + ": rdma_create_event_channel (is rdma_ucm loaded?)", errno));
  setNonBlocking(ch->fd, what);
}

CmEvent nextCmEvent(rdma_event_channel* ch, Deadline deadline, const std::string& what) {
  for (;;) {
    CmEvent e;
    if (rdma_get_cm_event(ch, &e.ev) == 0) return e;
    if (errno != EAGAIN && errno != EINTR) throw Failed(os::errnoText(what + ": rdma_get_cm_event", errno));
    auto now = Clock::now();
    if (now >= deadline) return {};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    os::pollOne(ch->fd, POLLIN, std::min(left + std::chrono::milliseconds(1), std::chrono::milliseconds(500)));
  }
}

CmEvent expectCmEvent(rdma_event_channel* ch, rdma_cm_event_type expected, Deadline deadline,
                      const std::string& what, const char* step) {
  CmEvent e = nextCmEvent(ch, deadline, what);
  if (!e) throw Failed(what + ": " + step + " timed out");
  if (e.ev->event == expected) return e;
  std::string why = what + ": " + step + " failed: " + rdma_event_str(e.ev->event);
  if (e.ev->status) why += " (status " + std::to_string(e.ev->status) + ")";
  if (e.ev->event == RDMA_CM_EVENT_REJECTED) {
    const auto* rej = static_cast<const RejectData*>(e.ev->param.conn.private_data);
    if (rej && e.ev->param.conn.private_data_len >= sizeof(RejectData) && rej->magic == kPrivateMagic) {
      char reason[sizeof rej->reason + 1] = {};
      std::memcpy(reason, rej->reason, sizeof rej->reason);
      why += ": refused by server: " + std::string(reason);
    } else {
      why += ": connection refused (no zcrpc rdma listener there?)";
    }
  }
  throw Failed(why);
}

std::string deviceName(ibv_context* verbs) {
  return verbs ? ibv_get_device_name(verbs->device) : "(none)";
}

std::vector<std::string> listDevices() {
  std::vector<std::string> out;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return out;
  for (int i = 0; i < n; ++i) out.push_back(ibv_get_device_name(list[i]));
  ibv_free_device_list(list);
  return out;
}

namespace {

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "none" : s;
}

/// Throws Failed when there is no RDMA device at all, or not the one asked for.
void checkDevicePresent(const RdmaOptions& o, const std::string& what) {
  auto devices = listDevices();
  if (devices.empty())
    throw Failed(what + ": no RDMA device found (ibv_get_device_list listed none; looked for " +
                 (o.device.empty() ? std::string("any device") : "device '" + o.device + "'") +
                 "; is an RDMA driver such as mlx5_ib or rdma_rxe loaded?)");
  if (!o.device.empty() && std::find(devices.begin(), devices.end(), o.device) == devices.end())
    throw Failed(what + ": RDMA device '" + o.device + "' not found (present: " + joined(devices) + ")");
}

/// The IPv4 address of `device`'s RoCE v2 GID on `port` (at gidIndex, or the first
/// IPv4-mapped one), so a client can bind to that device. Empty when it has none.
std::string deviceIpv4(const RdmaOptions& o, const std::string& what) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return {};
  std::string result;
  for (int i = 0; i < n && result.empty(); ++i) {
    if (o.device != ibv_get_device_name(list[i])) continue;
    ibv_context* ctx = ibv_open_device(list[i]);
    if (!ctx) break;
    ibv_port_attr pa{};
    if (ibv_query_port(ctx, static_cast<uint8_t>(o.port), &pa) != 0) {
      ibv_close_device(ctx);
      ibv_free_device_list(list);
      throw Failed(what + ": RDMA device '" + o.device + "' has no port " + std::to_string(o.port));
    }
    int from = o.gidIndex >= 0 ? o.gidIndex : 0;
    int to = o.gidIndex >= 0 ? o.gidIndex + 1 : std::min<int>(kGidsScanned, pa.gid_tbl_len);
    for (int g = from; g < to && result.empty(); ++g) {
      ibv_gid gid{};
      if (ibv_query_gid(ctx, static_cast<uint8_t>(o.port), g, &gid) != 0) continue;
      static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
      if (std::memcmp(gid.raw, kMapped, 12) != 0) continue;
      char text[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, gid.raw + 12, text, sizeof text);
      result = text;
    }
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
  return result;
}

/// Checks the device, port and GID a cm id resolved to against the options.
void checkResolved(rdma_cm_id* id, const RdmaOptions& o, const std::string& what) {
  std::string dev = deviceName(id->verbs);
  if (!o.device.empty() && dev != o.device)
    throw Failed(what + ": the address routes to RDMA device '" + dev + "', not the configured '" +
                 o.device + "'");
  if (!o.device.empty() && id->port_num != o.port)
    throw Failed(what + ": the address routes to port " + std::to_string(id->port_num) + " of '" +
                 dev + "', not the configured port " + std::to_string(o.port));
  if (o.gidIndex >= 0) {
    ibv_gid gid{};
    if (ibv_query_gid(id->verbs, id->port_num, o.gidIndex, &gid) != 0)
      throw Failed(what + ": GID index " + std::to_string(o.gidIndex) + " of '" + dev + "' port " +
                   std::to_string(id->port_num) + " cannot be read");
    if (std::memcmp(&gid, &id->route.addr.addr.ibaddr.sgid, sizeof gid) != 0)
      throw Failed(what + ": the resolved source GID is not GID index " + std::to_string(o.gidIndex) +
                   " of '" + dev + "' (leave gidIndex at -1 to use the resolved one)");
  }
}


class RdmaListener final : public Listener {
 public:
  RdmaListener(std::string_view hostPort, const RdmaOptions& options)
      : options_(options), what_(withScheme(hostPort, "rdma")) {
    checkConnectionOptions(options_.connection, "rdma ring");
    checkDevicePresent(options_, what_);
    sockaddr_storage addr = resolve(parseHostPort(hostPort, "rdma"), /*passive=*/true, what_).firstAddress();
    channel_ = EventChannel(what_);
    if (rdma_create_id(channel_.ch, &id_, nullptr, RDMA_PS_TCP) != 0)
      throw Failed(os::errnoText(what_ + ": rdma_create_id", errno));
    if (rdma_bind_addr(id_, reinterpret_cast<sockaddr*>(&addr)) != 0) {
      int err = errno;
      rdma_destroy_id(id_);
      id_ = nullptr;
      throw Failed(os::errnoText("listen on " + what_ + ": rdma_bind_addr (is the address on an "
                                                        "RDMA-capable interface?)",
                                 err));
    }
    if (!options_.device.empty() && id_->verbs && deviceName(id_->verbs) != options_.device) {
      std::string dev = deviceName(id_->verbs);
      rdma_destroy_id(id_);
      id_ = nullptr;
      throw Failed("listen on " + what_ + ": the address belongs to RDMA device '" + dev +
                   "', not the configured '" + options_.device + "'");
    }
    if (rdma_listen(id_, 64) != 0) {
      int err = errno;
      rdma_destroy_id(id_);
      id_ = nullptr;
      throw Failed(os::errnoText("listen on " + what_ + ": rdma_listen", err));
    }
    endpoint_ = "rdma://" + addressText(rdma_get_local_addr(id_));
  }

  ~RdmaListener() override {
    if (id_) rdma_destroy_id(id_);
  }

  std::unique_ptr<Connection> accept(Deadline deadline) override {
    for (;;) {
      CmEvent e = nextCmEvent(channel_.ch, deadline, endpoint_);
      if (!e) return nullptr;
      if (e.ev->event != RDMA_CM_EVENT_CONNECT_REQUEST) continue;
      rdma_cm_id* id = e.ev->id;
      std::array<std::byte, sizeof(ConnectRequest)> priv{};
      size_t privLen = std::min<size_t>(e.ev->param.conn.private_data_len, priv.size());
      if (e.ev->param.conn.private_data) std::memcpy(priv.data(), e.ev->param.conn.private_data, privLen);
      std::string peer = addressText(rdma_get_peer_addr(id));
      e = CmEvent();  // acknowledged: the id may now move to a channel of its own
      std::string what = endpoint_ + " (server, peer " + peer + ")";
      try {
        return handshake(id, priv.data(), privLen, what, peer);
      } catch (const std::exception& ex) {
        remember("refused " + peer + ": " + ex.what());
      }
    }
  }

  int pollFd() const noexcept override { return channel_.ch->fd; }
  std::string endpoint() const override { return endpoint_; }
  std::vector<std::string> refusals() const override {
    std::lock_guard lock(mutex_);
    return {refusals_.begin(), refusals_.end()};
  }

 private:
  std::unique_ptr<Connection> handshake(rdma_cm_id* id, const void* priv, size_t privLen,
                                        const std::string& what, const std::string& peer) {
    auto deadline = deadlineAfter(options_.connection.connectTimeout);
    auto reject = [&](const std::string& why) {
      RejectData r{};
      r.magic = kPrivateMagic;
      std::snprintf(r.reason, sizeof r.reason, "%s", why.c_str());
      rdma_reject(id, &r, sizeof r);
    };
    // The token first: a client without it gets nothing made for it, no queue pair.
    if (std::string why = checkTokenProof(priv, privLen, options_.token); !why.empty()) {
      reject(why);
      rdma_destroy_id(id);
      throw Failed(why);
    }
    std::unique_ptr<RdmaConnection> conn;
    try {
      checkResolved(id, options_, what);
      EventChannel ch(what);
      if (rdma_migrate_id(id, ch.ch) != 0) throw Failed(os::errnoText(what + ": rdma_migrate_id", errno));
      conn = std::make_unique<RdmaConnection>(what, options_, std::move(ch), id);
    } catch (const std::exception& ex) {
      reject(ex.what());
      rdma_destroy_id(id);
      throw;
    }
    try {
      std::string why = conn->setPeer(priv, privLen);
      if (!why.empty()) throw Failed(why);
      conn->setUp();
    } catch (const std::exception& ex) {
      reject(ex.what());
      throw;  // conn's destructor releases the id and everything on it
    }
    PrivateData mine = conn->localPrivateData();
    rdma_conn_param param{};
    param.private_data = &mine;
    param.private_data_len = sizeof mine;
    param.responder_resources = 0;  // nothing is remotely readable
    param.initiator_depth = 0;
    param.rnr_retry_count = 7;
    param.retry_count = 7;
    if (rdma_accept(id, &param) != 0) throw Failed(os::errnoText(what + ": rdma_accept", errno));
    expectCmEvent(conn->channel(), RDMA_CM_EVENT_ESTABLISHED, deadline, what, "establishing");
    PeerIdentity identity;
    identity.transport = "rdma";
    identity.address = peer;
    identity.tokenVerified = !options_.token.empty();
    conn->setPeerIdentity(std::move(identity));
    return conn;
  }

  void remember(std::string why) {
    logMessage(LogLevel::kWarning, endpoint_ + ": " + why);
    std::lock_guard lock(mutex_);
    refusals_.push_back(std::move(why));
    if (refusals_.size() > 64) refusals_.pop_front();
  }

  RdmaOptions options_;
  std::string what_;
  EventChannel channel_;
  rdma_cm_id* id_ = nullptr;
  std::string endpoint_;
  mutable std::mutex mutex_;
  std::deque<std::string> refusals_;
};

}  // namespace

std::string firstDeviceIpv4() {
  for (const std::string& device : listDevices()) {
    RdmaOptions o;
    o.device = device;
    try {
      std::string ip = deviceIpv4(o, "rdma");
      if (!ip.empty()) return ip;
    } catch (const std::exception&) {
      // no port 1: try the next device
    }
  }
  return {};
}

}  // namespace rdma

using namespace rdma;

std::vector<std::string> rdmaDevices() { return listDevices(); }

std::unique_ptr<Listener> listenRdma(std::string_view hostPort, const RdmaOptions& options) {
  return std::make_unique<RdmaListener>(hostPort, options);
}

std::unique_ptr<Connection> connectRdma(std::string_view hostPort, const RdmaOptions& options) {
  checkConnectionOptions(options.connection, "rdma ring");
  std::string what = withScheme(hostPort, "rdma");
  checkDevicePresent(options, what);
  const HostPort hp = parseHostPort(hostPort, "rdma").forConnect();
  auto deadline = deadlineAfter(options.connection.connectTimeout);
  sockaddr_storage dst = resolve(hp, /*passive=*/false, what).firstAddress();
  sockaddr_storage src{};
  bool haveSrc = false;
  if (!options.device.empty()) {
    std::string ip = deviceIpv4(options, what);
    if (ip.empty())
      throw Failed(what + ": RDMA device '" + options.device + "' port " + std::to_string(options.port) +
                   " has no IPv4 (RoCE v2) GID among its first " + std::to_string(kGidsScanned) +
                   " to bind to");
    src = resolve({ip, "0"}, /*passive=*/false, what).firstAddress();
    haveSrc = true;
  }
  EventChannel ch(what);
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(ch.ch, &id, nullptr, RDMA_PS_TCP) != 0)
    throw Failed(os::errnoText(what + ": rdma_create_id", errno));
  auto conn = std::make_unique<RdmaConnection>(what, options, std::move(ch), id);
  int timeoutMs = static_cast<int>(std::clamp<int64_t>(options.connection.connectTimeout.count(), 1, 60'000));
  // Address resolution in short attempts: with a cold neighbour (ARP) cache the kernel
  // notices the answer only when an attempt times out, so a long attempt would cost the
  // whole connect timeout.
  for (int attempt = 0;; ++attempt) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    int attemptMs = static_cast<int>(std::clamp<int64_t>(left, 1, kResolveAttemptMs));
    if (rdma_resolve_addr(id, haveSrc ? reinterpret_cast<sockaddr*>(&src) : nullptr,
                          reinterpret_cast<sockaddr*>(&dst), attemptMs) != 0)
      throw Failed(os::errnoText(what + ": rdma_resolve_addr", errno));
    CmEvent e = nextCmEvent(conn->channel(), deadline + std::chrono::milliseconds(attemptMs), what);
    if (e && e.ev->event == RDMA_CM_EVENT_ADDR_RESOLVED) break;
    bool retry = e && e.ev->event == RDMA_CM_EVENT_ADDR_ERROR && Clock::now() < deadline;
    if (!retry) {
      std::string got = e ? std::string(rdma_event_str(e.ev->event)) + " (status " +
                                std::to_string(e.ev->status) + ")"
                          : std::string("timed out");
      throw Failed(what + ": resolving the address failed after " + std::to_string(attempt + 1) +
                   " attempts: " + got + " (is it reachable through an RDMA device" +
                   (options.device.empty() ? std::string() : " from '" + options.device + "'") + "?)");
    }
  }
  checkResolved(id, options, what);
  if (rdma_resolve_route(id, timeoutMs) != 0) throw Failed(os::errnoText(what + ": rdma_resolve_route", errno));
  expectCmEvent(conn->channel(), RDMA_CM_EVENT_ROUTE_RESOLVED, deadline, what, "resolving the route");
  conn->setUp();
  ConnectRequest request{};
  request.data = conn->localPrivateData();
  if (!options.token.empty()) {
    request.data.flags |= kHasTokenProof;
    request.tokenProof = tokenProof(options.token);
  }
  rdma_conn_param param{};
  param.private_data = &request;
  // Without a token, the 40 bytes a listener of before tokens expects.
  param.private_data_len = options.token.empty() ? sizeof request.data : sizeof request;
  param.responder_resources = 0;
  param.initiator_depth = 0;
  param.rnr_retry_count = 7;
  param.retry_count = 7;
  if (rdma_connect(id, &param) != 0) throw Failed(os::errnoText(what + ": rdma_connect", errno));
  CmEvent e = expectCmEvent(conn->channel(), RDMA_CM_EVENT_ESTABLISHED, deadline, what, "connecting");
  std::string why = conn->setPeer(e.ev->param.conn.private_data, e.ev->param.conn.private_data_len);
  if (!why.empty()) throw Failed(what + ": " + why);
  PeerIdentity identity;
  identity.transport = "rdma";
  identity.address = addressText(rdma_get_peer_addr(id));
  conn->setPeerIdentity(std::move(identity));
  return conn;
}

}  // namespace zcrpc
