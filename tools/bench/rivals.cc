// zcrpc-bench — the rivals this build has, in the order rows show them, and why the others
// are missing (meson feature options -Ducx, -Diceoryx, -Dgrpc; tools/meson.build).
#include "bench_rivals.h"
#include "system.h"

namespace zcrpc::bench {

std::vector<std::unique_ptr<System>> makeRivals(const Settings& s,
                                                std::vector<std::string>& notBuilt) {
  std::vector<std::unique_ptr<System>> out;
  [[maybe_unused]] auto missing = [&](std::initializer_list<const char*> ids, const char* why) {
    for (const char* id : ids) notBuilt.push_back(std::string(id) + ": " + why);
  };
#ifdef ZCRPC_BENCH_UCX
  out.push_back(makeUcx(s, /*tag=*/false));
  out.push_back(makeUcx(s, /*tag=*/true));
#else
  missing({"ucx-am", "ucx-tag"}, ZCRPC_BENCH_UCX_WHY);
#endif
#ifdef ZCRPC_BENCH_ICEORYX
  out.push_back(makeIceoryx(s));
#else
  missing({"iceoryx"}, ZCRPC_BENCH_ICEORYX_WHY);
#endif
#ifdef ZCRPC_BENCH_GRPC
  out.push_back(makeGrpc(/*stream=*/false));
  out.push_back(makeGrpc(/*stream=*/true));
#else
  missing({"grpc-unary", "grpc-stream"}, ZCRPC_BENCH_GRPC_WHY);
#endif
  out.push_back(makeCapnpRpc());
  (void)s;
  return out;
}

std::vector<std::unique_ptr<System>> makeTlsRivals([[maybe_unused]] const Settings& s,
                                                   std::vector<std::string>& notBuilt) {
  std::vector<std::unique_ptr<System>> out;
#ifdef ZCRPC_BENCH_GRPC
  out.push_back(makeGrpcTls(s));
#else
  notBuilt.push_back(std::string("grpc-tls: ") + ZCRPC_BENCH_GRPC_WHY);
#endif
  (void)notBuilt;
  return out;
}

}  // namespace zcrpc::bench
