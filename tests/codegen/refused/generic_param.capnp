@0x9a9da22dffe60c10;
# Refused by capnpc-zcrpc: a method whose params are a generic struct instance.
struct Wrapper(T) {
  value @0 :T;
}
interface Store {
  keep @0 Wrapper(Text) -> ();
}
