#include "rpc/thread_owner.h"

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>

#include "zcrpc/error.h"

namespace zcrpc {

namespace {

long threadId() noexcept { return static_cast<long>(::syscall(SYS_gettid)); }

constexpr const char* kNames[] = {
    "nothing",           "new request", "call on a capability",  "call()",
    "callAsync()",       "sendOneWay()", "StreamRequest::send()", "StreamFlow::finish()",
    "PendingCall::done()", "PendingCall::wait()", "PendingCall::cancel()", "poll()",
    "pollUntil()",       "ping()",
};
static_assert(std::size(kNames) == ThreadOwner::kDoingCount);

/// How long an owner that found a takeover deciding waits for its outcome. The claimer
/// decides within a system call; this bounds the wait if it is descheduled meanwhile.
constexpr auto kClaimWait = std::chrono::seconds(1);
/// How often a takeover looks again when the owner changed under it.
constexpr int kClaimTries = 16;

}  // namespace

const char* ThreadOwner::name(Doing d) noexcept { return d < kDoingCount ? kNames[d] : "?"; }

void ThreadOwner::pin() noexcept {
  ownerTid_.store(threadId(), std::memory_order_relaxed);
  owner_.store(token(), std::memory_order_release);
  pinned_.store(true, std::memory_order_release);
}

void ThreadOwner::takeOver(Doing what, Subject subject) {
  if (pinned_.load(std::memory_order_acquire))
    throw InvalidArgument(
        subject(Ask::kName) + " used from thread " + std::to_string(threadId()) + " (" +
        name(what) + "); it belongs to the server's worker thread " +
        std::to_string(ownerTid_.load(std::memory_order_relaxed)) +
        ", which serves that connection: call capabilities of a server's clients from a "
        "handler or callback (on that thread), or defer the call's answer and make the call "
        "from a callAsync callback there");
  const uintptr_t me = token();
  uintptr_t seen = 0;
  for (int tries = 0;; ++tries) {
    seen = afterClaims();
    if (seen == me) return;  // this thread's: another's claim on it was given back
    if ((seen & kClaiming) || tries == kClaimTries)
      refuse(what, subject(Ask::kName), "another thread is taking it over");
    if (seen == 0) {
      if (owner_.compare_exchange_strong(seen, me, std::memory_order_acq_rel)) {
        ownerTid_.store(threadId(), std::memory_order_relaxed);  // first use: nobody to ask
        return;
      }
      continue;  // another thread was first: look again
    }
    // Claim, then look at what the owner does.
    if (owner_.compare_exchange_strong(seen, me | kClaiming, std::memory_order_acq_rel)) break;
  }
  // Pairs with the compiler fence in enter(): after it, the owner's last activity store is
  // visible here, or its next check of owner_ sees the claim (and waits in waitOutClaim()).
  os::barrierOtherThreads();
  // Acquire pairs with leave(): the owner's last function happened before what follows.
  const uint64_t activity = activity_.load(std::memory_order_acquire);
  const auto doing = static_cast<Doing>(activity & kDoingMask);
  std::string busy;
  if ((activity & ~kDoingMask) != seen)  // another thread's store, which lost a race for it
    busy = "it was used from two threads at once a moment ago";
  else if (doing == kNewRequest || doing == kCapabilityCall)
    busy = "a request is being built";
  else if (doing != kNothing)
    busy = std::string("in ") + name(doing);
  else
    busy = subject(Ask::kInProgress);  // the owner is held off meanwhile (afterClaims())
  if (busy.empty()) {
    ownerTid_.store(threadId(), std::memory_order_relaxed);
    owner_.store(me, std::memory_order_release);  // pairs with afterClaims()
    return;
  }
  owner_.store(seen, std::memory_order_release);  // in use: back to its owner
  refuse(what, subject(Ask::kName), busy);
}

void ThreadOwner::waitOutClaim(Doing what, Subject subject) {
  if (afterClaims() == token()) return;  // the claimer saw this thread busy and gave it back
  // The claimer found this thread idle and took the object (or is still deciding). This
  // thread's activity store may land after the new owner's: a later takeover from the
  // new owner is then refused until the new owner enters a function again (safe).
  refuse(what, subject(Ask::kName), "taking it over");
}

uintptr_t ThreadOwner::afterClaims() const noexcept {
  uintptr_t owner = owner_.load(std::memory_order_acquire);  // pairs with takeOver()'s stores
  const auto until = std::chrono::steady_clock::now() + kClaimWait;
  while ((owner & kClaiming) && std::chrono::steady_clock::now() < until) {
    sched_yield();
    owner = owner_.load(std::memory_order_acquire);
  }
  return owner;
}

void ThreadOwner::refuse(Doing what, const std::string& object, const std::string& ownerDoing) const {
  throw InvalidArgument(
      object + " used from thread " + std::to_string(threadId()) + " (" + name(what) +
      ") while thread " + std::to_string(ownerTid_.load(std::memory_order_relaxed)) +
      " uses it (" + ownerDoing +
      "): a Channel and its requests and calls belong to one thread at a time. Give each "
      "thread its own Channel (ChannelPool does), or hand a Channel to another thread only "
      "when it has no request open and no call outstanding");
}

}  // namespace zcrpc
