#include "rpc/thread_owner.h"

#include <sys/syscall.h>
#include <unistd.h>

#include "zcrpc/error.h"

namespace zcrpc {

void ThreadOwner::takeOver(const char* where, const Use& use) {
  const long self = static_cast<long>(::syscall(SYS_gettid));
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
