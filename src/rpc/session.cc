// Session: set-up, the one receive loop, liveness.
#include "rpc/session.h"

#include <unistd.h>

#include <algorithm>

#include "rpc/frames.h"

namespace zcrpc {

namespace {
/// How long a wait may last while uncollected responses hold transport memory before they
/// move to the heap (see Session::waitDeadline()).
constexpr auto kUnpinAfter = std::chrono::milliseconds(1);
}  // namespace

// ------------------------------------------------------------------------------------
// SessionLink

void SessionLink::post(Completion&& c) {
  {
    std::unique_lock lock(mutex_);
    if (closed_) {
      // The driver let the session go: queueing would keep the state alive, forever.
      // Drop the answer, outside the lock.
      lock.unlock();
      Completion dropped = std::move(c);
      return;
    }
    mail_.push_back(std::move(c));
  }
  hasMail_.store(true, std::memory_order_release);  // pairs with hasMail()'s acquire
  if (wakeFd_ < 0) return;  // a driver that polls (a Channel's thread) finds it there
  uint64_t one = 1;
  (void)!::write(wakeFd_, &one, sizeof one);
}

void SessionLink::postRelease(uint32_t id, uint32_t refs) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    releases_.push_back({id, refs});
  }
  hasMail_.store(true, std::memory_order_release);
  if (wakeFd_ < 0) return;
  uint64_t one = 1;
  (void)!::write(wakeFd_, &one, sizeof one);
}

void SessionLink::take(std::vector<Completion>& out, std::vector<ReleaseNote>& releases) {
  std::lock_guard lock(mutex_);
  out.swap(mail_);
  releases.insert(releases.end(), releases_.begin(), releases_.end());
  releases_.clear();
  hasMail_.store(false, std::memory_order_relaxed);
}

void SessionLink::close() {
  std::vector<Completion> left;  // destroyed outside the lock
  std::lock_guard lock(mutex_);
  closed_ = true;
  session_ = nullptr;
  releases_.clear();
  left.swap(mail_);
  hasMail_.store(false, std::memory_order_relaxed);
}

// ------------------------------------------------------------------------------------
// Session

Session::Session(std::unique_ptr<Connection> connection, SessionOptions options,
                 std::shared_ptr<ConnectionMetrics> questionMetrics,
                 std::shared_ptr<ConnectionMetrics> answerMetrics)
    : connection_(std::move(connection)),
      options_(options),
      tracer_(options.tracer),
      questionMetrics_(std::move(questionMetrics)),
      answerMetrics_(std::move(answerMetrics)),
      link_(std::make_shared<SessionLink>(*this, options.wakeFd)),
      owner_(&link_->owner) {
  if (!connection_) throw InvalidArgument("a session needs a connection");
  if (options_.window == 0 || (options_.window & (options_.window - 1)))
    throw InvalidArgument("channel window " + std::to_string(options_.window) +
                          " must be a power of two");
  if (options_.window > connection_->maxLeases())
    throw InvalidArgument("channel window " + std::to_string(options_.window) +
                          " exceeds the " + std::to_string(connection_->maxLeases()) +
                          " received messages " + connection_->endpoint() +
                          " may hold (max_leases): raise max_leases or lower window");
  mask_ = options_.window - 1;  // slots_ on the first call out (see send())
  connection_->setCallTargets(this);
}

Session::~Session() {
  connection_->setCallTargets(nullptr);  // the connection may outlive us (DeferredState)
  if (link_->session()) closeLink();
  for (uint64_t i = 0; slots_ && i <= mask_; ++i) slots_[i].result = CallResult();  // leases before connection
  early_.clear();
  connection_->close();
}

bool Session::streams(uint32_t target, uint64_t interfaceId, uint16_t methodId) const noexcept {
  const Service* service = target != 0 ? exported(target) : bootstrapService(interfaceId);
  return service && service->streams(interfaceId, methodId);
}

std::string Session::askForOwner(const void* session, ThreadOwner::Ask what) {
  const auto& s = *static_cast<const Session*>(session);
  if (what == ThreadOwner::Ask::kInProgress) return s.inProgress();
  return (s.options_.services ? "server connection " : "channel to ") + s.connection_->endpoint();
}

