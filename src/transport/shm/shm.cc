// shm:// — two processes, two memfds (each side writes only its own), one unix socket.
//
// Handshake over a SOCK_SEQPACKET socket in the abstract namespace:
//   client -> Hello
//   server    checks SO_PEERCRED against the policy (nothing shared before this)
//   server -> Accept{sizes} + read-only fd of the server's transmit file | Refuse{reason}
//   client    validates the memfd (sealed, size) and its header, creates its own file
//   client -> Ready + read-only fd of the client's transmit file
//   server    validates it the same way
//   server -> Established | Refuse{reason}
// The socket then stays open: its hang-up is how each side learns the other died, and
// a consumer in kBlocking mode sleeps on it.
#include "zcrpc/shm.h"

#include <poll.h>
#include <sys/poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>

#include "os/os.h"
#include "transport/accept_gate.h"
#include "transport/handshakes.h"
#include "zcrpc/log.h"
#include "transport/ring/ring_connection.h"

namespace zcrpc {

namespace {

using ring::FileControl;

constexpr uint64_t kHandshakeMagic = 0x6b68'7372'7063'7a01ull;
constexpr uint32_t kHandshakeVersion = 1;
constexpr size_t kReaderOverrunGuard = size_t{2} * 65536 * 8 + 4096;
enum class Step : uint32_t { kHello = 1, kAccept = 2, kRefuse = 3, kReady = 4, kEstablished = 5 };

struct HandshakeMessage {
  uint64_t magic = kHandshakeMagic;
  uint32_t version = kHandshakeVersion;
  Step step;
  uint64_t ringBytes = 0;
  uint64_t arenaBytes = 0;
  uint64_t maxMessageBytes = 0;
  uint64_t fileBytes = 0;
  char reason[192] = {};
};

void sendStep(int fd, HandshakeMessage m, int passFd = -1) {
  int fds[1] = {passFd};
  os::sendWithFds(fd, std::as_bytes(std::span(&m, 1)),
                  passFd >= 0 ? std::span<const int>(fds, 1) : std::span<const int>());
}

void sendRefusal(int fd, const std::string& why) noexcept {
  try {
    HandshakeMessage m;
    m.step = Step::kRefuse;
    std::strncpy(m.reason, why.c_str(), sizeof m.reason - 1);
    sendStep(fd, m);
  } catch (...) {
  }
}

/// Refuses a client the listener is about to drop: first reads what it sent and nobody
/// will read (closing a unix socket with unread data makes the client's receive fail
/// with ECONNRESET before it sees the reason), then sends the reason.
void refuseClient(int fd, const std::string& why) noexcept {
  char discard[sizeof(HandshakeMessage)];
  for (int i = 0; i < 4; ++i)  // descriptors attached to what is discarded are closed
    if (::recv(fd, discard, sizeof discard, MSG_DONTWAIT) <= 0) break;
  sendRefusal(fd, why);
}

/// A Refuse from the peer: throws Failed with its reason.
void throwIfRefused(HandshakeMessage& m, const std::string& what) {
  if (m.step != Step::kRefuse) return;
  m.reason[sizeof m.reason - 1] = 0;
  throw Failed(what + ": refused by peer: " + m.reason);
}

HandshakeMessage receiveStep(int fd, Step expected, os::Fd* passed,
                             std::chrono::milliseconds timeout, const std::string& what) {
  HandshakeMessage m;
  os::Fd fds[2];
  size_t fdCount = 0;
  size_t n = os::receiveWithFds(fd, std::as_writable_bytes(std::span(&m, 1)), fds, fdCount,
                                timeout);
  if (n != sizeof m || m.magic != kHandshakeMagic)
    throw Failed(what + ": peer is not speaking the zcrpc shm handshake");
  if (m.version != kHandshakeVersion)
    throw Failed(what + ": handshake version " + std::to_string(m.version) + ", expected " +
                 std::to_string(kHandshakeVersion));
  throwIfRefused(m, what);
  if (m.step != expected)
    throw Failed(what + ": unexpected handshake step " + std::to_string(uint32_t(m.step)));
  if (passed) {
    if (fdCount != 1) throw Failed(what + ": handshake carried no shared memory descriptor");
    *passed = std::move(fds[0]);
  }
  return m;
}

/// Who the peer is: its process credentials, as SO_PEERCRED gave them.
PeerIdentity peerOf(const os::PeerCredentials& cred) {
  PeerIdentity peer;
  peer.transport = "shm";
  peer.address = "pid " + std::to_string(cred.pid);
  peer.hasCredentials = true;
  peer.pid = cred.pid;
  peer.uid = cred.uid;
  peer.gid = cred.gid;
  return peer;
}

/// Everything a live shm connection owns besides the ring state.
class ShmLink final : public ring::Link {
 public:
  ShmLink(os::Fd socket, os::Fd localFile, os::Mapping local, os::Mapping peer, std::string what,
          ConnectionCount::Ticket ticket = {})
      : socket_(std::move(socket)),
        localFile_(std::move(localFile)),
        local_(std::move(local)),
        peer_(std::move(peer)),
        what_(std::move(what)),
        ticket_(std::move(ticket)) {}

