// zcrpc-bench — RPC mode: echo calls through the generated Echo stubs, over shm:// and
// tcp://, in any wait mode, against a reference and against Cap'n Proto's own RPC.
//
// The measuring process (this one, pinned to one CPU) forks a peer pinned to another. For
// every cell of the matrix transport x wait mode x payload size, and every repetition, it
// measures back to back, in an order that changes with the repetition (the reference always
// next to zcrpc, before it or after it):
//
//  * the reference ping-pong of the same payload in the same wait mode: over shm the floor
//    ring (raw_ring.h: copy, publish one word; futex sleeps in the sleeping modes), over tcp
//    a raw TCP_NODELAY send/recv loop on 127.0.0.1 (busy-poll: spin on non-blocking recv;
//    spin-then-sleep: spin, then poll(); blocking: blocking recv);
//  * zcrpc: a zcrpc::Server with one worker thread in the peer (idle mode = the wait mode),
//    a Channel and the generated EchoClient here, echo round trips (call());
//  * Cap'n Proto RPC: capnp::EzRpcServer in the peer and EzRpcClient here serving the same
//    Echo interface, over a unix socket (the shm column) or TCP on 127.0.0.1;
//
// and then zcrpc's pipelined throughput: one client thread keeping a window of callAsync()
// calls outstanding against the same one-worker server; last, over shm, Cap'n Proto's own
// work in the same echo, in this process alone (capnpWorkPingPong, cells.h). A new server (and connection) is
// started for each zcrpc cell and stopped after it, so no busy-polling worker competes with
// the other cells for the peer's CPU; a new shm connection is first cycled through its ring
// and arena once, so page faults on the fresh memfd stay out of the figures.
//
// The pipelined window is capped so the calls in flight fit in one ring (over shm, in the
// arena for messages that go there; over tcp, the send queue that blocks the sender beyond
// ringBytes): more calls than that only make the client wait for room (taking answers
// meanwhile) and the server hold answers back, which measures the congestion path, not
// the pipeline. --uncapped-window runs that path. The table shows the window each cell used.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cells.h"
#include "peer.h"
#include "report.h"
#include "rpc_cells.h"

namespace zcrpc::bench {

std::string_view transportName(Transport t) noexcept;
/// "shm" or "tcp"; throws BenchError.
Transport parseTransport(std::string_view text);

struct RpcOptions {
  int clientCpu = 0;
  int serverCpu = 1;
  std::vector<Transport> transports{Transport::kShm};
  std::vector<WaitMode> waitModes{WaitMode::kBusyPoll};
  std::vector<size_t> sizes;
  double seconds = 0.5;  ///< per measured cell
  unsigned reps = 3;
  uint32_t window = 32;  ///< pipelined calls outstanding
  /// Use `window` as given, even beyond the rings (see above): the congestion path.
  bool uncappedWindow = false;
  bool metrics = true;  ///< zcrpc's per-call metrics on client and server (the default)
  /// Echo payloads from this size on go by reference (rpc_cells.h); SIZE_MAX: always copied.
  size_t referenceFrom = kByReferenceBytes;
  bool quick = false;
  /// Spin phase of spin-then-sleep, for zcrpc and the references alike.
  std::chrono::nanoseconds spinTime = std::chrono::microseconds(50);
};

/// One cell (transport, wait mode, size) of one repetition.
struct RpcCell {
  Transport transport = Transport::kShm;
  WaitMode waitMode = WaitMode::kBusyPoll;
  size_t payloadBytes = 0;
  std::string order;  ///< the order the three latency cells ran in, e.g. "zcrpc,capnp,ref"
  Latency reference;  ///< shm: floor ring; tcp: raw TCP
  Latency zcrpc;
  Latency capnp;
  Pipelined pipelined;
  Ratios zcrpcVsReference;  ///< zcrpc / reference, this repetition
  Ratios capnpVsZcrpc;      ///< Cap'n Proto RPC / zcrpc, this repetition
  /// Cap'n Proto's own build and read of the echo's request and answer (data field empty),
  /// one thread, no transport (capnpWorkPingPong): every call does this work in sequence.
  Latency capnpWork;
  /// tcp rows: the bytes of zcrpc's request frame (header, segments, table; the answer's is
  /// the same size), as the peer's echo saw them, and a raw ping-pong of that many bytes
  /// each way, run right after the zcrpc cell. Unset (0 / samples 0) over shm.
  uint64_t frameBytes = 0;
  Latency frameReference;
  double frameVsReference = 0;  ///< frameReference / reference, p50s of this repetition
  /// The least an echo call of Cap'n Proto messages can take: what moves the bytes (shm: the
  /// floor; tcp: frameReference) + capnpWork. Ratios of p50s in this repetition.
  double boundVsReference = 0;  ///< bound / reference
  double zcrpcVsBound = 0;      ///< zcrpc / bound
  double capnpVsReference = 0;  ///< Cap'n Proto RPC / reference: the most any transport can gain on it
};

struct RpcRun {
  RpcOptions options;
  double loadStart = -1;  ///< host 1-minute load average before and after the run
  double loadEnd = -1;
  /// reps[r][i]: cell i of repetition r; every repetition has the same cells in the same order.
  std::vector<std::vector<RpcCell>> reps;
};

/// Runs the whole matrix (forks the peer, pins this thread to clientCpu, reaps the peer),
/// printing a progress line per cell on stderr. Throws BenchError naming the cell that failed.
RpcRun runRpc(const RpcOptions& o);

}  // namespace zcrpc::bench
