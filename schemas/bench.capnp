@0xd1e2a3b4c5f60718;
# Messages used by zcrpc-bench and the stress tests.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::bench");

struct Payload {
  seq @0 :UInt64;
  checksum @1 :UInt64;
  data @2 :Data;
}
