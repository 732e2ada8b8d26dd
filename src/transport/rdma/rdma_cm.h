// zcrpc — rdma connection management (librdmacm): event channels and events, devices.
// Used by the listener and connectRdma() (rdma_cm.cc) and by a connection's
// set-up (rdma_setup.cc).
//
// Files of the rdma transport:
//   rdma_cm.{h,cc}        connection management: devices, cm events, the
//                         listener, listenRdma() and connectRdma()
//   rdma_connection.h     the wire structs (private data, record header) and the connection
//   rdma_setup.cc         a connection's verbs resources (PD, CQs, QP, registered memory),
//                         the private data exchange, close and teardown
//   rdma_send.cc          data path, sending: the send buffer, records, fragments, credits
//                         posted and learnt, send completions
//   rdma_receive.cc       data path, receiving: receive completions, records in place,
//                         reassembly, cm events on a live connection, errors
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <sys/socket.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "transport/address.h"
#include "zcrpc/rdma.h"

// Internal to libzcrpc: nothing here is exported from the shared library.
#pragma GCC visibility push(hidden)
namespace zcrpc::rdma {

void setNonBlocking(int fd, const std::string& what);

/// An rdma_cm event channel (non-blocking), destroyed with this.
struct EventChannel {
  rdma_event_channel* ch = nullptr;
  EventChannel() = default;
  explicit EventChannel(const std::string& what);
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
CmEvent nextCmEvent(rdma_event_channel* ch, Deadline deadline, const std::string& what);
/// Waits for `expected` on `ch`; any other event is an error naming what arrived.
CmEvent expectCmEvent(rdma_event_channel* ch, rdma_cm_event_type expected, Deadline deadline,
                      const std::string& what, const char* step);

std::string deviceName(ibv_context* verbs);
std::vector<std::string> listDevices();
/// The IPv4 address (RoCE v2 GID) of the first RDMA device that has one on port 1, or
/// empty: where a listener for peers on this host can listen.
std::string firstDeviceIpv4();

}  // namespace zcrpc::rdma
#pragma GCC visibility pop
