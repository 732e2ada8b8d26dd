// tcp:// — the same frames over a byte stream.
//
// Sending: messages are built in a per-connection send buffer (large segments in chunks
// of their own), frames queue as iovecs, and one writev() sends a batch: small frames are
// coalesced, large segments go from where they were built without a staging copy, and
// large external data (referenceExternalData) is written from the caller's memory, as is
// large data given to OutgoingMessage::referenceData, gathered into its field's segment.
// Receiving: one non-blocking read fills a per-connection receive ring with as many frames
// as have arrived; each is validated and handed out in place as a lease. A frame that
// would not fit before the end of the ring is moved to its start (only its first bytes
// have arrived by then); a frame larger than a quarter of the ring is read straight into
// a buffer of its own. The frame size limit is checked from the header, before anything
// is allocated for the frame.
#include "zcrpc/tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>

#include "os/os.h"
#include "os/spin.h"
#include "transport/handshakes.h"
#include "transport/lease_queue.h"
#include "transport/ring/layout.h"

namespace zcrpc {

namespace {

constexpr uint64_t kHelloMagic = 0x31'7063'7263'7a74ull;  // bytes "tzcrcp1\0" on the wire
constexpr uint32_t kHelloVersion = 1;
constexpr size_t kMaxToken = 1024;
constexpr size_t kMaxIov = 256;
constexpr uint32_t kTableReserveEntries = 4;
/// External data from this size on is written from the caller's memory at send(): copying
/// it would cost more than the write that coalescing could have saved.
constexpr uint64_t kWriteExternalBytes = 16 << 10;
/// A segment written from the caller's memory starts this many bytes into the write, modulo
/// this, as its address does (see TcpConnection::send()).
constexpr uint64_t kCopyAlignment = 64;
/// The padding that sends takes from (never written to).
constexpr std::array<std::byte, kCopyAlignment> kPadding{};
/// Send-buffer room kept after a frame's segments for its table and trace context.
constexpr uint64_t kTableRoom = kMaxSegments * sizeof(SegmentEntry) + sizeof(TraceContext);

struct HostPort {
  std::string host;
  std::string port;
};

HostPort splitHostPort(std::string_view text) {
  std::string_view s = text;
  if (s.starts_with("tcp://")) s.remove_prefix(6);
  std::string_view host, port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':')
      throw InvalidArgument("tcp endpoint '" + std::string(text) + "' is not [ipv6]:port");
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos)
      throw InvalidArgument("tcp endpoint '" + std::string(text) + "' has no :port");
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
      std::stoul(std::string(port)) > 65535)
    throw InvalidArgument("tcp endpoint '" + std::string(text) + "' has a bad port '" +
                          std::string(port) + "'");
  return HostPort{host.empty() ? std::string("0.0.0.0") : std::string(host), std::string(port)};
}

std::string addressText(const sockaddr_storage& a) {
  char host[INET6_ADDRSTRLEN] = "?";
  char text[INET6_ADDRSTRLEN + 16];
  if (a.ss_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    std::snprintf(text, sizeof text, "%s:%u", host, ntohs(in->sin_port));
  } else {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    std::snprintf(text, sizeof text, "[%s]:%u", host, ntohs(in6->sin6_port));
  }
  return text;
}

std::string peerAddress(int fd) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  return addressText(a);
}

struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() {
    if (list) ::freeaddrinfo(list);
  }
};

void resolve(const HostPort& hp, bool passive, AddrInfo& out, const std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = (passive ? AI_PASSIVE : 0) | AI_NUMERICSERV;
  int r = ::getaddrinfo(hp.host.c_str(), hp.port.c_str(), &hints, &out.list);
  if (r != 0) throw Failed("resolve " + what + ": " + ::gai_strerror(r));
}

void setNoDelay(int fd) {
  int one = 1;
  ZCRPC_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), "TCP_NODELAY");
}

/// Keepalive probes and TCP_USER_TIMEOUT (TcpOptions::deadPeerTimeout): the first probe
/// after half the timeout of silence, then one every sixth of it (whole seconds, 1 to
/// 32767); the kernel ends the connection once a probe is out and nothing has come back for
/// the whole timeout, or sent data has waited that long for an acknowledgement.
void setDeadPeerTimeout(int fd, std::chrono::milliseconds timeout) {
  if (timeout.count() == 0) return;
  int one = 1;
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(timeout).count();
  constexpr int64_t kMaxKeepSeconds = 32767;  // the kernel's limit for both
  int idle = static_cast<int>(std::clamp<int64_t>(secs / 2, 1, kMaxKeepSeconds));
  int interval = static_cast<int>(std::clamp<int64_t>(secs / 6, 1, kMaxKeepSeconds));
  unsigned user = static_cast<unsigned>(timeout.count());
  ZCRPC_SYSCALL(::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one), "SO_KEEPALIVE");
  ZCRPC_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle), "TCP_KEEPIDLE");
  ZCRPC_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval),
                "TCP_KEEPINTVL");
  ZCRPC_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user, sizeof user),
                "TCP_USER_TIMEOUT");
}

void checkDeadPeerTimeout(std::chrono::milliseconds timeout) {
  if (timeout.count() != 0 && (timeout < std::chrono::seconds(1) || timeout > std::chrono::hours(24)))
    throw InvalidArgument("tcp dead-peer timeout of " + std::to_string(timeout.count()) +
                          " ms must be 0 (off) or between 1 s and 24 h");
}

bool tokensEqual(std::string_view a, std::string_view b) noexcept {
  // Constant time in the content (the length of a shared secret is not secret here).
  volatile unsigned char diff = a.size() != b.size();
  size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | (x ^ y);
  }
  return diff == 0;
}

/// Blocking-with-deadline exact read/write for the handshake.
void writeAll(int fd, const void* data, size_t size, Deadline deadline, const std::string& what) {
  auto* p = static_cast<const char*>(data);
  while (size) {
    ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      p += n, size -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN) throw Disconnected(os::errnoText(what + ": handshake send", errno));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) throw Failed(what + ": handshake timed out");
    os::pollOne(fd, POLLOUT, left);
  }
}

