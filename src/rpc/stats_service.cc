// The admin service: Admin.stats answered from Server::stats(). Hand-written dispatch over
// kAdminInterfaceId (capnpc-zcrpc's output needs Cap'n Proto's RPC library, which libzcrpc
// does not link); the tests check the id against the generated AdminClient.
#include "rpc/stats_service.h"

#include <unistd.h>

#include "zcrpc/admin_stats.capnp.h"

namespace zcrpc {

namespace {

void fillMethod(admin::MethodStats::Builder out, const MethodSnapshot& m, bool buckets) {
  out.setInterfaceId(m.interfaceId);
  out.setMethodId(m.methodId);
  if (!m.name.empty()) out.setName(m.name);
  out.setCalls(m.calls);
  out.setRequestBytes(m.requestBytes);
  out.setResponseBytes(m.responseBytes);
  unsigned kinds = 0;
  for (size_t k = 1; k < kErrorKinds; ++k) kinds += m.errors[k] != 0;
  auto errors = out.initErrors(kinds);
  for (size_t k = 1, i = 0; k < kErrorKinds; ++k) {
    if (!m.errors[k]) continue;
    auto e = errors[static_cast<unsigned>(i++)];
    e.setKind(static_cast<uint8_t>(k));
    auto name = errorKindName(static_cast<ErrorKind>(k));
    e.setName(capnp::Text::Reader(name.data(), name.size()));
    e.setCount(m.errors[k]);
  }
  const LatencySnapshot& l = m.latency;
  auto lat = out.initLatency();
  lat.setCount(l.count());
  lat.setMinNs(l.minNanos());
  lat.setMeanNs(l.meanNanos());
  lat.setP50Ns(l.percentileNanos(0.50));
  lat.setP90Ns(l.percentileNanos(0.90));
  lat.setP99Ns(l.percentileNanos(0.99));
  lat.setP999Ns(l.percentileNanos(0.999));
  lat.setMaxNs(l.maxNanos());
  if (buckets) {
    unsigned n = 0;
    for (uint64_t c : l.counts) n += c != 0;
    auto list = lat.initBuckets(n);
    for (size_t b = 0, i = 0; b < l.counts.size(); ++b) {
      if (!l.counts[b]) continue;
      auto e = list[static_cast<unsigned>(i++)];
      e.setLowNs(static_cast<double>(LatencyHistogram::bucketLow(b)) * l.nanosPerTick);
      e.setHighNs(static_cast<double>(LatencyHistogram::bucketHigh(b) + 1) * l.nanosPerTick);
      e.setCount(l.counts[b]);
    }
  }
}

class StatsService final : public Service {
 public:
  StatsService(std::function<ServerStats()> source, uint32_t workerThreads)
      : source_(std::move(source)), workerThreads_(workerThreads) {}

  std::span<const uint64_t> interfaceIds() const noexcept override { return kIds; }
  std::string_view methodName(uint64_t interfaceId, uint16_t methodId) const noexcept override {
    return interfaceId == kAdminInterfaceId && methodId == 0 ? "zcrpc.admin.Admin.stats"
                                                             : std::string_view();
  }

  bool dispatch(uint64_t interfaceId, uint16_t methodId, CallContext& context) override {
    if (interfaceId != kAdminInterfaceId || methodId != 0) return false;
    auto request = context.request().getRoot<admin::StatsQuery>();
    const bool connections = request.getConnections();
    const bool buckets = request.getBuckets();
    ServerStats stats = source_();

    size_t methods = stats.methods.size();
    if (connections)
      for (const auto& c : stats.connections) methods += c.methods.size();
    const size_t words = 64 + methods * (buckets ? 160 : 40) + stats.connections.size() * 16;
    auto out = context.response(static_cast<uint32_t>(std::min<size_t>(words, 1u << 20)))
                   .initRoot<admin::StatsSnapshot>();
    out.setPid(static_cast<uint32_t>(::getpid()));
    out.setUptimeNs(static_cast<uint64_t>(stats.uptime.count()));
    out.setConnectionsOpened(stats.connectionsOpened);
    out.setConnectionsClosed(stats.connectionsClosed);
    out.setWorkerThreads(workerThreads_);
    auto endpoints = out.initEndpoints(static_cast<unsigned>(stats.endpoints.size()));
    for (size_t i = 0; i < stats.endpoints.size(); ++i)
      endpoints.set(static_cast<unsigned>(i), stats.endpoints[i]);
    auto totals = out.initMethods(static_cast<unsigned>(stats.methods.size()));
    for (size_t i = 0; i < stats.methods.size(); ++i)
      fillMethod(totals[static_cast<unsigned>(i)], stats.methods[i], buckets);
    if (connections) {
      auto list = out.initConnections(static_cast<unsigned>(stats.connections.size()));
      for (size_t i = 0; i < stats.connections.size(); ++i) {
        const ConnectionSnapshot& c = stats.connections[i];
        auto o = list[static_cast<unsigned>(i)];
        o.setId(c.id);
        o.setEndpoint(c.endpoint);
        o.setAgeNs(static_cast<uint64_t>(c.age.count()));
        auto ms = o.initMethods(static_cast<unsigned>(c.methods.size()));
        for (size_t j = 0; j < c.methods.size(); ++j)
          fillMethod(ms[static_cast<unsigned>(j)], c.methods[j], buckets);
      }
    }
    return true;
  }

 private:
  static constexpr uint64_t kIds[] = {kAdminInterfaceId};
  std::function<ServerStats()> source_;
  uint32_t workerThreads_;
};

}  // namespace

std::unique_ptr<Service> makeStatsService(std::function<ServerStats()> source,
                                          uint32_t workerThreads) {
  return std::make_unique<StatsService>(std::move(source), workerThreads);
}

}  // namespace zcrpc
