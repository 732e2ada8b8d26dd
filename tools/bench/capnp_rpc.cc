// zcrpc-bench — rival: Cap'n Proto's own RPC (capnp::EzRpcServer / EzRpcClient) serving the
// same Echo interface (schemas/echo.capnp) over a unix socket (shm rows) or TCP (tcp rows).
// It serialises each message onto the socket and reads it back into its own buffers, and
// both sides wait in epoll whatever the row's wait mode.
#include <capnp/ez-rpc.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <kj/async-io.h>
#include <kj/timer.h>
#include <unistd.h>

#include "echo.capnp.h"
#include "peer.h"
#include "system.h"

namespace zcrpc::bench {

namespace {

/// The same copy as zcrpc's echo: the request's data into an answer sized for it.
class CapnpEcho final : public echo::Echo::Server {
 protected:
  kj::Promise<void> echo(EchoContext context) override {
    capnp::Data::Reader data = context.getParams().getData();
    context.initResults(capnp::MessageSize{echoWords(data.size()), 0}).setData(data);
    return kj::READY_NOW;
  }
};

class CapnpRpc final : public System {
 public:
  SeriesInfo info(Transport t) const override {
    return {"capnp",
            t == Transport::kShm ? "Cap'n Proto RPC (unix socket)" : "Cap'n Proto RPC (TCP)",
            Role::kRival, "epoll"};
  }
  bool covers(Transport) const override { return true; }
  void serve(PeerCell& cell) override { serveCapnpEcho(cell); }
  Figure measure(ClientCell& cell) override {
    Figure f;
    f.latency = capnpEchoLatency(cell, cell.endpoint);
    return f;
  }
};

}  // namespace

void serveCapnpEcho(PeerCell& cell) {
  const bool unix = cell.spec.transport == Transport::kShm;
  const std::string path = fmt::format("/tmp/zcrpc-bench-{}-capnp.sock", ::getpid());
  UnlinkOnExit unlinkSocket(unix ? path : std::string());
  capnp::EzRpcServer server(kj::heap<CapnpEcho>(), unix ? "unix:" + path : "127.0.0.1:0");
  kj::WaitScope& waitScope = server.getWaitScope();
  const unsigned port = server.getPort().wait(waitScope);
  // The control socket joins the event loop through a duplicate, which kj makes
  // non-blocking: that flag belongs to the shared open file, so it is put back afterwards.
  const int flags = ::fcntl(cell.controlFd(), F_GETFL);
  const int dup = ::fcntl(cell.controlFd(), F_DUPFD_CLOEXEC, 0);
  if (flags < 0 || dup < 0) throwErrno("capnp server: F_GETFL / dup of the control socket");
  Command end;
  size_t got = 0;
  {
    auto control = server.getLowLevelIoProvider().wrapSocketFd(
        dup, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
                 kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC);
    cell.started(unix ? "unix:" + path : fmt::format("127.0.0.1:{}", port));
    auto timeout = server.getIoProvider()
                       .getTimer()
                       .afterDelay((cell.deadline - Clock::now()).count() * kj::NANOSECONDS)
                       .then([]() -> size_t { return 0; });
    got = control->tryRead(&end, sizeof end, sizeof end)
              .exclusiveJoin(kj::mv(timeout))
              .wait(waitScope);
  }
  if (::fcntl(cell.controlFd(), F_SETFL, flags) != 0)
    throwErrno("capnp server: F_SETFL on the control socket");
  cell.endedWith(std::as_bytes(std::span(&end, 1)).first(got));
}

Latency capnpEchoLatency(ClientCell& cell, const std::string& address) {
  capnp::EzRpcClient client(address.c_str());
  kj::WaitScope& waitScope = client.getWaitScope();
  auto echo = client.getMain<echo::Echo>();
  const auto data =
      kj::arrayPtr(reinterpret_cast<const kj::byte*>(cell.payload.data()), cell.payload.size());
  const size_t n = data.size();
  auto roundTrip = [&] {
    auto req = echo.echoRequest(capnp::MessageSize{echoWords(n), 0});
    req.setData(data);
    auto resp = req.send().wait(waitScope);
    capnp::Data::Reader back = resp.getData();
    if (back.size() != n || (n && back[n - 1] != data[n - 1]))
      throw BenchError(fmt::format("capnp echo: answer of {} bytes, sent {}", back.size(), n));
  };
  return measureLatency(roundTrip, cell.budget, cell.samples);
}

std::unique_ptr<System> makeCapnpRpc() { return std::make_unique<CapnpRpc>(); }

}  // namespace zcrpc::bench
