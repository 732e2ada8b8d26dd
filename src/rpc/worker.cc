// Server worker threads.
#include "rpc/worker.h"

#include <malloc.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "rpc/session.h"
#include "zcrpc/log.h"

namespace zcrpc {

namespace {
constexpr auto kCongestedSlice = std::chrono::milliseconds(1);
// Hang-ups wake the worker as events; this sweep over every peer is the safety net (a
// peer that marks itself closed in shared memory without hanging up, a transport whose
// liveness raises no event), cheap enough for thousands of idle connections.
constexpr auto kLivenessEvery = std::chrono::seconds(1);
constexpr int kEventsPerSleep = 64;
// Clock reads of a spinning worker (every 64 idle rounds) between looks at its epoll set
// for hang-ups: a few hundred microseconds to a few milliseconds apart.
constexpr uint32_t kEventCheckEvery = 16;
}  // namespace

Worker::Worker(const std::unordered_map<uint64_t, Service*>& services,
               const ServerOptions& options, MetricsRegistry& registry)
    : services_(services), options_(options), registry_(registry),
      wake_(ZCRPC_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd for worker")),
      epoll_(ZCRPC_SYSCALL(::epoll_create1(EPOLL_CLOEXEC), "epoll_create1 for worker")),
      waiter_(options.idleMode, options.spinTime, options.spinPolicy, PollCost::kMixed) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the worker's own wake-up
  ZCRPC_SYSCALL(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev), "epoll_ctl for worker");
}

Worker::~Worker() = default;

void Worker::adopt(std::unique_ptr<Connection> c) {
  {
    std::lock_guard lock(inboxMutex_);
    inbox_.push_back(std::move(c));
    ++count_;
  }
  hasInbox_.store(true, std::memory_order_release);
  wake();
}

void Worker::stop(Deadline deadline) {
  drainDeadline_ = deadline;
  stopping_.store(true, std::memory_order_release);
  wake();
}

void Worker::wake() {
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
}

void Worker::adoptInbox() {
  if (!hasInbox_.load(std::memory_order_acquire)) return;
  std::lock_guard lock(inboxMutex_);
  for (auto& c : inbox_) {
    auto metrics = options_.metrics ? registry_.open(c->endpoint(), MetricsSide::kServer) : nullptr;
    auto w = std::make_unique<Watched>();
    SessionOptions so;
    // Calls out from a server connection (to capabilities its client exports) share the
    // leases the connection lets it hold with the calls it serves.
    so.window = std::min<uint32_t>(so.window, c->maxLeases());
    so.services = &services_;
    so.maxDeferred = options_.maxDeferredPerConnection;
    so.answerRoomWait = options_.answerRoomWait;
    so.holdWhileCongested = true;
    so.tracer = options_.tracer;
    so.wakeFd = wake_.get();
    so.maxExports = options_.maxExportsPerConnection;
    so.maxImports = options_.maxImportsPerConnection;
    so.streamWindowCalls = options_.streamWindowCalls;
    so.streamWindowBytes = options_.streamWindowBytes;
    w->conn = std::make_unique<Session>(std::move(c), so, nullptr, std::move(metrics));
    w->conn->link()->owner.pin();  // this worker thread drives it, and only it
    updateRegistration(*w);
    w->queued = true;
    toArm_.push_back(w.get());
    connections_.push_back(std::move(w));
  }
  inbox_.clear();
  hasInbox_.store(false, std::memory_order_relaxed);
}

size_t Worker::pumpAll(bool rejecting) {
  size_t n = 0;
  bool congested = false;
  for (auto& w : connections_) {
    if (rejecting) [[unlikely]] w->conn->reject();
    const size_t k = w->conn->pump(options_.batch);
    n += k;
    // Traffic: stop the peer signalling us for each message while we are awake.
    if (k && w->armed) disarm(*w);
    const bool congestedNow = w->conn->congested();
    congested |= congestedNow;
    // In epoll_ exactly while neither gone nor congested (see updateRegistration).
    if (w->registered == (congestedNow || w->conn->disconnected())) [[unlikely]]
      updateRegistration(*w);
  }
  anyCongested_ = congested;
  return n;
}

void Worker::updateRegistration(Watched& w) {
  const bool gone = w.conn->disconnected();
  const bool want = !gone && !w.conn->congested();
  anyGone_ |= gone;
  if (want == w.registered) return;
  const int fd = w.conn->connection().waitFd();
  if (want) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.ptr = &w;
    // ADD reports a descriptor already readable at once: nothing before it is missed.
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      // Without it the connection is still polled every round, and by the liveness sweep.
      w.conn->checkPeer();
      return;
    }
  } else {
    (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
    if (w.armed) disarm(w);
  }
  w.registered = want;
  if (want && !w.queued) {
    w.queued = true;
    toArm_.push_back(&w);
  }
}

void Worker::disarm(Watched& w) {
  w.conn->connection().disarmWait();
  w.armed = false;
  if (!w.queued) {
    w.queued = true;
    toArm_.push_back(&w);
  }
}