std::string Session::inProgress() const {
  if (requestOpen_) return "a request is being built";
  if (outstanding_)
    return std::to_string(outstanding_) + (outstanding_ == 1 ? " call" : " calls") + " outstanding";
  return {};
}

void Session::close() {
  connection_->close();
  closeLink();
}

void Session::closeLink() {
  link_->setClosedWhy(disconnectReason_.empty() ? "connection " + connection_->endpoint() + " closed"
                                                : disconnectReason_);
  link_->close();
}

void Session::checkPeer() {
  if (!disconnected_ && connection_->checkPeer() == Status::kDisconnected)
    failAll(ErrorKind::kDisconnected, connection_->lastError());
}

size_t Session::handle(IncomingMessage& msg) {
  switch (static_cast<FrameKind>(msg.header().kind)) {
    case FrameKind::kResponse:
    case FrameKind::kError:
    case FrameKind::kPong:
      return handleAnswer(msg);
    case FrameKind::kRequest:
    case FrameKind::kStreamRequest:
    case FrameKind::kOneWay:
    case FrameKind::kCancel:
    case FrameKind::kPing:
      handleCall(msg);
      return 0;
    case FrameKind::kRelease:
      if (msg.header().flags & kFlagExtended) {
        try {
          if (readExtensions(msg) != 0) dropPeer("a release frame names a target");
        } catch (const Error& e) {
          dropPeer(std::string("a release frame was refused: ") + e.what());
        }
      }
      return 0;
    default:
      return 0;  // nothing else means anything to a session: ignore it
  }
}

size_t Session::poll(size_t batch) {
  Goal goal{Until::kPolled};
  goal.batch = batch;
  (void)run<Until::kPolled>(goal);
  return goal.finished;
}

size_t Session::pump(size_t batch) {
  Goal goal{Until::kPolled};
  goal.batch = batch;
  (void)run<Until::kPolled>(goal);
  return goal.worked + goal.finished;
}

size_t Session::pollUntil(Deadline deadline) {
  Goal goal{Until::kAnyFinished};
  goal.deadline = deadline;
  (void)run<Until::kAnyFinished>(goal);
  return goal.finished;
}

Status Session::waitForSendRoom(OutgoingMessage& msg, uint32_t sizeHintWords, Deadline deadline) {
  Goal goal{Until::kSendRoom};
  goal.deadline = deadline;
  goal.msg = &msg;
  goal.words = sizeHintWords;
  (void)run<Until::kSendRoom>(goal);
  return goal.status;
}

size_t Session::serveQueued() {
  size_t n = link_->hasMail() ? processMail() : 0;
  if (!backlog_.empty() && !messageOpenHere()) {
    bool gone = false;
    const size_t drained = backlog_.drain(*connection_, gone);
    if (gone) failAll(ErrorKind::kDisconnected, connection_->lastError());
    unflushed_ |= drained != 0;
    n += drained;
  }
  return n;
}

