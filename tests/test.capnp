@0xa9c4e1d2b3f40516;
struct Note {
  id @0 :UInt64;
  text @1 :Text;
  blobs @2 :List(Data);
}
