#include "raw_pingpong.h"

#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <sched.h>
#include <time.h>

#include <cstring>
#include <stdexcept>
#include <thread>

#include "zcrpc/rdma.h"

namespace zcrpc::test {
namespace {

constexpr int kRecvDepth = 64;
constexpr int kSignalEvery = 16;

struct Remote {
  uint64_t addr;
  uint32_t rkey;
};

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string(what) + ": " + std::strerror(errno));
}

rdma_cm_event* waitEvent(rdma_event_channel* ch, rdma_cm_event_type want, const char* what) {
  rdma_cm_event* ev = nullptr;
  check(rdma_get_cm_event(ch, &ev) == 0, what);
  if (ev->event != want) {
    std::string got = rdma_event_str(ev->event);
    rdma_ack_cm_event(ev);
    throw std::runtime_error(std::string(what) + ": got " + got);
  }
  return ev;
}

double nowUs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

/// One end: its queue pair, buffer (receive half remotely writable, send half local).
struct End {
  rdma_cm_id* id = nullptr;
  ibv_pd* pd = nullptr;
  ibv_cq* scq = nullptr;
  ibv_cq* rcq = nullptr;
  ibv_mr* mr = nullptr;
  char* buf = nullptr;
  size_t bytes = 0;
  uint32_t maxInline = 0;
  Remote peer{};
  uint64_t sent = 0;

  void setUp(rdma_cm_id* cmId, size_t size) {
    id = cmId;
    bytes = size;
    pd = ibv_alloc_pd(id->verbs);
    check(pd, "ibv_alloc_pd");
    scq = ibv_create_cq(id->verbs, 256, nullptr, nullptr, 0);
    rcq = ibv_create_cq(id->verbs, kRecvDepth * 2, nullptr, nullptr, 0);
    check(scq && rcq, "ibv_create_cq");
    ibv_qp_init_attr qa{};
    qa.send_cq = scq;
    qa.recv_cq = rcq;
    qa.qp_type = IBV_QPT_RC;
    qa.cap.max_send_wr = 128;
    qa.cap.max_recv_wr = kRecvDepth;
    qa.cap.max_send_sge = 1;
    qa.cap.max_recv_sge = 1;
    qa.cap.max_inline_data = 256;
    check(rdma_create_qp(id, pd, &qa) == 0, "rdma_create_qp");
    maxInline = qa.cap.max_inline_data;
    buf = static_cast<char*>(std::aligned_alloc(4096, 8192));
    std::memset(buf, 0, 8192);
    mr = ibv_reg_mr(pd, buf, 8192, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    check(mr, "ibv_reg_mr");
    for (int i = 0; i < kRecvDepth; ++i) postRecv();
  }
  Remote local() const { return {reinterpret_cast<uint64_t>(buf), mr->rkey}; }
  void postRecv() {
    ibv_recv_wr wr{}, *bad = nullptr;
    wr.num_sge = 0;
    check(ibv_post_recv(id->qp, &wr, &bad) == 0, "ibv_post_recv");
  }
  void write() {
    ibv_sge sge{reinterpret_cast<uint64_t>(buf + 4096), static_cast<uint32_t>(bytes), mr->lkey};
    ibv_send_wr wr{}, *bad = nullptr;
    wr.wr_id = sent;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.imm_data = htonl(static_cast<uint32_t>(sent));
    wr.send_flags = (bytes <= maxInline ? IBV_SEND_INLINE : 0) |
                    (sent % kSignalEvery == kSignalEvery - 1 ? IBV_SEND_SIGNALED : 0);
    wr.wr.rdma.remote_addr = peer.addr;
    wr.wr.rdma.rkey = peer.rkey;
    check(ibv_post_send(id->qp, &wr, &bad) == 0, "ibv_post_send");
    ++sent;
    ibv_wc wc;
    while (ibv_poll_cq(scq, 1, &wc) > 0)
      if (wc.status != IBV_WC_SUCCESS) throw std::runtime_error("send completion failed");
  }
  /// Busy-polls one receive completion; false if the peer went away.
  bool awaitOne() {
    ibv_wc wc;
    int n;
    // Yields every 256 empty polls, as zcrpc's receive does: Soft-RoCE's work runs in
    // softirq context on these same CPUs.
    for (unsigned spins = 1; (n = ibv_poll_cq(rcq, 1, &wc)) == 0; ++spins)
      if (spins % 256 == 0) sched_yield();
    if (n < 0 || wc.status != IBV_WC_SUCCESS) return false;
    postRecv();
    return true;
  }
  void tearDown() {
    if (id && id->qp) rdma_destroy_qp(id);
    if (mr) ibv_dereg_mr(mr);
    if (scq) ibv_destroy_cq(scq);
    if (rcq) ibv_destroy_cq(rcq);
    if (pd) ibv_dealloc_pd(pd);
    std::free(buf);
  }
};

}  // namespace