// The one receive loop behind poll(), pollUntil(), waitFor() and waitForSendRoom(). Each
// round serves what is queued (posted mail, answers waiting for room), hands over what
// early_ holds, stops if the goal is met, then takes one message -- waiting for it by the
// connection's wait mode, or not while draining -- and handles it, whatever it is: the
// peer's answers to our calls, and its calls to us.
//
// * kCallDone waits for its answer straight away (nothing else usually arrives first) and
//   takes the awaited response directly, without the round through a CallResult in the
//   slot that finish() and takeResult() would make.
// * The other goals first drain what has arrived (at most `batch` messages), then expire
//   overdue calls. kPolled stops there; kAnyFinished stops once a call finished (or none
//   is outstanding), else waits for the next message and drains again.
// * kSendRoom: the send ring (or socket) is full. Waiting for room without reading
//   responses would deadlock against a peer that waits for room for those responses
//   while our unread ones fill its ring: so, while calls are outstanding, it alternates
//   between taking the responses that arrived and short waits for room, the slices
//   growing from 20 us to 1 ms so that a long stall does not spin; held responses are
//   unpinned after kUnpinAfter, as in any wait (they may be what blocks us).
// * Answers handed to the transport unflushed (send(out, false), so that a batch wakes
//   the peer once) are flushed before the loop waits or returns.
template <Session::Until U>
IncomingMessage Session::run(Goal& g) {
  // A handler's answer may wait for room (kSendRoom: the peer frees that), never for what
  // this connection receives while an in-place request is held.
  if constexpr (U != Until::kSendRoom) checkMayWait("waiting");
  Deadline unpinAt = kNoDeadline;
  auto slice = std::chrono::microseconds(20);  // kSendRoom's waits
  bool draining = U != Until::kCallDone;
  size_t drained = 0;   // messages taken in this drain
  IncomingMessage msg;  // the one every return hands back (named: no copy)
  for (;;) {
    if (link_->hasMail() || !backlog_.empty()) [[unlikely]] g.worked += serveQueued();
    if (!early_.empty()) [[unlikely]] g.finished += takeEarly();
    Slot* slot = nullptr;
    if constexpr (U == Until::kCallDone) {
      slot = slotFor(g.callId);
      if (!slot) throw Failed("call " + std::to_string(g.callId) + " is unknown to this channel");
      if (slot->state == SlotState::kDone) break;
      if (disconnected_) failAll(ErrorKind::kDisconnected, disconnectReason_);
    } else if constexpr (U == Until::kSendRoom) {
      if (!outstanding_) {
        if (unflushed_) [[unlikely]] (void)connection_->flush(), unflushed_ = false;
        g.status = connection_->startMessage(*g.msg, g.words, g.deadline);
        return msg;
      }
    }

    Status s;
    if (draining) {
      // A server holds back a peer that does not read its answers: see holdWhileCongested.
      if (options_.holdWhileCongested && !backlog_.empty()) [[unlikely]]
        s = Status::kWouldBlock;
      else
        s = connection_->tryReceive(msg);
    } else {
      if (unflushed_) [[unlikely]] (void)connection_->flush(), unflushed_ = false;
      if constexpr (U == Until::kCallDone)
        s = connection_->receive(msg, waitDeadline(unpinAt));
      else  // kAnyFinished (kSendRoom waits below, kPolled never)
        s = connection_->receive(msg, std::min(g.deadline, waitDeadline(unpinAt)));
    }

    if (s == Status::kOk) {
      if constexpr (U == Until::kCallDone) {
        const FrameHeader& h = msg.header();
        if (h.callId == g.callId && h.kind == static_cast<uint8_t>(FrameKind::kResponse) &&
            !slot->callback && !(h.flags & kFlagExtended)) [[likely]] {
          if (slot->method || slot->traced)
            noteEnd(*slot, true, ErrorKind::kFailed, msg.payloadBytes());
          slot->state = SlotState::kFree;
          if (--outstanding_ == 0) nearestDeadline_ = kNoDeadline;
          return msg;
        }
        handle(msg);
        msg.release();
        continue;
      }
      g.finished += handle(msg);
      ++g.worked;
      msg.release();
      if (!draining) {  // kAnyFinished woke up: take the rest that arrived with it
        draining = true;
        drained = 0;
      }
      if (++drained < g.batch) continue;
    } else if (s == Status::kDisconnected) {
      g.finished += outstanding_;
      failAll(ErrorKind::kDisconnected, connection_->lastError());
      if constexpr (U == Until::kCallDone) continue;  // its slot is done now
      if constexpr (U == Until::kSendRoom) g.status = Status::kDisconnected;
      break;
    } else if (s == Status::kTimedOut) {  // a wait of kCallDone or kAnyFinished
      g.finished += afterTimeout(unpinAt);
      if (U == Until::kAnyFinished && (g.finished || !outstanding_ || Clock::now() >= g.deadline))
        break;
      continue;
    }

    // Drained: what had arrived is handled (kWouldBlock, or a full batch).
    const bool received = drained > 0;
    draining = false;
    drained = 0;
    if constexpr (U != Until::kSendRoom) {
      if (outstanding_ && Clock::now() >= nearestDeadline_) g.finished += expire(Clock::now());
      if (U == Until::kPolled || g.finished || !outstanding_) break;
      continue;  // kAnyFinished: wait for the next message
    } else {
      const auto now = Clock::now();
      if (outstanding_ && now >= nearestDeadline_) g.finished += expire(now);
      g.status = connection_->tryStartMessage(*g.msg, g.words);
      if (g.status != Status::kWouldBlock) break;
      if (now >= g.deadline) {
        g.status = Status::kTimedOut;
        break;
      }
      if (pinned_) {
        if (unpinAt == kNoDeadline)
          unpinAt = now + kUnpinAfter;
        else if (now >= unpinAt)
          unpinResults();
      }
      draining = true;
      if (received) continue;
      if (unflushed_) [[unlikely]] (void)connection_->flush(), unflushed_ = false;
      g.status = connection_->startMessage(
          *g.msg, g.words, std::min({g.deadline, nearestDeadline_, now + slice}));
      if (g.status != Status::kTimedOut) break;
      if (outstanding_) {
        Status r = connection_->receive(msg, std::min(g.deadline, Clock::now() + slice));
        if (r == Status::kOk) {
          g.finished += handle(msg);
          msg.release();
        } else if (r == Status::kDisconnected) {
          failAll(ErrorKind::kDisconnected, connection_->lastError());
          g.status = Status::kDisconnected;
          break;
        }
      }
      slice = std::min<std::chrono::microseconds>(slice * 2, std::chrono::milliseconds(1));
    }
  }
  if (unflushed_ && !disconnected_) (void)connection_->flush(), unflushed_ = false;
  return msg;
}

