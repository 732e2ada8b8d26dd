@0x937236371f9d7946;
# Refused by capnpc-zcrpc: a generic method.
interface Converter {
  convert @0 [T] (value :T) -> (value :T);
}
