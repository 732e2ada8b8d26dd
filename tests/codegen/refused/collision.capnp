@0xcf3199d294de0063;
# Refused by capnpc-zcrpc: the generated EchoClient would clash with a schema type.
struct EchoClient {
  x @0 :UInt32;
}
interface Echo {
  echo @0 () -> ();
}