void readAll(int fd, void* data, size_t size, Deadline deadline, const std::string& what) {
  auto* p = static_cast<char*>(data);
  while (size) {
    ssize_t n = ::recv(fd, p, size, MSG_DONTWAIT);
    if (n > 0) {
      p += n, size -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) throw Disconnected(what + ": peer closed during the handshake");
    if (errno == EINTR) continue;
    if (errno != EAGAIN) throw Disconnected(os::errnoText(what + ": handshake receive", errno));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) throw Failed(what + ": handshake timed out");
    os::pollOne(fd, POLLIN, left);
  }
}

struct Hello {
  uint64_t magic = kHelloMagic;
  uint32_t version = kHelloVersion;
  uint32_t tokenBytes = 0;
  uint64_t maxMessageBytes = 0;  ///< the largest message the client accepts
};
struct Answer {
  uint64_t magic = kHelloMagic;
  uint32_t version = kHelloVersion;
  uint32_t accepted = 0;
  uint64_t maxMessageBytes = 0;
  char reason[160] = {};
};

void checkTcpOptions(const ConnectionOptions& o) {
  if (!ring::isPowerOfTwo(o.ringBytes) || o.ringBytes < 4096 || o.ringBytes > (1u << 30))
    throw InvalidArgument("tcp buffer size " + std::to_string(o.ringBytes) +
                          " must be a power of two between 4096 and 1073741824 bytes");
  if (o.maxMessageBytes < 64 || o.maxMessageBytes > (uint64_t{1} << 32) - 4096)
    throw InvalidArgument("maximum message size " + std::to_string(o.maxMessageBytes) +
                          " must be between 64 bytes and 4 GiB");
  if (!ring::isPowerOfTwo(o.maxLeases) || o.maxLeases > (1u << 20))
    throw InvalidArgument("maxLeases " + std::to_string(o.maxLeases) +
                          " must be a power of two up to 1048576");
}

// ------------------------------------------------------------------------------------

class TcpConnection final : public Connection, private SegmentSource, private LeaseOwner {
 public:
  TcpConnection(os::Fd fd, std::string what, const ConnectionOptions& options,
                uint64_t maxMessageBytes, std::chrono::milliseconds deadPeerTimeout)
      : fd_(std::move(fd)),
        what_(std::move(what)),
        options_(options),
        deadPeerTimeout_(deadPeerTimeout),
        maxMessage_(maxMessageBytes),
        // Segments, header, table, trace context, and the padding before blobs.
        maxFrame_(maxMessageBytes + kFrameHeaderBytes + kMaxSegments * sizeof(SegmentEntry) +
                  sizeof(TraceContext) + kMaxSegments * (kCopyAlignment - 8)),
        ringBytes_(options.ringBytes),
        ringMask_(options.ringBytes - 1),
        ring_(static_cast<std::byte*>(::operator new(options.ringBytes, std::align_val_t(64)))),
        sendBytes_(options.ringBytes),
        send_(static_cast<std::byte*>(::operator new(options.ringBytes, std::align_val_t(64)))),
        leases_(options.maxLeases) {
    pending_.reserve(kMaxIov);
    limits_.maxMessageBytes = maxMessage_;
    // The socket joins it at the first armWait(): a socket in an epoll set costs every
    // arriving segment a wake-up callback in the kernel, which a busy-polling
    // connection, never sleeping, would pay on every message for nothing.
    epoll_ = os::Fd(ZCRPC_SYSCALL(::epoll_create1(EPOLL_CLOEXEC), "epoll_create1 for " + what_));
  }

  ~TcpConnection() override {
    if (open_.msg) open_.msg->markSent();
    close();
    leases_.dropAll();
    ::operator delete(ring_, std::align_val_t(64));
    ::operator delete(send_, std::align_val_t(64));
  }

  // ---- sending ----

