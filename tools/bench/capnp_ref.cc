#include "capnp_ref.h"

#include <capnp/ez-rpc.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <kj/async-io.h>
#include <kj/timer.h>
#include <unistd.h>

#include "echo.capnp.h"
#include "rpc_cells.h"

namespace zcrpc::bench {

namespace {

/// Echo on Cap'n Proto's RPC system: the same copy as zcrpc's BenchEchoService (the
/// request's data into a response sized for it). Unused methods are left unimplemented.
class CapnpEcho final : public echo::Echo::Server {
 protected:
  kj::Promise<void> echo(EchoContext context) override {
    capnp::Data::Reader data = context.getParams().getData();
    context.initResults(capnp::MessageSize{echoWords(data.size()), 0}).setData(data);
    return kj::READY_NOW;
  }
  kj::Promise<void> ping(PingContext) override { return kj::READY_NOW; }
};

std::string unixPath(const std::string& address) {
  return address.starts_with("unix:") ? address.substr(5) : std::string();
}

/// Removes a unix socket's file when the server is done (or failed).
class UnlinkOnExit final {
 public:
  explicit UnlinkOnExit(std::string path) : path_(std::move(path)) {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  ~UnlinkOnExit() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  UnlinkOnExit(const UnlinkOnExit&) = delete;
  UnlinkOnExit& operator=(const UnlinkOnExit&) = delete;

 private:
  std::string path_;
};

}  // namespace

bool serveCapnpEcho(const std::string& bindAddress, int controlFd, std::chrono::nanoseconds maxTime,
                    const std::function<void(const std::string& address)>& ready,
                    std::span<std::byte> stop) {
  UnlinkOnExit unlinkSocket(unixPath(bindAddress));
  capnp::EzRpcServer server(kj::heap<CapnpEcho>(), bindAddress.c_str());
  kj::WaitScope& waitScope = server.getWaitScope();
  unsigned port = server.getPort().wait(waitScope);
  std::string address = bindAddress;
  if (auto colon = bindAddress.rfind(':');
      unixPath(bindAddress).empty() && colon != std::string::npos)
    address = fmt::format("{}:{}", bindAddress.substr(0, colon), port);

  // The control socket joins the event loop through a duplicate, which kj makes
  // non-blocking: that flag belongs to the shared open file, so it is put back afterwards.
  int flags = ::fcntl(controlFd, F_GETFL);
  if (flags < 0) throwErrno("capnp server: F_GETFL on the control socket");
  int dup = ::fcntl(controlFd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) throwErrno("capnp server: dup of the control socket");
  size_t got = 0;
  {
    auto control = server.getLowLevelIoProvider().wrapSocketFd(
        dup,
        kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP | kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC);
    ready(address);
    auto timeout = server.getIoProvider()
                       .getTimer()
                       .afterDelay(static_cast<int64_t>(maxTime.count()) * kj::NANOSECONDS)
                       .then([]() -> size_t { return 0; });
    got = control->tryRead(stop.data(), stop.size(), stop.size())
              .exclusiveJoin(kj::mv(timeout))
              .wait(waitScope);
  }
  if (::fcntl(controlFd, F_SETFL, flags) != 0)
    throwErrno("capnp server: F_SETFL on the control socket");
  return got == stop.size();
}

Latency capnpPingPong(const std::string& address, std::span<const std::byte> payload,
                      const Budget& budget, std::span<uint64_t> samples) {
  capnp::EzRpcClient client(address.c_str());
  kj::WaitScope& waitScope = client.getWaitScope();
  auto echo = client.getMain<echo::Echo>();
  const auto data = kj::arrayPtr(reinterpret_cast<const kj::byte*>(payload.data()), payload.size());
  const size_t n = payload.size();
  const kj::byte last = n ? data[n - 1] : 0;
  const capnp::MessageSize hint{echoWords(n), 0};
  auto roundTrip = [&] {
    auto req = echo.echoRequest(hint);
    req.setData(data);
    auto resp = req.send().wait(waitScope);
    capnp::Data::Reader back = resp.getData();
    if (back.size() != n || (n && back[n - 1] != last))
      throw BenchError(fmt::format("capnp echo: answer of {} bytes, sent {}", back.size(), n));
  };
  return measureLatency(roundTrip, budget, samples);
}

}  // namespace zcrpc::bench
