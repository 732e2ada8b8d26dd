#include "rpc_cells.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace zcrpc::bench {

// ---- the Echo service ------------------------------------------------------------------

void BenchEchoService::echo(EchoCall& call) {
  const uint64_t frame = call.context().request().header().frameBytes;
  if (frame > largestFrame_.load(std::memory_order_relaxed))
    largestFrame_.store(frame, std::memory_order_relaxed);
  capnp::Data::Reader data = call.params().getData();
  if (byReference(data.size(), referenceFrom_)) {
    // The request's data stays where it lies until the answer is sent (the call holds it).
    auto results = call.results(echoWords(0));
    call.context().response().referenceData(results, "data", data);
  } else {
    call.results(echoWords(data.size())).setData(data);
  }
}

void BenchEchoService::ping(PingCall&) {}

void BenchEchoService::sink(SinkCall& call) { (void)call.params().getData().size(); }

void BenchEchoService::delay(DelayCall&) {
  throw ApplicationError(1, "zcrpc-bench's Echo does not implement delay");
}

void BenchEchoService::fail(FailCall& call) {
  auto params = call.params();
  throw ApplicationError(params.getCode(), params.getMessage().cStr());
}

// ---- zcrpc RPC loops -----------------------------------------------------------------

namespace {

/// An echo request's data: `data` copied in, or left to send() when `byRef`
/// (OutgoingMessage::referenceData).
void fillEcho(OutgoingMessage& msg, echo::Echo::EchoParams::Builder params,
              capnp::Data::Reader data, bool byRef) {
  if (byRef)
    msg.referenceData(params, "data", data);
  else
    params.setData(data);
}

}  // namespace

Latency rpcPingPong(echo::EchoClient& client, std::span<const std::byte> payload,
                    size_t referenceFrom, const Budget& budget, std::span<uint64_t> samples) {
  const auto data = kj::arrayPtr(reinterpret_cast<const kj::byte*>(payload.data()), payload.size());
  const bool byRef = byReference(payload.size(), referenceFrom);
  const uint32_t words = echoWords(byRef ? 0 : payload.size());
  const size_t n = payload.size();
  const kj::byte last = n ? data[n - 1] : 0;
  auto roundTrip = [&] {
    auto req = client.echoRequest(words);
    fillEcho(req.raw().message(), req.params(), data, byRef);
    auto resp = req.call();
    capnp::Data::Reader back = resp.results().getData();  // read in place
    if (back.size() != n || (n && back[n - 1] != last))
      throw BenchError(fmt::format("zcrpc echo: answer of {} bytes, sent {}", back.size(), n));
  };
  return measureLatency(roundTrip, budget, samples);
}

namespace {

/// A pass of rpcPipelined()'s loop that takes this long was stalled by other load.
constexpr auto kStall = std::chrono::milliseconds(2);

/// What the callbacks of a pipelined run share. One pointer to it is all a callback
/// captures, so its std::function stores it inline (no allocation per call).
struct PipelineState {
  size_t payloadBytes = 0;
  uint64_t completed = 0;
  uint64_t failed = 0;
  std::string firstError;
};

}  // namespace

