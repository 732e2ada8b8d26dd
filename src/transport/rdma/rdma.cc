// rdma:// — frames moved by RDMA WRITE WITH IMMEDIATE into the peer's registered ring.
//
// Each side registers one receive region for remote write: a byte ring (power of two) and,
// after it, one credit word. Nothing is registered for remote read. The other side builds
// its message in place in its own registered send buffer and moves the whole record
// (16-byte record header + frame) with one RDMA WRITE WITH IMMEDIATE; the immediate carries
// the record length. Both sides derive where a record lies from the same rule (records
// are contiguous; one that would run past the end of the ring starts the next lap), so
// nothing but the length travels out of band. Receives are zero-length work requests
// whose completions say, in order, that a record has landed.
//
// Credits: the receiver counts records it has released (in arrival order, LeaseQueue).
// The count travels piggy-backed in every record header it sends, and lazily, when
// nothing flows the other way or before it sleeps, by an inline RDMA WRITE into the
// sender's credit word. The sender remembers where each record it sent ends, so the
// count gives both the ring bytes freed and the receive requests re-posted: it never
// overwrites unread data and never runs the peer's receive queue dry.
//
// Frames larger than a quarter of the peer's ring, or needing more gather entries than
// the queue pair has, travel in fragments (each its own record) and are reassembled on
// receipt in a buffer of their own: one copy, for large messages only. See docs/rdma.md.
#include "zcrpc/rdma.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <poll.h>
#include <sched.h>
#include <rdma/rdma_cma.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>

#include "os/os.h"
#include "os/spin.h"
#include "transport/lease_queue.h"
#include "transport/ring/layout.h"

