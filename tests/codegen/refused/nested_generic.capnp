@0xcbc8f94df972bef5;
# Refused by capnpc-zcrpc: an interface nested in a generic struct is generic too.
struct Scope(T) {
  value @0 :T;
  interface Inside {
    get @0 () -> ();
  }
}
