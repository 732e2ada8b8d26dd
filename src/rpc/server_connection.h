// One client connection as a server worker serves it: dispatch to the registered
// services, answers in place (or in the backlog), deferred answers posted from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "rpc/answer_backlog.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

/// What a call in progress must report when it ends (metrics and tracer).
struct CallMark {
  MethodMetrics* method = nullptr;  // borrowed from the connection's ConnectionMetrics
  uint64_t startTicks = 0;
  bool traced = false;
  TracedCall trace;
};

/// A deferred answer posted to the connection's worker (see ServerConnection::post).
struct Completion {
  std::shared_ptr<DeferredState> state;
  std::function<void(OutgoingMessage&)> fill;  // empty: an error answer
  ErrorKind kind = ErrorKind::kFailed;
  int32_t code = 0;
  std::string message;
};

/// A call whose handler deferred its answer: shared by the DeferredReply (any thread) and
/// the connection (worker thread).
struct DeferredState {
  std::shared_ptr<ServerConnection> owner;
  uint64_t callId = 0;
  bool oneWay = false;
  std::atomic<bool> cancelled{false};
  std::atomic<bool> answered{false};
  std::atomic<bool> answeredByServer{false};  // shutdown failed it on the handler's behalf
  TraceContext trace;  // what the request carried
  CallMark mark;       // worker thread only
  IncomingMessage request;  // declared after `owner`: released before the connection can go
};

/// One client connection as a worker serves it. Threads: the worker thread, but for
/// post() (any thread). Lifetime: shared with the DeferredStates of its deferred calls;
/// the worker calls closeMail() when it lets the connection go.
class __attribute__((visibility("hidden"))) ServerConnection final : public std::enable_shared_from_this<ServerConnection> {
 public:
  ServerConnection(const std::unordered_map<uint64_t, Service*>& services,
                   std::unique_ptr<Connection> connection, int workerWake,
                   std::shared_ptr<ConnectionMetrics> metrics, Tracer* tracer,
                   size_t maxDeferred, std::chrono::milliseconds answerRoomWait);

  Connection& connection() noexcept { return *connection_; }
  const std::shared_ptr<ConnectionMetrics>& metrics() const noexcept { return metrics_; }
  bool disconnected() const noexcept { return disconnected_; }
  /// No deferred call open and no answer waiting for room.
  bool idle() const noexcept { return deferred_.empty() && backlog_.empty(); }
  /// Answers wait for room (the client is not reading them): poll, do not sleep on it.
  bool congested() const noexcept { return !backlog_.empty() && !disconnected_; }
  bool hasMail() const noexcept { return hasMail_.load(std::memory_order_acquire); }

  /// Handles up to `batch` received frames and every posted completion. Worker thread.
  size_t pump(size_t batch, bool rejecting);
  void checkPeer();
  /// Answers every deferred call still open with an error (shutdown). Worker thread.
  void failDeferred(const std::string& why);
  void close() { connection_->close(); }
  /// The worker is done with this connection: refuse later completions and drop queued
  /// ones, which would otherwise keep it alive (completion -> state -> owner -> here).
  void closeMail();
  /// Queues a deferred call's answer for the worker and wakes it. Any thread.
  void post(Completion&& c);

  /// The response of the call being dispatched, opened on first use. Worker thread.
  OutgoingMessage& startResponse(std::optional<OutgoingMessage>& slot, uint32_t hint);
  /// Takes over the call being dispatched for CallContext::defer(). Worker thread.
  std::shared_ptr<DeferredState> defer(CallContext& ctx);

 private:
  /// Opens an answer without ever waiting: in transport memory when there is room now
  /// (and no older answer waits), else in the backlog's memory. Throws Disconnected when
  /// the connection is gone.
  void openAnswer(std::optional<OutgoingMessage>& slot, uint32_t words);
  /// Sends an answer opened by openAnswer, or queues it in the backlog.
  Status sendAnswer(OutgoingMessage& out);
  void handle(IncomingMessage& msg, bool rejecting);
  void dispatch(IncomingMessage& msg);
  /// Charges the call's counters and tells the tracer. Worker thread.
  void endCall(CallMark& mark, bool ok, ErrorKind kind, uint64_t responseBytes) noexcept;
  void sendError(uint64_t callId, ErrorKind kind, int32_t code, const std::string& why);
  size_t processMail();

  const std::unordered_map<uint64_t, Service*>& services_;
  std::unique_ptr<Connection> connection_;
  int workerWake_;
  bool disconnected_ = false;
  std::unordered_map<uint64_t, std::weak_ptr<DeferredState>> deferred_;
  std::mutex mailMutex_;
  std::vector<Completion> mail_;
  bool mailClosed_ = false;  // under mailMutex_
  std::atomic<bool> hasMail_{false};
  std::shared_ptr<ConnectionMetrics> metrics_;  // null: metrics off
  Tracer* tracer_;
  size_t maxDeferred_;
  std::chrono::milliseconds answerRoomWait_;
  CallMark current_;  // the call being dispatched
  AnswerBacklog backlog_;
};

}  // namespace zcrpc