  bool peerGone() noexcept override { return os::peerHungUp(socket_.get()); }
  void wakePeer() noexcept override {
    char b = 'w';
    (void)::send(socket_.get(), &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);  // EAGAIN: a wake is pending
  }
  void sleepOnLink(std::chrono::milliseconds timeout) noexcept override {
    if (os::pollOne(socket_.get(), POLLIN | POLLRDHUP, timeout) & POLLIN) drainWakeups();
  }
  int waitFd() const noexcept override { return socket_.get(); }
  void drainWakeups() noexcept override {
    char buf[64];
    for (int i = 0; i < 64; ++i)  // bounded: a peer flooding us only costs it wake-ups
      if (::recv(socket_.get(), buf, sizeof buf, MSG_DONTWAIT) <= 0) break;
  }
  void shutdown() noexcept override { ::shutdown(socket_.get(), SHUT_RDWR); }
  std::string describe() const override { return what_; }

  FileControl* localControl() const { return reinterpret_cast<FileControl*>(local_.data()); }
  const FileControl* peerControl() const {
    return reinterpret_cast<const FileControl*>(peer_.data());
  }

 private:
  os::Fd socket_;
  os::Fd localFile_;
  os::Mapping local_;
  os::Mapping peer_;
  std::string what_;
  ConnectionCount::Ticket ticket_;  // the listener's count of live connections
};

struct OwnFile {
  os::Fd fd;
  os::Mapping map;
  os::Fd readOnly;
};

OwnFile createOwnFile(const std::string& what, uint64_t ringBytes, uint64_t arenaBytes,
                      uint64_t maxMessageBytes, WaitMode waitMode) {
  uint64_t fileBytes = ring::fileBytesFor(ringBytes, arenaBytes);
  OwnFile f;
  f.fd = os::createSealedMemfd("zcrpc " + what, fileBytes);
  f.map = os::Mapping(f.fd.get(), fileBytes, /*writable=*/true, what);
  ring::initFile(f.map.data(), ringBytes, arenaBytes, maxMessageBytes, fileBytes, waitMode);
  f.readOnly = os::reopenReadOnly(f.fd.get());
  os::sealFutureWrites(f.fd.get());  // nobody else gets a writable mapping from now on
  return f;
}

/// Validates the peer's file: sealed memfd of the announced size, header matching.
os::Mapping mapPeerFile(const os::Fd& fd, uint64_t fileBytes, const HandshakeMessage& announced,
                        const std::string& what) {
  std::string why = os::checkSealedMemfd(fd.get(), fileBytes);
  if (!why.empty()) throw Failed(what + ": " + why);
  // The guard covers the largest overrun a Cap'n Proto reader could make if the peer
  // changed a struct's size between its bounds check and its use (two 16-bit word counts).
  os::Mapping map(fd.get(), fileBytes, /*writable=*/false, what, kReaderOverrunGuard);
  ring::FileHeader h;
  std::memcpy(&h, map.data(), sizeof h);  // copy once, validate the copy
  why = ring::checkFileHeader(h, fileBytes);
  if (!why.empty()) throw Failed(what + ": " + why);
  if (h.ringBytes != announced.ringBytes || h.arenaBytes != announced.arenaBytes ||
      h.maxMessageBytes != announced.maxMessageBytes)
    throw Failed(what + ": shared memory header disagrees with the handshake");
  return map;
}

ring::RingFiles filesOf(const ShmLink& link, const HandshakeMessage& m) {
  ring::RingFiles files;
  files.local = link.localControl();
  files.peer = link.peerControl();
  files.ringBytes = m.ringBytes;
  files.arenaBytes = m.arenaBytes;
  files.maxMessageBytes = m.maxMessageBytes;
  return files;
}

/// Handshakes advance without blocking, one step per message that has arrived, so a
/// slow or silent client never holds up accept() or other clients: each has its own
/// deadline (connectTimeout).
class ShmListener final : public Listener {
 public:
  ShmListener(std::string name, const ShmListenOptions& options)
      : name_(std::move(name)),
        options_(options),
        gate_("shm://" + name_),
        count_(options.maxConnections ? options.maxConnections : defaultMaxConnections()) {
    ring::checkOptions(options_.connection);
    socket_ = os::listenAbstract(name_);
  }

