@0x9feeca53b9ee1fe7;
# The quickstart's services (docs/quickstart.md): a stock keeper that asks a pricing
# service what its items cost. `capnp id` made the file id above; every schema needs one.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("quickstart");

interface Pricing {
  price @0 (sku :Text) -> (cents :UInt64);
  # The price of one item. Fails with code 404 for an item it does not know.
}

interface Inventory {
  stock @0 (sku :Text) -> (count :UInt32);
  # Items of `sku` in stock.

  restock @1 (sku :Text, count :UInt32) -> (count :UInt32);
  # Adds `count` items; answers with the new stock.

  placeOrder @2 (sku :Text, count :UInt32) -> (orderId :UInt64, totalCents :UInt64);
  # Takes `count` items out of stock and prices them through Pricing. Fails with code 1
  # when there are not enough.

  awaitStock @3 (sku :Text, atLeast :UInt32) -> (count :UInt32);
  # Answers once at least `atLeast` items are in stock: a deferred answer.
}
