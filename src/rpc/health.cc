// Health checks: the statuses a server reports, its health service, and the client side.
#include "zcrpc/health.h"

#include "rpc/health_service.h"
#include "zcrpc/health.capnp.zcrpc.h"

namespace zcrpc {

std::string_view servingStatusName(ServingStatus status) noexcept {
  switch (status) {
    case ServingStatus::kUnknown: return "unknown";
    case ServingStatus::kServing: return "serving";
    case ServingStatus::kNotServing: return "not serving";
    case ServingStatus::kServiceUnknown: return "service unknown";
  }
  return "?";
}

void HealthStatus::set(std::string_view service, ServingStatus status) {
  std::lock_guard lock(mutex_);
  auto it = statuses_.find(service);
  if (it == statuses_.end())
    statuses_.emplace(std::string(service), status);
  else
    it->second = status;
}

void HealthStatus::clear(std::string_view service) {
  std::lock_guard lock(mutex_);
  if (auto it = statuses_.find(service); it != statuses_.end()) statuses_.erase(it);
}

ServingStatus HealthStatus::get(std::string_view service) const {
  std::lock_guard lock(mutex_);
  auto it = statuses_.find(service);
  return it == statuses_.end() ? ServingStatus::kServiceUnknown : it->second;
}

namespace {

/// The generated service over HealthStatus. Threads: any worker (HealthStatus locks).
class HealthServiceImpl final : public health::HealthService {
 public:
  explicit HealthServiceImpl(const HealthStatus& statuses) : statuses_(statuses) {}

  void check(CheckCall& call) override {
    capnp::Text::Reader service = call.params().getService();
    ServingStatus s = statuses_.get(std::string_view(service.cStr(), service.size()));
    call.results().setStatus(static_cast<health::ServingStatus>(s));
  }

 private:
  const HealthStatus& statuses_;
};

/// A status as the peer sent it: anything this build does not know is kUnknown.
ServingStatus fromWire(health::ServingStatus s) {
  const auto v = static_cast<uint16_t>(s);
  return v <= static_cast<uint16_t>(ServingStatus::kServiceUnknown) ? static_cast<ServingStatus>(v)
                                                                    : ServingStatus::kUnknown;
}

}  // namespace

static_assert(health::HealthClient::kInterfaceId == kHealthInterfaceId,
              "zcrpc/health.h names the id schemas/health.capnp declares");

std::unique_ptr<Service> makeHealthService(const HealthStatus& statuses) {
  return std::make_unique<HealthServiceImpl>(statuses);
}

ServingStatus checkHealth(Channel& channel, std::string_view service, Deadline deadline) {
  health::HealthClient client(channel);
  auto req = client.checkRequest();
  req.params().setService(std::string(service));  // NUL-terminated, as Text wants
  req.setDeadline(deadline);
  auto resp = req.call();
  return fromWire(resp.results().getStatus());
}

PendingCall checkHealthAsync(Channel& channel, std::string_view service, Deadline deadline,
                             HealthCallback done) {
  health::HealthClient client(channel);
  auto req = client.checkRequest();
  req.params().setService(std::string(service));
  req.setDeadline(deadline);
  return req.callAsync([done = std::move(done)](CallResult&& result) {
    ServingStatus status = ServingStatus::kUnknown;
    if (result.ok()) {
      try {
        status = fromWire(result.results<health::HealthCheckResponse>().getStatus());
      } catch (const std::exception&) {
        status = ServingStatus::kUnknown;  // an answer that does not read as one
      }
    }
    done(status, result);
  });
}

}  // namespace zcrpc
