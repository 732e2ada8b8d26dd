// zcrpc — an rdma connection's verbs resources (PD, CQs, QP, registered memory), the
// private data exchange, close and teardown.
#include <sys/epoll.h>

#include "transport/rdma/rdma_connection.h"

namespace zcrpc::rdma {

RdmaConnection::RdmaConnection(std::string what, const RdmaOptions& options, EventChannel channel,
                               rdma_cm_id* id)
    : what_(std::move(what)),
      options_(options.connection),
      channel_(std::move(channel)),
      id_(id),
      receiveWaiter_(options.connection.waitMode, options.connection.spinTime,
                     options.connection.spinPolicy, PollCost::kMemorySelfYielding),
      sendWaiter_(options.connection.waitMode, options.connection.spinTime,
                  options.connection.spinPolicy, PollCost::kMemorySelfYielding),
      ringBytes_(options.connection.ringBytes),
      ringMask_(options.connection.ringBytes - 1),
      sendBytes_(options.connection.ringBytes),
      sendMask_(options.connection.ringBytes - 1),
      leases_(options.connection.maxLeases) {}

RdmaConnection::~RdmaConnection() {
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

void RdmaConnection::setUp() {
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

PrivateData RdmaConnection::localPrivateData() const noexcept {
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

std::string checkTokenProof(const void* data, size_t len, const std::string& token) {
  if (token.empty()) return {};
  ConnectRequest r{};
  if (!data || len < sizeof r) return "access token required (the connection request carries no token proof)";
  std::memcpy(&r, data, sizeof r);
  if (r.data.magic != kPrivateMagic || !(r.data.flags & kHasTokenProof))
    return "access token required (the connection request carries no token proof)";
  if (!proofMatches(r.tokenProof, token)) return "access token does not match";
  return {};
}

std::string RdmaConnection::setPeer(const void* data, size_t len) {
  if (!data || len < sizeof(PrivateData)) return "no zcrpc private data in the connection request";
  PrivateData p;
  std::memcpy(&p, data, sizeof p);
  if (p.magic != kPrivateMagic) return "peer is not speaking zcrpc rdma";
  if (p.version != kPrivateVersion) return "rdma protocol version " + std::to_string(p.version) + " not supported";
  if (!validRingBytes(p.ringBytes))
    return "peer ring size " + std::to_string(p.ringBytes) + " is invalid";
  if (!isPowerOfTwo(p.recvCredits) || p.recvCredits < 2 * kRecvBatch || p.recvCredits > (1u << 16))
    return "peer receive credits " + std::to_string(p.recvCredits) + " are invalid";
  peerAddr_ = p.ringAddr;
  peerRkey_ = p.rkey;
  peerRingBytes_ = p.ringBytes;
  peerMask_ = p.ringBytes - 1;
  peerCredits_ = p.recvCredits;
  recordEnds_.assign(peerCredits_, 0);
  maxMessage_ = std::min<uint64_t>(options_.maxMessageBytes, std::max<uint64_t>(64, p.maxMessageBytes));
  maxFrame_ = maxMessage_ + kFrameHeaderBytes + kMaxSegments * sizeof(SegmentEntry) +
              sizeof(TraceContext) + kMaxExtensionBytes;
  limits_.maxMessageBytes = maxMessage_;
  return {};
}

void RdmaConnection::close() noexcept {
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

}  // namespace zcrpc::rdma
