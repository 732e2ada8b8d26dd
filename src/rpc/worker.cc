// Server worker threads.
#include "rpc/worker.h"

#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "os/spin.h"
#include "rpc/server_connection.h"

namespace zcrpc {

namespace {
constexpr auto kSleepSlice = std::chrono::milliseconds(20);
constexpr auto kCongestedSlice = std::chrono::milliseconds(1);
constexpr uint32_t kClockEvery = 64;   // idle busy-poll rounds between clock reads
constexpr auto kYieldInterval = std::chrono::microseconds(20);  // longest spin between yields
constexpr auto kLivenessEvery = std::chrono::milliseconds(50);
}  // namespace

Worker::Worker(const std::unordered_map<uint64_t, Service*>& services,
               const ServerOptions& options, MetricsRegistry& registry)
    : services_(services), options_(options), registry_(registry),
      wake_(ZCRPC_SYSCALL(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd for worker")) {}

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
    connections_.push_back(std::make_shared<ServerConnection>(
        services_, std::move(c), wake_.get(), std::move(metrics), options_.tracer,
        options_.maxDeferredPerConnection, options_.answerRoomWait));
  }
  inbox_.clear();
  hasInbox_.store(false, std::memory_order_relaxed);
}

size_t Worker::pumpAll(bool rejecting) {
  size_t n = 0;
  for (auto& c : connections_) n += c->pump(options_.batch, rejecting);
  return n;
}

void Worker::reap() {
  auto gone = std::remove_if(connections_.begin(), connections_.end(), [this](auto& c) {
    if (!c->disconnected() || !c->idle() || c->hasMail()) return false;
    c->close();
    c->closeMail();
    registry_.retire(c->metrics());
    return true;
  });
  count_ -= static_cast<size_t>(connections_.end() - gone);
  connections_.erase(gone, connections_.end());
}

void Worker::sleep() {
  std::vector<pollfd>& fds = pollFds_;  // reused: no allocation per sleep
  fds.clear();
  fds.push_back({wake_.get(), POLLIN, 0});
  bool ready = false;
  bool congested = false;
  size_t armed = 0;
  for (auto& c : connections_) {
    if (c->disconnected()) continue;
    if (c->congested()) {
      // Its requests wait unread and nothing signals freed room: look again soon.
      congested = true;
      continue;
    }
    if (!c->connection().armWait()) {
      ready = true;
      break;
    }
    ++armed;
    fds.push_back({c->connection().waitFd(), POLLIN | POLLRDHUP, 0});
  }
  if (!ready) {
    int r;
    // Slices bound the liveness checks of connections; with none, only wake() ends it.
    const int ms = congested              ? static_cast<int>(kCongestedSlice.count())
                   : connections_.empty() ? -1
                                          : static_cast<int>(kSleepSlice.count());
    do r = ::poll(fds.data(), fds.size(), ms);
    while (r < 0 && errno == EINTR);
  }
  size_t i = 0;
  for (auto& c : connections_) {
    if (c->disconnected() || c->congested()) continue;
    if (i++ >= armed) break;
    c->connection().disarmWait();
  }
  for (size_t k = 1; k < fds.size(); ++k)
    if (fds[k].revents & (POLLHUP | POLLRDHUP | POLLERR))
      for (auto& c : connections_)
        if (c->connection().waitFd() == fds[k].fd) c->checkPeer();
  uint64_t count;
  (void)!::read(wake_.get(), &count, sizeof count);
}

void Worker::run() {
  auto nextLiveness = Clock::now();
  Clock::time_point idleSince, lastYield;
  uint32_t idleRounds = 0;  // polling rounds that found nothing, since the last work
  bool slept = false;       // ... and whether a sleep() ended one of them
  const bool spins = options_.idleMode != WaitMode::kBlocking;
  while (!stopping_.load(std::memory_order_acquire)) {
    adoptInbox();
    if (pumpAll(false)) {
      idleRounds = 0;
      slept = false;
      continue;
    }
    const uint32_t round = idleRounds++;
    // While spinning, an idle round reads the clock only every kClockEvery-th time:
    // where clock_gettime is a syscall (VMs on an HPET or ACPI clock source) it would
    // make every round slow and every arriving request wait for the round to end.
    if (spins && !slept && (round & (kClockEvery - 1)) != 0) {
      os::idleSpin(round + 1);  // yields now and then: see idleSpin
      continue;
    }
    const auto now = Clock::now();
    if (round == 0) idleSince = now;
    if (now >= nextLiveness) {
      for (auto& c : connections_) c->checkPeer();
      nextLiveness = now + kLivenessEvery;
      reap();
    }
    if (!slept && (options_.idleMode == WaitMode::kBusyPoll ||
                   (options_.idleMode == WaitMode::kSpinThenSleep &&
                    now - idleSince < options_.spinTime))) {
      // The rounds between clock reads yield now and then (idleSpin); this one yields
      // when kYieldInterval has passed since the last yield here: a round over tcp
      // connections is a recv() each, so kYieldEvery of them take far longer.
      if (now - lastYield >= kYieldInterval) {
        ::sched_yield();
        lastYield = now;
      } else {
        os::cpuRelax();
      }
      continue;
    }
    sleep();
    slept = true;
  }
  drain();
}

void Worker::drain() {
  adoptInbox();
  for (;;) {
    size_t n = pumpAll(false);
    bool deferredLeft = false;
    for (auto& c : connections_) deferredLeft |= !c->idle() && !c->disconnected();
    if (!n && !deferredLeft) break;
    if (Clock::now() >= drainDeadline_) break;
    if (!n) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (auto& c : connections_) {
    c->failDeferred("server shut down before answering");
    c->pump(SIZE_MAX / 2, /*rejecting=*/true);
    c->close();
    c->closeMail();
    registry_.retire(c->metrics());
  }
  connections_.clear();
  count_ = 0;
}

}  // namespace zcrpc