  Status tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) override {
    std::lock_guard lock(sendLock_);
    if (open_.msg) throw InvalidArgument("a message is already open on " + what_);
    if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
    if (firstSegmentWords == 0) firstSegmentWords = 1;
    uint64_t firstBytes = uint64_t{firstSegmentWords} * 8;
    if (firstBytes > maxMessage_)
      throw InvalidArgument("message of " + std::to_string(firstBytes) +
                            " bytes exceeds the maximum message size " +
                            std::to_string(maxMessage_) + " of " + what_);
    if (pendingBytes_.load(std::memory_order_relaxed) > sendBytes_) {
      // Queued large messages count too: the peer is not reading, so stop here.
      writePending();
      if (pendingBytes_.load(std::memory_order_relaxed) > sendBytes_)
        return closed_.load() ? Status::kDisconnected : Status::kWouldBlock;
    }
    bool inBuffer = kFrameHeaderBytes + firstBytes + kTableReserveEntries * 8 <= sendBytes_ / 4;
    uint64_t need = kFrameHeaderBytes + kTableReserveEntries * 8 + (inBuffer ? firstBytes : 0);
    if (!roomInSendBuffer(need)) return closed_.load() ? Status::kDisconnected : Status::kWouldBlock;
    std::byte* base = send_ + used_;
    auto* header = reinterpret_cast<FrameHeader*>(base);
    std::memset(header, 0, kFrameHeaderBytes);
    header->kind = static_cast<uint8_t>(FrameKind::kData);
    capnp::word* first;
    if (inBuffer) {
      first = reinterpret_cast<capnp::word*>(base + kFrameHeaderBytes);
      std::memset(first, 0, firstBytes);
    } else {
      first = newChunk(firstSegmentWords);
    }
    open_ = OpenFrame{};
    open_.msg = &msg;
    open_.start = used_;
    open_.end = used_ + kFrameHeaderBytes + (inBuffer ? firstBytes : 0);
    open_.allocated = firstBytes;
    msg.open(*this, *header, kj::ArrayPtr<capnp::word>(first, firstSegmentWords));
    return Status::kOk;
  }

  Status startMessage(OutgoingMessage& msg, uint32_t words, Deadline deadline) override {
    Status result = tryStartMessage(msg, words);
    if (result != Status::kWouldBlock) return result;
    Status w = waitFor([&] {
      result = tryStartMessage(msg, words);
      return result != Status::kWouldBlock;
    }, deadline, /*forWrite=*/true);
    return w == Status::kOk ? result : w;
  }

  Status send(OutgoingMessage& msg, bool flushNow) override {
    // open_ is written only by this, the sending thread (under the lock, which the
    // receiving thread takes to read it): reading it here needs no lock.
    if (open_.msg != &msg)
      throw InvalidArgument("send: message was not started on " + what_ + " or already sent");
    if (closed_.load(std::memory_order_relaxed)) {
      msg.markSent();
      abandon();
      return Status::kDisconnected;
    }
    auto segments = msg.segmentsForSend();  // may allocate through allocateMore(), which locks
    auto refs = msg.references();
    std::unique_lock lock(sendLock_);
    size_t n = segments.size();
    if (n > kMaxSegments)
      throw InvalidArgument("message on " + what_ + " has more than " +
                            std::to_string(kMaxSegments) + " segments");
    // Data given to referenceData() goes at the end of the segment that holds its field,
    // unless the field was set again since (its placeholder is gone): that value wins.
    constexpr uint8_t kReplaced = 0xff;
    std::array<uint8_t, OutgoingMessage::kMaxReferences> refSegment{};
    uint64_t referenced = 0;
    for (size_t r = 0; r < refs.size(); ++r) {
      const int s = OutgoingMessage::gatherSegment(refs[r], segments);
      refSegment[r] = s < 0 ? kReplaced : static_cast<uint8_t>(s);
      if (s >= 0) referenced += (refs[r].bytes.size() + 7) & ~uint64_t{7};
    }
    // The table goes right after the last segment when that one lies in the buffer (the
    // unused end of its reservation is free now), so a small frame is one contiguous
    // range; otherwise after the open region (room was reserved either way).
    uint64_t tableAt = open_.end;
    if (n) {
      auto* lastEnd = reinterpret_cast<const std::byte*>(segments[n - 1].end());
      if (lastEnd > send_ + open_.start && lastEnd <= send_ + open_.end)
        tableAt = static_cast<uint64_t>(lastEnd - send_);
    }
    if (tableAt + n * sizeof(SegmentEntry) + sizeof(TraceContext) > sendBytes_)
      throw Overloaded("no send buffer room for the segment table on " + what_);
    auto* table = reinterpret_cast<SegmentEntry*>(send_ + tableAt);
    uint64_t payload = referenced;
    for (size_t i = 0; i < n; ++i) payload += uint64_t{segments[i].size()} * 8;
    if (payload > maxMessage_) {
      lock.unlock();
      throw InvalidArgument("message exceeds the maximum message size " +
                            std::to_string(maxMessage_) + " bytes of " + what_);
    }
    uint64_t slack = maxMessage_ - payload;  // for the padding before referenced data
    uint64_t gathered = 0;
    uint64_t frameBytes = kFrameHeaderBytes;
    pushIov(send_ + open_.start, kFrameHeaderBytes);
    size_t external = 0;  // ranges sent from the caller's memory: external_[0, external)
    for (size_t i = 0; i < n; ++i) {
      const capnp::word* seg = segments[i].begin();
      uint64_t bytes = uint64_t{segments[i].size()} * 8;
      bool byReference = false;
      if (bytes && !ownsMemory(seg)) {
        // External data (Orphanage::referenceExternalData). The caller may reuse its buffer
        // once send() returns. A large one (or any, when the frame is written now anyway)
        // goes to the kernel straight from there and only what the kernel did not take is
        // copied before returning; a small one is copied now and coalesced with others.
        if (flushNow || bytes >= kWriteExternalBytes) {
          byReference = true;
          external_[external++] = {reinterpret_cast<const std::byte*>(seg), bytes};
          if (bytes >= kWriteExternalBytes) {
            const uint64_t pad = alignmentPadding(seg);
            pushIov(kPadding.data(), pad, /*joinable=*/false);
            frameBytes += pad;
          }
        } else {
          capnp::word* copy = newChunk(static_cast<uint32_t>(segments[i].size()));
          std::memcpy(copy, seg, bytes);
          seg = copy;
        }
      }
      const uint64_t segmentAt = frameBytes;
      pushIov(seg, bytes, /*joinable=*/!byReference);
      frameBytes += bytes;
      for (size_t r = 0; r < refs.size(); ++r) {
        if (refSegment[r] != i) continue;
        const kj::byte* data = refs[r].bytes.begin();
        const uint64_t size = refs[r].bytes.size();
        uint64_t pad = alignmentPadding(data);
        if (pad > slack) pad = 0;  // inside the segment, so it counts as payload
        slack -= pad;
        pushIov(kPadding.data(), pad, /*joinable=*/false);
        frameBytes += pad;
        // The field points at the data right here, in its segment.
        OutgoingMessage::pointAtGathered(refs[r], segments[i].begin(),
                                         (frameBytes - segmentAt) / 8);
        external_[external++] = {reinterpret_cast<const std::byte*>(data), size};
        pushIov(data, size, /*joinable=*/false);
        const uint64_t tail = (8 - size % 8) % 8;
        pushIov(kPadding.data(), tail, /*joinable=*/false);
        frameBytes += size + tail;
        gathered += pad + size + tail;
      }
      table[i] = {static_cast<uint32_t>((frameBytes - segmentAt) / 8),
                  static_cast<uint32_t>(segmentAt / 8)};
    }
    const bool traced = msg.trace().valid();
    const uint64_t tail = n * sizeof(SegmentEntry) + (traced ? sizeof(TraceContext) : 0);
    if (traced) std::memcpy(send_ + tableAt + n * sizeof(SegmentEntry), &msg.trace(), sizeof(TraceContext));
    pushIov(table, tail);
    frameBytes += tail;
    FrameHeader& h = msg.header();
    h.frameBytes = static_cast<uint32_t>(frameBytes);
    h.segmentCount = static_cast<uint16_t>(n);
    h.tableOffset = static_cast<uint32_t>(frameBytes - tail);
    h.flags = traced ? kFlagTraced : 0;
    h.reserved = 0;
    used_ = tableAt + tail;
    open_.msg = nullptr;
    msg.setGatheredBytes(gathered);
    msg.markSent();
    if (flushNow || external || pending_.size() > kMaxIov - kMaxSegments - 2) writePending();
    if (external && pendingBytes_.load(std::memory_order_relaxed)) copyUnsentExternal(external);
    return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
  }

  Status flush() override {
    std::lock_guard lock(sendLock_);
    if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
    writePending();
    return closed_.load(std::memory_order_relaxed) ? Status::kDisconnected : Status::kOk;
  }

  // ---- receiving ----

  Status tryReceive(IncomingMessage& out) override {
    if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
    if (leases_.full()) {
      leases_.reclaim([&](uint64_t end) { head_.store(end, std::memory_order_release); });
      if (leases_.full()) {
        flushFromReceiver();
        return Status::kWouldBlock;
      }
    }
    Status s = tryFrame(out);
    if (s != Status::kWouldBlock) return s;
    // Nothing buffered to hand out: what we queued goes out before we look for more (a
    // caller may be waiting for the answer to it). While frames are buffered, queued output
    // stays put and coalesces: a server's answers to a batch of requests that arrived
    // together leave in one write when its pump flushes, not one write per request.
    flushFromReceiver();
    for (int reads = 0; reads < 4 && readMore(); ++reads) {
      s = tryFrame(out);
      if (s != Status::kWouldBlock) return s;
    }
    if (eof_) return drainedOrDisconnected(out);
    return Status::kWouldBlock;
  }

  Status receive(IncomingMessage& out, Deadline deadline) override {
    Status result = tryReceive(out);
    if (result != Status::kWouldBlock) return result;
    Status w = waitFor([&] {
      result = tryReceive(out);
      return result != Status::kWouldBlock;
    }, deadline, /*forWrite=*/false);
    return w == Status::kOk ? result : w;
  }

  /// An epoll descriptor watching the socket: readable for incoming data or hang-up and,
  /// while frames are queued unsent, for writability, so an event loop sleeping on it
  /// also gets queued output out.
  int waitFd() const noexcept override { return epoll_.get(); }
  bool armWait() noexcept override {
    if (closed_.load() || frameBuffered()) return false;
    flushFromReceiver();
    uint32_t want = EPOLLIN | EPOLLRDHUP | (pendingBytes_.load() ? EPOLLOUT : 0u);
    if (want != epollEvents_) {
      epoll_event ev{};
      ev.events = want;
      // ADD reports a socket already readable at once, so nothing arriving before it is missed.
      int op = epollEvents_ ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
      if (::epoll_ctl(epoll_.get(), op, fd_.get(), &ev) == 0) {
        epollEvents_ = want;
      } else if (op == EPOLL_CTL_ADD) {
        fault(os::errnoText("cannot watch " + what_ + " (epoll_ctl)", errno));
        return false;  // closed: the caller's next receive reports it
      }
    }
    return true;
  }
  void disarmWait() noexcept override {}
  Status checkPeer() noexcept override {
    if (closed_.load() || eof_) return Status::kDisconnected;
    short ev = os::pollOne(fd_.get(), POLLIN | POLLRDHUP, std::chrono::milliseconds(0));
    if ((ev & (POLLHUP | POLLERR | POLLNVAL)) && !(ev & POLLIN)) {
      fault("peer " + what_ + " hung up");
      return Status::kDisconnected;
    }
    return Status::kOk;  // a half-closed peer's last frames are still read first
  }

  /// Sends what is queued (briefly, up to 200 ms if the peer is slow), then closes.
  void close() noexcept override {
    if (closed_.load()) return;
    if (sendLock_.try_lock()) {
      auto until = Clock::now() + std::chrono::milliseconds(200);
      writePending();
      while (pendingBytes_.load() && !closed_.load() && Clock::now() < until) {
        os::pollOne(fd_.get(), POLLOUT, std::chrono::milliseconds(20));
        writePending();
      }
      sendLock_.unlock();
    }
    closeNow();
  }

  void closeNow() noexcept {
    if (closed_.exchange(true)) return;
    ::shutdown(fd_.get(), SHUT_RDWR);
  }
  std::string lastError() const override {
    std::lock_guard lock(errorMutex_);
    return error_;
  }
  std::string endpoint() const override { return what_; }
  uint64_t maxMessageBytes() const noexcept override { return maxMessage_; }
  uint32_t maxLeases() const noexcept override { return options_.maxLeases; }

 private:
  struct OpenFrame {
    OutgoingMessage* msg = nullptr;
    uint64_t start = 0;  // header offset in the send buffer
    uint64_t end = 0;    // end of the last in-buffer segment
    uint64_t allocated = 0;
  };

  // SegmentSource
  kj::ArrayPtr<capnp::word> allocateMore(uint32_t minWords) override {
    std::lock_guard lock(sendLock_);
    uint64_t remaining = maxMessage_ - open_.allocated;
    uint64_t minBytes = uint64_t{minWords} * 8;
    if (minBytes > remaining)
      throw InvalidArgument("message exceeds the maximum message size " +
                            std::to_string(maxMessage_) + " bytes of " + what_);
    uint64_t want = std::min(std::max(minBytes, open_.allocated), remaining);
    capnp::word* seg;
    uint64_t room = sendBytes_ - open_.end;
    uint64_t reserve = kTableRoom;
    if (want + reserve <= room && want <= sendBytes_ / 4) {
      auto* p = send_ + open_.end;
      std::memset(p, 0, want);
      seg = reinterpret_cast<capnp::word*>(p);
      open_.end += want;
    } else if (minBytes + reserve <= room && minBytes <= sendBytes_ / 4) {
      want = minBytes;
      auto* p = send_ + open_.end;
      std::memset(p, 0, want);
      seg = reinterpret_cast<capnp::word*>(p);
      open_.end += want;
    } else {
      seg = newChunk(static_cast<uint32_t>(want / 8));
    }
    open_.allocated += want;
    return kj::ArrayPtr<capnp::word>(seg, want / 8);
  }

  uint64_t gathersFromBytes() const noexcept override { return kWriteExternalBytes; }

  void abandon() noexcept override {
    std::lock_guard lock(sendLock_);
    open_.msg = nullptr;
    // Chunks made for this message and not queued: drop them.
    while (!chunks_.empty() && chunks_.back().queuedAt == kNotQueued) chunks_.pop_back();
  }

  // LeaseOwner
  const ParsedFrame& leasedFrame(uint32_t slot) const noexcept override {
    return leases_.at(slot).frame;
  }
  const ReaderLimits& readerLimits() const noexcept override { return options_.readerLimits; }
  void releaseLease(uint32_t slot) noexcept override {
    leases_.release(slot, [&](uint64_t end) { head_.store(end, std::memory_order_release); });
  }

  // ---- send buffer ----

  static constexpr uint64_t kNotQueued = ~uint64_t{0};
  struct Chunk {
    std::unique_ptr<capnp::word[]> words;
    uint64_t queuedAt = kNotQueued;  // pendingBytes_ total when queued
  };

  capnp::word* newChunk(uint32_t words) {
    chunks_.push_back(Chunk{std::unique_ptr<capnp::word[]>(new capnp::word[words]()), kNotQueued});
    return chunks_.back().words.get();
  }

  bool roomInSendBuffer(uint64_t need) {
    if (used_ + need + kTableRoom <= sendBytes_) return true;
    writePending();
    return used_ + need + kTableRoom <= sendBytes_;
  }

  /// Queues bytes for writing. A range that merely lies next to the previous one in memory
  /// is joined to it unless either of them is the caller's external data, whose iovecs
  /// copyUnsentExternal() must find on their own.
  void pushIov(const void* p, uint64_t bytes, bool joinable = true) {
    if (!bytes) return;
    auto* b = const_cast<void*>(p);
    if (!pending_.empty() && joinable && lastJoinable_) {
      iovec& last = pending_.back();
      if (static_cast<std::byte*>(last.iov_base) + last.iov_len == b) {
        last.iov_len += bytes;
        pendingBytes_ += bytes;
        return;
      }
    }
    lastJoinable_ = joinable;
    pending_.push_back({b, bytes});
    pendingBytes_ += bytes;
    for (auto& c : chunks_)
      if (c.queuedAt == kNotQueued && reinterpret_cast<void*>(c.words.get()) == b)
        c.queuedAt = sentTotal_ + pendingBytes_;
  }

  /// Padding (whole words) before data written from the caller's memory. The kernel copies
  /// it into its own pages, which a write fills from their start: that copy runs fastest
  /// when the source lies at the same offset within a cache line as the destination (64 KiB
  /// round trip: 0.5-9 us less, depending on where the host runs the CPUs). The data lands
  /// after what is queued, which a partial write may have left at any byte count: the
  /// padding stays whole words, as frames are, and is then only as good as it can be.
  uint64_t alignmentPadding(const void* data) const noexcept {
    const uint64_t at = pendingBytes_.load(std::memory_order_relaxed);
    return (reinterpret_cast<uintptr_t>(data) - at) & (kCopyAlignment - 1) & ~uint64_t{7};
  }

  bool ownsMemory(const capnp::word* p) const noexcept {
    auto* b = reinterpret_cast<const std::byte*>(p);
    if (b >= send_ && b < send_ + sendBytes_) return true;
    for (auto& c : chunks_)
      if (c.words.get() == p) return true;
    return false;
  }

  /// After a write: what is still queued of the caller's external data (the kernel took
  /// only part of it) is copied into chunks, so nothing reads the caller's memory once
  /// send() returns.
  void copyUnsentExternal(size_t external) {
    uint64_t at = sentTotal_;
    for (iovec& v : pending_) {
      at += v.iov_len;
      auto* b = static_cast<const std::byte*>(v.iov_base);
      for (size_t e = 0; e < external; ++e) {
        const std::byte* begin = external_[e].begin;
        if (b < begin || b >= begin + external_[e].bytes) continue;
        auto* copy = newChunk(static_cast<uint32_t>((v.iov_len + 7) / 8));
        std::memcpy(copy, b, v.iov_len);
        v.iov_base = copy;
        chunks_.back().queuedAt = at;
        break;
      }
    }
  }

  void writePending() {
    while (!pending_.empty()) {
      msghdr mh{};
      mh.msg_iov = pending_.data();
      mh.msg_iovlen = std::min<size_t>(pending_.size(), IOV_MAX);
      // sendmsg, not writev: MSG_NOSIGNAL, so a reset peer is an error, not a SIGPIPE.
      // One range (the common small frame): send(), with no iovec array to import.
      ssize_t n = pending_.size() == 1
                      ? ::send(fd_.get(), pending_[0].iov_base, pending_[0].iov_len,
                               MSG_NOSIGNAL | MSG_DONTWAIT)
                      : ::sendmsg(fd_.get(), &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return;
        fault(ioError("write to", errno));
        return;
      }
      size_t left = static_cast<size_t>(n);
      sentTotal_ += left;
      pendingBytes_ -= left;
      size_t i = 0;
      while (i < pending_.size() && left >= pending_[i].iov_len) left -= pending_[i++].iov_len;
      if (i < pending_.size() && left) {
        pending_[i].iov_base = static_cast<std::byte*>(pending_[i].iov_base) + left;
        pending_[i].iov_len -= left;
      }
      pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(i));
    }
    // Everything is in the kernel: the buffer and the chunks are free again.
    if (!open_.msg) used_ = 0;
    while (!chunks_.empty() && chunks_.front().queuedAt != kNotQueued &&
           chunks_.front().queuedAt <= sentTotal_)
      chunks_.pop_front();
  }

  // ---- receive ring ----

  /// Receiving thread: pushes out queued frames unless the sending thread is at it.
  void flushFromReceiver() {
    if (!pendingBytes_.load(std::memory_order_relaxed) || !sendLock_.try_lock()) return;
    writePending();
    sendLock_.unlock();
  }

  bool frameBuffered() const noexcept {
    uint64_t avail = tail_ - parse_;
    if (avail < kFrameHeaderBytes) return false;
    uint32_t frameBytes;
    std::memcpy(&frameBytes, ring_ + (parse_ & ringMask_), sizeof frameBytes);
    return avail >= frameBytes;
  }

  /// A complete frame at parse_ (or a big frame finished), as a lease.
  Status tryFrame(IncomingMessage& out) {
    if (big_) return continueBig(out);
    uint64_t avail = tail_ - parse_;
    if (avail < kFrameHeaderBytes) return Status::kWouldBlock;
    uint32_t frameBytes;
    std::memcpy(&frameBytes, ring_ + (parse_ & ringMask_), sizeof frameBytes);
    if (frameBytes < kFrameHeaderBytes || frameBytes % 8 || frameBytes > maxFrame_) {
      fault("frame of " + std::to_string(frameBytes) + " bytes from " + what_ +
            " is malformed or exceeds the maximum message size " + std::to_string(maxMessage_));
      return Status::kDisconnected;
    }
    if (frameBytes > ringBytes_ / 4) return startBig(frameBytes, out);
    afterBig_ = false;
    if (avail < frameBytes) return Status::kWouldBlock;
    auto& slot = leases_.next();
    std::string why = parseFrame(std::span<const std::byte>(ring_ + (parse_ & ringMask_), frameBytes),
                                 limits_, slot.frame);
    if (!why.empty()) {
      fault("malformed frame from " + what_ + ": " + why);
      return Status::kDisconnected;
    }
    parse_ += frameBytes;
    slot.end = parse_;
    out.attach(*this, leases_.push());
    return Status::kOk;
  }

  Status startBig(uint32_t frameBytes, IncomingMessage& out) {
    big_ = std::unique_ptr<capnp::word[]>(new capnp::word[frameBytes / 8]);
    bigSize_ = frameBytes;
    uint64_t have = std::min<uint64_t>(tail_ - parse_, frameBytes);
    std::memcpy(big_.get(), ring_ + (parse_ & ringMask_), have);  // only what already arrived
    bigFilled_ = have;
    afterBig_ = true;
    parse_ += have;
    // The rest of this frame goes straight into its own buffer; the next frame starts
    // in the ring on an 8-byte boundary again.
    if (parse_ == tail_) parse_ = tail_ = (tail_ + 7) & ~uint64_t{7};
    return continueBig(out);
  }

  Status continueBig(IncomingMessage& out) {
    auto* base = reinterpret_cast<std::byte*>(big_.get());
    while (bigFilled_ < bigSize_) {
      ssize_t n = ::recv(fd_.get(), base + bigFilled_, bigSize_ - bigFilled_, MSG_DONTWAIT);
      if (n > 0) {
        bigFilled_ += static_cast<uint64_t>(n);
        continue;
      }
      if (n == 0) {
        eof_ = true;
        return Status::kWouldBlock;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return Status::kWouldBlock;
      fault(ioError("read from", errno));
      return Status::kDisconnected;
    }
    auto& slot = leases_.next();
    std::string why = parseFrame(std::span<const std::byte>(base, bigSize_), limits_, slot.frame);
    if (!why.empty()) {
      fault("malformed frame from " + what_ + ": " + why);
      big_.reset();
      return Status::kDisconnected;
    }
    slot.end = parse_;  // ring bytes this frame used (its first part) are free with it
    slot.owned = std::move(big_);
    out.attach(*this, leases_.push());
    return Status::kOk;
  }

  /// Reads what the kernel has into the ring. False when nothing more can be read now.
  bool readMore() {
    if (big_) return false;
    if (leases_.empty()) {
      // Nothing held and nothing buffered: read into the ring's start again, where the last
      // frames left their lines in cache, rather than walking the whole (cold) ring.
      uint64_t to = parse_ == tail_ && (tail_ & ringMask_) ? (tail_ | ringMask_) + 1 : parse_;
      // Already there (the usual case while polling): no lock to take.
      if (head_.load(std::memory_order_relaxed) != to)
        leases_.syncHead(to, [&](uint64_t p) {  // only while no lease exists
          if (p != parse_) parse_ = tail_ = p;
          head_.store(p, std::memory_order_release);
        });
    }
    uint64_t head = head_.load(std::memory_order_acquire);
    uint64_t offset = tail_ & ringMask_;
    // A partial frame that would run past the end of the ring moves to the next lap.
    uint64_t avail = tail_ - parse_;
    uint64_t need = kFrameHeaderBytes;
    if (avail >= kFrameHeaderBytes) {
      uint32_t frameBytes;
      std::memcpy(&frameBytes, ring_ + (parse_ & ringMask_), sizeof frameBytes);
      if (frameBytes <= ringBytes_ / 4) need = frameBytes;
    }
    if ((parse_ & ringMask_) + need > ringBytes_) {
      uint64_t lap = (parse_ | ringMask_) + 1;
      if (lap + need - head > ringBytes_) return false;  // wait for leases to go
      std::memmove(ring_, ring_ + (parse_ & ringMask_), avail);
      parse_ = lap;
      tail_ = lap + avail;
      offset = tail_ & ringMask_;
    }
    uint64_t space = std::min(ringBytes_ - offset, head + ringBytes_ - tail_);
    // After a big frame, the next header is read alone: if that frame is big too, all of
    // it goes straight to its own buffer, rather than what one read brought into the ring
    // (often hundreds of KiB) being copied there. One more read per frame while big frames
    // come; small ones clear it.
    if (afterBig_ && avail == 0) space = std::min<uint64_t>(space, kFrameHeaderBytes);
    if (space == 0) return false;
    ssize_t n = ::recv(fd_.get(), ring_ + offset, space, MSG_DONTWAIT);
    if (n > 0) {
      tail_ += static_cast<uint64_t>(n);
      return true;
    }
    if (n == 0) {
      eof_ = true;
      return false;
    }
    if (errno == EINTR) return true;
    if (errno != EAGAIN) {
      fault(ioError("read from", errno));
      eof_ = true;
    }
    return false;
  }

  Status drainedOrDisconnected(IncomingMessage&) {
    std::lock_guard lock(errorMutex_);
    if (error_.empty()) error_ = "peer closed the connection";
    closed_.store(true);
    return Status::kDisconnected;
  }

  /// The text of a failed read or write; a kernel timeout names the dead-peer timeout.
  std::string ioError(const char* op, int err) const {
    std::string text = os::errnoText(std::string(op) + " " + what_, err);
    if (err == ETIMEDOUT && deadPeerTimeout_.count())
      text += " (the peer answered nothing for the dead-peer timeout of " +
              std::to_string(deadPeerTimeout_.count()) + " ms)";
    return text;
  }

  void fault(std::string why) noexcept {
    {
      std::lock_guard lock(errorMutex_);
      if (error_.empty()) error_ = std::move(why);
    }
    closeNow();
  }

  template <typename Done>
  Status waitFor(Done done, Deadline deadline, bool forWrite) {
    Clock::time_point spinUntil = options_.waitMode == WaitMode::kBusyPoll ? Clock::time_point::max()
                                  : options_.waitMode == WaitMode::kSpinThenSleep
                                      ? Clock::now() + options_.spinTime
                                      : Clock::time_point::min();
    // Spinning, the first clock read comes after a few rounds, not at once (see
    // RingConnection::waitFor).
    for (uint32_t spins = spinUntil == Clock::time_point::min() ? 0 : 1;; ++spins) {
      if (done()) return Status::kOk;
      if (closed_.load(std::memory_order_relaxed)) return Status::kDisconnected;
      if ((spins & 15) == 0) {
        auto now = Clock::now();
        if (now >= deadline) return Status::kTimedOut;
        if (now >= spinUntil) {
          short events = POLLRDHUP |
                         (forWrite || pendingBytes_.load(std::memory_order_relaxed) ? POLLOUT : 0) |
                         (forWrite ? 0 : POLLIN);
          auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
          os::pollOne(fd_.get(), events,
                      std::min(left + std::chrono::milliseconds(1), std::chrono::milliseconds(500)));
          continue;
        }
      }
      os::idleSpin<os::kYieldEveryCalls>(spins);  // each round was a recv()
    }
  }

  os::Fd fd_;
  os::Fd epoll_;
  uint32_t epollEvents_ = 0;  // receiving thread; 0: the socket is not in epoll_ yet
  std::string what_;
  ConnectionOptions options_;
  std::chrono::milliseconds deadPeerTimeout_;
  uint64_t maxMessage_;
  uint64_t maxFrame_;
  std::atomic<bool> closed_{false};
  mutable std::mutex errorMutex_;
  std::string error_;
  bool eof_ = false;

  // receive (receiving thread; head_ also from releasing threads)
  uint64_t ringBytes_;
  uint64_t ringMask_;
  std::byte* ring_;
  uint64_t tail_ = 0;
  uint64_t parse_ = 0;
  std::atomic<uint64_t> head_{0};
  std::unique_ptr<capnp::word[]> big_;
  uint64_t bigSize_ = 0;
  uint64_t bigFilled_ = 0;
  bool afterBig_ = false;  // the last frame was big (see readMore())
  FrameLimits limits_;

  // send (sending thread)
  uint64_t sendBytes_;
  std::byte* send_;
  uint64_t used_ = 0;
  OpenFrame open_;
  std::vector<iovec> pending_;
  std::atomic<uint64_t> pendingBytes_{0};  // read by the receiving thread
  os::SpinLock sendLock_;  // send state; the receiving thread only try_locks it
  uint64_t sentTotal_ = 0;
  std::deque<Chunk> chunks_;
  bool lastJoinable_ = true;  // pending_.back() may be extended by the next range
  struct ExternalRange {
    const std::byte* begin;
    uint64_t bytes;
  };
  // send()'s ranges in the caller's memory: external segments and referenced data.
  std::array<ExternalRange, kMaxSegments + OutgoingMessage::kMaxReferences> external_{};

  LeaseQueue leases_;
};

