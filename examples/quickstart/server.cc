// quickstart_server [ENDPOINT] — the quickstart's server (docs/quickstart.md): serves
// quickstart.Inventory (inventory.capnp) on ENDPOINT (default shm://quickstart) until
// SIGINT or SIGTERM. Inventory's placeOrder calls a second service, Pricing, which this
// process also serves, on an endpoint of its own, as another process would.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <zcrpc/context.h>

#include "inventory.capnp.zcrpc.h"

namespace {

/// The price list. Threads: its server's worker.
class PricingImpl final : public quickstart::PricingService {
  void price(PriceCall& call) override {
    std::string sku = call.params().getSku().cStr();
    auto it = prices_.find(sku);
    // An exception reaches the caller as a typed error: this one as
    // zcrpc::ApplicationError, code 404, with this message.
    if (it == prices_.end()) throw zcrpc::ApplicationError(404, "no price for '" + sku + "'");
    call.results().setCents(it->second);
  }

  const std::map<std::string, uint64_t> prices_{{"apple", 40}, {"pear", 55}, {"plum", 30}};
};

/// Items in stock. The server runs it with one worker thread, so the handlers run one at
/// a time on that thread and the map needs no lock; the Pricing channel, which belongs to
/// one thread at a time, is used only there too. Threads: the server's single worker.
class InventoryImpl final : public quickstart::InventoryService {
 public:
  static constexpr int32_t kNotEnough = 1;

  explicit InventoryImpl(zcrpc::Channel& pricing) : pricing_(pricing) {}

  void stock(StockCall& call) override {
    call.results().setCount(stock_[call.params().getSku().cStr()]);
  }

  void restock(RestockCall& call) override {
    std::string sku = call.params().getSku().cStr();
    uint32_t& count = stock_[sku];
    count += call.params().getCount();
    call.results().setCount(count);
    answerWaiters(sku);
  }

  void placeOrder(PlaceOrderCall& call) override {
    auto params = call.params();
    std::string sku = params.getSku().cStr();
    uint32_t& count = stock_[sku];
    if (count < params.getCount())
      throw zcrpc::ApplicationError(kNotEnough, "not enough " + sku + ": " +
                                                    std::to_string(count) + " in stock");
    // A handler that calls another service: an ordinary call through a client stub on a
    // Channel to it. It holds this worker for the round trip; a handler that must not
    // can defer its answer, use callAsync(), and complete the answer from the callback.
    quickstart::PricingClient pricing(pricing_);
    auto req = pricing.priceRequest();
    req.params().setSku(sku);
    uint64_t cents = req.call().results().getCents();  // Pricing's errors propagate

    count -= params.getCount();
    auto results = call.results();
    results.setOrderId(++lastOrderId_);
    results.setTotalCents(cents * params.getCount());
  }

  void awaitStock(AwaitStockCall& call) override {
    dropCancelledWaiters();
    std::string sku = call.params().getSku().cStr();
    uint32_t atLeast = call.params().getAtLeast();
    if (stock_[sku] >= atLeast) {
      call.results().setCount(stock_[sku]);
      return;
    }
    // Not yet: keep the call and answer it later, from restock(). The handler returns at
    // once and the worker goes on serving other calls meanwhile.
    waiters_.push_back({sku, atLeast, call.defer()});
  }

 private:
  struct Waiter {
    std::string sku;
    uint32_t atLeast;
    zcrpc::DeferredReply reply;
  };

  void answerWaiters(const std::string& sku) {
    const uint32_t count = stock_[sku];
    std::erase_if(waiters_, [&](Waiter& w) {
      if (w.sku != sku || count < w.atLeast) return false;
      // The answer is built in place on the connection's polling thread, after this.
      w.reply.complete([count](zcrpc::OutgoingMessage& m) {
        m.initRoot<quickstart::Inventory::AwaitStockResults>().setCount(count);
      });
      return true;
    });
  }

  /// Callers that cancelled a wait (or whose deadline passed) no longer want the answer.
  void dropCancelledWaiters() {
    std::erase_if(waiters_, [](Waiter& w) {
      if (!w.reply.isCancelled()) return false;
      w.reply.fail(zcrpc::ErrorKind::kCancelled, "cancelled by the caller");
      return true;
    });
  }

  zcrpc::Channel& pricing_;
  std::map<std::string, uint32_t> stock_;
  std::vector<Waiter> waiters_;
  uint64_t lastOrderId_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string endpoint = argc > 1 ? argv[1] : "shm://quickstart";
  // SIGINT and SIGTERM are taken by sigwait() below: block them before threads start.
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGINT);
  sigaddset(&stopSignals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);

  try {
    zcrpc::Context context;  // settings: defaults, then ZCRPC_CONFIG's file, then ZCRPC_*
    zcrpc::ServerOptions options = context.config().serverOptions();
    options.workerThreads = 1;  // InventoryImpl relies on it (see there)

    // Pricing, on an endpoint only this process knows.
    PricingImpl pricingService;
    zcrpc::Server pricingServer(options);
    pricingServer.addService(pricingService);
    const std::string pricingEndpoint = "shm://quickstart-pricing-" + std::to_string(::getpid());
    pricingServer.addListener(context.listen(pricingEndpoint));
    pricingServer.start();

    // Inventory, with a channel to Pricing for its handlers.
    zcrpc::Channel pricing(context.connect(pricingEndpoint), context.config().channelOptions());
    InventoryImpl inventoryService(pricing);
    zcrpc::Server server(options);
    server.addService(inventoryService);
    server.enableStats();  // zcrpc-stat ENDPOINT shows its calls
    server.addListener(context.listen(endpoint));
    server.start();
    std::printf("quickstart_server: serving Inventory on %s\n", endpoint.c_str());
    std::fflush(stdout);

    int sig = 0;
    sigwait(&stopSignals, &sig);
    server.shutdown();  // answers or fails the calls in flight, then closes
    pricingServer.shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quickstart_server: %s\n", e.what());
    return 1;
  }
  return 0;
}
