// Call metrics: snapshots, histogram percentiles, the method table, the server registry.
#include "zcrpc/metrics.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <utility>

namespace zcrpc {

namespace ticks {

double nanosPerTick() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  static const double factor = [] {
    using std::chrono::steady_clock;
    // Two readings of each clock 10 ms apart; each pair is taken back to back, so the
    // error is a few tens of nanoseconds over 10 ms (a few parts per million).
    const auto t0 = steady_clock::now();
    const uint64_t c0 = now();
    auto t1 = t0;
    uint64_t c1 = c0;
    while (t1 - t0 < std::chrono::milliseconds(10)) {
      t1 = steady_clock::now();
      c1 = now();
    }
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    return c1 > c0 ? ns / static_cast<double>(c1 - c0) : 1.0;
  }();
  return factor;
#else
  return 1.0;
#endif
}

}  // namespace ticks

// ------------------------------------------------------------------------------------
// Snapshots

uint64_t LatencySnapshot::count() const noexcept {
  uint64_t n = 0;
  for (uint64_t c : counts) n += c;
  return n;
}

void LatencySnapshot::merge(const LatencySnapshot& other) {
  const uint64_t mine = count(), theirs = other.count();
  if (!theirs) return;
  if (counts.empty()) counts.assign(LatencyHistogram::kBuckets, 0);
  for (size_t i = 0; i < other.counts.size() && i < counts.size(); ++i) counts[i] += other.counts[i];
  sumTicks += other.sumTicks;
  minTicks = mine ? std::min(minTicks, other.minTicks) : other.minTicks;
  maxTicks = std::max(maxTicks, other.maxTicks);
  nanosPerTick = other.nanosPerTick;
}

double LatencySnapshot::percentileNanos(double q) const noexcept {
  const uint64_t n = count();
  if (!n) return 0;
  q = std::clamp(q, 0.0, 1.0);
  const auto rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(n))));
  uint64_t seen = 0;
  for (size_t b = 0; b < counts.size(); ++b) {
    seen += counts[b];
    if (seen >= rank) {
      const uint64_t lo = LatencyHistogram::bucketLow(b), hi = LatencyHistogram::bucketHigh(b);
      double mid = static_cast<double>(lo) + static_cast<double>(hi - lo) / 2.0;
      mid = std::clamp(mid, static_cast<double>(minTicks), static_cast<double>(std::max(minTicks, maxTicks)));
      return mid * nanosPerTick;
    }
  }
  return maxNanos();
}

double LatencySnapshot::meanNanos() const noexcept {
  const uint64_t n = count();
  return n ? static_cast<double>(sumTicks) / static_cast<double>(n) * nanosPerTick : 0;
}

uint64_t MethodSnapshot::errorCount() const noexcept {
  uint64_t n = 0;
  for (uint64_t e : errors) n += e;
  return n;
}

void MethodSnapshot::merge(const MethodSnapshot& other) {
  if (name.empty()) name = other.name;
  calls += other.calls;
  for (size_t i = 0; i < kErrorKinds; ++i) errors[i] += other.errors[i];
  requestBytes += other.requestBytes;
  responseBytes += other.responseBytes;
  latency.merge(other.latency);
}

MethodSnapshot ConnectionSnapshot::totals() const {
  MethodSnapshot t;
  for (const auto& m : methods) t.merge(m);
  return t;
}

MethodSnapshot MethodMetrics::snapshot() const {
  MethodSnapshot s;
  s.interfaceId = interfaceId_;
  s.methodId = methodId_;
  s.name = name_;
  // Relaxed loads pair with the writer's relaxed stores: each value is one the writer
  // stored (no tearing); the values may come from slightly different moments.
  s.calls = calls_.load(std::memory_order_relaxed);
  s.requestBytes = requestBytes_.load(std::memory_order_relaxed);
  s.responseBytes = responseBytes_.load(std::memory_order_relaxed);
  for (size_t i = 0; i < kErrorKinds; ++i) s.errors[i] = errors_[i].load(std::memory_order_relaxed);
  LatencySnapshot& l = s.latency;
  l.nanosPerTick = ticks::nanosPerTick();
  l.counts.resize(LatencyHistogram::kBuckets);
  uint64_t n = 0;
  for (size_t b = 0; b < LatencyHistogram::kBuckets; ++b) n += (l.counts[b] = latency_.count(b));
  l.sumTicks = latency_.sum();
  l.maxTicks = latency_.max();
  l.minTicks = n ? std::min(latency_.min(), l.maxTicks) : 0;
  if (!n) l.counts.clear();
  return s;
}

// ------------------------------------------------------------------------------------
// ConnectionMetrics

