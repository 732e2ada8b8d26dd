// feed_server ENDPOINT — serves zcrpc::feed::Feed (schemas/feed.capnp) until SIGINT or
// SIGTERM: each subscribe() streams quotes into the Quotes object the client passed
// (a server-to-client stream: docs/capabilities.md).
#include <cstdio>
#include <string>

#include "example_util.h"
#include "feed.capnp.zcrpc.h"
#include "zcrpc/context.h"

namespace zcrpc::examples {
namespace {

class FeedImpl final : public feed::FeedService {
 public:
  void subscribe(SubscribeCall& call) override {
    // The client's object: calls on it go to the client, on this connection.
    feed::QuotesClient quotes(call.params().getQuotes());
    const std::string symbol = call.params().getSymbol().cStr();
    const uint32_t count = call.params().getCount();
    double price = 100.0;
    for (uint32_t i = 0; i < count; ++i) {
      price += (i % 7 == 3 ? -0.25 : 0.125);
      auto q = quotes.quoteRequest();
      q.params().setSymbol(symbol);
      q.params().setSeq(i);
      q.params().setPrice(price);
      q.send();  // returns while the stream window has room: no round trip per quote
    }
    auto end = quotes.endRequest();  // waits for every quote to be taken first
    end.params().setCount(count);
    end.call();
    call.results().setSent(count);  // results after the calls on this connection
  }
};

int run(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ENDPOINT   (shm://NAME, NAME, tcp://HOST:PORT)\n", argv[0]);
    return 2;
  }
  blockStopSignals();
  Context context;
  FeedImpl service;
  Server server(context.config().serverOptions());
  server.addService(service);
  server.addListener(context.listen(endpointUri(argv[1])));
  server.start();
  for (const std::string& e : server.endpoints())
    std::printf("feed_server: serving %s\n", e.c_str());
  std::fflush(stdout);
  int sig = waitForStopSignal();
  std::printf("feed_server: signal %d, shutting down\n", sig);
  server.shutdown();
  return 0;
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  try {
    return zcrpc::examples::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "feed_server: %s\n", e.what());
    return 1;
  }
}
