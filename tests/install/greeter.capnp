@0xcfa107bb20799042;
# A service of a project outside zcrpc's tree, built against an installed zcrpc (and as a
# subproject) by install_test.sh: its interface makes capnpc-c++'s code need capnp-rpc.

interface Greeter {
  greet @0 (name :Text) -> (greeting :Text);
}
