// feed_server ENDPOINT — serves zcrpc::feed::Feed (schemas/feed.capnp) until SIGINT or
// SIGTERM: each subscribe() streams quotes into the Quotes object the client passed
// (a server-to-client stream: docs/capabilities.md).
#include <cstdio>
#include <memory>
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
  return serveExample("feed_server", argc, argv, [] { return std::make_unique<FeedImpl>(); });
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  return zcrpc::examples::exampleMain("feed_server", argc, argv, zcrpc::examples::run);
}