void Worker::reap() {
  anyGone_ = false;
  const auto now = Clock::now();
  auto gone = std::remove_if(connections_.begin(), connections_.end(), [&](auto& w) {
    Session& c = *w->conn;
    if (!c.disconnected() || !c.idle() || c.hasMail()) return false;
    updateRegistration(*w);  // out of epoll_ before its descriptor closes
    if (w->queued) std::erase(toArm_, w.get());
    c.close();
    registry_.retire(c.answerMetrics());
    uint64_t suppressed = 0;
    if (closeLog_.allow(now, suppressed) && logEnabled(LogLevel::kInfo)) {
      std::string why = c.connection().lastError();
      logMessage(LogLevel::kInfo, c.connection().endpoint() + " closed: " +
                                      (why.empty() ? std::string("by this server") : why) +
                                      (suppressed ? " (and " + std::to_string(suppressed) +
                                                        " more connections closed since the last message)"
                                                  : std::string()));
    }
    return true;
  });
  const size_t reaped = static_cast<size_t>(connections_.end() - gone);
  count_ -= reaped;
  connections_.erase(gone, connections_.end());
  if (reaped) trimPending_ = true;
  // With no connection left the worker may sleep long: trim now rather than later.
  if (trimPending_ && (now >= nextTrim_ || connections_.empty())) {
    ::malloc_trim(0);
    trimPending_ = false;
    nextTrim_ = now + std::chrono::seconds(1);
  }
}

bool Worker::armAll() {
  // Arm what is not armed. Connections armed before stay armed: an idle one costs nothing.
  size_t keep = 0;
  for (size_t i = 0; i < toArm_.size(); ++i) {
    Watched& w = *toArm_[i];
    if (!w.registered) {  // congested or gone: polled, not slept on
      if (!w.conn->disconnected()) toArm_[keep++] = &w;
      else w.queued = false;
      continue;
    }
    if (!w.conn->connection().armWait()) {
      // Something is there already: no sleep. The rest stays queued.
      for (size_t j = i; j < toArm_.size(); ++j) toArm_[keep++] = toArm_[j];
      toArm_.resize(keep);
      return false;
    }
    w.armed = true;
    w.queued = false;
  }
  toArm_.resize(keep);
  return true;
}

bool Worker::sleep(Clock::duration left) {
  if (!armAll()) return false;
  // With congested connections, look again soon: freed room raises no event.
  Clock::duration timeout = left;
  if (anyCongested_) timeout = std::min<Clock::duration>(timeout, kCongestedSlice);
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(timeout).count();
  takeEvents(static_cast<int>(std::clamp<int64_t>(ms, 0, INT32_MAX)));
  return false;
}

void Worker::takeEvents(int timeoutMs) {
  epoll_event events[kEventsPerSleep];
  const int n = ::epoll_wait(epoll_.get(), events, kEventsPerSleep, timeoutMs);
  for (int i = 0; i < n; ++i) {
    auto* w = static_cast<Watched*>(events[i].data.ptr);
    if (!w) {
      uint64_t count;
      (void)!::read(wake_.get(), &count, sizeof count);
      continue;
    }
    // Disarming also clears the signal (the shm socket's wake-up bytes), whether or not
    // this connection was armed: a level-triggered wait would return again at once.
    disarm(*w);
    if (events[i].events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) {
      w->conn->checkPeer();
      updateRegistration(*w);
    }
  }
}

void Worker::checkLiveness() {
  for (auto& w : connections_) {
    w->conn->checkPeer();
    if (w->conn->disconnected()) updateRegistration(*w);
  }
  nextLiveness_ = Clock::now() + kLivenessEvery;
  reap();
}

void Worker::run() {
  nextLiveness_ = Clock::now() + kLivenessEvery;
  while (!stopping_.load(std::memory_order_acquire)) {
    adoptInbox();
    if (pumpAll(false) && !anyGone_) continue;
    if (anyGone_) reap();
    // Idle: spin (by the idle mode and what the spin limit learnt), then sleep.
    Status s = waiter_.wait(
        [this] {
          if (stopping_.load(std::memory_order_acquire)) return true;
          adoptInbox();
          return pumpAll(false) > 0 || anyGone_;
        },
        [this](bool) {
          // While spinning (busy-poll: always), hang-ups are taken from the epoll set
          // now and then without sleeping: every kEventCheckEvery clock reads.
          if ((++eventChecks_ & (kEventCheckEvery - 1)) == 0) takeEvents(0);
          return true;  // the peers' liveness is per connection (anyGone_ ends the wait)
        },
        [this](Clock::duration left) { return sleep(left); }, nextLiveness_);
    if (s == Status::kTimedOut) checkLiveness();
  }
  drain();
}

size_t Worker::poll() {
  if (nextLiveness_ == Clock::time_point{}) nextLiveness_ = Clock::now() + kLivenessEvery;
  takeEvents(0);  // mail, signals (which disarms what signalled) and hang-ups
  adoptInbox();
  const size_t n = pumpAll(false);
  if (anyGone_) reap();
  if (Clock::now() >= nextLiveness_) checkLiveness();
  return n;
}

Clock::duration Worker::armWait() {
  if (hasInbox_.load(std::memory_order_acquire) || anyGone_ || !armAll()) return {};
  Clock::duration left = std::max<Clock::duration>(nextLiveness_ - Clock::now(), {});
  if (anyCongested_) left = std::min<Clock::duration>(left, kCongestedSlice);
  return left;
}

void Worker::drain() {
  drained_ = true;
  adoptInbox();
  for (;;) {
    size_t n = pumpAll(false);
    bool deferredLeft = false;
    for (auto& w : connections_) deferredLeft |= !w->conn->idle() && !w->conn->disconnected();
    if (!n && !deferredLeft) break;
    if (Clock::now() >= drainDeadline_) break;
    if (!n) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (auto& w : connections_) {
    Session& c = *w->conn;
    c.failDeferred("server shut down before answering");
    c.reject();
    c.pump(SIZE_MAX / 2);
    if (w->registered) (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.connection().waitFd(), nullptr);
    c.close();
    registry_.retire(c.answerMetrics());
  }
  toArm_.clear();
  connections_.clear();
  count_ = 0;
}

}  // namespace zcrpc