Pipelined rpcPipelined(echo::EchoClient& client, std::span<const std::byte> payload,
                       size_t referenceFrom, uint32_t window, std::chrono::nanoseconds duration, uint64_t maxCalls) {
  Channel& channel = client.channel();
  if (channel.options().window < window)
    throw BenchError(fmt::format("pipelined window {} exceeds the channel's window {}", window,
                                 channel.options().window));
  const auto data = kj::arrayPtr(reinterpret_cast<const kj::byte*>(payload.data()), payload.size());
  const bool byRef = byReference(payload.size(), referenceFrom);
  const uint32_t words = echoWords(byRef ? 0 : payload.size());
  PipelineState state;
  state.payloadBytes = payload.size();
  PipelineState* shared = &state;
  const CallCallback onDone = [shared](CallResult&& r) {
    ++shared->completed;
    if (r.ok() && r.results<echo::Echo::EchoResults>().getData().size() == shared->payloadBytes)
      return;
    if (shared->failed++ == 0)
      shared->firstError = r.ok()
                               ? fmt::format("answer of {} bytes, sent {}",
                                             r.results<echo::Echo::EchoResults>().getData().size(),
                                             shared->payloadBytes)
                               : r.errorMessage();
  };
  const Deadline deadline = cellDeadline(duration);
  uint64_t issued = 0;
  const auto start = Clock::now();
  const auto end = start + duration;
  // Time between two passes of the loop (each runs at least one call): kStall or more means
  // a process did not run (other load preempted it); such intervals, and the calls that
  // finished in them, are left out of the stall-free rate.
  auto last = start;
  uint64_t lastCompleted = 0;
  std::chrono::nanoseconds active{0}, stalled{0};
  uint64_t activeCalls = 0;
  for (;;) {
    while (channel.outstanding() < window && issued < maxCalls) {
      auto req = client.echoRequest(words);
      fillEcho(req.raw().message(), req.params(), data, byRef);
      req.callAsync(onDone);
      ++issued;
    }
    if (issued >= maxCalls) break;
    const auto now = Clock::now();
    if (now - last >= kStall) {
      stalled += now - last;
    } else {
      active += now - last;
      activeCalls += state.completed - lastCompleted;
    }
    last = now;
    lastCompleted = state.completed;
    if (now >= end) break;
    if (channel.pollUntil(deadline) == 0 && Clock::now() >= deadline)
      throw BenchError("zcrpc pipelined: no answer before the deadline");
  }
  while (channel.outstanding() > 0) {
    if (channel.pollUntil(deadline) == 0 && Clock::now() >= deadline)
      throw BenchError("zcrpc pipelined: calls still unanswered at the deadline");
  }
  const auto stop = Clock::now();
  if (state.failed)
    throw BenchError(fmt::format("zcrpc pipelined: {} of {} calls failed; first: {}", state.failed,
                                 state.completed, state.firstError));
  if (state.completed != issued)
    throw BenchError(
        fmt::format("zcrpc pipelined: {} calls sent, {} answered", issued, state.completed));
  Pipelined p;
  p.calls = state.completed;
  p.seconds = std::chrono::duration<double>(stop - start).count();
  p.callsPerSecond = static_cast<double>(p.calls) / p.seconds;
  p.bytesPerSecond = p.callsPerSecond * static_cast<double>(payload.size());
  p.window = window;
  p.stalledFraction = std::chrono::duration<double>(stalled).count() / p.seconds;
  if (active.count() > 0)
    p.stallFreeCallsPerSecond =
        static_cast<double>(activeCalls) / std::chrono::duration<double>(active).count();
  return p;
}

// ---- raw TCP -----------------------------------------------------------------------------

namespace {

/// Longest single sleep of the raw TCP loops: deadlines are checked between.
constexpr auto kSleepSlice = std::chrono::milliseconds(100);

int sliceMs(Deadline deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, kSleepSlice.count()));
}

[[noreturn]] void stalledReading(size_t got, size_t want) {
  throw BenchError(
      fmt::format("raw tcp: recv stalled past the deadline with {} of {} bytes of a "
                  "message read (the other side neither sent nor closed)",
                  got, want));
}

[[noreturn]] void stalled(const char* what) {
  throw BenchError(fmt::format("raw tcp: {} stalled past the deadline", what));
}

/// Waits (by `mode`) until the socket is readable or writable. For kBusyPoll and the spin
/// phase the caller loops on the non-blocking call itself; this is the sleeping part.
void sleepUntilReady(int fd, short events, Deadline deadline, const char* what) {
  if (Clock::now() >= deadline) stalled(what);
  pollfd pfd{fd, events, 0};
  if (::poll(&pfd, 1, sliceMs(deadline)) < 0 && errno != EINTR) throwErrno("raw tcp: poll");
}

/// Writes all of `data`. Non-blocking sockets spin (busy-poll) or sleep in poll() when the
/// send buffer is full; blocking ones block.
void writeAll(int fd, std::span<const std::byte> data, WaitMode mode, Deadline deadline) {
  size_t done = 0;
  uint32_t spins = 0;
  while (done < data.size()) {
    ssize_t r = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) throwErrno("raw tcp: send");
    if (mode == WaitMode::kBusyPoll) {
      if ((++spins & 1023) == 0 && Clock::now() >= deadline) stalled("send");
      cpuRelax();
    } else {
      sleepUntilReady(fd, POLLOUT, deadline, "send");
    }
  }
}

/// Reads exactly `out.size()` bytes. Returns false if the peer closed before the first
/// byte and `eofOk`; throws on a close mid-message, an error or the deadline.
bool readExactly(int fd, std::span<std::byte> out, WaitMode mode, std::chrono::nanoseconds spinTime,
                 Deadline deadline, bool eofOk) {
  size_t got = 0;
  uint32_t spins = 0;
  Clock::time_point spinUntil{};
  while (got < out.size()) {
    ssize_t r = ::recv(fd, out.data() + got, out.size() - got, 0);
    if (r > 0) {
      got += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) {
      if (got == 0 && eofOk) return false;
      throw BenchError(fmt::format("raw tcp: peer closed after {} of {} bytes", got, out.size()));
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throwErrno("raw tcp: recv");
    switch (mode) {
      case WaitMode::kBlocking:  // SO_RCVTIMEO expired: check the deadline, block again
        if (Clock::now() >= deadline) stalledReading(got, out.size());
        break;
      case WaitMode::kBusyPoll:
        if ((++spins & 1023) == 0 && Clock::now() >= deadline) stalledReading(got, out.size());
        cpuRelax();
        break;
      case WaitMode::kSpinThenSleep:
        if (spinUntil == Clock::time_point{}) spinUntil = Clock::now() + spinTime;
        if ((++spins & 63) == 0 && Clock::now() >= spinUntil)
          sleepUntilReady(fd, POLLIN, deadline, "recv");
        else
          cpuRelax();
        break;
    }
  }
  return true;
}

void setOption(int fd, int level, int name, const void* value, socklen_t size, const char* what) {
  if (::setsockopt(fd, level, name, value, size) != 0) throwErrno(std::string("raw tcp: ") + what);
}

}  // namespace

