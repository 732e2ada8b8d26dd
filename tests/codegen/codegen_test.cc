// The stubs capnpc-zcrpc generates, served over loopback and shm: own and inherited
// methods (two levels, across files, a diamond), nested interfaces, explicit and empty
// params/results, escaped handler names, and Unimplemented for what is not served.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "common.capnp.zcrpc.h"
#include "services.capnp.zcrpc.h"
#include "services_impl.h"
#include "zcrpc/loopback.h"
#include "zcrpc/shm.h"

namespace zcrpc::codegen_test {
namespace {

using common::GreeterClient;
using common::Point;

// ------------------------------------------------------------------------------------
// A server with some services and one client channel to it, over one transport.

enum class Transport { kLoopback, kShm };

std::string transportName(const testing::TestParamInfo<Transport>& info) {
  return info.param == Transport::kLoopback ? "loopback" : "shm";
}

/// One Server and a Channel connected to it. The services must outlive it.
class Served final {
 public:
  Served(Transport transport, std::vector<Service*> services) {
    for (Service* s : services) server_.addService(*s);
    if (transport == Transport::kLoopback) {
      auto [client, server] = makeLoopbackPair();
      server_.addConnection(std::move(server));
      server_.start();
      channel_ = std::make_unique<Channel>(std::move(client));
    } else {
      static std::atomic<int> counter{0};
      std::string name =
          "codegen-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
      server_.addListener(listenShm(name));
      server_.start();
      channel_ = std::make_unique<Channel>(connectShm(name));
    }
  }
  ~Served() {
    channel_.reset();
    server_.shutdown();
  }

  Channel& channel() { return *channel_; }