std::string rawPingPong(const std::string& addr, const std::string&, const std::string& clientDevice,
                        size_t bytes, int iterations, std::vector<double>& rttUs) {
  const int warm = iterations / 10 + 100;
  const int total = warm + iterations;
  rdma_event_channel* sch = rdma_create_event_channel();
  rdma_event_channel* cch = rdma_create_event_channel();
  if (!sch || !cch) return "rdma_create_event_channel failed";
  rdma_cm_id* listenId = nullptr;
  rdma_cm_id* clientId = nullptr;
  End server, client;
  std::string error;
  std::thread serverThread;
  try {
    check(rdma_create_id(sch, &listenId, nullptr, RDMA_PS_TCP) == 0, "rdma_create_id");
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    inet_pton(AF_INET, addr.c_str(), &sa.sin_addr);
    check(rdma_bind_addr(listenId, reinterpret_cast<sockaddr*>(&sa)) == 0, "rdma_bind_addr");
    check(rdma_listen(listenId, 1) == 0, "rdma_listen");
    sa.sin_port = rdma_get_src_port(listenId);

    serverThread = std::thread([&] {
      try {
        rdma_cm_event* ev = waitEvent(sch, RDMA_CM_EVENT_CONNECT_REQUEST, "connect request");
        rdma_cm_id* id = ev->id;
        std::memcpy(&server.peer, ev->param.conn.private_data, sizeof(Remote));
        rdma_ack_cm_event(ev);
        server.setUp(id, bytes);
        Remote mine = server.local();
        rdma_conn_param p{};
        p.private_data = &mine;
        p.private_data_len = sizeof mine;
        p.rnr_retry_count = 7;
        check(rdma_accept(id, &p) == 0, "rdma_accept");
        rdma_ack_cm_event(waitEvent(sch, RDMA_CM_EVENT_ESTABLISHED, "established (server)"));
        for (int i = 0; i < total; ++i) {
          if (!server.awaitOne()) throw std::runtime_error("server receive failed");
          server.write();
        }
      } catch (const std::exception& e) {
        error = std::string("server: ") + e.what();
      }
    });

    check(rdma_create_id(cch, &clientId, nullptr, RDMA_PS_TCP) == 0, "rdma_create_id");
    sockaddr_in src{};
    bool haveSrc = false;
    if (!clientDevice.empty()) {
      // the veth run: bind to the client device's address (its netdev is the peer veth)
      if (const char* ip = std::getenv("ZCRPC_TEST_RDMA_CLIENT_ADDR")) {
        src.sin_family = AF_INET;
        inet_pton(AF_INET, ip, &src.sin_addr);
        haveSrc = true;
      }
    }
    check(rdma_resolve_addr(clientId, haveSrc ? reinterpret_cast<sockaddr*>(&src) : nullptr,
                            reinterpret_cast<sockaddr*>(&sa), 5000) == 0,
          "rdma_resolve_addr");
    rdma_ack_cm_event(waitEvent(cch, RDMA_CM_EVENT_ADDR_RESOLVED, "address"));
    check(rdma_resolve_route(clientId, 5000) == 0, "rdma_resolve_route");
    rdma_ack_cm_event(waitEvent(cch, RDMA_CM_EVENT_ROUTE_RESOLVED, "route"));
    client.setUp(clientId, bytes);
    Remote mine = client.local();
    rdma_conn_param p{};
    p.private_data = &mine;
    p.private_data_len = sizeof mine;
    p.rnr_retry_count = 7;
    check(rdma_connect(clientId, &p) == 0, "rdma_connect");
    rdma_cm_event* ev = waitEvent(cch, RDMA_CM_EVENT_ESTABLISHED, "established (client)");
    std::memcpy(&client.peer, ev->param.conn.private_data, sizeof(Remote));
    rdma_ack_cm_event(ev);
    rttUs.reserve(static_cast<size_t>(iterations));
    for (int i = 0; i < total; ++i) {
      double t0 = nowUs();
      client.write();
      if (!client.awaitOne()) throw std::runtime_error("client receive failed");
      if (i >= warm) rttUs.push_back(nowUs() - t0);
    }
  } catch (const std::exception& e) {
    if (error.empty()) error = e.what();
  }
  if (serverThread.joinable()) serverThread.join();
  if (clientId) rdma_disconnect(clientId);
  client.tearDown();
  server.tearDown();
  if (server.id) rdma_destroy_id(server.id);
  if (clientId) rdma_destroy_id(clientId);
  if (listenId) rdma_destroy_id(listenId);
  rdma_destroy_event_channel(sch);
  rdma_destroy_event_channel(cch);
  return error;
}

}  // namespace zcrpc::test
