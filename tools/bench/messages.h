// zcrpc-bench — messages mode: raw zcrpc messages over shm:// against the floor ring.
//
// Two processes (this one measures, a forked peer echoes or sinks), each pinned to its own
// CPU, talk over shm:// (the peer listens, this process connects). For each payload size
// and each repetition it measures, back to back:
//
//  * round-trip latency p50 / p99 / p99.9 of a bench::Payload built in place and echoed
//    (the echo reads the request in place and copies its data into a reply of the same
//    size), one steady_clock reading per round trip, after a warm-up;
//  * the same ping-pong over the floor: a minimal raw ring in a shared anonymous mapping
//    (raw_ring.h, always busy-polling) that only copies the payload and bumps a sequence word;
//  * Cap'n Proto's own work in that round trip with the data field empty, in this process
//    alone (capnpWorkPingPong): the floor plus it is the least a round trip of Cap'n Proto
//    messages can take;
//  * one-way throughput: send(msg, /*flush=*/false), flush() every `batch` messages, the
//    peer counting and releasing; messages/s and payload GB/s;
//  * for payloads of 1 MiB and more, single-core memcpy bandwidth (1 MiB copies rotating
//    over 64 MiB), and the stream's share of it.
#pragma once

#include <cstdint>
#include <vector>

#include "report.h"

namespace zcrpc::bench {

struct MessagesOptions {
  int clientCpu = 0;
  int serverCpu = 1;
  std::vector<size_t> sizes;
  double seconds = 0.5;
  unsigned reps = 3;
  WaitMode waitMode = WaitMode::kBusyPoll;  ///< zcrpc's; the floor always busy-polls
  uint32_t batch = 32;
  bool quick = false;
};

/// Runs every cell (forks the peer, pins this thread to `clientCpu`, reaps the peer).
/// Throws BenchError naming the cell that failed.
Run runMessages(const MessagesOptions& o);

}  // namespace zcrpc::bench
