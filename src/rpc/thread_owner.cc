#include "rpc/thread_owner.h"

#include <sys/syscall.h>
#include <unistd.h>

#include "zcrpc/error.h"

namespace zcrpc {

void ThreadOwner::pin() noexcept {
  owner_.store(token(), std::memory_order_release);
  ownerTid_.store(static_cast<long>(::syscall(SYS_gettid)), std::memory_order_relaxed);
  pinned_.store(true, std::memory_order_release);
}

void ThreadOwner::takeOver(const char* where, const Use& use) {
  const long self = static_cast<long>(::syscall(SYS_gettid));
  if (pinned_.load(std::memory_order_acquire))
    throw InvalidArgument(
        use.object + " used from thread " + std::to_string(self) + " (" + where +
        "); it belongs to the server's worker thread " +
        std::to_string(ownerTid_.load(std::memory_order_relaxed)) +
        ", which serves that connection: call capabilities of a server's clients from a "
        "handler or callback (on that thread), or defer the call's answer and make the call "
        "from a callAsync callback there");
  const void* seen = owner_.load(std::memory_order_acquire);
  if (seen == nullptr || use.inProgress.empty()) {
    // First use, or a hand-over between uses. A second thread claiming at the same moment
    // loses the exchange and is refused below.
    if (owner_.compare_exchange_strong(seen, token(), std::memory_order_acq_rel)) {
      ownerTid_.store(self, std::memory_order_relaxed);
      return;
    }
  }
  throw InvalidArgument(
      use.object + " used from thread " + std::to_string(self) + " (" + where +
      ") while thread " + std::to_string(ownerTid_.load(std::memory_order_relaxed)) +
      " uses it (" + (use.inProgress.empty() ? std::string("taking it over") : use.inProgress) +
      "): a Channel and its requests and calls belong to one thread at a time. Give each "
      "thread its own Channel (ChannelPool does), or hand a Channel to another thread only "
      "when it has no request open and no call outstanding");
}

}  // namespace zcrpc
