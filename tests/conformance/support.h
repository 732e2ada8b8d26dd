// Shared pieces of the conformance suite and the TCP tests: the TransportFactory that
// every transport supplies, checksummed payloads, a hand-written RPC service, raw TCP
// peers that speak the handshake and then write whatever a test wants, and child
// processes that are always reaped. Test code only.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "bench.capnp.h"
#include "common/child.h"
#include "common/pattern.h"
#include "zcrpc/rpc.h"
#include "zcrpc/tcp.h"
#include "zcrpc/transport.h"

namespace zcrpc::conformance {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------
// Bounds: every loop in these tests stops after a number of rounds AND a time.

class Bound final {
 public:
  Bound(size_t rounds, std::chrono::milliseconds time)
      : left_(rounds), until_(Clock::now() + time) {}
  /// True while rounds and time remain; counts one round.
  bool next() {
    if (left_ == 0 || Clock::now() >= until_) return false;
    --left_;
    return true;
  }
  bool expired() const { return left_ == 0 || Clock::now() >= until_; }
  Deadline deadline() const { return until_; }

 private:
  size_t left_;
  Deadline until_;
};

inline double msSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// ---------------------------------------------------------------------------------------
// Payloads: bench::Payload{seq, checksum, data}; data is a pattern derived from seq, so a
// torn, stale or reordered byte is caught.

using test::checksum;
using test::fillPattern;
using test::mix64;
/// Words of one segment holding a Payload with `size` data bytes.
inline uint32_t payloadWords(size_t size) { return static_cast<uint32_t>(4 + (size + 7) / 8); }
/// Largest payload whose single segment is exactly `maxMessageBytes`.
inline size_t maxPayloadFor(uint64_t maxMessageBytes) { return maxMessageBytes - 32; }

void buildPayload(OutgoingMessage& msg, uint64_t seq, size_t size);
/// Starts (waiting until `deadline`), fills and sends a Payload. `hintWords` 0 = exactly
/// one segment big enough for it.
Status sendPayload(Connection& c, uint64_t seq, size_t size, Deadline deadline,
                   bool flush = true, uint32_t hintWords = 0);
/// Only tries to start (tryStartMessage).
Status trySendPayload(Connection& c, uint64_t seq, size_t size, bool flush = true);
inline constexpr size_t kAnySize = ~size_t{0};
/// Checks the message is the intact Payload `seq` of `size` bytes (kAnySize: any).
::testing::AssertionResult checkPayload(IncomingMessage& in, uint64_t seq,
                                        size_t size = kAnySize);
/// Receives one message within `timeout` and checks it is Payload `seq`.
::testing::AssertionResult receivePayload(Connection& c, uint64_t seq, size_t size = kAnySize,
                                          std::chrono::milliseconds timeout = 5s);
/// Calls flush() on `c` about every millisecond until `done()` or `timeout`. A sender that
/// keeps its tail moving this way isolates what a test checks from the tcp transport's
/// need for it (FlushedLargeMessageArrivesWithoutFurtherCalls checks a sender that idles).
void flushUntil(Connection& c, const std::function<bool()>& done,
                std::chrono::milliseconds timeout = 30s);
/// Receives until kDisconnected within `timeout`; fails on anything else.
::testing::AssertionResult receiveDisconnect(Connection& c, std::chrono::milliseconds timeout);

// ---------------------------------------------------------------------------------------
// The factory of each transport: loopback's, and one for every transport of the library's
// list (builtinTransports()) that is usable here, made from that list (allTransports()).
// A transport added to the list is in the suite without further code.

/// Two connected ends. For listener transports `client` connected and `server` was
/// accepted; for loopback they are the two ends of one pair.
struct ConnectionPair {
  std::unique_ptr<Connection> client;
  std::unique_ptr<Connection> server;
};

/// A hostile peer that has completed the transport's handshake and then writes raw bytes
/// at the connection under test.
class GarbagePeer {
 public:
  virtual ~GarbagePeer() = default;
  /// Our end, which receives what write() sends.
  virtual Connection& victim() = 0;
  virtual void write(std::span<const std::byte> bytes) = 0;
  /// The peer's end of the stream (tcp: the raw socket), e.g. for a half close.
  virtual int rawFd() const = 0;
};

struct TransportFactory {
  std::string name;
  /// The sizes the suite uses: maxMessageBytes 8 MiB, buffers big enough to carry it.
  ConnectionOptions options;
  /// Two connected ends (listener transports: listen, accept in a thread, connect).
  std::function<ConnectionPair(const ConnectionOptions&)> makePair;
  /// Empty for transports without listeners (loopback).
  std::function<std::unique_ptr<Listener>(const ConnectionOptions&)> makeListener;
  /// Connects to a listener's endpoint() (captured before the listener was handed on).
  std::function<std::unique_ptr<Connection>(const std::string&, const ConnectionOptions&)> connect;
  /// Optional: empty when the transport has no way to feed it raw bytes; then
  /// `noGarbageReason` says why the malformed-frame tests are skipped.
  std::function<std::unique_ptr<GarbagePeer>(const ConnectionOptions&)> injectGarbage;
  std::string noGarbageReason;
  /// Carries the RPC core's frames only (TransportTraits::rpcFramesOnly): the fixture runs
  /// its Rpc* cases only.
  bool rpcFramesOnly = false;
};

const TransportFactory& loopbackTransport();
/// Loopback, then every transport of builtinTransports() usable on this host (those that
/// are not are named on stderr with the reason, once).
std::vector<const TransportFactory*> allTransports();
/// One of allTransports() by name; throws Failed when it is not there.
const TransportFactory& transportNamed(std::string_view name);
const TransportFactory& shmTransport();
const TransportFactory& tcpTransport();
/// tcp with TLS 1.3 and client certificates both ways, from a test CA made at start.
const TransportFactory& tlsTransport();
/// TcpOptions for the tls transport's listener (`server`) or clients, over `o`.
TcpOptions tlsTcpOptions(const ConnectionOptions& o, bool server);

/// Listen, accept in a thread, connect: a ConnectionPair for a listener transport.
ConnectionPair pairThroughListener(const TransportFactory& t, const ConnectionOptions& o);

// ---------------------------------------------------------------------------------------
// A hand-written service (no generated stubs): interfaceIds() + dispatch().

inline constexpr uint64_t kEchoInterface = 0xc0f1'7e57'e540'0001ull;
inline constexpr uint64_t kUnknownInterface = 0xc0f1'7e57'e540'00ffull;
enum EchoMethod : uint16_t {
  kEcho = 0,   ///< Payload -> the same Payload
  kFail = 1,   ///< throws ApplicationError(kFailCode, "boom ...")
  kSleep = 2,  ///< sleeps Payload.seq milliseconds (bounded to 5 s) on the worker, then echoes
  kMake = 3,   ///< answers a Payload of Payload.seq bytes
  kCount = 4,  ///< answers Payload{seq = calls dispatched so far}
  /// As kEcho, but the answer's data references the request's bytes
  /// (Orphanage::referenceExternalData) instead of copying them.
  kEchoByReference = 5,
  /// As kEchoByReference, but deferred: completed (from the handler) with a fill that
  /// references the request's bytes, and runs later on the connection's thread.
  kDeferredEchoByReference = 6,
  /// As kMake, but from a 4-word first segment: the data grows the answer mid-build.
  kMakeGrowing = 7,
  /// As kEchoByReference and kDeferredEchoByReference, with OutgoingMessage::referenceData.
  kEchoByReferenceData = 8,
  kDeferredEchoByReferenceData = 9,
  kUnknownMethod = 77,
};
inline constexpr int32_t kFailCode = 42;

class EchoService final : public Service {
 public:
  std::span<const uint64_t> interfaceIds() const noexcept override { return ids_; }
  bool dispatch(uint64_t interfaceId, uint16_t methodId, CallContext& context) override;
  uint64_t calls() const noexcept { return calls_.load(); }

