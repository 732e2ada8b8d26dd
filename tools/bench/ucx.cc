// zcrpc-bench — rival: UCX (Debian's libucx, through its UCP API) echoing the payload with
// active messages (ucp_am_send_nbx, the answer on the reply endpoint) or with tag matching
// (ucp_tag_send_nbx / ucp_tag_recv_nbx, the receive posted before the send). Over shm rows
// it runs UCX_TLS=sm (posix/sysv shared memory, cma for large messages), over tcp rows
// UCX_TLS=tcp on the loopback device. The peer's worker address travels in the cell's
// start message; each process keeps one context and worker per transport for the run.
// Waiting follows the row: busy-poll spins on ucp_worker_progress(); spin-then-sleep spins
// for spin_time, then arms the worker and sleeps in poll() on its event descriptor (UCX's
// wakeup API); blocking sleeps at once.
#include <fmt/format.h>
#include <poll.h>
#include <ucp/api/ucp.h>

#include <array>
#include <cstring>

#include "system.h"

namespace zcrpc::bench {

namespace {

constexpr unsigned kRequestId = 1, kReplyId = 2;  // active message ids
constexpr ucp_tag_t kRequestTag = 1, kReplyTag = 2, kAddressTag = 3;

[[noreturn]] void fail(const char* what, ucs_status_t s) {
  throw BenchError(fmt::format("UCX {}: {}", what, ucs_status_string(s)));
}

/// What an active message handler saw; the loops act on it after progress returns.
struct Inbox {
  bool arrived = false;
  size_t length = 0;
  void* rndv = nullptr;  ///< data still to fetch with ucp_am_recv_data_nbx (rendezvous)
  ucp_ep_h replyEp = nullptr;
  std::byte last{};             ///< eager data's last byte, read in place
  std::span<std::byte> copyTo;  ///< eager data is copied here (the server's echo copy)
};

/// A tag receive's parameters: its callback copies the message's info to `info`. No
/// immediate completion: UCX 1.13 left recv_info unfilled when a message that had already
/// arrived completed a receive at once (seen here), so every receive returns a request.
ucp_request_param_t receiveInto(ucp_tag_recv_info_t& info) {
  ucp_request_param_t p{};
  p.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  p.user_data = &info;
  p.cb.recv = [](void*, ucs_status_t, const ucp_tag_recv_info_t* got, void* to) {
    *static_cast<ucp_tag_recv_info_t*>(to) = *got;
  };
  return p;
}

ucs_status_t onMessage(void* arg, const void*, size_t, void* data, size_t length,
                       const ucp_am_recv_param_t* param) {
  auto& in = *static_cast<Inbox*>(arg);
  in = {true, length, nullptr, param->reply_ep, {}, in.copyTo};
  if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
    in.rndv = data;  // fetched with ucp_am_recv_data_nbx after progress returns
    return UCS_INPROGRESS;
  }
  if (length) {
    in.last = static_cast<const std::byte*>(data)[length - 1];
    if (length <= in.copyTo.size()) std::memcpy(in.copyTo.data(), data, length);
  }
  return UCS_OK;
}

/// One process's UCX for one transport: context, worker (single-threaded), its event
/// descriptor and address. Made on first use, after the fork. Threads: one.
class Worker final {
 public:
  explicit Worker(Transport t) {
    ucp_config_t* config = nullptr;
    if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) fail("config", s);
    ucp_config_modify(config, "TLS", t == Transport::kShm ? "sm,self" : "tcp,self");
    if (t == Transport::kTcp) ucp_config_modify(config, "NET_DEVICES", "lo");
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_AM | UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
    ucs_status_t s = ucp_init(&params, config, &context_);
    ucp_config_release(config);
    if (s != UCS_OK) fail("init", s);
    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    if ((s = ucp_worker_create(context_, &wp, &worker_)) != UCS_OK) fail("worker", s);
    if ((s = ucp_worker_get_efd(worker_, &efd_)) != UCS_OK) fail("event descriptor", s);
    ucp_address_t* address = nullptr;
    size_t length = 0;
    if ((s = ucp_worker_get_address(worker_, &address, &length)) != UCS_OK) fail("address", s);
    for (size_t i = 0; i < length; ++i)
      address_ += fmt::format("{:02x}", reinterpret_cast<const uint8_t*>(address)[i]);
    ucp_worker_release_address(worker_, address);
    for (unsigned id : {kRequestId, kReplyId}) {
      ucp_am_handler_param_t h{};
      h.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                     UCP_AM_HANDLER_PARAM_FIELD_ARG;
      h.id = id;
      h.cb = onMessage;
      h.arg = &inbox;
      if ((s = ucp_worker_set_am_recv_handler(worker_, &h)) != UCS_OK) fail("am handler", s);
    }
  }
  ~Worker() {
    if (worker_) ucp_worker_destroy(worker_);
    if (context_) ucp_cleanup(context_);
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  const std::string& address() const { return address_; }

  /// Progresses until `done()`, waiting as `mode` says. Throws at `deadline`, or when
  /// `watchFd` turns readable (the other process gave up on the cell).
  template <typename Done>
  void waitFor(Done&& done, WaitMode mode, std::chrono::nanoseconds spin, Deadline deadline,
               int watchFd) {
    const auto spinUntil = Clock::now() + spin;
    for (uint32_t idle = 1; !done(); ++idle) {
      if (ucp_worker_progress(worker_)) continue;
      const bool spinning =
          mode == WaitMode::kBusyPoll ||
          (mode == WaitMode::kSpinThenSleep && ((idle & 63) || Clock::now() < spinUntil));
      if (spinning && (idle & 1023)) continue;
      if (Clock::now() >= deadline) throw BenchError("UCX: no answer before the deadline");
      if (readable(watchFd)) throw BenchError("UCX: the other process gave up on the cell");
      if (spinning) continue;
      ucs_status_t s = ucp_worker_arm(worker_);  // then sleep until the worker has events
      if (s == UCS_OK)
        ::poll(std::array{pollfd{efd_, POLLIN, 0}}.data(), 1, 100);
      else if (s != UCS_ERR_BUSY)
        fail("arm", s);
    }
  }

  /// Waits for a request from a *_nbx call (nullptr: done at once) and frees it.
  void complete(ucs_status_ptr_t request, const char* what, WaitMode mode,
                std::chrono::nanoseconds spin, Deadline deadline, int watchFd) {
    if (UCS_PTR_IS_ERR(request)) fail(what, UCS_PTR_STATUS(request));
    if (!request) return;  // done at once
    waitFor([&] { return ucp_request_check_status(request) != UCS_INPROGRESS; }, mode, spin,
            deadline, watchFd);
    ucs_status_t s = ucp_request_check_status(request);
    ucp_request_free(request);
    if (s != UCS_OK) fail(what, s);
  }

  ucp_ep_h connect(const std::string& hex) {
    std::vector<uint8_t> address(hex.size() / 2);
    for (size_t i = 0; i < address.size(); ++i)
      address[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    p.address = reinterpret_cast<const ucp_address_t*>(address.data());
    ucp_ep_h ep = nullptr;
    if (ucs_status_t s = ucp_ep_create(worker_, &p, &ep); s != UCS_OK) fail("endpoint", s);
    return ep;
  }

  /// Closes `ep` without flushing: the stop message and its answer went through already,
  /// and a flush over tcp would wait for the other side, which no longer progresses.
  void close(ucp_ep_h ep, Deadline deadline) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (r && !UCS_PTR_IS_ERR(r)) {
      waitFor([&] { return ucp_request_check_status(r) != UCS_INPROGRESS; }, WaitMode::kBusyPoll,
              {}, deadline, -1);
      ucp_request_free(r);
    }
  }

  ucp_worker_h get() const { return worker_; }
  Inbox inbox;

 private:
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int efd_ = -1;
  std::string address_;
};

class Ucx final : public System {
 public:
  Ucx(const Settings& s, bool tag) : s_(s), tag_(tag) {}

