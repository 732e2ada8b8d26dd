@0xd5b50128a24a96df;
# Refused by capnpc-zcrpc: a streaming method.
interface Upload {
  write @0 (chunk :Data) -> stream;
}
