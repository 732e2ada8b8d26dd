@0xed40b2b238e7809d;
# Bodies of zcrpc's built-in admin interface (schemas/admin.capnp): a server's call
# metrics. Kept apart from the interface so libzcrpc, which serves it, needs only
# capnpc-c++'s struct code (an interface would pull in Cap'n Proto's own RPC library).
# Times are nanoseconds, sizes bytes (Cap'n Proto payload, frame headers not counted).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::admin");

struct StatsQuery {
  connections @0 :Bool = true;
  # Include the per-connection breakdown.

  buckets @1 :Bool = false;
  # Include each latency histogram's non-empty buckets (to merge or plot elsewhere).
}

struct ErrorCount {
  kind @0 :UInt8;    # zcrpc::ErrorKind
  name @1 :Text;     # zcrpc::errorKindName(kind)
  count @2 :UInt64;
}

struct Bucket {
  lowNs @0 :Float64;
  highNs @1 :Float64;
  count @2 :UInt64;
}

struct Latency {
  # Server: from dispatch until the answer was sent (a deferred call: completed).
  count @0 :UInt64;
  minNs @1 :Float64;
  meanNs @2 :Float64;
  p50Ns @3 :Float64;
  p90Ns @4 :Float64;
  p99Ns @5 :Float64;
  p999Ns @6 :Float64;
  maxNs @7 :Float64;
  buckets @8 :List(Bucket);  # only when StatsQuery.buckets
}

struct MethodStats {
  interfaceId @0 :UInt64;   # Cap'n Proto interface id
  methodId @1 :UInt16;      # method ordinal (0xffff: methods beyond the table of one connection)
  calls @2 :UInt64;
  errors @3 :List(ErrorCount);  # kinds with a non-zero count
  requestBytes @4 :UInt64;
  responseBytes @5 :UInt64;
  latency @6 :Latency;
  name @7 :Text;
  # "Interface.method" as the service that dispatches it names it (capnpc-zcrpc generates
  # the names); empty when the server has no name for it (a method no service has).
}

struct ConnectionStats {
  id @0 :UInt64;
  endpoint @1 :Text;
  ageNs @2 :UInt64;
  methods @3 :List(MethodStats);
}

struct StatsSnapshot {
  pid @0 :UInt32;
  endpoints @1 :List(Text);
  uptimeNs @2 :UInt64;
  connectionsOpened @3 :UInt64;
  connectionsClosed @4 :UInt64;
  methods @5 :List(MethodStats);
  # Per method, over every connection the server has had (open and closed).
  connections @6 :List(ConnectionStats);
  # Open connections (when StatsQuery.connections).
  workerThreads @7 :UInt32;
}
