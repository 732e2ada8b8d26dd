@0xe8b7c6d5a4f30291;
# Bodies of the RPC core's own frames (error answers). Internal to zcrpc.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::wire");

struct RpcError {
  kind @0 :UInt8;      # zcrpc::ErrorKind
  code @1 :Int32;      # application code (kApplication)
  message @2 :Text;
}
