// zcrpc — a tcp connection's life: construction, the event-loop wait, close, errors.
#include <sys/epoll.h>
#include <sys/socket.h>

#include "transport/tcp/tcp_connection.h"

namespace zcrpc::tcp {

TcpConnection::TcpConnection(std::unique_ptr<ByteStream> stream, std::string what,
                             const ConnectionOptions& options, uint64_t maxMessageBytes,
                             std::chrono::milliseconds deadPeerTimeout, PeerIdentity peer)
    : stream_(std::move(stream)),
      streamBuffers_(stream_->buffers()),
      peer_(std::move(peer)),
      what_(std::move(what)),
      options_(options),
      deadPeerTimeout_(deadPeerTimeout),
      maxMessage_(maxMessageBytes),
      // Segments, header, table, trace context, extension area, and the padding before blobs.
      maxFrame_(maxMessageBytes + kFrameHeaderBytes + kMaxSegments * sizeof(SegmentEntry) +
                sizeof(TraceContext) + kMaxExtensionBytes + kMaxSegments * (kCopyAlignment - 8)),
      receiveWaiter_(options.waitMode, options.spinTime, options.spinPolicy, PollCost::kSystemCall),
      sendWaiter_(options.waitMode, options.spinTime, options.spinPolicy, PollCost::kSystemCall),
      buffers_(uint64_t{2} * options.ringBytes, "the buffers of " + what_),
      ringBytes_(options.ringBytes),
      ringMask_(options.ringBytes - 1),
      ring_(buffers_.data()),
      sendBytes_(options.ringBytes),
      send_(buffers_.data() + options.ringBytes),
      leases_(options.maxLeases) {
  pending_.reserve(kMaxIov);
  limits_.maxMessageBytes = maxMessage_;
  // The socket joins it at the first armWait(): a socket in an epoll set costs every
  // arriving segment a wake-up callback in the kernel, which a busy-polling
  // connection, never sleeping, would pay on every message for nothing.
  epoll_ = os::Fd(ZCRPC_SYSCALL(::epoll_create1(EPOLL_CLOEXEC), "epoll_create1 for " + what_));
}

TcpConnection::~TcpConnection() {
  if (open_.msg) open_.msg->markSent();
  close();
  leases_.dropAll();
}

bool TcpConnection::armWait() noexcept {
  if (closed_.load() || frameBuffered() || inputBuffered()) return false;
  flushFromReceiver();
  uint32_t want = EPOLLIN | EPOLLRDHUP | (outputWaits() ? EPOLLOUT : 0u);
  if (want != epollEvents_) {
    epoll_event ev{};
    ev.events = want;
    // ADD reports a socket already readable at once, so nothing arriving before it is missed.
    int op = epollEvents_ ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (::epoll_ctl(epoll_.get(), op, stream_->fd(), &ev) == 0) {
      epollEvents_ = want;
    } else if (op == EPOLL_CTL_ADD) {
      fault(os::errnoText("cannot watch " + what_ + " (epoll_ctl)", errno));
      return false;  // closed: the caller's next receive reports it
    }
  }
  return true;
}

Status TcpConnection::checkPeer() noexcept {
  if (closed_.load() || eof_) return Status::kDisconnected;
  short ev = os::pollOne(stream_->fd(), POLLIN | POLLRDHUP, std::chrono::milliseconds(0));
  if ((ev & (POLLHUP | POLLERR | POLLNVAL)) && !(ev & POLLIN)) {
    fault("peer " + what_ + " hung up");
    return Status::kDisconnected;
  }
  return Status::kOk;  // a half-closed peer's last frames are still read first
}

void TcpConnection::close() noexcept {
  if (closed_.load()) return;
  if (sendLock_.try_lock()) {
    auto until = Clock::now() + std::chrono::milliseconds(200);
    writePending();
    while (outputWaits() && !closed_.load() && Clock::now() < until) {
      os::pollOne(stream_->fd(), POLLOUT, std::chrono::milliseconds(20));
      writePending();
    }
    if (!closed_.load()) stream_->finish();  // TLS: close_notify
    sendLock_.unlock();
  }
  closeNow();
}

void TcpConnection::closeNow() noexcept {
  if (closed_.exchange(true)) return;
  ::shutdown(stream_->fd(), SHUT_RDWR);
}

std::string TcpConnection::lastError() const {
  std::lock_guard lock(errorMutex_);
  return error_;
}

std::string TcpConnection::ioError(const char* op, int err) const {
  if (streamBuffers_) {
    std::string layer = stream_->failure();  // TLS: the alert or the protocol error
    if (!layer.empty()) return layer;
  }
  std::string text = os::errnoText(std::string(op) + " " + what_, err);
  if (err == ETIMEDOUT && deadPeerTimeout_.count())
    text += " (the peer answered nothing for the dead-peer timeout of " +
            std::to_string(deadPeerTimeout_.count()) + " ms)";
  return text;
}

void TcpConnection::fault(std::string why) noexcept {
  {
    std::lock_guard lock(errorMutex_);
    if (error_.empty()) error_ = std::move(why);
  }
  closeNow();
}

}  // namespace zcrpc::tcp
