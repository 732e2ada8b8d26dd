// A program outside the project with a schema of its own that has an interface: it
// serves `Greeter` (greeter.capnp) over a loopback pair, calls it through the generated
// stub, and reads the server's stats through the installed admin stub. It links only if
// the build flags bring capnp-rpc and kj-async (capnpc-c++'s Greeter::Client/Server).
#include <zcrpc/admin.capnp.zcrpc.h>
#include <zcrpc/health.h>
#include <zcrpc/loopback.h>
#include <zcrpc/rpc.h>

#include <cstdio>
#include <string>

#include "greeter.capnp.zcrpc.h"

namespace {

class GreeterImpl final : public GreeterService {
  void greet(GreetCall& call) override {
    std::string greeting = std::string("hello, ") + call.params().getName().cStr();
    call.results().setGreeting(greeting);
  }
};

}  // namespace

int main() {
  GreeterImpl impl;
  zcrpc::Server server;
  server.addService(impl);
  server.enableStats();
  server.enableHealth().set("Greeter", zcrpc::ServingStatus::kServing);
  auto [client, served] = zcrpc::makeLoopbackPair();
  server.addConnection(std::move(served));
  server.start();

  zcrpc::Channel channel(std::move(client));
  GreeterClient greeter(channel);
  auto req = greeter.greetRequest();
  req.params().setName("consumer");
  auto resp = req.call();
  std::string got = resp.results().getGreeting().cStr();
  if (got != "hello, consumer") {
    std::fprintf(stderr, "service_consumer: got '%s'\n", got.c_str());
    return 1;
  }

  zcrpc::admin::AdminClient admin(channel);
  auto stats = admin.statsRequest().call();
  uint64_t greets = 0;
  for (auto m : stats.results().getMethods())
    if (m.getInterfaceId() == GreeterClient::kInterfaceId && m.getMethodId() == 0)
      greets = m.getCalls();
  if (greets != 1) {
    std::fprintf(stderr, "service_consumer: the stats show %llu greet calls, not 1\n",
                 static_cast<unsigned long long>(greets));
    return 1;
  }
  if (zcrpc::checkHealth(channel, "Greeter", zcrpc::deadlineAfter(std::chrono::seconds(5))) !=
      zcrpc::ServingStatus::kServing) {
    std::fprintf(stderr, "service_consumer: Greeter is not serving\n");
    return 1;
  }
  std::printf("service_consumer: %s; stats: %llu greet call\n", got.c_str(),
              static_cast<unsigned long long>(greets));
  server.shutdown();
  return 0;
}