  std::unique_ptr<Connection> accept(Deadline deadline) override {
    return acceptWithHandshakes(
        deadline, pending_, "handshake",
        [&]() -> std::unique_ptr<Connection> {
          while (os::Fd client = gate_.accept(socket_.get(), refuseClient)) {
            auto cred = os::peerCredentials(client.get());
            Pending p;
            p.what = endpoint() + " (server, peer pid " + std::to_string(cred.pid) + ")";
            if (!count_.tryTake(p.ticket)) {
              std::string why = endpoint() + " has reached its limit of " + std::to_string(count_.limit()) +
                                " connections (max_connections)";
              refuseClient(client.get(), why);
              remember("refused pid " + std::to_string(cred.pid) + ": " + why);
              continue;
            }
            p.cred = cred;
            p.fd = std::move(client);
            p.deadline = deadlineAfter(options_.connection.connectTimeout);
            pending_.push_back(std::move(p));
          }
          return nullptr;
        },
        [&](Pending& p, std::unique_ptr<Connection>& c) { return (c = advance(p)) != nullptr; },
        [&](Pending& p, const std::string& why, bool timedOut) {
          // Tell the client why, unless it was told (best effort: it may be gone).
          if (!p.refused) refuseClient(p.fd.get(), why);
          remember(timedOut ? "handshake with " + p.what + " timed out" : why);
        },
        [&](std::vector<pollfd>& fds) { return addPollFds(fds); });
  }

  int pollFd() const noexcept override { return socket_.get(); }
  Deadline addPollFds(std::vector<pollfd>& fds) const override {
    // While the gate backs off (out of descriptors), the socket is not polled: it stays
    // readable with clients waiting, and would wake the caller at once, again and again.
    bool backingOff = gate_.backingOff(Clock::now());
    Deadline next = pollListenerAndHandshakes(backingOff ? -1 : socket_.get(), pending_, fds);
    return backingOff ? std::min(next, gate_.retryAt()) : next;
  }
  std::string endpoint() const override { return "shm://" + name_; }
  std::vector<std::string> refusals() const override {
    std::lock_guard lock(mutex_);
    return {refusals_.begin(), refusals_.end()};
  }

 private:
  struct Pending {
    os::Fd fd;
    int pollFd() const noexcept { return fd.get(); }
    os::PeerCredentials cred{};
    Deadline deadline{};
    std::string what;
    bool accepted = false;  // Accept sent; waiting for Ready
    OwnFile own;
    HandshakeMessage offer;
    ConnectionCount::Ticket ticket;  // moves to the connection
    bool refused = false;            // the client was told why it is dropped
  };

  static void refuse(Pending& p, const std::string& why) {
    refuseClient(p.fd.get(), why);
    p.refused = true;
  }

  void remember(std::string why) {
    uint64_t suppressed = 0;
    if (log_.allow(Clock::now(), suppressed))
      logMessage(LogLevel::kWarning,
                 endpoint() + ": " + why +
                     (suppressed ? " (and " + std::to_string(suppressed) + " more refusals since the last message)" : ""));
    std::lock_guard lock(mutex_);
    refusals_.push_back(std::move(why));
    if (refusals_.size() > 64) refusals_.pop_front();
  }

