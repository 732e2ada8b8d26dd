// The transport factories and the helpers declared in support.h.
#include "conformance/support.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "tls/test_pki.h"
#include "transport/tls/tls.h"
#include "zcrpc/context.h"
#include "zcrpc/loopback.h"
#include "zcrpc/tcp.h"

namespace zcrpc::conformance {

// ---------------------------------------------------------------------------------------
// Payloads

void buildPayload(OutgoingMessage& msg, uint64_t seq, size_t size) {
  auto p = msg.initRoot<bench::Payload>();
  p.setSeq(seq);
  auto d = p.initData(static_cast<capnp::uint>(size));
  fillPattern(d.begin(), size, seq);
  p.setChecksum(checksum(d.begin(), size));
}

Status sendPayload(Connection& c, uint64_t seq, size_t size, Deadline deadline, bool flush,
                   uint32_t hintWords) {
  OutgoingMessage msg;
  Status s = c.startMessage(msg, hintWords ? hintWords : payloadWords(size), deadline);
  if (s != Status::kOk) return s;
  msg.header().callId = seq;
  buildPayload(msg, seq, size);
  return c.send(msg, flush);
}

Status trySendPayload(Connection& c, uint64_t seq, size_t size, bool flush) {
  OutgoingMessage msg;
  Status s = c.tryStartMessage(msg, payloadWords(size));
  if (s != Status::kOk) return s;
  msg.header().callId = seq;
  buildPayload(msg, seq, size);
  return c.send(msg, flush);
}

::testing::AssertionResult checkPayload(IncomingMessage& in, uint64_t seq, size_t size) {
  if (!in.valid()) return ::testing::AssertionFailure() << "no message";
  try {
    auto p = in.getRoot<bench::Payload>();
    auto d = p.getData();
    if (p.getSeq() != seq)
      return ::testing::AssertionFailure() << "got seq " << p.getSeq() << ", expected " << seq;
    if (size != kAnySize && d.size() != size)
      return ::testing::AssertionFailure()
             << "seq " << seq << " has " << d.size() << " bytes, expected " << size;
    if (checksum(d.begin(), d.size()) != p.getChecksum())
      return ::testing::AssertionFailure()
             << "checksum mismatch for seq " << seq << " (" << d.size() << " bytes)";
    std::vector<uint8_t> expect(d.size());
    fillPattern(expect.data(), expect.size(), seq);
    if (d.size() && std::memcmp(expect.data(), d.begin(), d.size()) != 0)
      return ::testing::AssertionFailure() << "data of seq " << seq << " is not its pattern";
  } catch (const kj::Exception& e) {
    return ::testing::AssertionFailure()
           << "seq " << seq << " unreadable: " << e.getDescription().cStr();
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult receivePayload(Connection& c, uint64_t seq, size_t size,
                                          std::chrono::milliseconds timeout) {
  IncomingMessage in;
  Status s = c.receive(in, deadlineAfter(timeout));
  if (s != Status::kOk)
    return ::testing::AssertionFailure() << "receive: " << statusName(s) << " expecting seq "
                                         << seq << " (lastError: '" << c.lastError() << "')";
  return checkPayload(in, seq, size);
}

void flushUntil(Connection& c, const std::function<bool()>& done,
                std::chrono::milliseconds timeout) {
  for (Bound b(1'000'000, timeout); b.next() && !done();) {
    if (c.flush() == Status::kDisconnected) return;
    std::this_thread::sleep_for(1ms);
  }
}

::testing::AssertionResult receiveDisconnect(Connection& c, std::chrono::milliseconds timeout) {
  auto deadline = deadlineAfter(timeout);
  for (Bound b(1'000'000, timeout + 100ms); b.next();) {
    IncomingMessage in;
    Status s = c.receive(in, deadline);
    if (s == Status::kDisconnected) return ::testing::AssertionSuccess();
    if (s == Status::kOk)
      return ::testing::AssertionFailure() << "received a message where a disconnect was due";
    if (s == Status::kTimedOut) break;
  }
  return ::testing::AssertionFailure() << "no kDisconnected within " << timeout.count() << " ms";
}

// ---------------------------------------------------------------------------------------
// Factories

ConnectionPair pairThroughListener(const TransportFactory& t, const ConnectionOptions& o) {
  auto listener = t.makeListener(o);
  const std::string endpoint = listener->endpoint();  // before the acceptor thread owns it
  ConnectionPair pair;
  std::string acceptError;
  std::thread acceptor([&] {
    try {
      pair.server = listener->accept(deadlineAfter(10s));
    } catch (const std::exception& e) {
      acceptError = e.what();
    }
  });
  try {
    pair.client = t.connect(endpoint, o);
  } catch (...) {
    acceptor.join();
    throw;
  }
  acceptor.join();
  if (!pair.server)
    throw Failed(t.name + ": accept gave no connection: " +
                 (acceptError.empty() ? "timed out" : acceptError));
  return pair;
}

namespace {

ConnectionOptions suiteOptions() {
  ConnectionOptions o;
  o.ringBytes = 256u << 10;
  o.arenaBytes = uint64_t{16} << 20;
  o.maxMessageBytes = uint64_t{8} << 20;
  o.waitMode = WaitMode::kSpinThenSleep;
  o.maxLeases = 256;
  o.connectTimeout = 5000ms;  // also bounds the ring's internal waits for arena space
  return o;
}

class TcpGarbagePeer final : public GarbagePeer {
 public:
  explicit TcpGarbagePeer(const ConnectionOptions& o) {
    TcpOptions to;
    to.connection = o;
    listener_ = listenTcp("127.0.0.1:0", to);
    raw_ = rawConnect(portOf(listener_->endpoint()));
    if (!raw_) throw Failed("garbage peer: raw connect failed");
    if (!sendHello(raw_.get(), {}, o.maxMessageBytes)) throw Failed("garbage peer: hello not sent");
    victim_ = listener_->accept(deadlineAfter(5s));
    if (!victim_) throw Failed("garbage peer: not accepted");
    TcpAnswer answer;
    if (!readExactly(raw_.get(), &answer, sizeof answer) || !answer.accepted)
      throw Failed("garbage peer: handshake not accepted");
  }
  Connection& victim() override { return *victim_; }
  void write(std::span<const std::byte> bytes) override {
    if (!writeExactly(raw_.get(), bytes.data(), bytes.size()))
      throw Failed("garbage peer: write failed");
  }
  int rawFd() const override { return raw_.get(); }

 private:
  std::unique_ptr<Listener> listener_;
  OwnedFd raw_;
  std::unique_ptr<Connection> victim_;
};

/// The certificates of the tls transport: made once, removed at exit.
const test::TestPki& testPki() {
  static const test::TestPki pki;
  return pki;
}

/// A TLS client that speaks the handshake itself and then writes whatever a test wants,
/// encrypted: the tls transport's malformed frames arrive through TLS as they would.
class TlsGarbagePeer final : public GarbagePeer {
 public:
  explicit TlsGarbagePeer(const ConnectionOptions& o)
      : context_(tls::Side::kClient, tlsTcpOptions(o, false).tls, "garbage peer") {
    listener_ = listenTcp("127.0.0.1:0", tlsTcpOptions(o, true));
    raw_ = rawConnect(portOf(listener_->endpoint()));
    if (!raw_) throw Failed("garbage peer: raw connect failed");
    ::fcntl(raw_.get(), F_SETFL, ::fcntl(raw_.get(), F_GETFL) | O_NONBLOCK);
    session_ = std::make_unique<tls::Session>(context_, raw_.get(), "127.0.0.1", "garbage peer");
    std::thread acceptor([&] { victim_ = listener_->accept(deadlineAfter(5s)); });
    try {
      session_->handshake(deadlineAfter(5s));
      TcpHello hello;
      hello.maxMessageBytes = o.maxMessageBytes;
      write(std::as_bytes(std::span(&hello, 1)));
      TcpAnswer answer;
      auto* p = reinterpret_cast<char*>(&answer);
      size_t got = 0;
      for (auto until = Clock::now() + 5s; got < sizeof answer && Clock::now() < until;) {
        ssize_t n = session_->read(p + got, sizeof answer - got);
        if (n > 0) got += static_cast<size_t>(n);
        else if (n == 0) break;
        else std::this_thread::sleep_for(1ms);
      }
      if (got != sizeof answer || !answer.accepted) throw Failed("garbage peer: handshake not accepted");
    } catch (...) {
      acceptor.join();
      throw;
    }
    acceptor.join();
    if (!victim_) throw Failed("garbage peer: not accepted");
  }
  Connection& victim() override { return *victim_; }
  void write(std::span<const std::byte> bytes) override {
    auto until = Clock::now() + 5s;
    while (!bytes.empty() && Clock::now() < until) {
      iovec v{const_cast<std::byte*>(bytes.data()), bytes.size()};
      ssize_t n = session_->writev(&v, 1);
      if (n > 0) bytes = bytes.subspan(static_cast<size_t>(n));
      else std::this_thread::sleep_for(1ms);
    }
    while (!session_->flush() && Clock::now() < until) std::this_thread::sleep_for(1ms);
    if (!bytes.empty()) throw Failed("garbage peer: write failed");
  }
  int rawFd() const override { return raw_.get(); }

 private:
  tls::Context context_;
  std::unique_ptr<Listener> listener_;
  OwnedFd raw_;
  std::unique_ptr<tls::Session> session_;  // over raw_; destroyed before it
  std::unique_ptr<Connection> victim_;
};

}  // namespace

TcpOptions tlsTcpOptions(const ConnectionOptions& o, bool server) {
  TcpOptions to;
  to.connection = o;
  to.tls.enabled = true;
  to.tls.caFile = testPki().caFile();
  const auto& id = server ? testPki().server() : testPki().client();
  to.tls.certFile = id.cert;
  to.tls.keyFile = id.key;
  if (server) to.tls.clientAuth = ClientAuth::kRequired;
  return to;
}

const TransportFactory& tlsTransport() {
  static const TransportFactory f{
      .name = "tls",
      .options = suiteOptions(),
      .makePair = [](const ConnectionOptions& o) { return pairThroughListener(tlsTransport(), o); },
      .makeListener =
          [](const ConnectionOptions& o) { return listenTcp("tcp://127.0.0.1:0", tlsTcpOptions(o, true)); },
      .connect =
          [](const std::string& endpoint, const ConnectionOptions& o) {
            return connectTcp(endpoint, tlsTcpOptions(o, false));
          },
      .injectGarbage =
          [](const ConnectionOptions& o) -> std::unique_ptr<GarbagePeer> {
            return std::make_unique<TlsGarbagePeer>(o);
          },
      .noGarbageReason = {},
  };
  return f;
}

const TransportFactory& loopbackTransport() {
  static const TransportFactory f{
      .name = "loopback",
      .options = suiteOptions(),
      .makePair =
          [](const ConnectionOptions& o) {
            auto [a, b] = makeLoopbackPair(o);
            return ConnectionPair{std::move(a), std::move(b)};
          },
      .makeListener = {},
      .connect = {},
      .injectGarbage = {},
      .noGarbageReason =
          "loopback: both ends are this process's own ring code, there is no foreign writer "
          "(ring_test covers malformed records)",
  };
  return f;
}

namespace {

/// Test-only: the transports the suite can feed raw bytes (by scheme).
std::unique_ptr<GarbagePeer> garbageFor(std::string_view scheme, const ConnectionOptions& o) {
  if (scheme == "tcp") return std::make_unique<TcpGarbagePeer>(o);
  return nullptr;
}

std::string noGarbageReasonFor(std::string_view scheme) {
  if (scheme == "tcp") return {};
  if (scheme == "shm")
    return "shm: a hostile peer scribbling on its own transmit memory is covered by "
           "tests/transport/shm_hostile_test";
  return std::string(scheme) + ": the suite has no raw writer for it";
}

/// A factory for one transport of the library's list: listens on its localAddress() and
/// connects through it with the suite's options and the default settings.
TransportFactory factoryFor(std::shared_ptr<const Transport> t) {
  const std::string scheme(t->scheme());
  TransportFactory f;
  f.name = scheme;
  f.options = suiteOptions();
  f.makePair = [scheme](const ConnectionOptions& o) { return pairThroughListener(transportNamed(scheme), o); };
  f.makeListener = [t](const ConnectionOptions& o) { return t->listen(t->localAddress(), o, Config()); };
  f.connect = [t](const std::string& endpoint, const ConnectionOptions& o) {
    return t->connect(parseEndpoint(endpoint).address, o, Config());
  };
  f.noGarbageReason = noGarbageReasonFor(scheme);
  f.rpcFramesOnly = t->traits().rpcFramesOnly;
  if (f.noGarbageReason.empty())
    f.injectGarbage = [scheme](const ConnectionOptions& o) { return garbageFor(scheme, o); };
  return f;
}

/// Every transport of builtinTransports() usable on this host, as a factory; the others
/// with the reason they are left out (printed once).
const std::vector<TransportFactory>& listedTransports() {
  static const std::vector<TransportFactory> list = [] {
    std::vector<TransportFactory> out;
    const Config defaults;
    for (const auto& t : builtinTransports()) {
      std::string why = t->unavailable(defaults);
      if (why.empty() && t->localAddress().empty()) why = "no local address to listen on";
      if (!why.empty()) {
        std::fprintf(stderr, "conformance: %s is not tested here: %s\n",
                     std::string(t->scheme()).c_str(), why.c_str());
        continue;
      }
      out.push_back(factoryFor(t));
    }
    return out;
  }();
  return list;
}

}  // namespace

std::vector<const TransportFactory*> allTransports() {
  std::vector<const TransportFactory*> out{&loopbackTransport()};
  bool tcp = false;
  for (const auto& f : listedTransports()) {
    out.push_back(&f);
    tcp = tcp || f.name == "tcp";
  }
  // tcp://...?tls=on is the tcp transport with other settings, not an entry of the list.
  if (tcp) out.push_back(&tlsTransport());
  return out;
}

const TransportFactory& transportNamed(std::string_view name) {
  for (const TransportFactory* f : allTransports())
    if (f->name == name) return *f;
  throw Failed("conformance: no transport '" + std::string(name) + "' here");
}

const TransportFactory& shmTransport() { return transportNamed("shm"); }
const TransportFactory& tcpTransport() { return transportNamed("tcp"); }

// ---------------------------------------------------------------------------------------
// EchoService

namespace {

/// An echo answer whose data is the request's, left where it lies: given to
/// OutgoingMessage::referenceData, or referenced with Orphanage::referenceExternalData.
void answerByReference(OutgoingMessage& out, uint64_t seq, uint64_t sum, capnp::Data::Reader data,
                       bool withReferenceData) {
  auto r = out.initRoot<bench::Payload>();
  r.setSeq(seq);
  r.setChecksum(sum);
  if (withReferenceData)
    out.referenceData(r, "data", data);
  else
    r.adoptData(out.getOrphanage().referenceExternalData(data));
}

}  // namespace

bool EchoService::dispatch(uint64_t interfaceId, uint16_t methodId, CallContext& context) {
  if (interfaceId != kEchoInterface) return false;
  uint64_t n = ++calls_;
  switch (methodId) {
    case kEcho: {
      auto in = context.request().getRoot<bench::Payload>();
      auto data = in.getData();
      auto& out = context.response(payloadWords(data.size()));
      auto r = out.initRoot<bench::Payload>();
      r.setSeq(in.getSeq());
      r.setChecksum(in.getChecksum());
      r.setData(data);
      return true;
    }
    case kEchoByReference:
    case kEchoByReferenceData: {
      auto in = context.request().getRoot<bench::Payload>();
      answerByReference(context.response(8), in.getSeq(), in.getChecksum(), in.getData(),
                        methodId == kEchoByReferenceData);
      return true;
    }
    case kDeferredEchoByReference:
    case kDeferredEchoByReferenceData: {
      DeferredReply reply = context.defer();
      auto in = reply.request().getRoot<bench::Payload>();
      reply.complete(
          [seq = in.getSeq(), sum = in.getChecksum(), data = in.getData(),
           withReferenceData = methodId == kDeferredEchoByReferenceData](OutgoingMessage& out) {
            answerByReference(out, seq, sum, data, withReferenceData);
          });
      return true;
    }
    case kFail:
      throw ApplicationError(kFailCode, "boom from EchoService");
    case kSleep: {
      auto in = context.request().getRoot<bench::Payload>();
      uint64_t ms = std::min<uint64_t>(in.getSeq(), 5000);
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      auto& out = context.response(8);
      out.initRoot<bench::Payload>().setSeq(in.getSeq());
      return true;
    }
    case kMake: {
      uint64_t size = context.request().getRoot<bench::Payload>().getSeq();
      auto& out = context.response(payloadWords(size));
      buildPayload(out, size, size);
      return true;
    }
    case kMakeGrowing: {
      uint64_t size = context.request().getRoot<bench::Payload>().getSeq();
      buildPayload(context.response(4), size, size);
      return true;
    }
    case kCount: {
      auto& out = context.response(8);
      out.initRoot<bench::Payload>().setSeq(n);
      return true;
    }
    default:
      return false;
  }
}

::testing::AssertionResult echoCall(Channel& channel, uint64_t seq, size_t size,
                                    std::chrono::milliseconds timeout) {
  try {
    auto req = channel.newRequest(kEchoInterface, kEcho, payloadWords(size));
    req.setTimeout(timeout);
    buildPayload(req.message(), seq, size);
    IncomingMessage response = req.call();
    return checkPayload(response, seq, size);
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "echo call " << seq << " failed: " << e.what();
  }
}

// ---------------------------------------------------------------------------------------
// Raw TCP

void OwnedFd::reset() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

uint16_t portOf(const std::string& endpoint) {
  auto colon = endpoint.rfind(':');
  if (colon == std::string::npos) return 0;
  return static_cast<uint16_t>(std::stoul(endpoint.substr(colon + 1)));
}

namespace {
bool pollFor(int fd, short events, Deadline deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() < 0) return false;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()) + 1);
    if (r < 0 && errno == EINTR) continue;
    return r > 0;
  }
}
}  // namespace

