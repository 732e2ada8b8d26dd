// zcrpc — the transport seam: Listener and Connection, implemented by shm, loopback, ...
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <poll.h>
#include <sys/types.h>

#include "zcrpc/error.h"
#include "zcrpc/message.h"

namespace zcrpc {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
inline constexpr Deadline kNoDeadline = Deadline::max();

inline Deadline deadlineAfter(std::chrono::nanoseconds d) { return Clock::now() + d; }

/// How a thread waits for a peer.
enum class WaitMode : uint8_t {
  kBusyPoll,       ///< spin on the shared word; lowest latency, burns a core
  kSpinThenSleep,  ///< spin (see SpinPolicy), then sleep until the peer wakes it
  kBlocking,       ///< sleep at once until the peer wakes it
};

std::string_view waitModeName(WaitMode mode) noexcept;
/// Parses "busy-poll", "spin-then-sleep" or "blocking"; throws InvalidArgument naming it.
WaitMode parseWaitMode(std::string_view text);

/// How long spin-then-sleep spins before it sleeps.
enum class SpinPolicy : uint8_t {
  /// At most `spinTime`, as long as the recent gaps between messages suggest one will come
  /// within it: a waiter whose messages come back to back spins; one that gets a message
  /// every 100 us (or none) stops spinning after a few waits and sleeps at once, and spins
  /// again once gaps shorten (see docs/ring.md, "Spinning that pays for itself").
  kAdaptive,
  kFixed,  ///< `spinTime` after every message, whatever the traffic
};

std::string_view spinPolicyName(SpinPolicy policy) noexcept;
/// Parses "adaptive" or "fixed"; throws InvalidArgument naming it.
SpinPolicy parseSpinPolicy(std::string_view text);

/// Per-connection settings. Sizes are per direction.
struct ConnectionOptions {
  uint32_t ringBytes = 1u << 20;               ///< power of two, 4 KiB .. 1 GiB
  uint64_t arenaBytes = uint64_t{136} << 20;  ///< multiple of 4 KiB; holds messages too big for the ring
  uint64_t maxMessageBytes = kDefaultMaxMessageBytes;
  WaitMode waitMode = WaitMode::kSpinThenSleep;
  std::chrono::nanoseconds spinTime = std::chrono::microseconds(50);  ///< the longest spin
  SpinPolicy spinPolicy = SpinPolicy::kAdaptive;
  uint32_t maxLeases = 256;  ///< received messages held at once; power of two
  ReaderLimits readerLimits;
  std::chrono::milliseconds connectTimeout{5000};
};

/// The connection limit a listener uses when none is configured: a quarter of the
/// process's soft descriptor limit (RLIMIT_NOFILE), at least 16. Each connection takes
/// two or three descriptors, so a listener at its limit leaves at least a quarter of
/// them to the rest of the process.
uint32_t defaultMaxConnections() noexcept;

/// Who may connect to a listener (checked with SO_PEERCRED before any memory is shared).
/// Empty lists and `sameUid` false admit nobody.
struct CredentialPolicy {
  bool sameUid = true;           ///< admit the listener's own effective uid
  std::vector<uid_t> uids;       ///< further uids admitted
  std::vector<gid_t> gids;       ///< admitted primary gids
  bool admits(uid_t uid, gid_t gid) const noexcept;
};

/// Who the peer of a connection is, as far as its transport established it: filled at
/// set-up, constant afterwards. Services read it from their call context to authorise
/// calls (CallContext::peer()).
struct PeerIdentity {
  std::string transport;  ///< "shm", "tcp", "rdma", "loopback"; empty when unknown
  std::string address;    ///< tcp/rdma: the peer's host:port; shm: "pid N"
  /// shm: the peer's process credentials (SO_PEERCRED), checked against the listener's
  /// policy before anything was shared.
  bool hasCredentials = false;
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  /// tcp/rdma: the peer presented the listener's access token (a listener without one
  /// leaves this false).
  bool tokenVerified = false;
  /// TLS: the protocol and cipher suite negotiated ("TLSv1.3"; empty without TLS), and
  /// whether the kernel encrypts what is sent / decrypts what is received (kTLS).
  std::string tlsProtocol;
  std::string tlsCipher;
  bool kernelTlsSend = false;
  bool kernelTlsReceive = false;
  /// The peer's certificate, verified against the configured CAs (a server's, always, on
  /// a client; a client's on a server that asks for one): its subject (RFC 2253, e.g.
  /// "CN=billing,O=Example") and subject alternative names ("DNS:host", "IP:10.0.0.1",
  /// "URI:spiffe://...", "email:..."). Empty when the peer presented none.
  std::string certificateSubject;
  std::vector<std::string> certificateNames;

  bool hasCertificate() const noexcept { return !certificateSubject.empty(); }
  /// One line for logs and tools, e.g. "tcp 10.0.0.2:5123, TLSv1.3 TLS_AES_128_GCM_SHA256,
  /// certificate CN=client".
  std::string describe() const;
};

/// What the session over a connection tells it about the calls it serves (see
/// Connection::setCallTargets).
class CallTargets {
 public:
  /// True when a request frame for (target, interfaceId, methodId) goes to a `-> stream`
  /// method: of export `target`, or (target 0) of the bootstrap service of `interfaceId`
  /// (Service::streams). On the thread that drives the session, inside a call it makes on
  /// the connection.
  virtual bool streams(uint32_t target, uint64_t interfaceId, uint16_t methodId) const noexcept = 0;