namespace zcrpc {

namespace {

constexpr uint32_t kPrivateMagic = 0x6472'637a;  // "zcrd"
constexpr uint16_t kPrivateVersion = 1;
constexpr uint32_t kRecordHeaderBytes = 16;
/// A record may use at most this fraction of the peer's ring; larger frames fragment.
constexpr uint32_t kRecordShare = 4;
/// Records one side may have in flight (unreleased) towards the other: the receive
/// queue holds this many plus a re-post batch.
constexpr uint32_t kRecvCredits = 512;
constexpr uint32_t kRecvBatch = 32;
constexpr uint32_t kSendDepth = 256;
constexpr uint32_t kSignalEvery = 32;
constexpr uint32_t kOutQueue = 128;
constexpr uint32_t kPostBatch = 32;
constexpr uint32_t kWantInline = 256;
constexpr uint32_t kMaxSgeWanted = 32;
constexpr uint32_t kLocalSge = kMaxSegments + 2;
constexpr uint32_t kTableReserve = kMaxSegments * sizeof(SegmentEntry);
constexpr uint32_t kControlBytes = 4096;  // after the ring: the credit word, then padding
constexpr uint32_t kImmLengthMask = 0x3fff'ffffu;
constexpr int kGidsScanned = 8;  // GID table entries scanned (reading them is slow under emulation)
constexpr int64_t kResolveAttemptMs = 1000;
using os::kYieldEvery;
static_assert(ring::isPowerOfTwo(kRecvCredits) && ring::isPowerOfTwo(kSendDepth));
static_assert(kSignalEvery * 4 <= kSendDepth, "a signalled request among every quarter of the queue");
static_assert(kRecvBatch < kRecvCredits);

enum RecordFlags : uint16_t { kFragment = 1, kFirst = 2, kLast = 4 };

/// Connection private data (both directions); 56 bytes is the limit for a connect request.
struct PrivateData {
  uint32_t magic;
  uint16_t version;
  uint16_t flags;
  uint64_t ringAddr;
  uint32_t rkey;
  uint32_t ringBytes;
  uint32_t recvCredits;
  uint32_t reserved;
  uint64_t maxMessageBytes;
};
static_assert(sizeof(PrivateData) == 40);

/// Sent in a reject's private data so the client can say why.
struct RejectData {
  uint32_t magic;
  char reason[120];
};

/// At the start of every record in the ring.
struct RecordHeader {
  uint32_t credit;      ///< records the writer has released of those it received (mod 2^32)
  uint16_t flags;       ///< RecordFlags; 0 = a whole frame
  uint16_t reserved;
  uint32_t frameBytes;  ///< the whole frame's size (fragments: of the frame they carry)
  uint32_t reserved2;
};
static_assert(sizeof(RecordHeader) == kRecordHeaderBytes);

using os::cpuRelax;

std::string withScheme(std::string_view text) {
  return text.starts_with("rdma://") ? std::string(text) : "rdma://" + std::string(text);
}

struct HostPort {
  std::string host;
  std::string port;
};

HostPort splitHostPort(std::string_view text) {
  std::string_view s = text;
  if (s.starts_with("rdma://")) s.remove_prefix(7);
  auto colon = s.rfind(':');
  if (colon == std::string_view::npos)
    throw InvalidArgument("rdma endpoint '" + std::string(text) + "' has no :port");
  std::string_view host = s.substr(0, colon), port = s.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoul(std::string(port)) > 65535)
    throw InvalidArgument("rdma endpoint '" + std::string(text) + "' has a bad port '" +
                          std::string(port) + "'");
  return {host.empty() ? std::string("0.0.0.0") : std::string(host), std::string(port)};
}

sockaddr_storage resolveAddress(const HostPort& hp, bool passive, const std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = (passive ? AI_PASSIVE : 0) | AI_NUMERICSERV;
  addrinfo* list = nullptr;
  int r = ::getaddrinfo(hp.host.c_str(), hp.port.c_str(), &hints, &list);
  if (r != 0) throw Failed("resolve " + what + ": " + ::gai_strerror(r));
  sockaddr_storage out{};
  std::memcpy(&out, list->ai_addr, list->ai_addrlen);
  ::freeaddrinfo(list);
  return out;
}

std::string addressText(const sockaddr* a) {
  char host[INET6_ADDRSTRLEN] = "?";
  char text[INET6_ADDRSTRLEN + 16];
  if (a->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(a);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    std::snprintf(text, sizeof text, "%s:%u", host, ntohs(in->sin_port));
  } else {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(a);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    std::snprintf(text, sizeof text, "[%s]:%u", host, ntohs(in6->sin6_port));
  }
  return text;
}

void setNonBlocking(int fd, const std::string& what) {
  int flags = ZCRPC_SYSCALL(::fcntl(fd, F_GETFL), what + ": F_GETFL");
  ZCRPC_SYSCALL(::fcntl(fd, F_SETFL, flags | O_NONBLOCK), what + ": F_SETFL");
  ZCRPC_SYSCALL(::fcntl(fd, F_SETFD, FD_CLOEXEC), what + ": F_SETFD");
}

struct EventChannel {
  rdma_event_channel* ch = nullptr;
  EventChannel() = default;
  explicit EventChannel(const std::string& what) {
    ch = rdma_create_event_channel();
    if (!ch)
      throw Failed(os::errnoText(what + ": rdma_create_event_channel (is rdma_ucm loaded?)", errno));
    setNonBlocking(ch->fd, what);
  }
  EventChannel(EventChannel&& o) noexcept : ch(std::exchange(o.ch, nullptr)) {}
  EventChannel& operator=(EventChannel&& o) noexcept {
    std::swap(ch, o.ch);
    return *this;
  }
  ~EventChannel() {
    if (ch) rdma_destroy_event_channel(ch);
  }
};

/// One cm event, acknowledged on destruction.
struct CmEvent {
  rdma_cm_event* ev = nullptr;
  CmEvent() = default;
  CmEvent(CmEvent&& o) noexcept : ev(std::exchange(o.ev, nullptr)) {}
  CmEvent& operator=(CmEvent&& o) noexcept {
    std::swap(ev, o.ev);
    return *this;
  }
  ~CmEvent() {
    if (ev) rdma_ack_cm_event(ev);
  }
  explicit operator bool() const noexcept { return ev != nullptr; }
};

/// The next cm event on `ch`, or an empty one at the deadline.
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

/// Waits for `expected` on `ch`; any other event is an error naming what arrived.
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

void checkRdmaOptions(const ConnectionOptions& o) {
  if (!ring::isPowerOfTwo(o.ringBytes) || o.ringBytes < 4096 || o.ringBytes > (1u << 30))
    throw InvalidArgument("rdma ring size " + std::to_string(o.ringBytes) +
                          " must be a power of two between 4096 and 1073741824 bytes");
  if (o.maxMessageBytes < 64 || o.maxMessageBytes > (uint64_t{1} << 32) - 4096)
    throw InvalidArgument("maximum message size " + std::to_string(o.maxMessageBytes) +
                          " must be between 64 bytes and 4 GiB");
  if (!ring::isPowerOfTwo(o.maxLeases) || o.maxLeases > (1u << 20))
    throw InvalidArgument("maxLeases " + std::to_string(o.maxLeases) +
                          " must be a power of two up to 1048576");
}

/// Page-aligned memory registered with `pd`; deregistered and freed on destruction.
class Registered final {
 public:
  Registered() = default;
  Registered(ibv_pd* pd, size_t bytes, int access, const std::string& what) : bytes_(bytes) {
    mem_ = static_cast<std::byte*>(::operator new(bytes, std::align_val_t(4096)));
    std::memset(mem_, 0, bytes);
    mr_ = ibv_reg_mr(pd, mem_, bytes, access);
    if (!mr_) {
      int err = errno;
      ::operator delete(mem_, std::align_val_t(4096));
      mem_ = nullptr;
      throw Failed(os::errnoText(what + ": ibv_reg_mr of " + std::to_string(bytes) + " bytes", err));
    }
  }
  Registered(Registered&& o) noexcept
      : mem_(std::exchange(o.mem_, nullptr)), mr_(std::exchange(o.mr_, nullptr)), bytes_(o.bytes_) {}
  Registered& operator=(Registered&& o) noexcept {
    std::swap(mem_, o.mem_);
    std::swap(mr_, o.mr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~Registered() {
    if (mr_) ibv_dereg_mr(mr_);
    if (mem_) ::operator delete(mem_, std::align_val_t(4096));
  }
  std::byte* data() const noexcept { return mem_; }
  uint32_t lkey() const noexcept { return mr_->lkey; }
  uint32_t rkey() const noexcept { return mr_->rkey; }
  size_t size() const noexcept { return bytes_; }

 private:
  std::byte* mem_ = nullptr;
  ibv_mr* mr_ = nullptr;
  size_t bytes_ = 0;
};

// ------------------------------------------------------------------------------------

class RdmaConnection final : public Connection, private SegmentSource, private LeaseOwner {
 public:
  /// Takes ownership of `channel` and `id` (already on that channel).
  RdmaConnection(std::string what, const RdmaOptions& options, EventChannel channel, rdma_cm_id* id)
      : what_(std::move(what)),
        options_(options.connection),
        channel_(std::move(channel)),
        id_(id),
        ringBytes_(options.connection.ringBytes),
        ringMask_(options.connection.ringBytes - 1),
        sendBytes_(options.connection.ringBytes),
        sendMask_(options.connection.ringBytes - 1),
        leases_(options.connection.maxLeases) {}

  ~RdmaConnection() override {
    if (open_.msg) open_.msg->markSent();
    close();
    disconnectOnce();
    leases_.dropAll();
    if (id_ && id_->qp) rdma_destroy_qp(id_);
    ringMr_ = Registered();
    sendMr_ = Registered();
    chunks_.clear();
    for (auto& e : out_) e.big.reset();
    if (recvCq_) ibv_destroy_cq(recvCq_);
    if (sendCq_) ibv_destroy_cq(sendCq_);
    if (comp_) ibv_destroy_comp_channel(comp_);
    if (pd_) ibv_dealloc_pd(pd_);
    if (id_) rdma_destroy_id(id_);
    // channel_ goes with the members
  }

  /// Allocates the protection domain, completion queues, queue pair and registered memory
  /// on the id's device, and posts the receives. Before connect / accept.
  void setUp() {
    ibv_context* verbs = id_->verbs;
    if (!verbs) throw Failed(what_ + ": the cm id has no device");
    pd_ = ibv_alloc_pd(verbs);
    if (!pd_) throw Failed(os::errnoText(what_ + ": ibv_alloc_pd on " + deviceName(verbs), errno));
    comp_ = ibv_create_comp_channel(verbs);
    if (!comp_) throw Failed(os::errnoText(what_ + ": ibv_create_comp_channel", errno));
    setNonBlocking(comp_->fd, what_);
    int cqe = static_cast<int>(kRecvCredits + 2 * kRecvBatch);
    recvCq_ = ibv_create_cq(verbs, cqe, nullptr, comp_, 0);
    if (!recvCq_) throw Failed(os::errnoText(what_ + ": ibv_create_cq (receive)", errno));
    sendCq_ = ibv_create_cq(verbs, static_cast<int>(kSendDepth), nullptr, nullptr, 0);
    if (!sendCq_) throw Failed(os::errnoText(what_ + ": ibv_create_cq (send)", errno));

    ibv_device_attr da{};
    if (ibv_query_device(verbs, &da) != 0) throw Failed(os::errnoText(what_ + ": ibv_query_device", errno));
    uint32_t maxSge = std::min<uint32_t>(kMaxSgeWanted, static_cast<uint32_t>(std::max(1, da.max_sge)));
    int lastErr = 0;
    for (uint32_t inlineBytes : {kWantInline, 64u, 0u}) {
      ibv_qp_init_attr qa{};
      qa.send_cq = sendCq_;
      qa.recv_cq = recvCq_;
      qa.qp_type = IBV_QPT_RC;
      qa.sq_sig_all = 0;
      qa.cap.max_send_wr = kSendDepth;
      qa.cap.max_recv_wr = kRecvCredits + kRecvBatch;
      qa.cap.max_send_sge = maxSge;
      qa.cap.max_recv_sge = 1;
      qa.cap.max_inline_data = inlineBytes;
      if (rdma_create_qp(id_, pd_, &qa) == 0) {
        maxInline_ = qa.cap.max_inline_data;
        maxSge_ = std::min<uint32_t>(qa.cap.max_send_sge, kLocalSge);
        break;
      }
      lastErr = errno;
    }
    if (!id_->qp) throw Failed(os::errnoText(what_ + ": rdma_create_qp on " + deviceName(verbs), lastErr));

    ringMr_ = Registered(pd_, ringBytes_ + kControlBytes, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
                         what_ + " receive ring");
    ring_ = ringMr_.data();
    creditWord_ = reinterpret_cast<uint32_t*>(ring_ + ringBytes_);
    sendMr_ = Registered(pd_, sendBytes_ + kControlBytes, IBV_ACCESS_LOCAL_WRITE, what_ + " send buffer");
    send_ = sendMr_.data();
    creditSource_ = reinterpret_cast<uint32_t*>(send_ + sendBytes_);

    for (uint32_t i = 0; i < kRecvCredits + kRecvBatch; ++i) {
      recvWrs_[i % kRecvBatch] = ibv_recv_wr{};
      recvWrs_[i % kRecvBatch].wr_id = 0;
      recvWrs_[i % kRecvBatch].num_sge = 0;
      recvWrs_[i % kRecvBatch].next = (i % kRecvBatch + 1 < kRecvBatch) ? &recvWrs_[i % kRecvBatch + 1] : nullptr;
      if (i % kRecvBatch == kRecvBatch - 1) postRecvBatch();
    }

    epoll_ = os::Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) throw Failed(os::errnoText(what_ + ": epoll_create1", errno));
    for (int fd : {comp_->fd, channel_.ch->fd}) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      ZCRPC_SYSCALL(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev), what_ + ": epoll_ctl");
    }
  }

