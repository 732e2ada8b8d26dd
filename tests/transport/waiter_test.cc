// The one wait loop (src/transport/waiter.h): its phases, its exits, and how the adaptive
// spin limit follows the gaps it sees.
#include "transport/waiter.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace zcrpc {
namespace {

using namespace std::chrono_literals;

TEST(SpinLimit, BusyPollSpinsWithoutEndAndBlockingNotAtAll) {
  SpinLimit busy(WaitMode::kBusyPoll, 50us, SpinPolicy::kAdaptive);
  SpinLimit blocking(WaitMode::kBlocking, 50us, SpinPolicy::kAdaptive);
  for (int i = 0; i < 10; ++i) {
    busy.afterSleep(1s, false);
    blocking.afterSleep(1us, false);
  }
  EXPECT_EQ(busy.limit(), Clock::duration::max());
  EXPECT_EQ(blocking.limit(), Clock::duration::zero());
}

TEST(SpinLimit, FixedPolicySpinsTheSpinTimeWhateverTheGaps) {
  SpinLimit fixed(WaitMode::kSpinThenSleep, 50us, SpinPolicy::kFixed);
  for (int i = 0; i < 10; ++i) fixed.afterSleep(10ms, false);
  EXPECT_EQ(fixed.limit(), Clock::duration(50us));
}

TEST(SpinLimit, LongGapsStopTheSpinningAndShortOnesBringItBack) {
  SpinLimit s(WaitMode::kSpinThenSleep, 80us, SpinPolicy::kAdaptive);
  EXPECT_EQ(s.limit(), Clock::duration(80us)) << "it starts as the fixed policy does";
  s.afterSleep(1ms, false);
  EXPECT_EQ(s.limit(), Clock::duration(40us));
  s.afterSleep(1ms, false);
  s.afterSleep(1ms, false);
  EXPECT_EQ(s.limit(), Clock::duration(10us)) << "spin time / 8 is the least it spins";
  s.afterSleep(1ms, false);
  EXPECT_EQ(s.limit(), Clock::duration::zero()) << "gaps of 1 ms: it sleeps at once";
  s.afterSleep(5ms, /*timedOut=*/true);
  EXPECT_EQ(s.limit(), Clock::duration::zero());

  s.afterSleep(30us, false);  // slept, but a spin of 30 us would have caught it
  EXPECT_EQ(s.limit(), Clock::duration(10us));
  s.afterSleep(30us, false);
  s.afterSleep(30us, false);
  EXPECT_EQ(s.limit(), Clock::duration(40us));
  s.afterSleep(30us, false);
  s.afterSleep(30us, false);
  EXPECT_EQ(s.limit(), Clock::duration(80us)) << "never more than the spin time";
}

TEST(SpinLimit, ATimeoutShorterThanTheSpinTimeTeachesNothing) {
  SpinLimit s(WaitMode::kSpinThenSleep, 80us, SpinPolicy::kAdaptive);
  s.afterSleep(1ms, false);
  s.afterSleep(20us, /*timedOut=*/true);  // a deadline came first: no gap was seen
  EXPECT_EQ(s.limit(), Clock::duration(40us));
}

/// Counts the calls each callback of a wait got.
struct Calls {
  int polls = 0, alives = 0, sleeps = 0;
};

TEST(Waiter, BusyPollNeverSleeps) {
  Waiter w(WaitMode::kBusyPoll, 50us, SpinPolicy::kAdaptive, PollCost::kMemory);
  Calls c;
  Status s = w.wait([&] { return ++c.polls == 100000; }, [&](bool) { return ++c.alives > 0; },
                    [&](Clock::duration) { return ++c.sleeps < 0; }, deadlineAfter(10s));
  EXPECT_EQ(s, Status::kOk);
  EXPECT_EQ(c.polls, 100000);
  EXPECT_EQ(c.sleeps, 0);
  EXPECT_GT(c.alives, 0) << "a busy poller still checks its peer now and then";
}

TEST(Waiter, BlockingSleepsAtOnceAndEndsWhenTheSleepsPollSucceeds) {
  Waiter w(WaitMode::kBlocking, 50us, SpinPolicy::kAdaptive, PollCost::kMemory);
  Calls c;
  Status s = w.wait([&] { return ++c.polls < 0; }, [&](bool) { return ++c.alives > 0; },
                    [&](Clock::duration) { return ++c.sleeps == 3; }, deadlineAfter(10s));
  EXPECT_EQ(s, Status::kOk);
  EXPECT_EQ(c.sleeps, 3);
  EXPECT_EQ(c.polls, 3) << "one poll before sleeping, one after each sleep that found nothing";
}

TEST(Waiter, SpinThenSleepSpinsFirst) {
  Waiter w(WaitMode::kSpinThenSleep, 200us, SpinPolicy::kFixed, PollCost::kMemory);
  Calls c;
  const auto start = Clock::now();
  Status s = w.wait([&] { return ++c.polls < 0; }, [](bool) { return true; },
                    [&](Clock::duration) { return ++c.sleeps == 1; }, deadlineAfter(10s));
  EXPECT_EQ(s, Status::kOk);
  EXPECT_GE(Clock::now() - start, 200us) << "it spun its spin time before the sleep";
  EXPECT_GT(c.polls, 64);
  EXPECT_EQ(c.sleeps, 1);
}

TEST(Waiter, EndsAtTheDeadline) {
  Waiter w(WaitMode::kSpinThenSleep, 50us, SpinPolicy::kAdaptive, PollCost::kSystemCall);
  Calls c;
  Status s = w.wait([&] { return ++c.polls < 0; }, [](bool) { return true; },
                    [&](Clock::duration left) {
                      ++c.sleeps;
                      std::this_thread::sleep_for(std::min<Clock::duration>(left, 1ms));
                      return false;
                    },
                    deadlineAfter(20ms));
  EXPECT_EQ(s, Status::kTimedOut);
  EXPECT_GE(c.sleeps, 1);
}

TEST(Waiter, APeerThatWentAwayEndsTheWaitAfterOneLastPoll) {
  for (WaitMode mode : {WaitMode::kBusyPoll, WaitMode::kSpinThenSleep, WaitMode::kBlocking}) {
    Waiter w(mode, 50us, SpinPolicy::kAdaptive, PollCost::kMemory);
    Calls c;
    Status s = w.wait([&] { return ++c.polls < 0; }, [&](bool) { return ++c.alives < 3; },
                      [&](Clock::duration) { return false; }, deadlineAfter(10s));
    EXPECT_EQ(s, Status::kDisconnected) << waitModeName(mode);
    // What the peer published before it went is still taken.
    bool last = false;
    c = {};
    s = w.wait([&] { return last; }, [&](bool) { return !(last = true); }, [&](Clock::duration) { return false; },
               deadlineAfter(10s));
    EXPECT_EQ(s, Status::kOk) << waitModeName(mode);
  }
}

TEST(Waiter, AWaiterThatSleepsThroughLongGapsStopsSpinningAndStartsAgainWhenTheyShorten) {
  // Gaps are simulated by the sleep callback: 30 ms (long) or none (short) against a
  // 20 ms spin time, so a loaded machine's hiccups cannot blur them.
  Waiter w(WaitMode::kSpinThenSleep, 20ms, SpinPolicy::kAdaptive, PollCost::kMemory);
  auto waitOnce = [&](std::chrono::milliseconds gap) {
    return w.wait([] { return false; }, [](bool) { return true; },
                  [&](Clock::duration) {
                    std::this_thread::sleep_for(gap);
                    return true;
                  },
                  deadlineAfter(10s));
  };
  for (int i = 0; i < 4; ++i) ASSERT_EQ(waitOnce(30ms), Status::kOk);
  EXPECT_EQ(w.spinLimit(), Clock::duration::zero());
  ASSERT_EQ(waitOnce(0ms), Status::kOk);
  EXPECT_GT(w.spinLimit(), Clock::duration::zero()) << "a short gap: it spins again";
  // (How fast it grows is SpinLimit's test: here a loaded machine could stretch a spin.)
}

}  // namespace
}  // namespace zcrpc