template IncomingMessage Session::run<Session::Until::kPolled>(Goal&);
template IncomingMessage Session::run<Session::Until::kAnyFinished>(Goal&);
template IncomingMessage Session::run<Session::Until::kCallDone>(Goal&);
template IncomingMessage Session::run<Session::Until::kSendRoom>(Goal&);

// ------------------------------------------------------------------------------------
// Uncollected responses

// Responses that arrived for calls nobody has collected yet (PendingCall::wait() not yet
// called) stay where they arrived, which is right for the usual short wait. But a ring
// reclaims space in arrival order, so while the caller waits for an earlier call, later
// answers held this way can take all of it, and the awaited answer then has no room to
// arrive in (over tcp it stays in the kernel; over shm the server holds it back). So a
// wait that lasts kUnpinAfter while such responses are held copies them to the heap.
Deadline Session::waitDeadline(Deadline& unpinAt) {
  if (pinned_ == 0) [[likely]]
    return nearestDeadline_;
  if (unpinAt == kNoDeadline) unpinAt = Clock::now() + kUnpinAfter;
  return std::min(nearestDeadline_, unpinAt);
}

void Session::unpinResults() {
  for (uint64_t i = 0; slots_ && i <= mask_ && pinned_; ++i) {
    Slot& slot = slots_[i];
    if (!slot.pinned) continue;
    slot.result.response().moveToHeap();
    slot.pinned = false;
    --pinned_;
  }
}

size_t Session::afterTimeout(Deadline unpinAt) {
  const auto now = Clock::now();
  if (pinned_ && now >= unpinAt) unpinResults();
  return expire(now);
}

// A request that grows past its first segment may wait for room in the peer's memory
// that the peer frees only when it releases earlier requests, which it does once their
// answers are sent, which may need room in our memory that unread answers fill: a cycle
// that only the server's answerRoomWait broke, failing a call. So while a request waits
// for room, answers are taken out of transport memory: those that arrived to the heap
// (handled later, since a callback must not run while a request is open, in arrival
// order before anything received after them), and held results as unpinResults() does.
void Session::whileWaitingForRoom() {
  for (int i = 0; i < 256; ++i) {
    IncomingMessage in;
    if (connection_->tryReceive(in) != Status::kOk) break;  // a disconnect shows later
    in.moveToHeap();
    early_.push_back(std::move(in));
  }
  if (pinned_) unpinResults();
}

size_t Session::takeEarly() {
  size_t n = 0;
  std::vector<IncomingMessage> early = std::move(early_);
  early_.clear();
  for (IncomingMessage& m : early) n += handle(m);
  return n;
}

}  // namespace zcrpc
