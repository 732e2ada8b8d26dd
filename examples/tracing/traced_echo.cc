// traced_echo SPANS_FILE — an Echo server and a client in one process over shm, both with
// the W3C JsonLinesTracer of json_tracer.h: every call each side makes or serves ends as one
// JSON line in SPANS_FILE. It makes an echo call, an echo call as the child of a span its
// caller started, a call that fails, a call it cancels and a one-way message; the test
// (check_spans.py) reads the lines back and checks that each server span belongs to the
// client span that caused it.
#include <chrono>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unistd.h>

#include "echo.capnp.zcrpc.h"
#include "tracing/json_tracer.h"
#include "zcrpc/context.h"

namespace zcrpc::examples {
namespace {

class EchoImpl final : public echo::EchoService {
 public:
  void echo(EchoCall& call) override { call.results().setData(call.params().getData()); }
  void ping(PingCall&) override {}
  void sink(SinkCall&) override {}
  void delay(DelayCall& call) override {
    std::lock_guard lock(mutex_);
    parked_.emplace(call.defer());  // answered by main() once the client has cancelled it
  }
  void fail(FailCall& call) override {
    throw ApplicationError(call.params().getCode(), call.params().getMessage().cStr());
  }
  /// The deferred delay call, once the client's cancel has reached it (or after 5 s).
  bool answerParkedWhenCancelled() {
    for (auto until = Clock::now() + std::chrono::seconds(5); Clock::now() < until;) {
      std::lock_guard lock(mutex_);
      if (parked_ && parked_->isCancelled()) {
        parked_->complete([](OutgoingMessage& out) {
          out.initRoot<echo::Echo::DelayResults>().setCancelled(true);
        });
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return false;
  }

 private:
  std::mutex mutex_;
  std::optional<DeferredReply> parked_;
};

int run(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s SPANS_FILE\n", argv[0]);
    return 2;
  }
  std::FILE* spans = std::fopen(argv[1], "w");
  if (!spans) {
    std::perror(argv[1]);
    return 2;
  }
  JsonLinesTracer tracer(spans);  // one tracer for both sides: it is thread-safe

  Context context;
  EchoImpl service;
  ServerOptions serverOptions = context.config().serverOptions();
  serverOptions.tracer = &tracer;
  Server server(serverOptions);
  server.addService(service);
  server.addListener(context.listen("shm://zcrpc-traced-echo-" + std::to_string(::getpid())));
  server.start();

  ChannelOptions channelOptions = context.config().channelOptions();
  channelOptions.tracer = &tracer;
  Channel channel(context.connect(server.endpoints()), channelOptions);
  echo::EchoClient client(channel);
  int failures = 0;

  {  // a new trace
    auto req = client.echoRequest();
    req.params().setData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("hello"), 5));
    failures += req.call().results().getData().size() != 5;
  }
  {  // a child of a span the caller started (as a handler passing on the traceparent of
     // its own call, `call.context().metadata()`, would)
    auto req = client.echoRequest();
    req.metadata().set(TraceParent::kKey, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    failures += req.call().results().getData().size() != 0;
  }
  try {
    auto req = client.failRequest();
    req.params().setCode(7);
    req.params().setMessage("on purpose");
    req.call();
    ++failures;
  } catch (const ApplicationError&) {
  }
  {
    auto req = client.delayRequest();
    req.params().setMicros(10'000'000);
    PendingCall pending = req.callAsync();
    pending.cancel();
    failures += pending.wait().errorKind() != ErrorKind::kCancelled;
    channel.ping();  // the cancel has reached the server
    failures += !service.answerParkedWhenCancelled();
  }
  client.sinkRequest().sendOneWay();
  channel.ping();  // the one-way message was served before the shutdown
  server.shutdown();
  std::fclose(spans);
  if (failures) std::fprintf(stderr, "traced_echo: %d calls went wrong\n", failures);
  return failures ? 1 : 0;
}

}  // namespace
}  // namespace zcrpc::examples

int main(int argc, char** argv) {
  try {
    return zcrpc::examples::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "traced_echo: %s\n", e.what());
    return 1;
  }
}
