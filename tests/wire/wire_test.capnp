@0xcec9b41f00676091;
# Schemas for zcrpc's generated wire accessors (tests/wire/): every field type, every kind
# of default, unions and groups, lists of every element size, nesting and recursion, and
# pairs of structs that read each other's lists (Cap'n Proto's list upgrade rules). The
# differential tests and the fuzzer read and build these with both libcapnp and the
# generated accessors.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::wiretest");

enum Color {
  red @0;
  green @1;
  blue @2;
  # A name capnpc-c++ escapes.
  delete @3;
}

struct Inner {
  a @0 :UInt32;
  b @1 :Text;
  c @2 :List(Int16);
  self @3 :Inner;
}

struct AllTypes {
  voidField @0 :Void;
  boolField @1 :Bool;
  int8Field @2 :Int8;
  int16Field @3 :Int16;
  int32Field @4 :Int32;
  int64Field @5 :Int64;
  uint8Field @6 :UInt8;
  uint16Field @7 :UInt16;
  uint32Field @8 :UInt32;
  uint64Field @9 :UInt64;
  float32Field @10 :Float32;
  float64Field @11 :Float64;
  textField @12 :Text;
  dataField @13 :Data;
  structField @14 :AllTypes;
  enumField @15 :Color;
  innerField @16 :Inner;

  voidList @17 :List(Void);
  boolList @18 :List(Bool);
  int8List @19 :List(Int8);
  int16List @20 :List(Int16);
  int32List @21 :List(Int32);
  int64List @22 :List(Int64);
  uint8List @23 :List(UInt8);
  uint16List @24 :List(UInt16);
  uint32List @25 :List(UInt32);
  uint64List @26 :List(UInt64);
  float32List @27 :List(Float32);
  float64List @28 :List(Float64);
  textList @29 :List(Text);
  dataList @30 :List(Data);
  structList @31 :List(AllTypes);
  enumList @32 :List(Color);
  innerList @33 :List(Inner);
  listList @34 :List(List(Int32));
  textListList @35 :List(List(Text));
  structListList @36 :List(List(Inner));

  choice :union {
    none @37 :Void;
    number @38 :Int64;
    word @39 :Text;
    nested @40 :Inner;
    flag @41 :Bool;
    numbers @42 :List(UInt16);
    pair :group {
      left @43 :Int32;
      right @44 :Text;
    }
  }

  point :group {
    x @45 :Float64;
    y @46 :Float64;
    label @47 :Text;
    kind :union {
      plain @48 :Void;
      colored @49 :Color;
      tagged @50 :Data;
    }
  }

  # Names capnpc-c++ escapes or that collide with the accessors' own members.
  delete @51 :UInt32;
  which @52 :UInt16;
  reader @53 :Text;
}

struct Defaults {
  boolField @0 :Bool = true;
  int8Field @1 :Int8 = -123;
  int16Field @2 :Int16 = -12345;
  int32Field @3 :Int32 = -12345678;
  int64Field @4 :Int64 = -123456789012345;
  uint8Field @5 :UInt8 = 234;
  uint16Field @6 :UInt16 = 45678;
  uint32Field @7 :UInt32 = 3456789012;
  uint64Field @8 :UInt64 = 12345678901234567890;
  float32Field @9 :Float32 = 1234.5;
  float64Field @10 :Float64 = -123e45;
  textField @11 :Text = "foo";
  dataField @12 :Data = 0x"62 61 72";
  structField @13 :Inner = (a = 7, b = "seven", c = [1, -2, 3], self = (a = 8));
  enumField @14 :Color = blue;
  boolList @15 :List(Bool) = [true, false, false, true, true];
  int32List @16 :List(Int32) = [1, -2, 3];
  float64List @17 :List(Float64) = [1.5, -0.25];
  textList @18 :List(Text) = ["plugh", "xyzzy", "thud"];
  dataList @19 :List(Data) = [0x"00 01", 0x"ff"];
  structList @20 :List(Inner) = [(a = 1, b = "one"), (a = 2, c = [5])];
  enumList @21 :List(Color) = [red, delete, green];
  listList @22 :List(List(Int32)) = [[1, 2], [], [3]];
  nanField @23 :Float32 = nan;
  infField @24 :Float64 = -inf;
  zeroBool @25 :Bool = false;
  choice :union {
    first @26 :UInt32 = 99;
    second @27 :Text = "two";
  }
  emptyText @28 :Text = "";
  emptyStruct @29 :Inner = ();
}

# Upgrade rules: each struct's field N has the same pointer slot as the others', with a
# different list type, so one message read through all of them exercises every pairing
# of list element sizes that Cap'n Proto allows or refuses.
struct ListsA {
  l0 @0 :List(Void);
  l1 @1 :List(Bool);
  l2 @2 :List(UInt8);
  l3 @3 :List(UInt16);
  l4 @4 :List(UInt32);
  l5 @5 :List(UInt64);
  l6 @6 :List(Text);
  l7 @7 :List(Inner);
}

struct ListsB {
  l0 @0 :List(Inner);
  l1 @1 :List(UInt64);
  l2 @2 :List(Text);
  l3 @3 :List(Void);
  l4 @4 :List(Bool);
  l5 @5 :List(UInt8);
  l6 @6 :List(Inner);
  l7 @7 :List(UInt32);
}

struct ListsC {
  l0 @0 :List(Text);
  l1 @1 :List(Inner);
  l2 @2 :List(Void);
  l3 @3 :List(UInt64);
  l4 @4 :List(Data);
  l5 @5 :List(Int16);
  l6 @6 :List(Bool);
  l7 @7 :List(List(UInt8));
}

# A smaller and a larger version of one struct: old readers of new data and new readers of
# old data (fields beyond the sender's sections read as defaults).
struct Small {
  a @0 :UInt16;
}

struct Large {
  a @0 :UInt16;
  b @1 :UInt64 = 77;
  c @2 :Text = "large";
  d @3 :Small;
  e @4 :Bool = true;
}

struct Nest {
  child @0 :Nest;
  children @1 :List(Nest);
  value @2 :UInt8;
}

# Types the generated accessors do not cover: zcrpc::wire::Reader<> / Builder<> name
# capnpc-c++'s own for them (and for every struct that reaches one).
struct WithAny {
  p @0 :AnyPointer;
  n @1 :UInt8;
}

struct ReachesAny {
  w @0 :WithAny;
  n @1 :UInt8;
}

interface Wire {
  # An interface whose params and results reach every type above.
  roundTrip @0 (all :AllTypes, defaults :Defaults) -> (all :AllTypes, defaults :Defaults);
  lists @1 (a :ListsA) -> (c :ListsC);
  nest @2 Nest -> Nest;
  empty @3 () -> ();
  any @4 (r :ReachesAny) -> (n :UInt8);
}
