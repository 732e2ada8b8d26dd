@0xacd1fff74ab62e06;
# Refused by capnpc-zcrpc: extending a generic interface with a brand.
interface Base(T) {
  get @0 () -> (value :T);
}
interface Concrete extends(Base(Text)) {
  more @0 () -> ();
}
