@0xc34d97cc9106fd7e;
# Capabilities both ways for clients whose code generator takes no `-> stream` method
# (capnp-es 0.0.16 cannot compile caps.capnp): compat_test serves Lobby with zcrpc, and
# tests/compat/js/caps.mjs calls it from JavaScript.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::lobby");

interface Counter {
  # A callback the client exports: the server calls it.
  add @0 (value :Int64) -> (total :Int64);
}

interface Greeter {
  # An object the server makes for the client.
  greet @0 (greeting :Text) -> (text :Text);
}

interface Lobby {
  count @0 (counter :Counter, times :Int64) -> (total :Int64);
  # Calls counter.add(1), add(2), ... add(times), each after the last answered, from the
  # handler; answers the total the last call returned.
  keep @1 (counter :Counter) -> ();
  # Keeps the counter, to call it from later calls (addKept).
  addKept @2 (value :Int64) -> (total :Int64);
  # Calls the kept counter's add(value).
  greeter @3 (name :Text) -> (greeter :Greeter);
  # A new Greeter that greets as `name`.
  isMine @4 (greeter :Greeter) -> (mine :Bool, name :Text);
  # Whether `greeter` is one this server made (a capability handed back), and its name.
}