  PrivateData localPrivateData() const noexcept {
    PrivateData p{};
    p.magic = kPrivateMagic;
    p.version = kPrivateVersion;
    p.ringAddr = reinterpret_cast<uint64_t>(ring_);
    p.rkey = ringMr_.rkey();
    p.ringBytes = ringBytes_;
    p.recvCredits = kRecvCredits;
    p.maxMessageBytes = options_.maxMessageBytes;
    return p;
  }

  /// Validates the peer's private data; returns the reason it is refused, or empty.
  std::string setPeer(const void* data, size_t len) {
    if (!data || len < sizeof(PrivateData)) return "no zcrpc private data in the connection request";
    PrivateData p;
    std::memcpy(&p, data, sizeof p);
    if (p.magic != kPrivateMagic) return "peer is not speaking zcrpc rdma";
    if (p.version != kPrivateVersion) return "rdma protocol version " + std::to_string(p.version) + " not supported";
    if (!ring::isPowerOfTwo(p.ringBytes) || p.ringBytes < 4096 || p.ringBytes > (1u << 30))
      return "peer ring size " + std::to_string(p.ringBytes) + " is invalid";
    if (!ring::isPowerOfTwo(p.recvCredits) || p.recvCredits < 2 * kRecvBatch || p.recvCredits > (1u << 16))
      return "peer receive credits " + std::to_string(p.recvCredits) + " are invalid";
    peerAddr_ = p.ringAddr;
    peerRkey_ = p.rkey;
    peerRingBytes_ = p.ringBytes;
    peerMask_ = p.ringBytes - 1;
    peerCredits_ = p.recvCredits;
    recordEnds_.assign(peerCredits_, 0);
    maxMessage_ = std::min<uint64_t>(options_.maxMessageBytes, std::max<uint64_t>(64, p.maxMessageBytes));
    maxFrame_ = maxMessage_ + kFrameHeaderBytes + kMaxSegments * sizeof(SegmentEntry);
    limits_.maxMessageBytes = maxMessage_;
    return {};
  }

  rdma_cm_id* id() const noexcept { return id_; }
  rdma_event_channel* channel() const noexcept { return channel_.ch; }

  // ---- sending ----

