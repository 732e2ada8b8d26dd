// Server: services, listeners, the acceptor and the workers, graceful shutdown. The parts
// live in files of their own: acceptor.cc, worker.cc, session*.cc (a connection's calls
// in both directions) and answer_backlog.cc (answers waiting for room).
#include <algorithm>

#include "rpc/acceptor.h"
#include "rpc/frames.h"
#include "rpc/health_service.h"
#include "rpc/stats_service.h"
#include "rpc/worker.h"
#include "zcrpc/rpc.h"

namespace zcrpc {

struct __attribute__((visibility("hidden"))) Server::Impl {
  ServerOptions options;
  std::unordered_map<uint64_t, Service*> services;
  MetricsRegistry registry;
  std::unique_ptr<Service> statsService;
  std::unique_ptr<HealthStatus> health;  // after enableHealth(): read by its service
  std::unique_ptr<Service> healthService;
  std::vector<std::string> endpointNames;  // fixed at start(): read by workers without a lock
  std::atomic<bool> endpointsFixed{false};
  std::vector<std::unique_ptr<Worker>> workers;
  Acceptor acceptor{[this](std::unique_ptr<Connection> c) { leastLoaded().adopt(std::move(c)); }};
  std::atomic<bool> started{false};  // written under `mutex`; read by poll() without it
  bool stopped = false;
  std::mutex mutex;

  /// The one worker of a server without worker threads (`what` is the caller, for errors).
  Worker& driven(const char* what);
  Worker& leastLoaded() {
    return **std::min_element(workers.begin(), workers.end(), [](auto& a, auto& b) {
      return a->connections() < b->connections();
    });
  }
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  // No worker threads: one worker the user's thread drives (poll()).
  for (size_t i = 0; i < std::max<size_t>(options.workerThreads, 1); ++i)
    impl_->workers.push_back(
        std::make_unique<Worker>(impl_->services, impl_->options, impl_->registry));
}

Server::~Server() { shutdown(deadlineAfter(std::chrono::seconds(1))); }

void Server::addService(Service& service) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->started) throw InvalidArgument("addService after start()");
  for (uint64_t id : service.interfaceIds()) {
    if (impl_->services.count(id))
      throw InvalidArgument("interface 0x" + hex(id) + " is already served by another service");
  }
  for (uint64_t id : service.interfaceIds()) impl_->services[id] = &service;
}

void Server::addListener(std::unique_ptr<Listener> listener) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->started) throw InvalidArgument("addListener after start()");
  impl_->acceptor.add(std::move(listener));
}

void Server::addConnection(std::unique_ptr<Connection> connection) {
  impl_->leastLoaded().adopt(std::move(connection));
}

void Server::enableStats() {
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->statsService) return;
    if (impl_->started) throw InvalidArgument("enableStats after start()");
    impl_->statsService = makeStatsService(
        [this] { return stats(); }, static_cast<uint32_t>(impl_->options.workerThreads));
  }
  addService(*impl_->statsService);
  (void)ticks::nanosPerTick();  // calibrate now rather than in the first stats call
}

ServerStats Server::stats() const {
  // No lock of the server's own: workers call this (the stats service) while shutdown()
  // holds it waiting for them.
  ServerStats s = impl_->options.metrics ? impl_->registry.snapshot() : ServerStats{};
  if (impl_->endpointsFixed.load(std::memory_order_acquire))  // pairs with start()'s store
    s.endpoints = impl_->endpointNames;
  // Methods are named by the services that dispatch them (the map is fixed once started).
  auto name = [&](MethodSnapshot& m) {
    if (!m.name.empty()) return;
    auto it = impl_->services.find(m.interfaceId);
    if (it != impl_->services.end()) m.name = it->second->methodName(m.interfaceId, m.methodId);
  };
  for (auto& m : s.methods) name(m);
  for (auto& c : s.connections)
    for (auto& m : c.methods) name(m);
  return s;
}

void Server::start() {
  std::lock_guard lock(impl_->mutex);
  if (impl_->started) return;
  impl_->started = true;
  impl_->endpointNames = impl_->acceptor.endpoints();
  impl_->endpointsFixed.store(true, std::memory_order_release);  // pairs with stats()
  if (impl_->options.workerThreads > 0)
    for (auto& w : impl_->workers) w->start();
  impl_->acceptor.start();
}

Worker& Server::Impl::driven(const char* what) {
  if (options.workerThreads != 0)
    throw InvalidArgument(std::string(what) + " drives a server without worker threads "
                          "(ServerOptions::workerThreads = 0); this one has " +
                          std::to_string(options.workerThreads));
  if (!started.load(std::memory_order_acquire))
    throw InvalidArgument(std::string(what) + " before start()");
  return *workers.front();
}

size_t Server::poll() { return impl_->driven("poll()").poll(); }

std::chrono::milliseconds Server::armWait() {
  return std::chrono::ceil<std::chrono::milliseconds>(impl_->driven("armWait()").armWait());
}

int Server::waitFd() const { return impl_->driven("waitFd()").waitFd(); }

HealthStatus& Server::enableHealth() {
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->health) return *impl_->health;
    if (impl_->started) throw InvalidArgument("enableHealth after start()");
    impl_->health = std::make_unique<HealthStatus>();
    impl_->health->set("", ServingStatus::kServing);
    impl_->healthService = makeHealthService(*impl_->health);
  }
  addService(*impl_->healthService);
  return *impl_->health;
}

void Server::shutdown(Deadline deadline) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->stopped) return;
  impl_->stopped = true;
  // Health checks that still reach us while we drain say so.
  if (impl_->health) impl_->health->set("", ServingStatus::kNotServing);
  impl_->acceptor.stop();  // no new clients from here on
  for (auto& w : impl_->workers) w->stop(deadline);
  if (impl_->started)
    for (auto& w : impl_->workers) w->join();
}

size_t Server::connectionCount() const {
  size_t n = 0;
  for (auto& w : impl_->workers) n += w->connections();
  return n;
}

std::vector<std::string> Server::endpoints() const { return impl_->acceptor.endpoints(); }

}  // namespace zcrpc
