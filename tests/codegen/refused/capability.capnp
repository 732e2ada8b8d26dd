@0xe4521a605f0c9b54;
# Refused by capnpc-zcrpc: results that carry a list of capabilities (interface fields are
# carried; lists of them not yet).
interface Service {
  ping @0 () -> ();
}
struct Directory {
  name @0 :Text;
  services @1 :List(Service);
}
interface Registry {
  lookup @0 (name :Text) -> (directory :Directory);
}