// ------------------------------------------------------------------------------------

class TcpListener final : public Listener {
 public:
  TcpListener(std::string_view hostPort, const TcpOptions& options) : options_(options) {
    checkTcpOptions(options_.connection);
    checkDeadPeerTimeout(options_.deadPeerTimeout);
    HostPort hp = splitHostPort(hostPort);
    std::string what = hostPort.starts_with("tcp://") ? std::string(hostPort)
                                                      : "tcp://" + std::string(hostPort);
    AddrInfo ai;
    resolve(hp, /*passive=*/true, ai, what);
    int lastErr = 0;
    for (addrinfo* a = ai.list; a; a = a->ai_next) {
      os::Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
      if (!fd) {
        lastErr = errno;
        continue;
      }
      int one = 1;
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd.get(), 128) != 0) {
        lastErr = errno;
        continue;
      }
      socket_ = std::move(fd);
      break;
    }
    if (!socket_) throw Failed(os::errnoText("listen on " + what, lastErr));
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    ::getsockname(socket_.get(), reinterpret_cast<sockaddr*>(&local), &len);
    endpoint_ = "tcp://" + addressText(local);
  }

  /// Handshakes advance without blocking as their bytes arrive, each with its own
  /// deadline (connectTimeout), so a silent client holds up neither accept() nor others.
  std::unique_ptr<Connection> accept(Deadline deadline) override {
    std::vector<pollfd> fds;
    for (;;) {
      while (os::Fd client = os::acceptNonBlocking(socket_.get())) {
        Pending p;
        p.peer = peerAddress(client.get());
        p.what = endpoint_ + " (server, peer " + p.peer + ")";
        p.deadline = deadlineAfter(options_.connection.connectTimeout);
        p.fd = std::move(client);
        pending_.push_back(std::move(p));
      }
      auto now = Clock::now();
      for (size_t i = 0; i < pending_.size();) {
        Pending& p = pending_[i];
        std::unique_ptr<Connection> done;
        bool drop = false;
        try {
          done = advance(p);
          if (!done && now >= p.deadline) throw Failed("handshake timed out");
        } catch (const std::exception& e) {
          remember(std::string("refused ") + p.peer + ": " + e.what());
          drop = true;
        }
        if (done || drop) {
          pending_.erase(pending_.begin() + static_cast<long>(i));
          if (done) return done;
          continue;
        }
        ++i;
      }
      if (now >= deadline) return nullptr;
      fds.clear();
      Deadline wakeAt = std::min(deadline, addPollFds(fds));
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(wakeAt - now);
      int ms = static_cast<int>(std::min<int64_t>(wait.count() + 1, 1000));
      int r;
      do r = ::poll(fds.data(), fds.size(), ms);
      while (r < 0 && errno == EINTR);
    }
  }

  int pollFd() const noexcept override { return socket_.get(); }
  Deadline addPollFds(std::vector<pollfd>& fds) const override {
    return pollListenerAndHandshakes(socket_.get(), pending_, fds);
  }
  std::string endpoint() const override { return endpoint_; }
  std::vector<std::string> refusals() const override {
    std::lock_guard lock(mutex_);
    return {refusals_.begin(), refusals_.end()};
  }

 private:
  void remember(std::string why) {
    std::fprintf(stderr, "zcrpc: %s: %s\n", endpoint_.c_str(), why.c_str());
    std::lock_guard lock(mutex_);
    refusals_.push_back(std::move(why));
    if (refusals_.size() > 64) refusals_.pop_front();
  }

  struct Pending {
    os::Fd fd;
    std::string peer;
    std::string what;
    Deadline deadline{};
    std::string received;  // Hello, then the token
  };

  /// Reads what has arrived; answers once Hello and token are complete. Throws to drop.
  std::unique_ptr<Connection> advance(Pending& p) {
    size_t need = sizeof(Hello);
    for (;;) {
      if (p.received.size() >= sizeof(Hello)) {
        Hello hello;
        std::memcpy(&hello, p.received.data(), sizeof hello);
        if (hello.magic != kHelloMagic) throw Failed("peer is not speaking the zcrpc tcp handshake");
        if (hello.tokenBytes > kMaxToken)
          return refuse(p, "token longer than " + std::to_string(kMaxToken) + " bytes");
        need = sizeof(Hello) + hello.tokenBytes;
        if (p.received.size() >= need) return answer(p, hello);
      }
      char buf[sizeof(Hello) + kMaxToken];
      ssize_t n = ::recv(p.fd.get(), buf, need - p.received.size(), MSG_DONTWAIT);
      if (n > 0) {
        p.received.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) throw Disconnected("peer closed during the handshake");
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return nullptr;
      throw Disconnected(os::errnoText("handshake receive", errno));
    }
  }

  std::unique_ptr<Connection> refuse(Pending& p, const std::string& why) {
    Answer a;
    std::snprintf(a.reason, sizeof a.reason, "%s", why.c_str());
    try {
      writeAll(p.fd.get(), &a, sizeof a, deadlineAfter(std::chrono::milliseconds(100)), p.what);
    } catch (...) {
    }
    throw Failed(why);
  }

  std::unique_ptr<Connection> answer(Pending& p, const Hello& hello) {
    if (hello.version != kHelloVersion)
      return refuse(p, "handshake version " + std::to_string(hello.version) + " not supported");
    std::string_view token(p.received.data() + sizeof(Hello), hello.tokenBytes);
    if (!tokensEqual(token, options_.token)) return refuse(p, "access token does not match");
    if (hello.maxMessageBytes < 64) return refuse(p, "client's maximum message size is below 64 bytes");
    // Both sides send and accept at most the smaller of the two limits.
    uint64_t maxMessage =
        std::min<uint64_t>(hello.maxMessageBytes, options_.connection.maxMessageBytes);
    Answer a;
    a.accepted = 1;
    a.maxMessageBytes = maxMessage;
    setNoDelay(p.fd.get());
    setDeadPeerTimeout(p.fd.get(), options_.deadPeerTimeout);
    writeAll(p.fd.get(), &a, sizeof a, p.deadline, p.what);
    return std::make_unique<TcpConnection>(std::move(p.fd), p.what, options_.connection, maxMessage,
                                           options_.deadPeerTimeout);
  }

  TcpOptions options_;
  os::Fd socket_;
  std::string endpoint_;
  std::vector<Pending> pending_;
  mutable std::mutex mutex_;
  std::deque<std::string> refusals_;
};

}  // namespace

