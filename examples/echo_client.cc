// echo_client ENDPOINT [CALLS] — exercises an echo_server: ping, echo of payloads from 0
// bytes to 4 MiB (checked byte for byte), an application error, a deferred answer, a
// cancelled call and one-way sends, then CALLS timed echo round trips (default 10000).
// Exits 1 if any answer is wrong.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "echo.capnp.zcrpc.h"
#include "example_util.h"
#include "zcrpc/context.h"

namespace zcrpc::examples {
namespace {

using echo::EchoClient;

void checkEcho(EchoClient& client, Checker& check, size_t size) {
  // Build the payload in place, in the request's transport memory.
  auto req = client.echoRequest(static_cast<uint32_t>(size / sizeof(capnp::word) + 4));
  capnp::Data::Builder data = req.params().initData(size);
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>(i * 31 + size);
  auto resp = req.call();
  capnp::Data::Reader back = resp.results().getData();  // read in place
  bool same = back.size() == size;
  for (size_t i = 0; same && i < size; ++i) same = back[i] == static_cast<uint8_t>(i * 31 + size);
  check.expect(same, "echo of " + std::to_string(size) + " bytes came back different");
}

int run(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s ENDPOINT [CALLS]\n", argv[0]);
    return 2;
  }
  const long calls = argc == 3 ? std::strtol(argv[2], nullptr, 10) : 10000;
  Context context;
  Channel channel(context.connect(endpointUri(argv[1])), context.config().channelOptions());
  EchoClient client(channel);
  Checker check;

  client.pingRequest().call();

  for (size_t size :
       {size_t{0}, size_t{1}, size_t{100}, size_t{4096}, size_t{1} << 20, size_t{4} << 20})
    checkEcho(client, check, size);

  try {
    auto req = client.failRequest();
    req.params().setCode(42);
    req.params().setMessage("on purpose");
    req.call();
    check.expect(false, "fail() returned normally");
  } catch (const ApplicationError& e) {
    check.expect(e.code() == 42 && std::string(e.what()).find("on purpose") != std::string::npos,
                 "fail() raised code " + std::to_string(e.code()) + ": " + e.what());
  }

  {
    auto req = client.delayRequest();
    req.params().setMicros(2000);
    auto start = Clock::now();
    auto resp = req.call();
    check.expect(!resp.results().getCancelled(), "delay() reported a cancellation");
    check.expect(Clock::now() - start >= std::chrono::microseconds(2000), "delay() answered early");
  }
  {
    auto req = client.delayRequest();
    req.params().setMicros(10'000'000);
    PendingCall pending = req.callAsync();
    pending.cancel();
    CallResult result = pending.wait();
    check.expect(
        !result.ok() && result.errorKind() == ErrorKind::kCancelled,
        "a cancelled delay() finished as " + std::string(errorKindName(result.errorKind())));
  }

  for (int i = 0; i < 100; ++i) {
    auto req = client.sinkRequest();
    req.params().initData(64);
    req.sendOneWay();
  }
  client.pingRequest().call();  // answered after the one-way sends: the connection is in order

  std::vector<double> micros;
  micros.reserve(static_cast<size_t>(std::max(calls, 0L)));
  for (long i = 0; i < calls; ++i) {
    auto start = Clock::now();
    auto req = client.echoRequest();
    req.params().initData(32)[0] = static_cast<uint8_t>(i);
    auto resp = req.call();
    if (resp.results().getData()[0] != static_cast<uint8_t>(i)) {
      check.expect(false, "timed echo " + std::to_string(i) + " came back different");
      break;
    }
    micros.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  if (!micros.empty()) {
    std::sort(micros.begin(), micros.end());
    auto at = [&](double q) { return micros[static_cast<size_t>(q * (micros.size() - 1))]; };
    std::printf("echo_client: %zu round trips of 32 bytes over %s: p50 %.2f us, p99 %.2f us\n",
                micros.size(), channel.connection().endpoint().c_str(), at(0.5), at(0.99));
  }

  if (check.failures()) {
    std::fprintf(stderr, "echo_client: %d check(s) failed\n", check.failures());
    return 1;
  }
  std::printf("echo_client: all checks passed\n");
  return 0;
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  return zcrpc::examples::exampleMain("echo_client", argc, argv, zcrpc::examples::run);
}
