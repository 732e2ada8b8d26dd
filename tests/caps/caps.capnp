@0xb3c5f2a1d4e6f708;
# Capabilities in every place an interface field can be (params, results, nested structs,
# unions, groups), served by caps_test.cc.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::caps_test");

interface Sink {
  # A callback the client exports: the server calls it.
  push @0 (value :Int64) -> (total :Int64);
}

interface Account {
  # Per-client state the server returns from Hub.login.
  whoami @0 () -> (name :Text);
}

struct Holder {
  label @0 :Text;
  sink @1 :Sink;
  choice :union {
    none @2 :Void;
    other @3 :Sink;
  }
  group :group {
    inner @4 :Sink;
  }
  sinks @5 :List(Sink);
  # A list of capabilities, nested in a struct.
}

interface Upload {
  # A stream the client sends: chunks, then one ordinary call.
  write @0 (seq :UInt32, chunk :Data) -> stream;
  done @1 () -> (count :UInt32, bytes :UInt64, inOrder :Bool);
}

interface Ticker {
  # A stream the server sends to an object the client passed it (a price feed).
  tick @0 (seq :UInt32, price :Float64) -> stream;
  end @1 () -> ();
}

interface Hub {
  login @0 (name :Text) -> (account :Account);
  subscribe @1 (sink :Sink, count :Int64) -> (last :Int64);
  # Calls the sink `count` times before it answers (callbacks during a call).
  keep @2 (sink :Sink) -> ();
  # Keeps the sink, to call it later (fire) or drop it (drop).
  fire @3 (count :Int64) -> (last :Int64);
  drop @4 () -> ();
  echo @5 (holder :Holder) -> (holder :Holder);
  # Returns the holder's capabilities to the caller (passed back: the caller's own objects).
  same @6 (a :Sink, b :Sink) -> (same :Bool);
  isMine @7 (account :Account) -> (mine :Bool);
  # True when `account` is an Account this server made (a capability passed back).
  upload @8 (failAt :UInt32) -> (upload :Upload);
  # A new Upload; its write of chunk `failAt` (0: none) throws.
  feed @9 (ticker :Ticker, count :UInt32) -> (sent :UInt32);
  # Streams `count` ticks to `ticker`, then calls its end().
  fireAsync @10 (value :Int64) -> (last :Int64);
  # Pushes `value` to the kept sink without blocking the worker: defers its answer, calls
  # with callAsync, completes from the callback.
  fanOut @11 (sinks :List(Sink), value :Int64) -> (totals :List(Int64));
  # Pushes `value` to every sink of the list, in order (null entries are skipped: total 0).
  accounts @12 (names :List(Text)) -> (accounts :List(Account));
  # One new Account per name: a list of capabilities in results.
}
