@0xa9c4e1d2b3f40516;
struct Note {
  id @0 :UInt64;
  text @1 :Text;
  blobs @2 :List(Data);
}

# OutgoingMessage::referenceData: Data fields among others, in a union and a nested struct.
struct Refs {
  id @0 :UInt64;
  first @1 :Data;
  note @2 :Text;
  second @3 :Data;
  choice :union {
    none @4 :Void;
    blob @5 :Data;
    text @6 :Text;
  }
  inner @7 :Refs;
  items @8 :List(Refs);
}
