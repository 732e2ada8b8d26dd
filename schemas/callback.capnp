@0xc7a3f0e29b14d865;
# Callbacks for the benchmarks: the server calls an object the client passed it
# (bench/micro_rpc.cc, Rpc/zcrpcCallbackRoundTrip; see docs/capabilities.md).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::callback");

using Echo = import "echo.capnp".Echo;

interface Pump {
  pump @0 (target :Echo, count :UInt32, size :UInt32) -> ();
  # Calls target.echo with `size` bytes `count` times, each waiting for its answer, then
  # answers.
}
