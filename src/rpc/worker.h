// A server worker: one thread polling the connections the acceptor hands it.
#pragma once

#include <poll.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "os/os.h"
#include "transport/waiter.h"
#include "transport/accept_gate.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

class Session;

/// Polls its connections, dispatching their calls, and sleeps (by the server's idle mode)
/// when none has anything. Threads: adopt() and stop() from any thread; the rest runs on
/// the worker's own thread, started by start(), or, for a server the user drives
/// (ServerOptions::workerThreads 0), on the thread that calls poll(), armWait() and join().
///
/// Sleeping costs O(1) whatever the number of connections: every connection's waitFd()
/// sits in one epoll set from adoption on (with the worker's own wake-up eventfd), and
/// stays armed (its peer signals it) while it is idle. A connection is disarmed when it
/// has traffic, so a busy client does not pay for a signal per message while the worker
/// is awake, and re-armed at the next sleep. Hang-ups come as events; a slow sweep
/// (kLivenessEvery) checks every peer besides.
class __attribute__((visibility("hidden"))) Worker final {
 public:
  Worker(const std::unordered_map<uint64_t, Service*>& services, const ServerOptions& options,
         MetricsRegistry& registry);
  ~Worker();

  /// Hands the worker a new connection (served from its next round on). Any thread.
  void adopt(std::unique_ptr<Connection> c);
  void start() { thread_ = std::thread([this] { run(); }); }
  /// Asks the worker to drain (deferred calls get until `deadline`) and end. Any thread.
  void stop(Deadline deadline);
  /// Waits for the worker's thread to end; a worker without one drains here instead.
  void join() {
    if (thread_.joinable()) thread_.join();
    else if (!drained_) drain();
  }

  // Driven by the user instead of a thread of its own (see Server::poll()):
  /// One round without waiting: events, new connections, every connection, the liveness
  /// sweep when due. Returns how much it did.
  size_t poll();
  /// Arms the connections for a wait on waitFd(); returns the longest wait (zero: there is
  /// work already).
  Clock::duration armWait();
  int waitFd() const noexcept { return epoll_.get(); }
  size_t connections() const { return count_.load(std::memory_order_relaxed); }

 private:
  /// A connection as the worker's sleep sees it. Heap-stable: the epoll set points at it.
  struct Watched {
    std::unique_ptr<Session> conn;
    bool registered = false;  // its waitFd() is in epoll_ (not while congested or gone)
    bool armed = false;       // armWait() returned true and no disarmWait() since
    bool queued = false;      // in toArm_
  };

  void wake();
  void adoptInbox();
  size_t pumpAll(bool rejecting);
  /// Keeps `w`'s registration in epoll_ in step with its state: a connection that is gone
  /// or congested (its requests wait unread) would make a level-triggered wait return at
  /// once; it is polled instead (congested: in 1 ms slices).
  void updateRegistration(Watched& w);
  void disarm(Watched& w);
  /// Lets go of connections that are gone and have nothing left to answer, logging why
  /// each closed (at most a line a second, with a count), and hands the memory they freed
  /// back to the system (malloc_trim, at most once a second: the allocator would keep it,
  /// and a server whose clients come and go would keep growing).
  void reap();
  /// Before a wait: arms the connections that are not armed. False when one has something
  /// already (no wait then).
  bool armAll();
  /// One sleep of at most `left`: armAll(), then waits in epoll_wait for a signal, mail, a
  /// hang-up or the end of the slice. Returns false (the worker's waiter then polls every
  /// connection).
  bool sleep(Clock::duration left);
  /// The slow sweep over every peer (kLivenessEvery).
  void checkLiveness();
  /// Takes what epoll_ reports within `timeoutMs`: mail, signals and hang-ups.
  void takeEvents(int timeoutMs);
  void run();
  /// Graceful end: keep answering until quiet and every deferred call is answered (or
  /// the deadline passes), then fail what is left, refuse what still arrives, close.
  void drain();

  const std::unordered_map<uint64_t, Service*>& services_;
  const ServerOptions& options_;
  MetricsRegistry& registry_;
  os::Fd wake_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  Deadline drainDeadline_{};
  bool drained_ = false;          // drain() ran
  Clock::time_point nextLiveness_{};  // the next checkLiveness()
  LogLimiter closeLog_;          // worker thread
  bool trimPending_ = false;     // worker thread: connections went since the last trim
  Clock::time_point nextTrim_{};
  std::mutex inboxMutex_;
  std::vector<std::unique_ptr<Connection>> inbox_;
  std::atomic<bool> hasInbox_{false};
  std::atomic<size_t> count_{0};
  std::vector<std::unique_ptr<Watched>> connections_;
  std::vector<Watched*> toArm_;  // connections to arm at the next sleep
  bool anyCongested_ = false;    // the last pumpAll() left a connection congested
  bool anyGone_ = false;         // a connection went since the last reap()
  os::Fd epoll_;                 // wake_ and the registered connections' waitFd()s
  Waiter waiter_;
  uint32_t eventChecks_ = 0;     // alive() calls of the waiter, for takeEvents(0)
};

}  // namespace zcrpc