TcpSocket& TcpSocket::operator=(TcpSocket&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

TcpSocket::~TcpSocket() {
  if (fd_ >= 0) ::close(fd_);
}

TcpSocket TcpSocket::listenLoopback(uint16_t& port) {
  TcpSocket s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.fd_ < 0) throwErrno("raw tcp: socket");
  int one = 1;
  setOption(s.fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one, "SO_REUSEADDR");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(s.fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throwErrno("raw tcp: bind 127.0.0.1:0");
  if (::listen(s.fd_, 1) != 0) throwErrno("raw tcp: listen");
  socklen_t len = sizeof addr;
  if (::getsockname(s.fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throwErrno("raw tcp: getsockname");
  port = ntohs(addr.sin_port);
  return s;
}

TcpSocket TcpSocket::accept(Deadline deadline) const {
  for (;;) {
    if (Clock::now() >= deadline) throw BenchError("raw tcp: nobody connected in time");
    pollfd pfd{fd_, POLLIN, 0};
    int r = ::poll(&pfd, 1, sliceMs(deadline));
    if (r < 0 && errno != EINTR) throwErrno("raw tcp: poll on the listening socket");
    if (r <= 0) continue;
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return TcpSocket(fd);
    if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) throwErrno("raw tcp: accept");
  }
}

TcpSocket TcpSocket::connectLoopback(uint16_t port) {
  TcpSocket s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.fd_ < 0) throwErrno("raw tcp: socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  int r;
  do r = ::connect(s.fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  while (r != 0 && errno == EINTR);
  if (r != 0) throwErrno(fmt::format("raw tcp: connect 127.0.0.1:{}", port));
  return s;
}

void TcpSocket::prepare(WaitMode mode) const {
  int one = 1;
  setOption(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one, "TCP_NODELAY");
  int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0) throwErrno("raw tcp: F_GETFL");
  if (mode == WaitMode::kBlocking) {
    flags &= ~O_NONBLOCK;
    // A blocking call returns EAGAIN after this, so the loops can check their deadline.
    timeval tv{0, static_cast<suseconds_t>(
                      std::chrono::duration_cast<std::chrono::microseconds>(kSleepSlice).count())};
    setOption(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv, "SO_RCVTIMEO");
    setOption(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv, "SO_SNDTIMEO");
  } else {
    flags |= O_NONBLOCK;
  }
  if (::fcntl(fd_, F_SETFL, flags) != 0) throwErrno("raw tcp: F_SETFL");
}

Latency rawTcpPingPong(const TcpSocket& socket, std::span<const std::byte> payload,
                       std::span<std::byte> buffer, WaitMode mode,
                       std::chrono::nanoseconds spinTime, const Budget& budget,
                       std::span<uint64_t> samples) {
  if (buffer.size() < payload.size()) throw BenchError("raw tcp: receive buffer too small");
  const Deadline deadline = cellDeadline(budget.total());
  const int fd = socket.fd();
  const size_t n = payload.size();
  auto in = buffer.first(n);
  auto roundTrip = [&] {
    writeAll(fd, payload, mode, deadline);
    readExactly(fd, in, mode, spinTime, deadline, /*eofOk=*/false);
    if (n && in[n - 1] != payload[n - 1]) throw BenchError("raw tcp: the echo came back different");
  };
  return measureLatency(roundTrip, budget, samples);
}

uint64_t rawTcpEcho(const TcpSocket& socket, size_t payloadBytes, std::span<std::byte> buffer,
                    WaitMode mode, std::chrono::nanoseconds spinTime, Deadline deadline) {
  if (buffer.size() < payloadBytes) throw BenchError("raw tcp echo: buffer too small");
  auto in = buffer.first(payloadBytes);
  uint64_t count = 0;
  try {
    while (readExactly(socket.fd(), in, mode, spinTime, deadline, /*eofOk=*/true)) {
      writeAll(socket.fd(), in, mode, deadline);
      ++count;
    }
  } catch (const BenchError& e) {
    throw BenchError(fmt::format("{} after echoing {} messages", e.what(), count));
  }
  return count;
}

}  // namespace zcrpc::bench
