@0xe41c7f2a9b3d5068;
# A price feed: the server streams quotes to an object the client passed it
# (examples/feed_server.cc, examples/feed_client.cc; see docs/capabilities.md).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::feed");

interface Quotes {
  # Implemented by the client: the server pushes quotes into it.
  quote @0 (symbol :Text, seq :UInt32, price :Float64) -> stream;
  end @1 (count :UInt32) -> ();
}

interface Feed {
  subscribe @0 (symbol :Text, count :UInt32, quotes :Quotes) -> (sent :UInt32);
  # Streams `count` quotes of `symbol` into `quotes`, then calls its end(), then answers.
}
