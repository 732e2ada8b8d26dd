// zcrpc — how every transport's blocking calls wait: try, and while the answer is
// kWouldBlock, wait by the connection's wait mode and try again.
#pragma once

#include "zcrpc/transport.h"

namespace zcrpc {

/// Connection::startMessage() and Connection::receive() of every transport: `attempt()`
/// (tryStartMessage(), tryReceive()), and while it answers kWouldBlock, again whenever
/// `wait(ready, deadline)` (the transport's wait: its Waiter, and for room to send what
/// breaks that wait, e.g. the ring's RoomWaitHook) sees `ready()` true, until `deadline`.
/// Returns attempt()'s last answer, or the wait's kTimedOut or kDisconnected.
///
/// Room to send is waited for here when a message starts. Waits for room while a message
/// is built (a segment, referenced data) are the transport's own: only the ring has them
/// (RingConnection::waitForSpace), bounded by the message's build deadline, which the
/// ring's startMessage() sets to its own. The thread that owns the call (sending or
/// receiving).
template <typename Attempt, typename Wait>
Status tryThenWait(Attempt attempt, Wait wait, Deadline deadline) {
  Status result = attempt();
  if (result != Status::kWouldBlock) return result;
  const Status w = wait(
      [&] {
        result = attempt();
        return result != Status::kWouldBlock;
      },
      deadline);
  return w == Status::kOk ? result : w;
}

}  // namespace zcrpc