 private:
  const uint64_t ids_[1] = {kEchoInterface};
  std::atomic<uint64_t> calls_{0};
};

/// One echo call with a Payload of `size` bytes; checks the answer.
::testing::AssertionResult echoCall(Channel& channel, uint64_t seq, size_t size,
                                    std::chrono::milliseconds timeout = 5s);

// ---------------------------------------------------------------------------------------
// Raw TCP: the handshake as tcp_setup.h documents it (Hello, token bytes, Answer), so tests can
// be the hostile side.

struct TcpHello {
  uint64_t magic = 0x31'7063'7263'7a74ull;  // bytes "tzcrcp1\0" on the wire
  uint32_t version = 1;
  uint32_t tokenBytes = 0;
  uint64_t maxMessageBytes = 0;  // the largest message the client accepts
};
struct TcpAnswer {
  uint64_t magic = 0;
  uint32_t version = 0;
  uint32_t accepted = 0;
  uint64_t maxMessageBytes = 0;
  char reason[160] = {};
};
static_assert(sizeof(TcpHello) == 24);
static_assert(sizeof(TcpAnswer) == 184);

/// An owned descriptor (test side).
class OwnedFd final {
 public:
  OwnedFd() = default;
  explicit OwnedFd(int fd) : fd_(fd) {}
  OwnedFd(OwnedFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  OwnedFd& operator=(OwnedFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~OwnedFd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

/// The port of "tcp://host:port".
uint16_t portOf(const std::string& endpoint);
/// A blocking TCP socket connected to 127.0.0.1:port (or [::1] with `v6`) within
/// `timeout`; empty on failure.
OwnedFd rawConnect(uint16_t port, std::chrono::milliseconds timeout = 2s, bool v6 = false);
/// Writes / reads exactly, within `timeout`. False on error, EOF or timeout.
bool writeExactly(int fd, const void* data, size_t size, std::chrono::milliseconds timeout = 2s);
bool readExactly(int fd, void* data, size_t size, std::chrono::milliseconds timeout = 2s);
/// Sends the Hello (with `token`) on a raw socket.
bool sendHello(int fd, const std::string& token = {},
               uint64_t maxMessageBytes = uint64_t{8} << 20);
/// "127.0.0.1:port" of the socket's own end, as the listener names its peer.
std::string localAddress(int fd);
/// A valid frame of kind `kind` carrying one segment holding a null root pointer.
std::vector<std::byte> validEmptyFrame(uint64_t callId, FrameKind kind = FrameKind::kData,
                                       uint64_t interfaceId = 0, uint16_t methodId = 0);

// ---------------------------------------------------------------------------------------
// Processes and memory

using test::Child;
using test::describeExit;

/// A pipe for a child to report lines to the test.
class LinePipe final {
 public:
  LinePipe();
  ~LinePipe();
  LinePipe(const LinePipe&) = delete;
  LinePipe& operator=(const LinePipe&) = delete;
  /// Writer side (in the child).
  void put(const std::string& line);
  /// Reader side: the next line, or "" at EOF / timeout.
  std::string get(std::chrono::milliseconds timeout);
  void closeRead();
  void closeWrite();
  int readFd() const { return fds_[0]; }
  int writeFd() const { return fds_[1]; }

 private:
  int fds_[2] = {-1, -1};
  std::string buffer_;
};

/// Resident set size of this process, in bytes.
uint64_t residentBytes();
/// Peak virtual size of this process (VmPeak), in bytes.
uint64_t peakVirtualBytes();

}  // namespace zcrpc::conformance