 private:
  Server server_;
  std::unique_ptr<Channel> channel_;
};

class CodegenTest : public testing::TestWithParam<Transport> {
 protected:
  DerivedImpl derived_;
  NestedImpl nested_;
  OuterImpl outer_;
  InnerImpl inner_;
  TaggedImpl tagged_;
  // Registered on a second server: Both shares Common.Greeter with Derived, and a Server
  // routes each interface id to exactly one service.
  BothImpl both_;
  Served main_{GetParam(), {&derived_, &nested_, &outer_, &inner_, &tagged_}};
  Served diamond_{GetParam(), {&both_}};
};

// ------------------------------------------------------------------------------------
// Static shape

TEST(CodegenShape, InterfaceIdsAreCapnpsAndListTheBases) {
  EXPECT_EQ(DerivedClient::kInterfaceId, capnp::typeId<Derived>());
  EXPECT_EQ(DerivedService::kInterfaceId, capnp::typeId<Derived>());
  EXPECT_EQ(Holder_NestedClient::kInterfaceId, capnp::typeId<Holder::Nested>());
  EXPECT_EQ(Outer_InnerService::kInterfaceId, capnp::typeId<Outer::Inner>());

  std::vector<uint64_t> derived(std::begin(DerivedService::kInterfaceIds),
                                std::end(DerivedService::kInterfaceIds));
  EXPECT_EQ(derived, (std::vector<uint64_t>{capnp::typeId<Derived>(), capnp::typeId<Middle>(),
                                            capnp::typeId<common::Greeter>()}));
  DerivedImpl impl;
  EXPECT_EQ(impl.interfaceIds().size(), 3u);

  // The diamond lists Common.Greeter once.
  std::vector<uint64_t> both(std::begin(BothService::kInterfaceIds),
                             std::end(BothService::kInterfaceIds));
  EXPECT_EQ(both,
            (std::vector<uint64_t>{capnp::typeId<Both>(), capnp::typeId<Left>(),
                                   capnp::typeId<common::Greeter>(), capnp::typeId<Right>()}));
  EXPECT_EQ(std::size(MarkerService::kInterfaceIds), 1u);
  EXPECT_EQ(std::size(TaggedService::kInterfaceIds), 2u);

  // Params and results are the types capnpc-c++ generates.
  static_assert(std::is_same_v<DerivedClient::MirrorRequest, Request<Point, Point>>);
  static_assert(std::is_same_v<DerivedService::ScaleCall, ServerCall<Point, Scaled>>);
  static_assert(std::is_same_v<DerivedClient::ShoutRequest,
                               Request<Middle::ShoutParams, Middle::ShoutResults>>);
  static_assert(
      std::is_same_v<DerivedService::GreetCall,
                     ServerCall<common::Greeter::GreetParams, common::Greeter::GreetResults>>);
}

TEST(CodegenShape, ServicesAndRequestsNameMethodsBySchemaName) {
  DerivedImpl derived;
  // Own methods, and inherited ones under the interface that declares them.
  EXPECT_EQ(derived.methodName(capnp::typeId<Derived>(), 0), "Derived.mirror");
  EXPECT_EQ(derived.methodName(capnp::typeId<Derived>(), 3), "Derived.delete");
  EXPECT_EQ(derived.methodName(capnp::typeId<Derived>(), 4), "Derived.dispatch");
  EXPECT_EQ(derived.methodName(capnp::typeId<Middle>(), 0), "Middle.shout");
  EXPECT_EQ(derived.methodName(capnp::typeId<common::Greeter>(), 0), "Greeter.greet");
  // Unknown ordinals and interfaces have no name.
  EXPECT_EQ(derived.methodName(capnp::typeId<Derived>(), 5), "");
  EXPECT_EQ(derived.methodName(capnp::typeId<Both>(), 0), "");
  // Nested interfaces by their scope path; an interface without methods names nothing.
  EXPECT_EQ(NestedImpl().methodName(capnp::typeId<Holder::Nested>(), 0), "Holder.Nested.get");
  EXPECT_EQ(InnerImpl().methodName(capnp::typeId<Outer::Inner>(), 0), "Outer.Inner.inner");
  EXPECT_EQ(TaggedImpl().methodName(capnp::typeId<Marker>(), 0), "");

  // The client's requests carry the same names.
  auto [a, b] = makeLoopbackPair();
  Channel channel(std::move(a));
  DerivedClient client(channel);
  EXPECT_EQ(client.shoutRequest().raw().methodName(), "Middle.shout");
  EXPECT_EQ(client.deleteRequest().raw().methodName(), "Derived.delete");
}

// ------------------------------------------------------------------------------------
// Calls

TEST_P(CodegenTest, OwnMethodsWithExplicitStructTypes) {
  DerivedClient client(main_.channel());
  {
    auto req = client.mirrorRequest();
    req.params().setX(3);
    req.params().setY(-7);
    auto resp = req.call();
    EXPECT_EQ(resp.results().getX(), -3);
    EXPECT_EQ(resp.results().getY(), 7);
  }
  {
    auto req = client.scaleRequest();
    req.params().setX(2);
    req.params().setY(5);
    auto resp = req.call();
    EXPECT_EQ(resp.results().getFactor(), 3);
    EXPECT_EQ(resp.results().getPoint().getX(), 6);
    EXPECT_EQ(resp.results().getPoint().getY(), 15);
  }
}

TEST_P(CodegenTest, EmptyParamsAndResults) {
  DerivedClient client(main_.channel());
  for (int i = 0; i < 3; ++i) {
    auto resp = client.nothingRequest().call();
    (void)resp.results();  // an empty struct, readable
  }
  EXPECT_EQ(derived_.nothingCalls.load(), 3);

  OuterClient outer(main_.channel());
  outer.outerRequest().call();
  EXPECT_EQ(outer_.calls.load(), 1);
}

TEST_P(CodegenTest, EscapedHandlerNames) {
  DerivedClient client(main_.channel());
  {
    auto req = client.deleteRequest();
    req.params().setKey("present");
    EXPECT_TRUE(req.call().results().getDeleted());
  }
  {
    auto req = client.deleteRequest();
    req.params().setKey("absent");
    EXPECT_FALSE(req.call().results().getDeleted());
  }
  auto req = client.dispatchRequest();
  req.params().setN(41);
  EXPECT_EQ(req.call().results().getN(), 42u);
}

TEST_P(CodegenTest, InheritedMethodsOneAndTwoLevelsUp) {
  DerivedClient client(main_.channel());
  {
    auto req = client.shoutRequest();  // Middle.shout
    req.params().setText("quiet");
    EXPECT_EQ(std::string(req.call().results().getText().cStr()), "QUIET");
  }
  {
    auto req = client.greetRequest();  // common.capnp:Greeter.greet
    req.params().setName("ada");
    EXPECT_EQ(std::string(req.call().results().getGreeting().cStr()), "hello ada from derived");
  }
  // The base interfaces' own clients reach the same service.
  MiddleClient middle(main_.channel());
  auto shout = middle.shoutRequest();
  shout.params().setText("x");
  EXPECT_EQ(std::string(shout.call().results().getText().cStr()), "X");
  GreeterClient greeter(main_.channel());
  auto greet = greeter.greetRequest();
  greet.params().setName("bob");
  EXPECT_EQ(std::string(greet.call().results().getGreeting().cStr()), "hello bob from derived");
}

TEST_P(CodegenTest, DiamondAnswersEveryBase) {
  BothClient client(diamond_.channel());
  EXPECT_EQ(client.bothRequest().call().results().getCount(), 2u);
  EXPECT_EQ(std::string(client.leftRequest().call().results().getSide().cStr()), "left");
  EXPECT_EQ(std::string(client.rightRequest().call().results().getSide().cStr()), "right");
  auto req = client.greetRequest();
  req.params().setName("eve");
  EXPECT_EQ(std::string(req.call().results().getGreeting().cStr()), "hello eve from both");
  LeftClient left(diamond_.channel());
  EXPECT_EQ(std::string(left.leftRequest().call().results().getSide().cStr()), "left");
}

TEST_P(CodegenTest, NestedInterfaces) {
  Holder_NestedClient nested(main_.channel());
  EXPECT_EQ(nested.getRequest().call().results().getValue(), 42);
  Outer_InnerClient inner(main_.channel());
  auto req = inner.innerRequest();
  req.params().setX(21);
  EXPECT_EQ(req.call().results().getX(), 42);
}

TEST_P(CodegenTest, InterfaceExtendingOneWithoutMethods) {
  TaggedClient client(main_.channel());
  client.tagRequest().call();
  EXPECT_EQ(tagged_.calls.load(), 1);
  // Marker has no methods: TaggedService answers its id, but no method of it.
  auto raw = main_.channel().newRequest(MarkerClient::kInterfaceId, 0);
  EXPECT_THROW(raw.call(), Unimplemented);
}

TEST_P(CodegenTest, AsyncCallThroughTheGeneratedRequest) {
  DerivedClient client(main_.channel());
  auto req = client.shoutRequest();
  req.params().setText("later");
  PendingCall pending = req.callAsync();
  CallResult result = pending.wait();
  ASSERT_TRUE(result.ok()) << result.errorMessage();
  EXPECT_EQ(std::string(result.results<Middle::ShoutResults>().getText().cStr()), "LATER");
}

TEST_P(CodegenTest, UnknownMethodsAndInterfacesAreUnimplemented) {
  // A method ordinal past Derived's own methods.
  auto beyond = main_.channel().newRequest(DerivedClient::kInterfaceId, 5);
  EXPECT_THROW(beyond.call(), Unimplemented);
  // A method ordinal past an inherited interface's methods.
  auto inherited = main_.channel().newRequest(MiddleClient::kInterfaceId, 1);
  EXPECT_THROW(inherited.call(), Unimplemented);
  // Interfaces served elsewhere or not at all.
  LeftClient left(main_.channel());
  EXPECT_THROW(left.leftRequest().call(), Unimplemented);
  auto unknown = main_.channel().newRequest(0x1234567890abcdefull, 0);
  EXPECT_THROW(unknown.call(), Unimplemented);
  // The connection still works afterwards.
  DerivedClient client(main_.channel());
  auto req = client.dispatchRequest();
  req.params().setN(1);
  EXPECT_EQ(req.call().results().getN(), 2u);
}

INSTANTIATE_TEST_SUITE_P(Transports, CodegenTest,
                         testing::Values(Transport::kLoopback, Transport::kShm), transportName);

}  // namespace
}  // namespace zcrpc::codegen_test
