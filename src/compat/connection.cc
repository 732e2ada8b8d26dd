// CapnpConnection: the socket, the event loop and the frames both ends share.
#include "compat/connection.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>

#include "transport/options.h"
#include "transport/tcp/tls_stream.h"
#include "transport/waiter.h"
#include "zcrpc/log.h"

namespace zcrpc::compat {

// ------------------------------------------------------------------------------------
// RefusalLog

void RefusalLog::add(std::string why) {
  logMessage(LogLevel::kWarning, endpoint_ + ": " + why);
  std::lock_guard lock(mutex_);
  entries_.push_back(std::move(why));
  if (entries_.size() > 64) entries_.pop_front();
}

std::vector<std::string> RefusalLog::list() const {
  std::lock_guard lock(mutex_);
  return {entries_.begin(), entries_.end()};
}

// ------------------------------------------------------------------------------------
// OwnFrameReader

capnp::ReaderOptions OwnFrameReader::unlimited() noexcept {
  capnp::ReaderOptions o;
  o.traversalLimitInWords = kj::maxValue;
  o.nestingLimit = 1 << 16;
  return o;
}

OwnFrameReader::OwnFrameReader(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments)
    : reader_(segments, unlimited()) {
  for (auto s : segments) words_ += s.size();
}

// ------------------------------------------------------------------------------------
// Scope

void CapnpConnection::Scope::enter() {
  if (ws_) return;
  try {
    ws_ = new (space_) kj::WaitScope(c_.loop_);
  } catch (const kj::Exception& e) {
    throw InvalidArgument("connection " + c_.endpoint_ +
                          " used on a thread that runs another KJ event loop (" +
                          e.getDescription().cStr() +
                          "): call it from a thread of its own, outside that loop's callbacks");
  }
}

// ------------------------------------------------------------------------------------
// Construction and teardown

CapnpConnection::CapnpConnection(std::unique_ptr<tcp::ByteStream> stream,
                                 capnp::rpc::twoparty::Side side, std::string endpoint,
                                 std::string peer, const CapnpOptions& options,
                                 std::shared_ptr<RefusalLog> refusals)
    : endpoint_(std::move(endpoint)),
      peer_(std::move(peer)),
      side_(side),
      options_(options),
      refusals_(std::move(refusals)),
      epoll_(ZCRPC_SYSCALL(::epoll_create1(EPOLL_CLOEXEC), "epoll_create1 for " + endpoint_)) {
  checkConnectionOptions(options_.connection, "capnp buffer");
  identity_.transport = endpoint_.starts_with("capnp+unix:") ? "capnp+unix" : "capnp";
  identity_.address = peer_;
  StreamLimits limits;
  limits.maxMessageBytes = options_.connection.maxMessageBytes;
  if (auto* tls = dynamic_cast<tcp::TlsStream*>(stream.get())) tls->session().describePeer(identity_);
  stream_ = std::make_unique<SocketMessageStream>(std::move(stream), limits);
  if (identity_.transport == "capnp+unix") {
    // Who is at the other end of the socket, as the kernel says (SO_PEERCRED): the client
    // a listener admitted, or the server a channel connected to.
    const os::PeerCredentials cred = os::peerCredentials(stream_->fd());
    identity_.hasCredentials = true;
    identity_.pid = cred.pid;
    identity_.uid = cred.uid;
    identity_.gid = cred.gid;
  }
  Scope scope(*this);
  scope.enter();
  network_ = kj::heap<capnp::TwoPartyVatNetwork>(*stream_, side, readerOptions());
  oneWays_ = kj::heap<kj::TaskSet>(static_cast<kj::TaskSet::ErrorHandler&>(*this));
}

capnp::ReaderOptions CapnpConnection::readerOptions() const noexcept {
  capnp::ReaderOptions o;
  o.traversalLimitInWords = options_.connection.readerLimits.traversalLimitWords;
  o.nestingLimit = options_.connection.readerLimits.nestingLimit;
  return o;
}

void CapnpConnection::started(Scope& scope) {
  disconnectWatch_ = network_->onDisconnect()
                         .then([this] {
                           if (!broken_) fault(endReason());
                         })
                         .eagerlyEvaluate(nullptr);
  scope.poll();
  if (!stream_->flush()) fault(endReason());
}

CapnpConnection::~CapnpConnection() noexcept {
  // The subclass's destructor ran tearDown(); what is left needs no loop.
  incoming_.clear();
}

void CapnpConnection::tearDown() noexcept {
  close();
  try {
    Scope scope(*this);
    scope.enter();
    dropCalls();
    dropRpc();
    rpc_ = nullptr;  // its SessionObjects go with it (dropping_: nothing told)
    disconnectWatch_ = nullptr;
    network_ = nullptr;
    stream_ = nullptr;  // after the network that reads it; its waiting read is cancelled
    scope.poll();
    scope.waitScope().cancelAllDetached();
    scope.poll();
  } catch (const std::exception& e) {
    logMessage(LogLevel::kError, endpoint_ + ": closing: " + e.what());
  } catch (const kj::Exception& e) {
    logMessage(LogLevel::kError, endpoint_ + ": closing: " + e.getDescription().cStr());
  }
  std::lock_guard lock(openMutex_);
  open_.clear();
}

// ------------------------------------------------------------------------------------
// Errors

std::string CapnpConnection::endReason() const {
  if (!stream_) return "connection closed";
  if (!stream_->failure().empty()) return stream_->failure();
  if (!stream_->sentAbort().empty())
    return "the peer broke Cap'n Proto's RPC protocol: " + stream_->sentAbort();
  if (!stream_->receivedAbort().empty())
    return "the peer aborted the connection: " + stream_->receivedAbort();
  if (closed_.load()) return "connection closed";
  return "the peer closed the connection";
}

void CapnpConnection::fault(const std::string& why) noexcept {
  if (broken_) return;
  broken_ = true;
  {
    std::lock_guard lock(errorMutex_);
    if (error_.empty()) error_ = why;
  }
  // A client that broke the protocol (or sent what the limits refuse) is one its listener
  // lists; one that simply went away is not.
  if (refusals_ && stream_ && stream_->peerBrokeRules())
    refusals_->add("disconnected " + peer_ + ": " + why);
  close();
}

std::string CapnpConnection::lastError() const {
  std::lock_guard lock(errorMutex_);
  return error_;
}

void CapnpConnection::close() noexcept {
  if (closed_.exchange(true)) return;
  // Only the socket's traffic stops here (any thread may call this); the loop and the
  // RPC system go with the object, on its owner's thread.
  if (stream_) ::shutdown(stream_->fd(), SHUT_RDWR);
}

void CapnpConnection::setCallTargets(const CallTargets* targets) noexcept {
  std::lock_guard lock(scopeMutex_);
  targets_ = targets;
}

Status CapnpConnection::checkPeer() noexcept {
  if (broken_ || closed_.load()) return Status::kDisconnected;
  return Status::kOk;  // the next read sees an end of stream, and the RPC system with it
}

// ------------------------------------------------------------------------------------
// Frames the session builds

Status CapnpConnection::open(OutgoingMessage& msg, uint32_t words) {
  if (uint64_t{words} * 8 > options_.connection.maxMessageBytes)
    throw InvalidArgument("message of " + std::to_string(uint64_t{words} * 8) +
                          " bytes exceeds the maximum message size of " +
                          std::to_string(options_.connection.maxMessageBytes) + " (" + endpoint_ + ")");
  auto frame = std::make_unique<HeapFrame>(options_.connection.maxMessageBytes,
                                           options_.connection.readerLimits);
  frame->open(msg, words ? words : 64);
  frame->setOwner(this);
  std::lock_guard lock(openMutex_);
  open_.push_back(std::move(frame));
  return Status::kOk;
}

void CapnpConnection::abandoned(HeapFrame& frame) noexcept {
  std::lock_guard lock(openMutex_);
  auto it = std::find_if(open_.begin(), open_.end(), [&](auto& f) { return f.get() == &frame; });
  if (it != open_.end()) open_.erase(it);  // deletes it: the last thing abandon() does
}

Status CapnpConnection::tryStartMessage(OutgoingMessage& msg, uint32_t firstSegmentWords) {
  {
    Scope scope(*this);
    if (broken_ || closed_.load()) return Status::kDisconnected;
    if (stream_->pendingOutput() > options_.connection.ringBytes) {
      // The peer does not read what we sent: hold back (the server's session keeps its
      // answers in its backlog meanwhile and reads no new requests from this peer).
      if (!stream_->flush()) {
        fault(endReason());
        return Status::kDisconnected;
      }
      if (stream_->pendingOutput() > options_.connection.ringBytes) return Status::kWouldBlock;
    }
  }
  return open(msg, firstSegmentWords);
}

Status CapnpConnection::startMessage(OutgoingMessage& msg, uint32_t firstSegmentWords, Deadline deadline) {
  for (;;) {
    Status s = tryStartMessage(msg, firstSegmentWords);
    if (s != Status::kWouldBlock) return s;
    const auto now = Clock::now();
    if (now >= deadline) return Status::kTimedOut;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    os::pollOne(stream_->fd(), POLLOUT, std::min<std::chrono::milliseconds>(
                                            left + std::chrono::milliseconds(1),
                                            std::chrono::milliseconds(20)));
  }
}

Status CapnpConnection::send(OutgoingMessage& msg, bool flushNow) {
  Scope scope(*this);
  std::unique_ptr<HeapFrame> frame;
  {
    std::lock_guard lock(openMutex_);
    auto it = std::find_if(open_.begin(), open_.end(), [&](auto& f) { return f->holds(msg); });
    if (it == open_.end())
      throw InvalidArgument("send() of a message not started on connection " + endpoint_);
    frame = std::move(*it);
    open_.erase(it);
  }
  Status s = Status::kDisconnected;
  KJ_DEFER(msg.markSent());  // the frame's memory goes with `frame`, sent or not
  if (msg.extensions().size() != 0 && !extensionAreaFits(msg.extensions(), kMaxExtensionBytes))
      [[unlikely]]
    refuseExtensionArea(msg.extensions(), kMaxExtensionBytes, endpoint_);
  if (!broken_ && !closed_.load()) {
    scope.enter();
    s = sendFrame(msg);
    scope.poll();  // the RPC system writes the call or the answer
    if (flushNow && !stream_->flush()) fault(endReason());
  }
  if (broken_) return Status::kDisconnected;
  return s;
}

Status CapnpConnection::flush() {
  Scope scope(*this);
  if (broken_) return Status::kDisconnected;
  if (!stream_->flush()) {
    fault(endReason());
    return Status::kDisconnected;
  }
  return Status::kOk;
}

// ------------------------------------------------------------------------------------
// Receiving

void CapnpConnection::pump(Scope& scope) {
  scope.enter();
  if (!stream_->ended()) (void)stream_->readSome();
  scope.poll();
  // After an end of stream nothing more can come: what it completed is queued already.
  if (!stream_->flush() || stream_->ended()) fault(endReason());
}

Status CapnpConnection::tryReceive(IncomingMessage& out) {
  Scope scope(*this);
  if (incoming_.empty() && !broken_) pump(scope);
  if (!incoming_.empty()) {
    out = std::move(incoming_.front());
    incoming_.pop_front();
    return Status::kOk;
  }
  return broken_ ? Status::kDisconnected : Status::kWouldBlock;
}

Status CapnpConnection::receive(IncomingMessage& out, Deadline deadline) {
  Status got = Status::kWouldBlock;
  Waiter waiter(options_.connection.waitMode, options_.connection.spinTime,
                options_.connection.spinPolicy, PollCost::kSystemCall);
  Status w = waiter.wait(
      [&] {
        got = tryReceive(out);
        return got != Status::kWouldBlock;
      },
      [&](bool) { return !broken_; },
      [&](Clock::duration left) {
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(left);
        short events = POLLIN | POLLRDHUP;
        {
          Scope scope(*this);
          if (stream_->inputBuffered()) return false;  // TLS records wait: read them first
          if (stream_->pendingOutput()) events |= POLLOUT;
        }
        os::pollOne(stream_->fd(), events,
                    std::clamp<std::chrono::milliseconds>(ms + std::chrono::milliseconds(1),
                                                          std::chrono::milliseconds(0),
                                                          std::chrono::milliseconds(20)));
        return false;
      },
      deadline);
  if (w == Status::kOk) return got;
  return w;
}

bool CapnpConnection::armWait() noexcept {
  std::unique_lock lock(scopeMutex_);
  if (broken_ || closed_.load() || !incoming_.empty() || stream_->messageBuffered() || stream_->inputBuffered())
    return false;
  if (stream_->pendingOutput() && !stream_->flush()) {
    fault(endReason());
    return false;
  }
  const uint32_t want = EPOLLIN | EPOLLRDHUP | (stream_->pendingOutput() ? EPOLLOUT : 0u);
  if (want != epollEvents_) {
    epoll_event ev{};
    ev.events = want;
    // ADD reports a socket already readable at once, so nothing arriving before it is missed.
    const int op = epollEvents_ ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (::epoll_ctl(epoll_.get(), op, stream_->fd(), &ev) == 0) {
      epollEvents_ = want;
    } else if (op == EPOLL_CTL_ADD) {
      // Never watched: the caller could only spin. Closed, saying why (as TcpConnection).
      const int err = errno;
      fault(os::errnoText("cannot watch " + endpoint_ + " (epoll_ctl)", err));
      return false;
    }
  }
  return true;
}

}  // namespace zcrpc::compat
