#include "transport/waiter.h"

#include <algorithm>

namespace zcrpc {

SpinLimit::SpinLimit(WaitMode mode, std::chrono::nanoseconds spinTime, SpinPolicy policy) noexcept
    : max_(std::chrono::duration_cast<Clock::duration>(std::max(spinTime, spinTime.zero()))),
      adaptive_(mode == WaitMode::kSpinThenSleep && policy == SpinPolicy::kAdaptive) {
  switch (mode) {
    case WaitMode::kBusyPoll: limit_ = Clock::duration::max(); break;
    case WaitMode::kSpinThenSleep: limit_ = max_; break;
    case WaitMode::kBlocking: limit_ = Clock::duration::zero(); break;
  }
  growStart_ = max_ / 8;
}

void SpinLimit::afterSleep(Clock::duration gap, bool timedOut) noexcept {
  if (!adaptive_) return;
  if (gap > max_) {
    // Spun for nothing: a message this far off is not worth spinning for.
    limit_ /= 2;
    if (limit_ < growStart_) limit_ = Clock::duration::zero();
  } else if (!timedOut) {
    // Slept, yet the message came within spinTime: spinning longer would have caught it.
    limit_ = std::min(max_, std::max(limit_ * 2, growStart_));
  }
}

}  // namespace zcrpc
