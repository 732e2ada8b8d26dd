@0xc95dc67ccb391f4f;
# Types imported by services.capnp: an explicit param/result struct and the root of an
# inheritance chain that crosses files.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::codegen_test::common");

struct Point {
  x @0 :Int32;
  y @1 :Int32;
}

interface Greeter {
  greet @0 (name :Text) -> (greeting :Text);
}