  SeriesInfo info(Transport t) const override {
    return {
        tag_ ? "ucx-tag" : "ucx-am",
        fmt::format("UCX {} over {}", tag_ ? "tag" : "ucp_am", t == Transport::kShm ? "sm" : "tcp"),
        Role::kRival};
  }
  bool covers(Transport) const override { return true; }

  void serve(PeerCell& cell) override {
    Worker& w = worker(cell.spec.transport);
    const WaitMode mode = cell.spec.waitMode;
    auto wait = [&](ucs_status_ptr_t r, const char* what) {
      w.complete(r, what, mode, s_.spinTime, cell.deadline, cell.controlFd());
    };
    cell.started(w.address());
    ucp_request_param_t none{};
    ucp_tag_recv_info_t info{};
    const ucp_request_param_t recv = receiveInto(info);
    if (tag_) {  // the client's address first, then echo until a message of no bytes
      wait(ucp_tag_recv_nbx(w.get(), cell.scratch.data(), cell.scratch.size(), kAddressTag,
                            ~ucp_tag_t{0}, &recv),
           "receive address");
      ucp_ep_h ep =
          w.connect(std::string(reinterpret_cast<const char*>(cell.scratch.data()), info.length));
      do {
        wait(ucp_tag_recv_nbx(w.get(), cell.scratch.data(), cell.scratch.size(), kRequestTag,
                              ~ucp_tag_t{0}, &recv),
             "receive");
        wait(ucp_tag_send_nbx(ep, cell.scratch.data(), info.length, kReplyTag, &none), "send");
      } while (info.length);
      return w.close(ep, cell.deadline);
    }
    w.inbox.copyTo = cell.scratch;  // the echo's one copy, in the handler
    for (;;) {
      w.inbox.arrived = false;
      w.waitFor([&] { return w.inbox.arrived; }, mode, s_.spinTime, cell.deadline,
                cell.controlFd());
      Inbox in = w.inbox;
      if (in.rndv)
        wait(ucp_am_recv_data_nbx(w.get(), in.rndv, cell.scratch.data(), in.length, &none),
             "fetch");
      wait(ucp_am_send_nbx(in.replyEp, kReplyId, nullptr, 0, cell.scratch.data(), in.length, &none),
           "reply");
      if (in.length == 0) return;
    }
  }