  Status tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) override {
    std::lock_guard lock(sendLock_);
    if (open_.msg) throw InvalidArgument("a message is already open on " + what_);
    if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
    if (firstSegmentWords == 0) firstSegmentWords = 1;
    uint64_t firstBytes = uint64_t{firstSegmentWords} * 8;
    if (firstBytes > maxMessage_)
      throw InvalidArgument("message of " + std::to_string(firstBytes) +
                            " bytes exceeds the maximum message size " + std::to_string(maxMessage_) +
                            " of " + what_);
    if (outCount()) {
      pump();  // records waiting for credits go first
      if (outCount() >= kOutQueue - 1) return blockedOrDisconnected();
    }
    bool inBuffer = kRecordHeaderBytes + kFrameHeaderBytes + firstBytes + kTableReserve <= sendBytes_ / 4;
    uint64_t need = kRecordHeaderBytes + kFrameHeaderBytes + kTableReserve + (inBuffer ? firstBytes : 0);
    uint64_t at = 0;
    if (!reserveSend(need, at)) {
      pollSend();
      if (!reserveSend(need, at)) {
        pump();
        forceSignal();
        return blockedOrDisconnected();
      }
    }
    open_ = OpenFrame{};
    open_.msg = &msg;
    open_.start = at;
    open_.end = at + kRecordHeaderBytes + kFrameHeaderBytes + (inBuffer ? firstBytes : 0);
    open_.limit = std::min((at | sendMask_) + 1, sendHead_ + sendBytes_);
    open_.allocated = firstBytes;
    open_.chunkBase = chunkSeq_;
    sendTail_ = open_.end;
    std::byte* base = send_ + (at & sendMask_);
    std::memset(base, 0, kRecordHeaderBytes + kFrameHeaderBytes);
    auto* header = reinterpret_cast<FrameHeader*>(base + kRecordHeaderBytes);
    header->kind = static_cast<uint8_t>(FrameKind::kData);
    capnp::word* first;
    if (inBuffer) {
      first = reinterpret_cast<capnp::word*>(base + kRecordHeaderBytes + kFrameHeaderBytes);
      std::memset(first, 0, firstBytes);
    } else {
      first = newChunk(firstSegmentWords);
    }
    msg.open(*this, *header, kj::ArrayPtr<capnp::word>(first, firstSegmentWords));
    return Status::kOk;
  }

  Status startMessage(OutgoingMessage& msg, uint32_t words, Deadline deadline) override {
    Status result = tryStartMessage(msg, words);
    if (result != Status::kWouldBlock) return result;
    Status w = waitFor([&] {
      result = tryStartMessage(msg, words);
      return result != Status::kWouldBlock;
    }, deadline, /*forWrite=*/true);
    return w == Status::kOk ? result : w;
  }

  Status send(OutgoingMessage& msg, bool flushNow) override {
    // open_ is written only by this, the sending thread (under the lock, which the
    // receiving thread takes to read it): reading it here needs no lock.
    if (open_.msg != &msg)
      throw InvalidArgument("send: message was not started on " + what_ + " or already sent");
    if (closed_.load(std::memory_order_relaxed)) {
      msg.markSent();
      abandon();
      return Status::kDisconnected;
    }
    auto segments = msg.segmentsForSend();  // may allocate through allocateMore(), which locks
    std::unique_lock lock(sendLock_);
    size_t n = segments.size();
    if (n > kMaxSegments)
      throw InvalidArgument("message on " + what_ + " has more than " + std::to_string(kMaxSegments) +
                            " segments");
    uint64_t tablePos = open_.end;  // room was reserved
    auto* table = reinterpret_cast<SegmentEntry*>(send_ + (tablePos & sendMask_));
    OutEntry& e = out_[outTail_ % kOutQueue];
    e = OutEntry{};
    auto add = [&](const void* p, uint64_t bytes, uint32_t lkey) {
      if (!bytes) return;
      uint64_t addr = reinterpret_cast<uint64_t>(p);
      if (e.nsge && e.sge[e.nsge - 1].lkey == lkey &&
          e.sge[e.nsge - 1].addr + e.sge[e.nsge - 1].length == addr) {
        e.sge[e.nsge - 1].length += static_cast<uint32_t>(bytes);
      } else {
        e.sge[e.nsge++] = ibv_sge{addr, static_cast<uint32_t>(bytes), lkey};
      }
    };
    std::byte* recordStart = send_ + (open_.start & sendMask_);
    add(recordStart, kRecordHeaderBytes + kFrameHeaderBytes, sendMr_.lkey());
    uint64_t frameBytes = kFrameHeaderBytes;
    for (size_t i = 0; i < n; ++i) {
      uint64_t bytes = uint64_t{segments[i].size()} * 8;
      table[i] = {static_cast<uint32_t>(segments[i].size()), static_cast<uint32_t>(frameBytes / 8)};
      add(segments[i].begin(), bytes, lkeyOf(segments[i].begin()));
      frameBytes += bytes;
    }
    if (frameBytes - kFrameHeaderBytes > maxMessage_) {
      lock.unlock();
      throw InvalidArgument("message exceeds the maximum message size " + std::to_string(maxMessage_) +
                            " bytes of " + what_);
    }
    add(table, n * sizeof(SegmentEntry), sendMr_.lkey());
    frameBytes += n * sizeof(SegmentEntry);
    FrameHeader& h = msg.header();
    h.frameBytes = static_cast<uint32_t>(frameBytes);
    h.segmentCount = static_cast<uint16_t>(n);
    h.tableOffset = static_cast<uint32_t>(frameBytes - n * sizeof(SegmentEntry));
    h.flags = 0;
    h.reserved = 0;
    auto* rh = reinterpret_cast<RecordHeader*>(recordStart);
    rh->flags = 0;
    rh->frameBytes = static_cast<uint32_t>(frameBytes);
    e.header = rh;
    e.bytes = static_cast<uint32_t>(kRecordHeaderBytes + frameBytes);
    sendTail_ = tablePos + n * sizeof(SegmentEntry);
    e.sendEnd = sendTail_;
    e.chunkEnd = chunkSeq_;
    if (e.bytes > peerRingBytes_ / kRecordShare || e.nsge > maxSge_) makeBig(e, frameBytes);
    ++outTail_;
    open_.msg = nullptr;
    msg.markSent();
    // An unflushed record waits to share a doorbell with those sent after it (a stream
    // of sends, or the answers to requests that were received together). The first one
    // sent after taking the last message polled is an answer with nothing left to batch
    // it with: waiting would only cost the peer the time until flush() (for a server:
    // the rest of the handler, releasing the request, the next poll), so it goes now.
    bool answer = lastTaken_.load(std::memory_order_relaxed);
    if (answer) lastTaken_.store(false, std::memory_order_relaxed);
    if (flushNow || answer || outCount() >= kPostBatch) pump();
    return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
  }

  Status flush() override {
    std::lock_guard lock(sendLock_);
    if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
    pump();
    return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
  }

  // ---- receiving ----

  Status tryReceive(IncomingMessage& out) override {
    if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
    flushFromReceiver();
    for (;;) {
      if (leases_.full()) {
        leases_.reclaim([&](uint64_t end, uint64_t aux) { advanceReleased(end, aux); });
        if (leases_.full()) return Status::kWouldBlock;
      }
      if (wcIndex_ == wcCount_ && !pollRecv()) {
        if (peerGone_ || (++emptyPolls_ & 1023) == 0) {
          handleCmEvents();
          if (peerGone_ && !pollRecv()) return disconnected("peer disconnected");
        }
        if (peerGone_ && wcIndex_ == wcCount_) return disconnected("peer disconnected");
        if (wcIndex_ == wcCount_) {
          lazyCredit(/*any=*/false);
          // A busy poller gives way now and then: with Soft-RoCE (and any kernel-side
          // provider) the "NIC" is softirq work on these same CPUs, which two spinning
          // threads would otherwise starve for a scheduler tick. One cheap system call
          // per kYieldEvery empty polls.
          if ((emptyPolls_ & (kYieldEvery - 1)) == 0) ::sched_yield();
          return Status::kWouldBlock;
        }
      }
      const ibv_wc& wc = wcs_[wcIndex_++];
      Status s = handleCompletion(wc, out);
      if (s != Status::kWouldBlock) {
        // read by send() (sending thread), a hint only: no ordering needed
        lastTaken_.store(wcIndex_ == wcCount_, std::memory_order_relaxed);
        return s;
      }
      // kWouldBlock: a fragment, consumed; go on
    }
  }

  Status receive(IncomingMessage& out, Deadline deadline) override {
    Status result = tryReceive(out);
    if (result != Status::kWouldBlock) return result;
    Status w = waitFor([&] {
      result = tryReceive(out);
      return result != Status::kWouldBlock;
    }, deadline, /*forWrite=*/false);
    return w == Status::kOk ? result : w;
  }

  int waitFd() const noexcept override { return epoll_.get(); }

  bool armWait() noexcept override {
    if (closed_.load() || peerGone_) return false;
    flushFromReceiver();
    lazyCredit(/*any=*/true);  // the peer may be waiting for room while we sleep
    if (wcIndex_ < wcCount_) return false;
    if (ibv_req_notify_cq(recvCq_, 0) != 0) return false;
    armed_ = true;
    // A completion that arrived before the request produces no event: look once more.
    if (pollRecv()) return false;
    return true;
  }

  void disarmWait() noexcept override {
    armed_ = false;
    void* ctx = nullptr;
    ibv_cq* cq = nullptr;
    unsigned n = 0;
    while (ibv_get_cq_event(comp_, &cq, &ctx) == 0) ++n;
    if (n) ibv_ack_cq_events(recvCq_, n);
    handleCmEvents();
  }

  Status checkPeer() noexcept override {
    if (closed_.load()) return Status::kDisconnected;
    handleCmEvents();
    if (peerGone_ && wcIndex_ == wcCount_ && !pollRecv()) {
      noteError("peer disconnected");
      return Status::kDisconnected;
    }
    return Status::kOk;
  }

  void close() noexcept override {
    if (closed_.exchange(true)) return;
    closedByUs_ = true;
    {
      // Let what was sent reach the peer first (bounded): completions of everything posted.
      std::lock_guard lock(sendLock_);
      draining_ = true;
      if (!peerGone_ && !faulted_ && peerAddr_) {
        auto until = Clock::now() + std::chrono::milliseconds(200);
        pump();
        if (postSeq_ != completedSeq_) forceSignal();
        while ((postSeq_ != completedSeq_ || outCount()) && !faulted_ && Clock::now() < until) {
          pollSend();
          refreshCredit();
          pump();
        }
      }
      draining_ = false;
    }
    disconnectOnce();
  }

  std::string lastError() const override {
    std::lock_guard lock(errorMutex_);
    return error_;
  }
  std::string endpoint() const override { return what_; }
  uint64_t maxMessageBytes() const noexcept override { return maxMessage_; }
  uint32_t maxLeases() const noexcept override { return options_.maxLeases; }

 private:
  struct OpenFrame {
    OutgoingMessage* msg = nullptr;
    uint64_t start = 0;  // record header position in the send buffer
    uint64_t end = 0;    // end of the in-buffer part
    uint64_t limit = 0;  // where the in-buffer part must stop (lap end, reclaimed space)
    uint64_t allocated = 0;
    uint64_t chunkBase = 0;
  };

  /// A frame too large for one record: its bytes, cut into fragments as credits allow.
  struct BigSend {
    std::vector<ibv_sge> pieces;  // the frame in order (header, segments, table)
    size_t piece = 0;
    uint32_t pieceOffset = 0;
    uint64_t frameBytes = 0;
    uint64_t sent = 0;
    std::byte* headers = nullptr;  // one RecordHeader per fragment, in a chunk
    uint32_t headersLkey = 0;
    uint32_t fragments = 0;
    uint32_t fragment = 0;
    size_t nextPiece = 0;
    uint32_t nextOffset = 0;
  };

  struct OutEntry {
    std::array<ibv_sge, kLocalSge> sge;
    uint32_t nsge = 0;
    uint32_t bytes = 0;
    RecordHeader* header = nullptr;
    uint64_t sendEnd = 0;   // send buffer position freed once this record completed
    uint64_t chunkEnd = 0;  // chunks below this sequence number belong to it or earlier
    std::unique_ptr<BigSend> big;
  };

  struct Chunk {
    Registered mem;
    uint64_t freeAfter = ~uint64_t{0};  // send sequence after whose completion it is free
  };

  // SegmentSource
  kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override {
    std::lock_guard lock(sendLock_);
    uint64_t remaining = maxMessage_ - open_.allocated;
    uint64_t minBytes = uint64_t{minWords} * 8;
    if (minBytes > remaining)
      throw InvalidArgument("message exceeds the maximum message size " + std::to_string(maxMessage_) +
                            " bytes of " + what_);
    uint64_t want = std::min(std::max(minBytes, open_.allocated), remaining);
    uint64_t room = open_.limit > open_.end + kTableReserve ? open_.limit - open_.end - kTableReserve : 0;
    capnp::word* seg;
    auto inBuffer = [&](uint64_t bytes) {
      auto* p = send_ + (open_.end & sendMask_);
      std::memset(p, 0, bytes);
      open_.end += bytes;
      sendTail_ = open_.end;
      return reinterpret_cast<capnp::word*>(p);
    };
    if (want <= room && want <= sendBytes_ / 4) {
      seg = inBuffer(want);
    } else if (minBytes <= room && minBytes <= sendBytes_ / 4) {
      want = minBytes;
      seg = inBuffer(want);
    } else {
      seg = newChunk(static_cast<uint32_t>(want / 8));
    }
    open_.allocated += want;
    return kj::ArrayPtr<capnp::word>(seg, want / 8);
  }

  void abandon() noexcept override {
    std::lock_guard lock(sendLock_);
    if (open_.msg) sendTail_ = open_.start;
    open_.msg = nullptr;
    while (chunkSeq_ > open_.chunkBase && !chunks_.empty() && chunks_.back().freeAfter == ~uint64_t{0}) {
      chunks_.pop_back();
      --chunkSeq_;
    }
  }

  // LeaseOwner
  const ParsedFrame& leasedFrame(uint32_t slot) const noexcept override { return leases_.at(slot).frame; }
  const ReaderLimits& readerLimits() const noexcept override { return options_.readerLimits; }
  void releaseLease(uint32_t slot) noexcept override {
    leases_.release(slot, [&](uint64_t end, uint64_t aux) { advanceReleased(end, aux); });
    if (creditWorthSending()) {
      std::lock_guard lock(sendLock_);
      if (creditWorthSending()) postCredit();
    }
  }

  // ---- credits ----

  void advanceReleased(uint64_t end, uint64_t records) noexcept {
    releasedPos_.store(end, std::memory_order_relaxed);
    // pairs with the acquire loads in lazyCredit / creditWorthSending / pump
    releasedRecords_.store(records, std::memory_order_release);
  }

  bool creditWorthSending() const noexcept {
    uint64_t r = releasedRecords_.load(std::memory_order_acquire);
    uint64_t told = creditSent_.load(std::memory_order_relaxed);
    return r - told >= kRecvCredits / 8 ||
           releasedPos_.load(std::memory_order_relaxed) - creditSentPos_.load(std::memory_order_relaxed) >=
               ringBytes_ / 8;
  }

  /// Tells the peer how far we released when it is worth it (or, with `any`, whenever
  /// it has not heard of the latest release). Receiving or releasing thread.
  void lazyCredit(bool any) noexcept {
    bool want = any ? releasedRecords_.load(std::memory_order_acquire) != creditSent_.load(std::memory_order_relaxed)
                    : creditWorthSending();
    if (!want) return;
    std::lock_guard lock(sendLock_);
    postCredit();
  }

  /// sendLock_ held. One inline RDMA WRITE of the released count into the peer's credit word.
  void postCredit() noexcept {
    if (closed_.load(std::memory_order_relaxed) || faulted_ || !peerAddr_) return;
    uint64_t r = releasedRecords_.load(std::memory_order_acquire);
    if (r == creditSent_.load(std::memory_order_relaxed)) return;
    if (postSeq_ - completedSeq_ >= kSendDepth - 1) {
      pollSend();
      if (postSeq_ - completedSeq_ >= kSendDepth - 1) return;  // the next data record carries it
    }
    *creditSource_ = static_cast<uint32_t>(r);
    ibv_sge sge{reinterpret_cast<uint64_t>(creditSource_), 4, sendMr_.lkey()};
    ibv_send_wr wr{};
    wr.wr_id = postSeq_;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_RDMA_WRITE;
    wr.send_flags = maxInline_ >= 4 ? IBV_SEND_INLINE : 0;
    if (postSeq_ - lastSignal_ >= kSignalEvery) wr.send_flags |= IBV_SEND_SIGNALED;
    wr.wr.rdma.remote_addr = peerAddr_ + peerRingBytes_;
    wr.wr.rdma.rkey = peerRkey_;
    marks_[postSeq_ % kSendDepth] = 0;
    ibv_send_wr* bad = nullptr;
    if (int err = ibv_post_send(id_->qp, &wr, &bad)) {
      fault(os::errnoText("post credit write on " + what_, err));
      return;
    }
    if (wr.send_flags & IBV_SEND_SIGNALED) lastSignal_ = postSeq_;
    ++postSeq_;
    creditSent_.store(r, std::memory_order_relaxed);
    creditSentPos_.store(releasedPos_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }

  /// sendLock_ held. Learns how many of our records the peer released, from the credit
  /// word it writes and from the headers of its records.
  void refreshCredit() noexcept {
    uint64_t inFlight = recordsSent_ - peerAcked_;
    if (!inFlight) return;
    // The credit word is written by the peer's NIC; read it once.
    uint32_t a = __atomic_load_n(creditWord_, __ATOMIC_ACQUIRE);
    uint32_t b = headerCredit_.load(std::memory_order_acquire);
    for (uint32_t v : {a, b}) {
      uint32_t delta = v - static_cast<uint32_t>(peerAcked_);
      if (delta && delta <= recordsSent_ - peerAcked_) peerAcked_ += delta;
    }
  }

  uint64_t peerHead() const noexcept {
    return peerAcked_ ? recordEnds_[(peerAcked_ - 1) & (peerCredits_ - 1)] : 0;
  }

  // ---- send buffer ----

  uint32_t outCount() const noexcept { return static_cast<uint32_t>(outTail_ - outHead_); }

  bool reserveSend(uint64_t need, uint64_t& at) noexcept {
    uint64_t pos = sendTail_;
    if ((pos & sendMask_) + need > sendBytes_) pos = (pos | sendMask_) + 1;
    if (pos + need - sendHead_ > sendBytes_) return false;
    at = pos;
    return true;
  }

  Status blockedOrDisconnected() const noexcept {
    return closed_.load() ? Status::kDisconnected : Status::kWouldBlock;
  }

  capnp::word* newChunk(uint32_t words) {
    uint64_t bytes = std::max<uint64_t>(uint64_t{words} * 8, 8);
    chunks_.push_back(Chunk{Registered(pd_, bytes, IBV_ACCESS_LOCAL_WRITE, what_ + " send chunk")});
    ++chunkSeq_;
    return reinterpret_cast<capnp::word*>(chunks_.back().mem.data());
  }

  uint32_t lkeyOf(const void* p) const noexcept {
    auto* b = static_cast<const std::byte*>(p);
    if (b >= send_ && b < send_ + sendBytes_) return sendMr_.lkey();
    for (auto it = chunks_.rbegin(); it != chunks_.rend(); ++it)
      if (b >= it->mem.data() && b < it->mem.data() + it->mem.size()) return it->mem.lkey();
    return sendMr_.lkey();  // an empty segment (size 0 is never added)
  }

  /// Turns `e` into a fragmented send: the frame without the record header, in pieces.
  void makeBig(OutEntry& e, uint64_t frameBytes) {
    auto big = std::make_unique<BigSend>();
    big->frameBytes = frameBytes;
    for (uint32_t i = 0; i < e.nsge; ++i) big->pieces.push_back(e.sge[i]);
    big->pieces[0].addr += kRecordHeaderBytes;
    big->pieces[0].length -= kRecordHeaderBytes;
    uint64_t payload = peerRingBytes_ / kRecordShare - kRecordHeaderBytes;
    uint64_t worst = frameBytes / 8 + e.nsge + 1;  // a fragment per gather-limit too
    uint64_t fragments = std::min<uint64_t>((frameBytes + payload - 1) / payload + e.nsge, worst);
    // The headers live in a chunk, freed with the message's other chunks after completion.
    chunks_.push_back(Chunk{Registered(pd_, fragments * kRecordHeaderBytes, IBV_ACCESS_LOCAL_WRITE,
                                       what_ + " fragment headers")});
    ++chunkSeq_;
    big->headers = chunks_.back().mem.data();
    big->headersLkey = chunks_.back().mem.lkey();
    big->fragments = static_cast<uint32_t>(fragments);
    e.big = std::move(big);
    e.chunkEnd = chunkSeq_;
  }

  /// sendLock_ held: posts queued records as far as the peer's credits, the send queue
  /// and the ring allow, chained into one ibv_post_send (one doorbell).
  void pump() noexcept {
    if (closed_.load(std::memory_order_relaxed) && !draining_) return;
    if (faulted_ || !outCount()) return;
    std::array<ibv_send_wr, kPostBatch> wrs;
    std::array<std::array<ibv_sge, kLocalSge>, kPostBatch> fragSge;
    uint32_t n = 0;
    uint64_t creditPos = releasedPos_.load(std::memory_order_relaxed);
    uint64_t creditAll = releasedRecords_.load(std::memory_order_acquire);
    auto credit = static_cast<uint32_t>(creditAll);
    bool pollOnce = true;
    while (outCount() && n < kPostBatch) {
      if (postSeq_ + n - completedSeq_ >= kSendDepth - 2) {
        if (!pollOnce) break;
        pollOnce = false;
        pollSend();
        continue;
      }
      OutEntry& e = out_[outHead_ % kOutQueue];
      ibv_send_wr& wr = wrs[n];
      wr = ibv_send_wr{};
      uint32_t bytes;
      bool last = true;
      if (e.big) {
        if (!nextFragment(e, fragSge[n], wr, bytes, last)) break;
      } else {
        bytes = e.bytes;
        wr.sg_list = e.sge.data();
        wr.num_sge = static_cast<int>(e.nsge);
      }
      refreshCredit();
      if (recordsSent_ - peerAcked_ >= peerCredits_) break;
      uint64_t pos = peerTail_;
      if ((pos & peerMask_) + bytes > peerRingBytes_) pos = (pos | peerMask_) + 1;
      if (pos + bytes - peerHead() > peerRingBytes_) break;
      // committed
      RecordHeader* rh = e.big ? reinterpret_cast<RecordHeader*>(wr.sg_list[0].addr) : e.header;
      rh->credit = credit;
      if (e.big) commitFragment(e, bytes, last);
      wr.wr_id = postSeq_ + n;
      wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
      wr.imm_data = htonl(bytes / 8);
      wr.wr.rdma.remote_addr = peerAddr_ + (pos & peerMask_);
      wr.wr.rdma.rkey = peerRkey_;
      if (bytes <= maxInline_) wr.send_flags |= IBV_SEND_INLINE;
      uint64_t seq = postSeq_ + n;
      bool holdsChunks = last && e.chunkEnd > chunkFreed_;
      if (seq - lastSignal_ >= kSignalEvery || holdsChunks || e.big ||
          sendTail_ - sendHead_ >= sendBytes_ / 4) {
        wr.send_flags |= IBV_SEND_SIGNALED;
        lastSignal_ = seq;
      }
      marks_[seq % kSendDepth] = last ? e.sendEnd : 0;
      if (last) {
        for (auto i = chunkFreed_; i < e.chunkEnd; ++i) chunks_[i - chunkFront_].freeAfter = seq + 1;
        chunkFreed_ = std::max(chunkFreed_, e.chunkEnd);
      }
      recordEnds_[recordsSent_ & (peerCredits_ - 1)] = pos + bytes;
      ++recordsSent_;
      peerTail_ = pos + bytes;
      if (n) wrs[n - 1].next = &wr;
      ++n;
      if (last) {
        e.big.reset();
        ++outHead_;
      }
    }
    if (!n) return;
    ibv_send_wr* bad = nullptr;
    if (int err = ibv_post_send(id_->qp, &wrs[0], &bad)) {
      fault(os::errnoText("ibv_post_send on " + what_, err));
      return;
    }
    postSeq_ += n;
    creditSent_.store(creditAll, std::memory_order_relaxed);
    creditSentPos_.store(creditPos, std::memory_order_relaxed);
  }

  /// The next fragment of a big send into `sge`/`wr`, not yet committed. False if none
  /// can be built now.
  bool nextFragment(OutEntry& e, std::array<ibv_sge, kLocalSge>& sge, ibv_send_wr& wr, uint32_t& bytes,
                    bool& last) noexcept {
    BigSend& b = *e.big;
    uint64_t payloadMax = peerRingBytes_ / kRecordShare - kRecordHeaderBytes;
    if (b.fragment >= b.fragments) return false;
    auto* rh = reinterpret_cast<RecordHeader*>(b.headers) + b.fragment;
    sge[0] = ibv_sge{reinterpret_cast<uint64_t>(rh), kRecordHeaderBytes, b.headersLkey};
    uint32_t ns = 1;
    uint64_t payload = 0;
    size_t piece = b.piece;
    uint32_t offset = b.pieceOffset;
    while (piece < b.pieces.size() && payload < payloadMax && ns < maxSge_) {
      const ibv_sge& p = b.pieces[piece];
      uint64_t take = std::min<uint64_t>(p.length - offset, payloadMax - payload);
      sge[ns++] = ibv_sge{p.addr + offset, static_cast<uint32_t>(take), p.lkey};
      payload += take;
      offset += static_cast<uint32_t>(take);
      if (offset == p.length) ++piece, offset = 0;
    }
    rh->flags = static_cast<uint16_t>(kFragment | (b.sent == 0 ? kFirst : 0));
    rh->frameBytes = static_cast<uint32_t>(b.frameBytes);
    rh->reserved = 0;
    rh->reserved2 = 0;
    last = b.sent + payload == b.frameBytes;
    if (last) rh->flags |= kLast;
    wr.sg_list = sge.data();
    wr.num_sge = static_cast<int>(ns);
    bytes = static_cast<uint32_t>(kRecordHeaderBytes + payload);
    b.nextPiece = piece;
    b.nextOffset = offset;
    return true;
  }

  void commitFragment(OutEntry& e, uint32_t bytes, bool) noexcept {
    BigSend& b = *e.big;
    b.sent += bytes - kRecordHeaderBytes;
    b.piece = b.nextPiece;
    b.pieceOffset = b.nextOffset;
    ++b.fragment;
  }

  /// sendLock_ held: a signalled zero-length write, so that unsignalled requests
  /// before it complete visibly and their memory can be reclaimed.
  void forceSignal() noexcept {
    if (faulted_ || !peerAddr_ || postSeq_ == 0 || lastSignal_ + 1 == postSeq_) return;
    if (postSeq_ - completedSeq_ >= kSendDepth) return;
    ibv_send_wr wr{};
    wr.wr_id = postSeq_;
    wr.opcode = IBV_WR_RDMA_WRITE;
    wr.num_sge = 0;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.wr.rdma.remote_addr = peerAddr_ + peerRingBytes_;
    wr.wr.rdma.rkey = peerRkey_;
    marks_[postSeq_ % kSendDepth] = 0;
    ibv_send_wr* bad = nullptr;
    if (int err = ibv_post_send(id_->qp, &wr, &bad)) {
      fault(os::errnoText("post signalled write on " + what_, err));
      return;
    }
    lastSignal_ = postSeq_;
    ++postSeq_;
  }

  /// sendLock_ held: reaps send completions, reclaiming the send buffer and chunks.
  void pollSend() noexcept {
    if (completedSeq_ == postSeq_) return;
    ibv_wc wc[16];
    int n = ibv_poll_cq(sendCq_, 16, wc);
    if (n < 0) {
      fault(what_ + ": ibv_poll_cq (send) failed");
      return;
    }
    for (int i = 0; i < n; ++i) {
      if (wc[i].status != IBV_WC_SUCCESS) {
        fault(what_ + ": send failed: " + ibv_wc_status_str(wc[i].status));
        return;
      }
      uint64_t done = wc[i].wr_id + 1;
      for (uint64_t s = completedSeq_; s < done; ++s)
        if (uint64_t m = marks_[s % kSendDepth]) sendHead_ = std::max(sendHead_, m);
      completedSeq_ = std::max(completedSeq_, done);
    }
    while (!chunks_.empty() && chunks_.front().freeAfter <= completedSeq_) {
      chunks_.pop_front();
      ++chunkFront_;
    }
    if (!open_.msg && completedSeq_ == postSeq_ && !outCount()) sendHead_ = sendTail_;
  }

  /// Receiving thread: posts queued records unless the sending thread is at it.
  void flushFromReceiver() noexcept {
    if (outTail_.load(std::memory_order_relaxed) == outHeadShadow() || !sendLock_.try_lock()) return;
    pump();
    sendLock_.unlock();
  }
  uint64_t outHeadShadow() const noexcept { return outHead_.load(std::memory_order_relaxed); }

  // ---- receive ring ----

  void postRecvBatch() {
    ibv_recv_wr* bad = nullptr;
    if (int err = ibv_post_recv(id_->qp, &recvWrs_[0], &bad))
      throw Failed(os::errnoText(what_ + ": ibv_post_recv", err));
  }

  /// Receiving thread: fills wcs_ from the receive queue. True if something came.
  bool pollRecv() noexcept {
    if (wcIndex_ < wcCount_) return true;
    int n = ibv_poll_cq(recvCq_, static_cast<int>(wcs_.size()), wcs_.data());
    if (n <= 0) {
      wcIndex_ = wcCount_ = 0;
      if (n < 0) fault(what_ + ": ibv_poll_cq (receive) failed");
      return false;
    }
    wcIndex_ = 0;
    wcCount_ = static_cast<uint32_t>(n);
    return true;
  }

  Status handleCompletion(const ibv_wc& wc, IncomingMessage& out) {
    if (wc.status != IBV_WC_SUCCESS) {
      if (wc.status == IBV_WC_WR_FLUSH_ERR) {
        peerGone_ = true;
        return disconnected("peer disconnected (queue pair flushed)");
      }
      fault(what_ + ": receive failed: " + ibv_wc_status_str(wc.status));
      return Status::kDisconnected;
    }
    if (++recvConsumed_ == kRecvBatch) {
      recvConsumed_ = 0;
      ibv_recv_wr* bad = nullptr;
      if (int err = ibv_post_recv(id_->qp, &recvWrs_[0], &bad)) {
        fault(os::errnoText("re-post receives on " + what_, err));
        return Status::kDisconnected;
      }
    }
    if (wc.opcode != IBV_WC_RECV_RDMA_WITH_IMM || !(wc.wc_flags & IBV_WC_WITH_IMM))
      return malformed("a completion that is not a write with immediate");
    uint32_t imm = ntohl(wc.imm_data);
    if (imm & ~kImmLengthMask) return malformed("record type " + std::to_string(imm >> 30) + " unknown");
    uint64_t len = uint64_t{imm} * 8;
    if (len < kRecordHeaderBytes || len > ringBytes_ / kRecordShare)
      return malformed("record of " + std::to_string(len) + " bytes");
    if (wc.byte_len != len) return malformed("record length disagrees with the bytes written");
    uint64_t start = parse_;
    if ((start & ringMask_) + len > ringBytes_) start = (start | ringMask_) + 1;
    const std::byte* p = ring_ + (start & ringMask_);
    RecordHeader rh;
    std::memcpy(&rh, p, sizeof rh);  // one read of the header, then only the copy
    // pairs with the acquire load in refreshCredit (sending thread)
    headerCredit_.store(rh.credit, std::memory_order_release);
    parse_ = start + len;
    ++recordsIn_;
    auto& slot = leases_.next();
    slot.end = parse_;
    slot.aux = recordsIn_;
    std::span<const std::byte> body(p + kRecordHeaderBytes, len - kRecordHeaderBytes);
    if (rh.flags == 0) {
      if (big_) return malformed("whole frame inside a fragmented one");
      std::string why = parseFrame(body, limits_, slot.frame);
      if (!why.empty()) return malformed(why);
      out.attach(*this, leases_.push());
      return Status::kOk;
    }
    if (!(rh.flags & kFragment) || (rh.flags & ~(kFragment | kFirst | kLast)))
      return malformed("record flags " + std::to_string(rh.flags));
    if (rh.flags & kFirst) {
      if (big_) return malformed("a fragmented frame starts inside another");
      if (rh.frameBytes < kFrameHeaderBytes || rh.frameBytes % 8 || rh.frameBytes > maxFrame_)
        return malformed("fragmented frame of " + std::to_string(rh.frameBytes) +
                         " bytes exceeds the maximum message size " + std::to_string(maxMessage_));
      big_.reset(new capnp::word[rh.frameBytes / 8]);
      bigSize_ = rh.frameBytes;
      bigFilled_ = 0;
    } else if (!big_) {
      return malformed("a fragment without its first");
    }
    if (bigFilled_ + body.size() > bigSize_) return malformed("fragments longer than their frame");
    std::memcpy(reinterpret_cast<std::byte*>(big_.get()) + bigFilled_, body.data(), body.size());
    bigFilled_ += body.size();
    if (!(rh.flags & kLast)) {
      releaseLease(leases_.push());  // the ring space is free again at once
      return Status::kWouldBlock;
    }
    if (bigFilled_ != bigSize_) return malformed("fragments shorter than their frame");
    std::string why = parseFrame(std::span<const std::byte>(reinterpret_cast<std::byte*>(big_.get()), bigSize_),
                                 limits_, slot.frame);
    if (!why.empty()) return malformed(why);
    slot.owned = std::move(big_);
    out.attach(*this, leases_.push());
    return Status::kOk;
  }

  Status malformed(const std::string& why) {
    fault("malformed record from " + what_ + ": " + why);
    return Status::kDisconnected;
  }

  /// Non-blocking: reads the connection's cm events (a disconnect marks the peer gone).
  void handleCmEvents() noexcept {
    for (;;) {
      rdma_cm_event* ev = nullptr;
      if (rdma_get_cm_event(channel_.ch, &ev) != 0) return;
      auto type = ev->event;
      rdma_ack_cm_event(ev);
      if (type == RDMA_CM_EVENT_DISCONNECTED || type == RDMA_CM_EVENT_DEVICE_REMOVAL ||
          type == RDMA_CM_EVENT_TIMEWAIT_EXIT)
        peerGone_ = true;
    }
  }

  Status disconnected(const std::string& why) {
    noteError(why);
    closed_.store(true);
    return Status::kDisconnected;
  }

  void noteError(const std::string& why) {
    std::lock_guard lock(errorMutex_);
    if (error_.empty() && !closedByUs_) error_ = why;
  }

  void fault(std::string why) noexcept {
    faulted_ = true;
    {
      std::lock_guard lock(errorMutex_);
      if (error_.empty()) error_ = std::move(why);
    }
    closed_.store(true);
    disconnectOnce();
  }

  void disconnectOnce() noexcept {
    if (id_ && !disconnectCalled_.exchange(true)) rdma_disconnect(id_);
  }

  template <typename Done>
  Status waitFor(Done done, Deadline deadline, bool forWrite) {
    Clock::time_point spinUntil = options_.waitMode == WaitMode::kBusyPoll ? Clock::time_point::max()
                                  : options_.waitMode == WaitMode::kSpinThenSleep
                                      ? Clock::now() + options_.spinTime
                                      : Clock::time_point::min();
    // Spinning, the first clock read comes after a few rounds, not at once (see
    // RingConnection::waitFor). A busy poller reads it only to bound the wait by the
    // deadline, which needs no microsecond precision: every kYieldEvery rounds then, for
    // where clock_gettime is a system call (VMs on an HPET clock source) each read is a
    // stretch in which an arriving record goes unnoticed.
    const uint32_t clockMask = options_.waitMode == WaitMode::kBusyPoll ? kYieldEvery - 1 : 15;
    for (uint32_t spins = spinUntil == Clock::time_point::min() ? 0 : 1;; ++spins) {
      if (done()) return Status::kOk;
      if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
      if ((spins & clockMask) == 0) {
        auto now = Clock::now();
        if (now >= deadline) return Status::kTimedOut;
        if ((spins & 4095) == 0) {
          handleCmEvents();
          if (peerGone_ && forWrite) return disconnected("peer disconnected");
        }
        if (now >= spinUntil) {
          auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
          if (forWrite) {
            // Room comes back through the peer's credit word, which raises no event:
            // sleep in short slices and look again.
            timespec ts{0, 100'000};
            ::nanosleep(&ts, nullptr);
          } else if (armWait()) {
            // Records of ours waiting for the peer's credits are posted when we wake; the
            // credit word raises no event, so sleep in short slices while there are any.
            auto slice = outCount() ? std::chrono::milliseconds(1) : std::chrono::milliseconds(100);
            os::pollOne(epoll_.get(), POLLIN, std::min(left + std::chrono::milliseconds(1), slice));
            disarmWait();
          }
          continue;
        }
      }
      cpuRelax();
    }
  }

  std::string what_;
  ConnectionOptions options_;
  EventChannel channel_;
  rdma_cm_id* id_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* comp_ = nullptr;
  ibv_cq* recvCq_ = nullptr;
  ibv_cq* sendCq_ = nullptr;
  os::Fd epoll_;
  uint32_t maxInline_ = 0;
  uint32_t maxSge_ = 1;
  uint64_t maxMessage_ = kDefaultMaxMessageBytes;
  uint64_t maxFrame_ = kDefaultMaxMessageBytes;
  std::atomic<bool> closed_{false};
  std::atomic<bool> closedByUs_{false};
  std::atomic<bool> faulted_{false};
  std::atomic<bool> peerGone_{false};
  std::atomic<bool> disconnectCalled_{false};
  bool draining_ = false;  // sendLock_: close() lets queued records out
  bool armed_ = false;
  mutable std::mutex errorMutex_;
  std::string error_;

  // receive (receiving thread, except the released counters)
  uint32_t ringBytes_;
  uint64_t ringMask_;
  Registered ringMr_;
  std::byte* ring_ = nullptr;
  uint32_t* creditWord_ = nullptr;  // written by the peer: records of ours it released
  uint64_t parse_ = 0;
  uint64_t recordsIn_ = 0;
  std::array<ibv_wc, 32> wcs_{};
  uint32_t wcIndex_ = 0;
  uint32_t wcCount_ = 0;
  uint32_t recvConsumed_ = 0;
  uint32_t emptyPolls_ = 0;
  std::array<ibv_recv_wr, kRecvBatch> recvWrs_{};
  std::unique_ptr<capnp::word[]> big_;
  uint64_t bigSize_ = 0;
  uint64_t bigFilled_ = 0;
  FrameLimits limits_;
  std::atomic<uint32_t> headerCredit_{0};
  std::atomic<bool> lastTaken_{false};  // the last completion polled was taken, not yet answered
  std::atomic<uint64_t> releasedRecords_{0};
  std::atomic<uint64_t> releasedPos_{0};
  std::atomic<uint64_t> creditSent_{0};
  std::atomic<uint64_t> creditSentPos_{0};

  // send (sendLock_)
  os::SpinLock sendLock_;
  uint64_t sendBytes_;
  uint64_t sendMask_;
  Registered sendMr_;
  std::byte* send_ = nullptr;
  uint32_t* creditSource_ = nullptr;
  uint64_t sendHead_ = 0;
  uint64_t sendTail_ = 0;
  OpenFrame open_;
  std::array<OutEntry, kOutQueue> out_;
  std::atomic<uint64_t> outHead_{0};
  std::atomic<uint64_t> outTail_{0};
  std::deque<Chunk> chunks_;
  uint64_t chunkSeq_ = 0;    // chunks made so far
  uint64_t chunkFront_ = 0;  // sequence number of chunks_.front()
  uint64_t chunkFreed_ = 0;  // chunks below this have freeAfter set
  uint64_t postSeq_ = 0;
  uint64_t completedSeq_ = 0;
  uint64_t lastSignal_ = 0;
  std::array<uint64_t, kSendDepth> marks_{};
  uint64_t peerAddr_ = 0;
  uint32_t peerRkey_ = 0;
  uint64_t peerRingBytes_ = 4096;
  uint64_t peerMask_ = 4095;
  uint32_t peerCredits_ = kRecvCredits;
  uint64_t peerTail_ = 0;
  uint64_t recordsSent_ = 0;
  uint64_t peerAcked_ = 0;
  std::vector<uint64_t> recordEnds_;

  LeaseQueue leases_;
};

// ------------------------------------------------------------------------------------

class RdmaListener final : public Listener {
 public:
  RdmaListener(std::string_view hostPort, const RdmaOptions& options)
      : options_(options), what_(withScheme(hostPort)) {
    checkRdmaOptions(options_.connection);
    checkDevicePresent(options_, what_);
    HostPort hp = splitHostPort(hostPort);
    sockaddr_storage addr = resolveAddress(hp, /*passive=*/true, what_);
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
      std::array<std::byte, sizeof(PrivateData)> priv{};
      size_t privLen = std::min<size_t>(e.ev->param.conn.private_data_len, priv.size());
      if (e.ev->param.conn.private_data) std::memcpy(priv.data(), e.ev->param.conn.private_data, privLen);
      std::string peer = addressText(rdma_get_peer_addr(id));
      e = CmEvent();  // acknowledged: the id may now move to a channel of its own
      std::string what = endpoint_ + " (server, peer " + peer + ")";
      try {
        return handshake(id, priv.data(), privLen, what);
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
                                        const std::string& what) {
    auto deadline = deadlineAfter(options_.connection.connectTimeout);
    auto reject = [&](const std::string& why) {
      RejectData r{};
      r.magic = kPrivateMagic;
      std::snprintf(r.reason, sizeof r.reason, "%s", why.c_str());
      rdma_reject(id, &r, sizeof r);
    };
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
    return conn;
  }

  void remember(std::string why) {
    std::fprintf(stderr, "zcrpc: %s: %s\n", endpoint_.c_str(), why.c_str());
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

std::vector<std::string> rdmaDevices() { return listDevices(); }

std::unique_ptr<Listener> listenRdma(std::string_view hostPort, const RdmaOptions& options) {
  return std::make_unique<RdmaListener>(hostPort, options);
}

std::unique_ptr<Connection> connectRdma(std::string_view hostPort, const RdmaOptions& options) {
  checkRdmaOptions(options.connection);
  std::string what = withScheme(hostPort);
  checkDevicePresent(options, what);
  HostPort hp = splitHostPort(hostPort);
  if (hp.host == "0.0.0.0") hp.host = "127.0.0.1";
  auto deadline = deadlineAfter(options.connection.connectTimeout);
  sockaddr_storage dst = resolveAddress(hp, /*passive=*/false, what);
  sockaddr_storage src{};
  bool haveSrc = false;
  if (!options.device.empty()) {
    std::string ip = deviceIpv4(options, what);
    if (ip.empty())
      throw Failed(what + ": RDMA device '" + options.device + "' port " + std::to_string(options.port) +
                   " has no IPv4 (RoCE v2) GID among its first " + std::to_string(kGidsScanned) +
                   " to bind to");
    src = resolveAddress({ip, "0"}, /*passive=*/false, what);
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
  PrivateData mine = conn->localPrivateData();
  rdma_conn_param param{};
  param.private_data = &mine;
  param.private_data_len = sizeof mine;
  param.responder_resources = 0;
  param.initiator_depth = 0;
  param.rnr_retry_count = 7;
  param.retry_count = 7;
  if (rdma_connect(id, &param) != 0) throw Failed(os::errnoText(what + ": rdma_connect", errno));
  CmEvent e = expectCmEvent(conn->channel(), RDMA_CM_EVENT_ESTABLISHED, deadline, what, "connecting");
  std::string why = conn->setPeer(e.ev->param.conn.private_data, e.ev->param.conn.private_data_len);
  if (!why.empty()) throw Failed(what + ": " + why);
  return conn;
}

}  // namespace zcrpc
