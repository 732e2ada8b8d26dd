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
#include "zcrpc/rpc.h"

namespace zcrpc {

class ServerConnection;

/// Polls its connections, dispatching their calls, and sleeps (by the server's idle mode)
/// when none has anything. Threads: adopt() and stop() from any thread; the rest runs on
/// the worker's own thread, started by start().
class __attribute__((visibility("hidden"))) Worker final {
 public:
  Worker(const std::unordered_map<uint64_t, Service*>& services, const ServerOptions& options,
         MetricsRegistry& registry);

  /// Hands the worker a new connection (served from its next round on). Any thread.
  void adopt(std::unique_ptr<Connection> c);
  void start() { thread_ = std::thread([this] { run(); }); }
  /// Asks the worker to drain (deferred calls get until `deadline`) and end. Any thread.
  void stop(Deadline deadline);
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  size_t connections() const { return count_.load(std::memory_order_relaxed); }

 private:
  void wake();
  void adoptInbox();
  size_t pumpAll(bool rejecting);
  /// Lets go of connections that are gone and have nothing left to answer.
  void reap();
  /// Sleeps until a connection has something, mail arrives or a slice passes.
  void sleep();
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
  std::mutex inboxMutex_;
  std::vector<std::unique_ptr<Connection>> inbox_;
  std::atomic<bool> hasInbox_{false};
  std::atomic<size_t> count_{0};
  std::vector<std::shared_ptr<ServerConnection>> connections_;
  std::vector<pollfd> pollFds_;  // sleep()'s, kept for its capacity
};

}  // namespace zcrpc