  /// The peer's workers (and the endpoints UCX made for their replies) go before it exits:
  /// UCX keeps pointers to them in memory of its own mappings, where LeakSanitizer does
  /// not look, so an ASan build reported them as leaks.
  void leavePeer() override {
    for (auto& w : workers_) w.reset();
  }

  Figure measure(ClientCell& cell) override {
    Worker& w = worker(cell.spec.transport);
    const WaitMode mode = cell.spec.waitMode;
    const Deadline deadline = cellDeadline(cell.budget.total());
    auto wait = [&](ucs_status_ptr_t r, const char* what) {
      w.complete(r, what, mode, s_.spinTime, deadline, cell.watchFd);
    };
    ucp_ep_h ep = w.connect(cell.endpoint);
    ucp_tag_recv_info_t info{};
    const ucp_request_param_t recvParam = receiveInto(info);
    ucp_request_param_t none{}, reply{};
    reply.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    reply.flags = UCP_AM_SEND_FLAG_REPLY;  // the server answers on the endpoint UCX makes for it
    const size_t n = cell.payload.size();
    auto check = [&](size_t length, std::byte last) {
      if (length != n || last != cell.payload[n - 1])
        throw BenchError(fmt::format("UCX: echo of {} bytes, sent {}", length, n));
    };
    if (tag_)
      wait(ucp_tag_send_nbx(ep, w.address().data(), w.address().size(), kAddressTag, &none),
           "send address");
    // One round trip of `bytes` (0: the stop message).
    auto roundTrip = [&](size_t bytes) {
      if (tag_) {
        info = {};
        ucs_status_ptr_t recv = ucp_tag_recv_nbx(w.get(), cell.scratch.data(), cell.scratch.size(),
                                                 kReplyTag, ~ucp_tag_t{0}, &recvParam);
        wait(ucp_tag_send_nbx(ep, cell.payload.data(), bytes, kRequestTag, &none), "send");
        wait(recv, "receive");
        if (bytes) check(info.length, cell.scratch[info.length ? info.length - 1 : 0]);
        return;
      }
      w.inbox = {};
      wait(ucp_am_send_nbx(ep, kRequestId, nullptr, 0, cell.payload.data(), bytes, &reply), "send");
      w.waitFor([&] { return w.inbox.arrived; }, mode, s_.spinTime, deadline, cell.watchFd);
      Inbox in = w.inbox;
      if (in.rndv)
        wait(ucp_am_recv_data_nbx(w.get(), in.rndv, cell.scratch.data(), in.length, &none),
             "fetch");
      if (bytes) check(in.length, in.rndv ? cell.scratch[in.length - 1] : in.last);
    };
    Figure f;
    f.latency = measureLatency([&] { roundTrip(n); }, cell.budget, cell.samples);
    roundTrip(0);
    w.close(ep, deadline);
    return f;
  }

 private:
  Worker& worker(Transport t) {
    auto& w = workers_[static_cast<size_t>(t)];
    if (!w) w = std::make_unique<Worker>(t);
    return *w;
  }

  const Settings& s_;
  bool tag_;
  std::array<std::unique_ptr<Worker>, 2> workers_;  ///< per transport, made after the fork
};

}  // namespace

std::unique_ptr<System> makeUcx(const Settings& s, bool tag) {
  return std::make_unique<Ucx>(s, tag);
}

}  // namespace zcrpc::bench
