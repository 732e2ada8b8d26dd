@0xd84366c9ab41d761;
# Every shape capnpc-zcrpc supports, served by codegen_test.cc: several interfaces in one
# file, two levels of `extends` starting in another file, a diamond, interfaces nested in
# a struct and in an interface, explicit (imported and local) param/result structs,
# empty params and results, an interface without methods, and method names that are a
# C++ keyword or a member of zcrpc::Service.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::codegen_test");

using Common = import "common.capnp";

struct Scaled {
  point @0 :Common.Point;
  factor @1 :Int32;
}

interface Middle extends(Common.Greeter) {
  # One level: Common.Greeter's greet is inherited.
  shout @0 (text :Text) -> (text :Text);
}

interface Derived extends(Middle) {
  # Two levels: Middle.shout and Common.Greeter.greet are inherited.
  mirror @0 Common.Point -> Common.Point;   # explicit imported struct, both ways
  scale @1 Common.Point -> Scaled;         # explicit local results
  nothing @2 () -> ();                      # empty params and results
  delete @3 (key :Text) -> (deleted :Bool); # handler delete_ (C++ keyword)
  dispatch @4 (n :UInt32) -> (n :UInt32);   # handler dispatch_ (Service member)
}

interface Left extends(Common.Greeter) {
  left @0 () -> (side :Text);
}

interface Right extends(Common.Greeter) {
  right @0 () -> (side :Text);
}

interface Both extends(Left, Right) {
  # A diamond: Common.Greeter's greet appears once.
  both @0 () -> (count :UInt32);
}

struct Holder {
  value @0 :Int32;

  interface Nested {
    # Holder.Nested -> Holder_NestedClient / Holder_NestedService.
    get @0 () -> (value :Int32);
  }
}

interface Outer {
  outer @0 () -> ();

  interface Inner {
    # Outer.Inner -> Outer_InnerClient / Outer_InnerService.
    inner @0 (x :Int32) -> (x :Int32);
  }
}

interface Marker {}

interface Tagged extends(Marker) {
  tag @0 () -> ();
}
