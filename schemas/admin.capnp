@0x9b12e291985000cf;
# zcrpc's built-in admin interface: a Server serves it on all its endpoints after
# Server::enableStats() (zcrpc-stat reads it). libzcrpc answers it with a hand-written
# dispatcher (src/metrics/stats_service.cc) over the id below, so the id is fixed here
# and checked against zcrpc::kAdminInterfaceId by the tests.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zcrpc::admin");

using Stats = import "admin_stats.capnp";

interface Admin @0xbd9354d1ce2e6338 {
  stats @0 Stats.StatsQuery -> Stats.StatsSnapshot;
  # The server's call metrics now.
}
