@0xc7a3f0e29b14d865;
# Callbacks and streams for the benchmarks: the server calls an object the client passed
# it (bench/micro_rpc.cc, Rpc/zcrpcCallbackRoundTrip), and a client streams chunks
# (Rpc/zcrpcStream); see docs/capabilities.md.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::callback");

using Echo = import "echo.capnp".Echo;

interface Pump {
  pump @0 (target :Echo, count :UInt32, size :UInt32) -> ();
  # Calls target.echo with `size` bytes `count` times, each waiting for its answer, then
  # answers.
}

interface Chunks {
  put @0 (data :Data) -> stream;
  # Takes a chunk (flow-controlled: the client's send returns while the window has room).
  flush @1 () -> (count :UInt64);
  # Answers once every chunk before it was handled: how many there were.
}
