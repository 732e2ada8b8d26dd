@0x9701a6fb30752c8a;
# KeyValue: an ordered byte-string map, the example service of examples/kv_*.cc.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::kv");

struct Entry {
  key @0 :Data;
  value @1 :Data;
}

interface KeyValue {
  get @0 (key :Data) -> (found :Bool, value :Data);
  # The value stored under `key`; `found` is false (and `value` empty) if there is none.

  put @1 (key :Data, value :Data) -> (replaced :Bool);
  # Stores `value` under `key`; `replaced` says whether a value was there before.

  delete @2 (key :Data) -> (deleted :Bool);
  # Removes `key`; `deleted` says whether it was there.

  scan @3 (start :Data, limit :UInt32) -> (entries :List(Entry), more :Bool);
  # Up to `limit` entries with key >= `start`, in key order (bytewise). A server may
  # return fewer (it may cap a page); `more` is true when further entries follow, and
  # the next page starts at the last key plus a zero byte.
}
