// A server's acceptor: one thread accepting clients on every listener.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "os/os.h"
#include "transport/accept_gate.h"
#include "zcrpc/transport.h"

namespace zcrpc {

/// Owns a server's listeners and the thread that accepts on them, handing each new
/// connection to `adopt`. Threads: add() before start(); stop() from any thread, once;
/// `adopt` runs on the acceptor's thread.
class __attribute__((visibility("hidden"))) Acceptor final {
 public:
  using Adopt = std::function<void(std::unique_ptr<Connection>)>;
  explicit Acceptor(Adopt adopt);
  ~Acceptor() { stop(); }

  void add(std::unique_ptr<Listener> listener) {
    listeners_.push_back({std::move(listener), {}});
  }
  std::vector<std::string> endpoints() const;
  void start();
  /// Ends the thread and closes the listeners: no new clients from here on. Idempotent.
  void stop();

 private:
  void run();

  /// A listener whose accept() threw rests (is neither polled nor asked) for a Backoff
  /// while it keeps failing: an error that repeats must not make the acceptor spin and
  /// log on every round.
  struct Entry {
    std::unique_ptr<Listener> listener;
    Backoff backoff;
  };

  Adopt adopt_;
  std::vector<Entry> listeners_;
  LogLimiter log_;
  std::thread thread_;
  os::Fd wake_;
  std::atomic<bool> stopping_{false};
};

}  // namespace zcrpc