OwnedFd rawConnect(uint16_t port, std::chrono::milliseconds timeout, bool v6) {
  OwnedFd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return {};
  sockaddr_storage ss{};
  socklen_t len;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (errno != EINPROGRESS) return {};
    if (!pollFor(fd.get(), POLLOUT, deadlineAfter(timeout))) return {};
    int err = 0;
    socklen_t l = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) return {};
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool writeExactly(int fd, const void* data, size_t size, std::chrono::milliseconds timeout) {
  auto deadline = deadlineAfter(timeout);
  auto* p = static_cast<const char*>(data);
  while (size) {
    ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) return false;
    if (!pollFor(fd, POLLOUT, deadline)) return false;
  }
  return true;
}

bool readExactly(int fd, void* data, size_t size, std::chrono::milliseconds timeout) {
  auto deadline = deadlineAfter(timeout);
  auto* p = static_cast<char*>(data);
  while (size) {
    ssize_t n = ::recv(fd, p, size, MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return false;
    if (!pollFor(fd, POLLIN, deadline)) return false;
  }
  return true;
}

bool sendHello(int fd, const std::string& token, uint64_t maxMessageBytes) {
  TcpHello hello;
  hello.tokenBytes = static_cast<uint32_t>(token.size());
  hello.maxMessageBytes = maxMessageBytes;
  return writeExactly(fd, &hello, sizeof hello) &&
         (token.empty() || writeExactly(fd, token.data(), token.size()));
}

std::string localAddress(int fd) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  if (a.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&a);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(in->sin_port));
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&a);
  inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
  std::string text = "[";  // appended piecewise: GCC 12 -O3 warns (falsely) on "[" + string
  text.append(host).append("]:").append(std::to_string(ntohs(in6->sin6_port)));
  return text;
}

