@0xd98ad54e65a935aa;
# Bodies of zcrpc's health-check service (schemas/health.capnp), kept apart from the
# interface so libzcrpc, which answers and asks it, needs only capnpc-c++'s struct code.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::health");

enum ServingStatus {
  unknown @0;         # the server has not said yet
  serving @1;
  notServing @2;      # up, but not taking calls for it now (starting, draining, degraded)
  serviceUnknown @3;  # the server knows no service of that name
}

struct HealthCheckRequest {
  service @0 :Text;
  # "" asks about the server as a whole.
}

struct HealthCheckResponse {
  status @0 :ServingStatus;
}
