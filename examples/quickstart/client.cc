// quickstart_client [ENDPOINT] — the quickstart's client (docs/quickstart.md): calls the
// Inventory that quickstart_server serves on ENDPOINT (default shm://quickstart) in every
// way a zcrpc client can, printing what happens, and checks each answer. Exit status 0
// when every check held.
#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include <zcrpc/context.h>

#include "inventory.capnp.zcrpc.h"

using namespace std::chrono_literals;

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "quickstart_client: FAILED: %s\n", what);
  }
}

uint32_t restock(quickstart::InventoryClient& inventory, const char* sku, uint32_t count) {
  auto req = inventory.restockRequest();
  req.params().setSku(sku);
  req.params().setCount(count);
  return req.call().results().getCount();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string endpoint = argc > 1 ? argv[1] : "shm://quickstart";
  try {
    zcrpc::Context context;  // settings: defaults, then ZCRPC_CONFIG's file, then ZCRPC_*
    zcrpc::Channel channel(context.connect(endpoint), context.config().channelOptions());
    quickstart::InventoryClient inventory(channel);

    // 1. A call: build the request in place, send it, wait for the answer, read it in
    //    place. call() throws the typed error if the call fails.
    {
      auto req = inventory.restockRequest();
      req.params().setSku("apple");
      req.params().setCount(10);
      auto resp = req.call();
      std::printf("restocked apples: %u in stock\n", resp.results().getCount());
      check(resp.results().getCount() == 10, "10 apples after restocking 10");
    }

    // 2. Many calls in flight. callAsync() sends and returns at once. Its callback runs
    //    later, and only inside poll(), pollUntil() or PendingCall::wait() on this
    //    thread: nothing runs behind your back. At most `window` calls (64 unless the
    //    `window` setting says otherwise) may be outstanding, so take finished ones first.
    uint32_t confirmed = 0;
    for (int i = 0; i < 1000; ++i) {
      while (channel.outstanding() == channel.options().window)
        channel.pollUntil(zcrpc::deadlineAfter(5s));  // runs the callbacks of finished calls
      auto req = inventory.restockRequest();
      req.params().setSku("pear");
      req.params().setCount(1);
      req.callAsync([&](zcrpc::CallResult&& result) {
        if (result.ok()) ++confirmed;
      });
    }
    while (channel.outstanding() > 0) channel.pollUntil(zcrpc::deadlineAfter(5s));
    std::printf("1000 asynchronous restocks confirmed: %u\n", confirmed);
    check(confirmed == 1000, "every asynchronous call answered");

    // 3. What happens without that poll: the call past the window is refused at once with
    //    zcrpc::Overloaded, whose message says what to do.
    {
      std::string refused;
      std::vector<zcrpc::PendingCall> calls;
      try {
        for (;;) {
          auto req = inventory.stockRequest();
          req.params().setSku("pear");
          calls.push_back(req.callAsync());
        }
      } catch (const zcrpc::Overloaded& e) {
        refused = e.what();
      }
      std::printf("call %zu refused: %s\n", calls.size() + 1, refused.c_str());
      check(calls.size() == channel.options().window, "the window's worth of calls went out");
      check(refused.find("poll()") != std::string::npos, "the refusal says to poll");
      for (auto& call : calls) check(call.wait().ok(), "a call within the window answered");
    }

    // 4. A deadline: no answer within 50 ms (nobody restocks plums) is DeadlineExceeded.
    {
      auto req = inventory.awaitStockRequest();
      req.params().setSku("plum");
      req.params().setAtLeast(1);
      req.setTimeout(50ms);
      try {
        req.call();
        check(false, "awaitStock of plums answered although none are in stock");
      } catch (const zcrpc::DeadlineExceeded& e) {
        std::printf("plums within 50 ms: %s\n", e.what());
      }
    }

    // 5. Cancelling: the result is Cancelled at once, and the server is told, so its
    //    deferred handler sees isCancelled().
    {
      auto req = inventory.awaitStockRequest();
      req.params().setSku("plum");
      req.params().setAtLeast(1);
      zcrpc::PendingCall pending = req.callAsync();
      pending.cancel();
      zcrpc::CallResult result = pending.wait();
      std::string_view kind = zcrpc::errorKindName(result.errorKind());
      std::printf("cancelled wait for plums: %.*s\n", static_cast<int>(kind.size()), kind.data());
      check(result.errorKind() == zcrpc::ErrorKind::kCancelled, "a cancelled call ends Cancelled");
    }

    // 6. A deferred answer: the server keeps the call and answers when plums arrive. The
    //    channel serves other calls meanwhile (here, the restock that answers it).
    {
      auto req = inventory.awaitStockRequest();
      req.params().setSku("plum");
      req.params().setAtLeast(3);
      zcrpc::PendingCall waiting = req.callAsync();
      restock(inventory, "plum", 3);
      zcrpc::CallResult result = waiting.wait();
      auto count = result.results<quickstart::Inventory::AwaitStockResults>().getCount();
      std::printf("awaited plums: %u in stock\n", count);
      check(count == 3, "the deferred answer came after the restock");
    }

    // 7. A handler that calls another service: placeOrder prices the order through
    //    Pricing; the handler's error comes back as ApplicationError with its code.
    {
      auto req = inventory.placeOrderRequest();
      req.params().setSku("apple");
      req.params().setCount(4);
      auto resp = req.call();
      std::printf("order %llu: 4 apples for %llu cents\n",
                  static_cast<unsigned long long>(resp.results().getOrderId()),
                  static_cast<unsigned long long>(resp.results().getTotalCents()));
      check(resp.results().getTotalCents() == 4 * 40, "4 apples cost 160 cents");
    }
    {
      auto req = inventory.placeOrderRequest();
      req.params().setSku("apple");
      req.params().setCount(100);
      try {
        req.call();
        check(false, "an order of 100 apples went through with 6 in stock");
      } catch (const zcrpc::ApplicationError& e) {
        std::printf("order of 100 apples: error %d: %s\n", e.code(), e.what());
        check(e.code() == 1, "not enough apples is error code 1");
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quickstart_client: %s\n", e.what());
    return 1;
  }
  std::printf("quickstart_client: %s\n", failures ? "FAILED" : "all checks passed");
  return failures ? 1 : 0;
}