namespace {
std::atomic<uint64_t> nextConnectionId{1};

size_t slotHash(uint64_t interfaceId, uint16_t methodId) noexcept {
  uint64_t h = (interfaceId ^ (uint64_t{methodId} * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
  return static_cast<size_t>(h >> 40);
}
}  // namespace

ConnectionMetrics::ConnectionMetrics(std::string endpoint, MetricsSide side)
    : id_(nextConnectionId.fetch_add(1, std::memory_order_relaxed)),
      endpoint_(std::move(endpoint)),
      side_(side),
      created_(std::chrono::steady_clock::now()) {}

ConnectionMetrics::~ConnectionMetrics() = default;

MethodMetrics& ConnectionMetrics::lookup(uint64_t interfaceId, uint16_t methodId,
                                         std::string_view name) {
  constexpr size_t mask = 2 * kMaxMethods - 1;
  static_assert((2 * kMaxMethods & mask) == 0, "slot count must be a power of two");
  const size_t used = used_.load(std::memory_order_relaxed);  // writer's own value
  for (size_t i = slotHash(interfaceId, methodId), probes = 0; probes <= mask; ++i, ++probes) {
    uint8_t& slot = slots_[i & mask];
    if (slot) {
      MethodMetrics* m = owned_[slot - 1].get();
      if (m->interfaceId() == interfaceId && m->methodId() == methodId) return *(last_ = m);
      continue;
    }
    if (used >= kMaxMethods) break;  // table full: the overflow entry
    owned_[used] = std::make_unique<MethodMetrics>(interfaceId, methodId, name);
    slot = static_cast<uint8_t>(used + 1);
    // pairs with the acquire load in snapshot(): the entry is constructed before it is seen
    order_[used].store(owned_[used].get(), std::memory_order_release);
    used_.store(used + 1, std::memory_order_release);
    return *(last_ = owned_[used].get());
  }
  if (!owned_[kMaxMethods]) {
    owned_[kMaxMethods] = std::make_unique<MethodMetrics>(0, kOverflowMethod);
    order_[kMaxMethods].store(owned_[kMaxMethods].get(), std::memory_order_release);
  }
  return *(last_ = owned_[kMaxMethods].get());
}

ConnectionSnapshot ConnectionMetrics::snapshot() const {
  ConnectionSnapshot s;
  s.id = id_;
  s.endpoint = endpoint_;
  s.side = side_;
  s.open = open_.load(std::memory_order_relaxed);
  s.age = std::chrono::steady_clock::now() - created_;
  for (const auto& entry : order_) {
    // pairs with the release store in lookup()
    if (const MethodMetrics* m = entry.load(std::memory_order_acquire))
      s.methods.push_back(m->snapshot());
  }
  return s;
}

// ------------------------------------------------------------------------------------
// MetricsRegistry

struct MetricsRegistry::State {
  mutable std::mutex mutex;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::vector<std::shared_ptr<ConnectionMetrics>> open;
  std::map<std::pair<uint64_t, uint16_t>, MethodSnapshot> retired;
  uint64_t opened = 0;
  uint64_t closed = 0;
};

MetricsRegistry::MetricsRegistry() : state_(std::make_unique<State>()) {}
MetricsRegistry::~MetricsRegistry() = default;

std::shared_ptr<ConnectionMetrics> MetricsRegistry::open(std::string endpoint, MetricsSide side) {
  auto m = std::make_shared<ConnectionMetrics>(std::move(endpoint), side);
  std::lock_guard lock(state_->mutex);
  state_->open.push_back(m);
  ++state_->opened;
  return m;
}

void MetricsRegistry::retire(const std::shared_ptr<ConnectionMetrics>& metrics) {
  if (!metrics) return;
  metrics->markClosed();
  ConnectionSnapshot last = metrics->snapshot();
  std::lock_guard lock(state_->mutex);
  auto& open = state_->open;
  auto it = std::find(open.begin(), open.end(), metrics);
  if (it == open.end()) return;
  open.erase(it);
  ++state_->closed;
  for (auto& m : last.methods) {
    auto& total = state_->retired[{m.interfaceId, m.methodId}];
    total.interfaceId = m.interfaceId;
    total.methodId = m.methodId;
    total.merge(m);
  }
}

ServerStats MetricsRegistry::snapshot() const {
  std::vector<std::shared_ptr<ConnectionMetrics>> open;
  ServerStats out;
  std::map<std::pair<uint64_t, uint16_t>, MethodSnapshot> totals;
  {
    std::lock_guard lock(state_->mutex);
    open = state_->open;
    totals = state_->retired;
    out.connectionsOpened = state_->opened;
    out.connectionsClosed = state_->closed;
    out.uptime = std::chrono::steady_clock::now() - state_->started;
  }
  // Outside the lock: copying histograms takes a while and must not hold up connections
  // opening or closing. The shared pointers keep closing connections' counters alive.
  for (const auto& c : open) {
    out.connections.push_back(c->snapshot());
    for (const auto& m : out.connections.back().methods) {
      auto& total = totals[{m.interfaceId, m.methodId}];
      total.interfaceId = m.interfaceId;
      total.methodId = m.methodId;
      total.merge(m);
    }
  }
  for (auto& [key, m] : totals) out.methods.push_back(std::move(m));
  return out;
}

}  // namespace zcrpc