 protected:
  ~CallTargets() = default;
};

/// A reliable, ordered, message-oriented link. Outgoing messages are built in place in
/// transport memory; received ones are leases on transport memory.
///
/// Threads: one sending thread (tryStartMessage, startMessage, send, flush) and one
/// receiving thread (tryReceive, receive) at a time; they may be different threads.
/// `close`, `lastError` and `endpoint` may be called from any thread. Leases may be
/// released from any thread.
class Connection {
 public:
  virtual ~Connection() = default;

  /// Opens `msg` with a first segment of at least `firstSegmentWords` words reserved in
  /// transport memory. kWouldBlock when there is no room now. Throws InvalidArgument when
  /// the request exceeds the maximum message size.
  virtual Status tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) = 0;
  /// As tryStartMessage, waiting for room by the connection's wait mode until `deadline`.
  virtual Status startMessage(OutgoingMessage& msg, uint32_t firstSegmentWords,
                              Deadline deadline) = 0;
  /// Publishes the message. With `flush` false the peer may not be woken until `flush()`
  /// (over shm it still sees the message if it polls; tcp and rdma may keep it until the
  /// flush): use it to batch wake-ups.
  virtual Status send(OutgoingMessage& msg, bool flush = true) = 0;
  /// As send(msg, false), for the messages of a burst the user sends back to back
  /// (SendHint::kMoreComing): the peer may not see it before `flush()`, a send with flush,
  /// a wait of this end for room, or close(), so that the burst crosses as one (over shm,
  /// in whole cache lines rather than a line fought over per message).
  virtual Status sendMore(OutgoingMessage& msg) { return send(msg, false); }
  virtual Status flush() = 0;

  /// A received message, or kWouldBlock / kDisconnected. A malformed frame closes the
  /// connection (kDisconnected) and `lastError()` says what was wrong with it.
  virtual Status tryReceive(IncomingMessage& out) = 0;
  /// As tryReceive, waiting by the connection's wait mode until `deadline` (kTimedOut).
  virtual Status receive(IncomingMessage& out, Deadline deadline) = 0;

  /// Event-loop integration, for a thread that serves many connections: the descriptor
  /// that becomes readable when, after armWait() returned true, a message arrives or the
  /// peer goes away. Receiving thread only.
  virtual int waitFd() const noexcept = 0;
  /// Asks the peer to signal waitFd() on its next message; false when a message (or a
  /// disconnect) is already there, and then no sleep is needed.
  virtual bool armWait() noexcept = 0;
  /// Ends an armed wait (whether or not it slept) and clears pending signals.
  virtual void disarmWait() noexcept = 0;
  /// Checks now whether the peer is still there (a system call); kDisconnected if not and
  /// nothing it sent before going is left to receive.
  virtual Status checkPeer() noexcept = 0;

  /// Closes both directions; the peer sees kDisconnected. Idempotent.
  virtual void close() noexcept = 0;
  /// Why the connection closed (empty while it is open, or after a clean close).
  virtual std::string lastError() const = 0;
  virtual std::string endpoint() const = 0;
  virtual uint64_t maxMessageBytes() const noexcept = 0;
  /// Received messages this connection lets its user hold at once (leases).
  virtual uint32_t maxLeases() const noexcept = 0;
  /// Who the peer is (see PeerIdentity); constant once the connection exists. Any thread.
  virtual const PeerIdentity& peer() const noexcept;
  /// The largest extension area (OutgoingMessage::setExtensions) a message sent here may
  /// carry; at most kMaxExtensionBytes.
  virtual uint32_t maxExtensionBytes() const noexcept { return kMaxExtensionBytes; }
  /// The session over this connection says who answers the calls it receives, once it
  /// exists, and null before it goes (`targets` lives until then). zcrpc's own transports
  /// need nothing of it; a connection that translates another protocol asks it what that
  /// protocol's calls do not say (capnp://: which methods stream). Never on the call path.
  virtual void setCallTargets(const CallTargets* targets) noexcept { (void)targets; }
};

/// Accepts connections on one endpoint. Threads: one at a time.
class Listener {
 public:
  virtual ~Listener() = default;
  /// The next connection, or nullptr at `deadline`. A client refused by policy or failing
  /// the handshake is logged and skipped; it never ends the listener.
  virtual std::unique_ptr<Connection> accept(Deadline deadline) = 0;
  /// File descriptor readable when a client is waiting (for the caller's epoll).
  virtual int pollFd() const noexcept = 0;
  /// For an event loop that calls accept(now) when woken: appends what to poll for
  /// readability (pollFd() and any handshake in progress) and returns when accept() must
  /// run again even if nothing becomes readable (a handshake's deadline), or kNoDeadline.
  virtual Deadline addPollFds(std::vector<pollfd>& fds) const {
    fds.push_back({pollFd(), POLLIN, 0});
    return kNoDeadline;
  }
  virtual std::string endpoint() const = 0;
  /// Refusals and failed handshakes so far, each with its reason (most recent last).
  virtual std::vector<std::string> refusals() const = 0;
};

}  // namespace zcrpc
