// zcrpc — what listeners with handshakes in progress share (shm, tcp, capnp): each
// listener keeps a vector of its own Pending (a socket in `pollFd()`, a `deadline`),
// advances them without blocking in accept() and sleeps in poll(2) on them and the
// listening socket. Threads: the listener's accepting thread.
#pragma once

#include <errno.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
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

/// Advances every handshake in progress once. `advance(p, result)` returns true when p's
/// handshake is over (setting `result` to what it gave, which may be empty), false to go
/// on, and throws when it failed. A failed handshake, and one not over by its `deadline`
/// ("`what` timed out"), is dropped after `dropped(p, why, timedOut)`. Finished and
/// dropped ones leave `pending`; the first non-empty result is returned (empty: none yet).
template <typename Result, typename Pending, typename Advance, typename Dropped>
Result advanceHandshakes(std::vector<Pending>& pending, Clock::time_point now,
                        std::string_view what, Advance&& advance, Dropped&& dropped) {
  for (size_t i = 0; i < pending.size();) {
    Result result{};
    bool over = false;
    try {
      over = advance(pending[i], result);
      if (!over && now >= pending[i].deadline) {
        dropped(pending[i], std::string(what) + " timed out", true);
        over = true;
      }
    } catch (const std::exception& e) {
      dropped(pending[i], e.what(), false);
      over = true;
    }
    if (!over) {
      ++i;
      continue;
    }
    pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
    if (result) return result;
  }
  return Result{};
}

/// A listener's accept(): takes the clients the listening socket has (`takeNew()`, which
/// adds them to `pending`, or returns a connection that needs no handshake), advances
/// every handshake (advanceHandshakes), and sleeps in poll(2) on the sockets
/// `pollFds(fds)` adds (it returns when the next handshake is due) until something
/// happens, at most a second at a time. Returns the first connection, or null at
/// `deadline`.
template <typename Pending, typename TakeNew, typename Advance, typename Dropped, typename PollFds>
std::unique_ptr<Connection> acceptWithHandshakes(Deadline deadline, std::vector<Pending>& pending,
                                                 std::string_view what, TakeNew&& takeNew,
                                                 Advance&& advance, Dropped&& dropped,
                                                 PollFds&& pollFds) {
  std::vector<pollfd> fds;
  for (;;) {
    if (auto c = takeNew()) return c;
    const auto now = Clock::now();
    if (auto c = advanceHandshakes<std::unique_ptr<Connection>>(pending, now, what, advance, dropped))
      return c;
    if (now >= deadline) return nullptr;
    fds.clear();
    const Deadline wakeAt = std::min(deadline, pollFds(fds));
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(wakeAt - now);
    const int ms = static_cast<int>(std::clamp<int64_t>(wait.count() + 1, 0, 1000));
    int r;
    do r = ::poll(fds.data(), fds.size(), ms);
    while (r < 0 && errno == EINTR);
  }
}

}  // namespace zcrpc
