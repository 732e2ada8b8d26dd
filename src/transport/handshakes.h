// zcrpc — what listeners with handshakes in progress share (shm, tcp).
#pragma once

#include <poll.h>

#include <algorithm>
#include <vector>

#include "zcrpc/transport.h"

namespace zcrpc {

/// Appends the listening socket and the socket (`pollFd()`) of every handshake in progress to
/// `fds`, each polled for readability; returns the earliest handshake `deadline`, or
/// kNoDeadline when none is in progress.
template <typename Pending>
Deadline pollListenerAndHandshakes(int listenFd, const std::vector<Pending>& pending,
                                   std::vector<pollfd>& fds) {
  fds.push_back({listenFd, POLLIN, 0});
  Deadline first = kNoDeadline;
  for (const auto& p : pending) {
    fds.push_back({p.pollFd(), POLLIN, 0});
    first = std::min(first, p.deadline);
  }
  return first;
}

}  // namespace zcrpc
