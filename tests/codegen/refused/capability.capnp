@0xe4521a605f0c9b54;
# Refused by capnpc-zcrpc: results that carry an untyped capability (interface fields and
# lists of them are carried; a capability of no interface type is not).
struct Directory {
  name @0 :Text;
  service @1 :Capability;
}
interface Registry {
  lookup @0 (name :Text) -> (directory :Directory);
}
