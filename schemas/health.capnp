@0xf0d0ea3a5ad1edba;
# zcrpc's health-check service, after gRPC's health protocol (grpc.health.v1.Health.Check):
# whether a server serves a named service now. A Server serves it after
# Server::enableHealth(); zcrpc-ping --health and BalancedChannel (health checks) ask it.
# libzcrpc answers it and asks it through the stubs capnpc-zcrpc generates, over the
# structs of health_types.capnp, so it needs only capnpc-c++'s struct code: the ids are
# fixed here and checked against zcrpc::kHealthInterfaceId by the tests.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::health");

using Types = import "health_types.capnp";

interface Health @0xa7eed31e72987dcf {
  check @0 Types.HealthCheckRequest -> Types.HealthCheckResponse;
  # The serving status of `service` ("" for the server as a whole) now.
}