std::vector<std::byte> validEmptyFrame(uint64_t callId, FrameKind kind, uint64_t interfaceId,
                                       uint16_t methodId) {
  // header (32) | one segment of one word: a null root pointer (8) | table entry (8)
  std::vector<std::byte> frame(48);
  FrameHeader h{};
  h.frameBytes = 48;
  h.kind = static_cast<uint8_t>(kind);
  h.segmentCount = 1;
  h.callId = callId;
  h.interfaceId = interfaceId;
  h.methodId = methodId;
  h.tableOffset = 40;
  std::memcpy(frame.data(), &h, sizeof h);
  SegmentEntry e{1, 4};
  std::memcpy(frame.data() + 40, &e, sizeof e);
  return frame;
}

// ---------------------------------------------------------------------------------------
// Processes and memory

LinePipe::LinePipe() {
  if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
}
LinePipe::~LinePipe() {
  closeRead();
  closeWrite();
}
void LinePipe::put(const std::string& line) {
  std::string l = line + "\n";
  (void)!::write(fds_[1], l.data(), l.size());
}
std::string LinePipe::get(std::chrono::milliseconds timeout) {
  auto deadline = deadlineAfter(timeout);
  for (;;) {
    auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    if (!pollFor(fds_[0], POLLIN, deadline)) return {};
    char buf[256];
    ssize_t n = ::read(fds_[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return {};
    buffer_.append(buf, static_cast<size_t>(n));
  }
}
void LinePipe::closeRead() {
  if (fds_[0] >= 0) ::close(std::exchange(fds_[0], -1));
}
void LinePipe::closeWrite() {
  if (fds_[1] >= 0) ::close(std::exchange(fds_[1], -1));
}

uint64_t residentBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

uint64_t peakVirtualBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.starts_with("VmPeak:")) return std::stoull(line.substr(7)) * 1024;
  return 0;
}

}  // namespace zcrpc::conformance
