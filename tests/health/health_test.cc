// Health checks (zcrpc/health.h): the statuses a server reports through enableHealth(),
// checkHealth()/checkHealthAsync() against it, a server without the health service, and
// an answer a hostile server could send.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "metrics/echo_impl.h"
#include "zcrpc/health.capnp.zcrpc.h"
#include "zcrpc/health.h"
#include "zcrpc/loopback.h"

namespace zcrpc {
namespace {

using namespace std::chrono_literals;

/// A server (Echo, with or without health, and `other` when given) and a loopback channel
/// into it. `other` must outlive it.
class Served final {
 public:
  explicit Served(bool health, Service* other = nullptr) {
    server_.addService(echo_);
    if (other) server_.addService(*other);
    if (health) health_ = &server_.enableHealth();
    auto [client, served] = makeLoopbackPair();
    server_.addConnection(std::move(served));
    server_.start();
    channel_ = std::make_unique<Channel>(std::move(client));
  }
  ~Served() {
    channel_.reset();
    server_.shutdown();
  }
  Server& server() { return server_; }
  Channel& channel() { return *channel_; }
  HealthStatus& health() { return *health_; }

 private:
  testing::EchoImpl echo_;
  Server server_;
  HealthStatus* health_ = nullptr;
  std::unique_ptr<Channel> channel_;
};

TEST(Health, TheServerAsAWholeServesOtherNamesAreWhatTheApplicationSays) {
  Served s(true);
  EXPECT_EQ(&s.server().enableHealth(), &s.health()) << "idempotent";
  auto check = [&](std::string_view name) { return checkHealth(s.channel(), name, deadlineAfter(5s)); };
  EXPECT_EQ(check(""), ServingStatus::kServing);
  EXPECT_EQ(check("Inventory"), ServingStatus::kServiceUnknown);
  s.health().set("Inventory", ServingStatus::kNotServing);
  EXPECT_EQ(check("Inventory"), ServingStatus::kNotServing);
  s.health().set("Inventory", ServingStatus::kServing);
  EXPECT_EQ(check("Inventory"), ServingStatus::kServing);
  s.health().clear("Inventory");
  EXPECT_EQ(check("Inventory"), ServingStatus::kServiceUnknown);
  s.health().set("", ServingStatus::kNotServing);
  EXPECT_EQ(check(""), ServingStatus::kNotServing);
  EXPECT_EQ(servingStatusName(ServingStatus::kNotServing), "not serving");
}

TEST(Health, AsynchronousChecksAnswerInThePoll) {
  Served s(true);
  s.health().set("Echo", ServingStatus::kServing);
  ServingStatus got = ServingStatus::kUnknown;
  bool ran = false;
  (void)checkHealthAsync(s.channel(), "Echo", deadlineAfter(5s),
                                   [&](ServingStatus status, const CallResult& result) {
                                     ran = true;
                                     got = result.ok() ? status : ServingStatus::kUnknown;
                                   });
  EXPECT_FALSE(ran) << "callbacks run only in polls";
  for (int i = 0; i < 1000 && !ran; ++i) s.channel().pollUntil(deadlineAfter(10ms));
  EXPECT_TRUE(ran);
  EXPECT_EQ(got, ServingStatus::kServing);
}

TEST(Health, AServerWithoutTheHealthServiceIsUnimplemented) {
  Served s(false);
  EXPECT_THROW((void)checkHealth(s.channel(), "", deadlineAfter(5s)), Unimplemented);
  CallResult failed;
  bool ran = false;
  (void)checkHealthAsync(s.channel(), "", deadlineAfter(5s), [&](ServingStatus, const CallResult& r) {
    ran = true;
    failed = CallResult(r.errorKind(), r.errorCode(), r.errorMessage());
  });
  for (int i = 0; i < 1000 && !ran; ++i) s.channel().pollUntil(deadlineAfter(10ms));
  EXPECT_EQ(failed.errorKind(), ErrorKind::kUnimplemented);
}

TEST(Health, ShutdownReportsNotServingFirst) {
  Served s(true);
  HealthStatus& health = s.health();
  EXPECT_EQ(health.get(""), ServingStatus::kServing);
  s.server().shutdown();
  EXPECT_EQ(health.get(""), ServingStatus::kNotServing);
}

/// A health service that answers with a status no zcrpc knows.
class Liar final : public health::HealthService {
  void check(CheckCall& call) override {
    call.results().setStatus(static_cast<health::ServingStatus>(77));
  }
};

TEST(Health, AStatusTheClientDoesNotKnowIsUnknown) {
  Liar liar;
  Served s(false, &liar);
  EXPECT_EQ(checkHealth(s.channel(), "", deadlineAfter(5s)), ServingStatus::kUnknown);
}

TEST(Health, TheGeneratedIdIsTheOneTheLibraryServes) {
  static_assert(health::HealthClient::kInterfaceId == kHealthInterfaceId);
  Served s(true);
  health::HealthClient client(s.channel());
  auto req = client.checkRequest();
  req.params().setService("");
  EXPECT_EQ(req.call().results().getStatus(), health::ServingStatus::SERVING);
}

}  // namespace
}  // namespace zcrpc
