@0xff4d9b7827f0864d;
# Echo: the smallest useful zcrpc service, used by the examples, the tests and the
# benchmarks. capnpc-zcrpc turns it into zcrpc::echo::EchoClient / EchoService
# (build/schemas/.../echo.capnp.zcrpc.h; see docs/codegen.md).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::echo");

interface Echo {
  echo @0 (data :Data) -> (data :Data);
  # Returns `data` unchanged.

  ping @1 () -> ();
  # Does nothing: the round trip of an empty request and an empty response.

  sink @2 (data :Data) -> ();
  # Reads `data` and answers nothing in particular; for one-way and throughput runs
  # (send it with sendOneWay() to get no response at all).

  delay @3 (micros :UInt64) -> (cancelled :Bool);
  # Answers after `micros` microseconds (deferred, without blocking the server's polling
  # thread), or early with `cancelled = true` if the caller cancels; for deadline and
  # cancellation tests.

  fail @4 (code :Int32, message :Text) -> ();
  # Throws zcrpc::ApplicationError(code, message); for error-path tests.
}