  /// One step of a handshake if its next message is there. Throws to drop the client.
  std::unique_ptr<Connection> advance(Pending& p) {
    HandshakeMessage m;
    os::Fd fds[2];
    size_t fdCount = 0;
    auto n = os::tryReceiveWithFds(p.fd.get(), std::as_writable_bytes(std::span(&m, 1)), fds,
                                   fdCount);
    if (!n) return nullptr;
    if (*n != sizeof m || m.magic != kHandshakeMagic)
      throw Failed(p.what + ": peer is not speaking the zcrpc shm handshake");
    if (m.version != kHandshakeVersion) {
      refuse(p, "handshake version not supported");
      throw Failed(p.what + ": handshake version " + std::to_string(m.version));
    }
    const auto& co = options_.connection;
    if (!p.accepted) {
      if (m.step != Step::kHello) throw Failed(p.what + ": expected Hello");
      if (!options_.policy.admits(p.cred.uid, p.cred.gid)) {
        std::string why = "uid " + std::to_string(p.cred.uid) + " gid " +
                          std::to_string(p.cred.gid) +
                          " is not admitted by the credential policy of " + endpoint();
        refuse(p, why);
        throw Failed("refused pid " + std::to_string(p.cred.pid) + ": " + why);
      }
      p.own = createOwnFile(p.what, co.ringBytes, co.arenaBytes, co.maxMessageBytes, co.waitMode);
      p.offer.step = Step::kAccept;
      p.offer.ringBytes = co.ringBytes;
      p.offer.arenaBytes = co.arenaBytes;
      p.offer.maxMessageBytes = co.maxMessageBytes;
      p.offer.fileBytes = ring::fileBytesFor(co.ringBytes, co.arenaBytes);
      sendStep(p.fd.get(), p.offer, p.own.readOnly.get());
      p.own.readOnly.reset();
      p.accepted = true;
      return nullptr;
    }
    if (m.step != Step::kReady || fdCount != 1)
      throw Failed(p.what + ": expected Ready with the client's shared memory");
    os::Mapping peer;
    try {
      peer = mapPeerFile(fds[0], p.offer.fileBytes, p.offer, p.what);
    } catch (const std::exception& e) {
      refuse(p, e.what());
      throw;
    }
    HandshakeMessage done;
    done.step = Step::kEstablished;
    sendStep(p.fd.get(), done);
    auto link = std::make_unique<ShmLink>(std::move(p.fd), std::move(p.own.fd),
                                          std::move(p.own.map), std::move(peer), p.what,
                                          std::move(p.ticket));
    auto files = filesOf(*link, p.offer);
    auto conn = std::make_unique<ring::RingConnection>(files, std::move(link), co);
    conn->setPeer(peerOf(p.cred));
    return conn;
  }

  std::string name_;
  ShmListenOptions options_;
  os::Fd socket_;
  AcceptGate gate_;
  ConnectionCount count_;
  LogLimiter log_;
  std::vector<Pending> pending_;
  mutable std::mutex mutex_;
  std::deque<std::string> refusals_;
};

}  // namespace

std::unique_ptr<Listener> listenShm(std::string_view name, const ShmListenOptions& options) {
  return std::make_unique<ShmListener>(std::string(name), options);
}

std::unique_ptr<Connection> connectShm(std::string_view name, const ConnectionOptions& options) {
  std::string what = "shm://" + std::string(name);
  ring::checkOptions(options);
  auto timeout = options.connectTimeout;
  os::Fd sock = os::connectAbstract(name, timeout);
  HandshakeMessage hello;
  hello.step = Step::kHello;
  try {
    sendStep(sock.get(), hello);
  } catch (const Disconnected&) {
    // The listener may have refused and hung up before our Hello went out (a limit, or no
    // descriptors left): its reason waits in our socket.
    HandshakeMessage m;
    os::Fd fds[2];
    size_t count = 0;
    std::optional<size_t> n;
    try {
      n = os::tryReceiveWithFds(sock.get(), std::as_writable_bytes(std::span(&m, 1)), fds, count);
    } catch (const std::exception&) {
    }
    if (n && *n == sizeof m && m.magic == kHandshakeMagic) throwIfRefused(m, what);
    throw;
  }
  os::Fd serverFd;
  HandshakeMessage accept = receiveStep(sock.get(), Step::kAccept, &serverFd, timeout, what);
  if (accept.fileBytes != ring::fileBytesFor(accept.ringBytes, accept.arenaBytes))
    throw Failed(what + ": handshake sizes are inconsistent");
  os::Mapping peer = mapPeerFile(serverFd, accept.fileBytes, accept, what);
  serverFd.reset();
  OwnFile own = createOwnFile(what, accept.ringBytes, accept.arenaBytes,
                              accept.maxMessageBytes, options.waitMode);
  HandshakeMessage ready;
  ready.step = Step::kReady;
  sendStep(sock.get(), ready, own.readOnly.get());
  own.readOnly.reset();
  receiveStep(sock.get(), Step::kEstablished, nullptr, timeout, what);
  const auto cred = os::peerCredentials(sock.get());  // the server's, as of its listen()
  auto link = std::make_unique<ShmLink>(std::move(sock), std::move(own.fd), std::move(own.map),
                                        std::move(peer), what);
  auto files = filesOf(*link, accept);
  auto conn = std::make_unique<ring::RingConnection>(files, std::move(link), options);
  conn->setPeer(peerOf(cred));
  return conn;
}

}  // namespace zcrpc