std::unique_ptr<Listener> listenTcp(std::string_view hostPort, const TcpOptions& options) {
  return std::make_unique<TcpListener>(hostPort, options);
}

std::unique_ptr<Connection> connectTcp(std::string_view hostPort, const TcpOptions& options) {
  checkTcpOptions(options.connection);
  checkDeadPeerTimeout(options.deadPeerTimeout);
  if (options.token.size() > kMaxToken)
    throw InvalidArgument("token longer than " + std::to_string(kMaxToken) + " bytes");
  HostPort hp = splitHostPort(hostPort);
  std::string what = hostPort.starts_with("tcp://") ? std::string(hostPort)
                                                    : "tcp://" + std::string(hostPort);
  if (hp.host == "0.0.0.0") hp.host = "127.0.0.1";
  auto deadline = deadlineAfter(options.connection.connectTimeout);
  AddrInfo ai;
  resolve(hp, /*passive=*/false, ai, what);
  std::string lastError = "no address";
  for (addrinfo* a = ai.list; a; a = a->ai_next) {
    os::Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!fd) {
      lastError = os::errnoText("socket", errno);
      continue;
    }
    if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        lastError = os::errnoText("connect", errno);
        continue;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0 || !(os::pollOne(fd.get(), POLLOUT, left) & (POLLOUT | POLLERR | POLLHUP))) {
        lastError = "connect timed out after " +
                    std::to_string(options.connection.connectTimeout.count()) + " ms";
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err) {
        lastError = os::errnoText("connect", err);
        continue;
      }
    }
    setNoDelay(fd.get());
    setDeadPeerTimeout(fd.get(), options.deadPeerTimeout);
    Hello hello;
    hello.tokenBytes = static_cast<uint32_t>(options.token.size());
    hello.maxMessageBytes = options.connection.maxMessageBytes;
    writeAll(fd.get(), &hello, sizeof hello, deadline, what);
    writeAll(fd.get(), options.token.data(), options.token.size(), deadline, what);
    Answer answer;
    readAll(fd.get(), &answer, sizeof answer, deadline, what);
    if (answer.magic != kHelloMagic) throw Failed(what + ": peer is not a zcrpc tcp server");
    if (!answer.accepted) {
      answer.reason[sizeof answer.reason - 1] = 0;
      throw Failed(what + ": refused by server: " + answer.reason);
    }
    uint64_t maxMessage = std::min<uint64_t>(answer.maxMessageBytes, options.connection.maxMessageBytes);
    return std::make_unique<TcpConnection>(std::move(fd), what, options.connection, maxMessage,
                                           options.deadPeerTimeout);
  }
  throw Failed(what + ": " + lastError);
}

}  // namespace zcrpc
