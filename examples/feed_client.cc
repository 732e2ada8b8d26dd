// feed_client ENDPOINT [COUNT] — subscribes to a feed_server's quotes (default 5000) and
// takes them in an epoll loop of its own: the Channel is one descriptor among others (a
// timer here), and Channel::poll() is the non-blocking step that runs what arrived
// (the quotes, into this process's Quotes object; the subscribe call's callback).
// Exits 1 if a quote is missing or out of order.
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "example_util.h"
#include "feed.capnp.zcrpc.h"
#include "zcrpc/context.h"

namespace zcrpc::examples {
namespace {

/// Our end of the stream: the server calls it (on this thread, inside channel.poll()).
class QuotesImpl final : public feed::QuotesService {
 public:
  void quote(QuoteCall& call) override {
    inOrder &= call.params().getSeq() == received;
    ++received;
    last = call.params().getPrice();
  }
  void end(EndCall& call) override { endCount = call.params().getCount(); }

  uint32_t received = 0;
  uint32_t endCount = UINT32_MAX;
  double last = 0;
  bool inOrder = true;
};

int run(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s ENDPOINT [COUNT]\n", argv[0]);
    return 2;
  }
  const uint32_t count = argc == 3 ? static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)) : 5000;
  Context context;
  Channel channel(context.connect(endpointUri(argv[1])), context.config().channelOptions());
  feed::FeedClient feedClient(channel);
  auto quotes = std::make_shared<QuotesImpl>();

  // Start the call; its answer comes to the callback, on this thread, from poll().
  bool answered = false;
  uint32_t sent = 0;
  std::string failure;
  auto subscribe = feedClient.subscribeRequest();
  subscribe.params().setSymbol("ZCRP");
  subscribe.params().setCount(count);
  subscribe.params().setQuotes(Capability::local(quotes));
  subscribe.callAsync([&](CallResult&& r) {
    answered = true;
    if (r.ok())
      sent = r.results<feed::Feed::SubscribeResults>().getSent();
    else
      failure = r.errorMessage();
  });

  // The event loop: the channel's descriptor and a 100 ms timer.
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  const int timer = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  itimerspec every{{0, 100'000'000}, {0, 100'000'000}};
  ::timerfd_settime(timer, 0, &every, nullptr);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = channel.connection().waitFd();
  ::epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev);
  ev.data.fd = timer;
  ::epoll_ctl(ep, EPOLL_CTL_ADD, timer, &ev);
  int ticks = 0;
  while (!answered && ticks < 300) {  // 30 s at most
    channel.poll();  // the non-blocking step: everything that has arrived
    if (answered) break;
    // Sleep only when nothing is waiting: armWait() asks the peer to signal the
    // descriptor, or says false when a message is already there.
    if (channel.connection().armWait()) {
      epoll_event events[4];
      const int n = ::epoll_wait(ep, events, 4, -1);
      for (int i = 0; i < n; ++i) {
        if (events[i].data.fd != timer) continue;
        uint64_t expirations = 0;
        (void)!::read(timer, &expirations, sizeof expirations);
        ++ticks;
        std::printf("feed_client: %u quotes so far\n", quotes->received);
      }
      channel.connection().disarmWait();
    }
  }
  ::close(timer);
  ::close(ep);

  Checker check;
  check.expect(answered, "subscribe() never answered");
  check.expect(failure.empty(), "subscribe() failed: " + failure);
  check.expect(sent == count, "the server says it sent " + std::to_string(sent));
  check.expect(quotes->received == count, "received " + std::to_string(quotes->received) + " quotes");
  check.expect(quotes->inOrder, "quotes came out of order");
  check.expect(quotes->endCount == count, "end() did not come with the count");
  std::printf("feed_client: %u quotes in order, last price %.3f\n", quotes->received, quotes->last);
  return check.failures() ? 1 : 0;
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  return zcrpc::examples::exampleMain("feed_client", argc, argv, zcrpc::examples::run);
}
