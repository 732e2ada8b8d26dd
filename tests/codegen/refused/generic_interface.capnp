@0xcd9ffd98eba59440;
# Refused by capnpc-zcrpc: a generic interface.
interface Box(T) {
  get @0 () -> (value :T);
}
