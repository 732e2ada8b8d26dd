// SocketMessageStream: Cap'n Proto's stream framing over a socket, read in place.
#include "compat/message_stream.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <capnp/rpc.capnp.h>
#include <capnp/serialize.h>

#include "os/os.h"

namespace zcrpc::compat {

namespace {

constexpr size_t roundUpWords(size_t bytes) { return (bytes + 7) / 8; }

kj::Exception streamException(kj::Exception::Type type, const std::string& why) {
  return kj::Exception(type, __FILE__, __LINE__, kj::str(why.c_str()));
}

/// Whether the message whose first segment is `first` may be an rpc.capnp Abort: its root
/// is a struct in that segment whose first 16 bits (Message's union discriminant) say abort.
/// A look at two words, so the messages that are not pay nothing more; those that may be
/// are read properly by noteAbort().
bool mayBeAbort(kj::ArrayPtr<const capnp::word> first) noexcept {
  if (first.size() < 2) return false;
  uint64_t root;
  std::memcpy(&root, first.begin(), sizeof root);
  if ((root & 3) != 0) return false;  // not a struct pointer (a far one: let it be)
  const int64_t offset = static_cast<int32_t>(static_cast<uint32_t>(root)) >> 2;
  const uint64_t at = 1 + static_cast<uint64_t>(offset);
  if (offset < 0 || (root >> 32 & 0xffff) == 0 || at >= first.size()) return false;
  uint16_t which;
  std::memcpy(&which, first.begin() + at, sizeof which);
  return which == static_cast<uint16_t>(capnp::rpc::Message::ABORT);
}

/// The reason of `message` when it is an rpc.capnp Abort (kept in `into`, first one only).
void noteAbort(capnp::MessageReader& message, std::string& into) {
  if (!into.empty() || !mayBeAbort(message.getSegment(0))) return;
  try {
    auto m = message.getRoot<capnp::rpc::Message>();
    if (m.isAbort()) {
      auto reason = m.getAbort().getReason();
      into.assign(reason.begin(), reason.size());
      if (into.empty()) into = "(no reason given)";
    }
  } catch (const kj::Exception&) {
    // Not an RPC message the RPC system could read either: it says so itself.
  }
}

/// Bytes of a segment table for `count` segments (count - 1, then each size, padded to a
/// word), as serialize.h lays it out.
constexpr size_t tableBytes(uint64_t count) { return ((count + 2) / 2) * 8; }

}  // namespace

InputChunk::InputChunk(size_t n) : words(kj::heapArray<capnp::word>(n)) {}

SocketMessageStream::SocketMessageStream(std::unique_ptr<tcp::ByteStream> stream, StreamLimits limits)
    : stream_(std::move(stream)), limits_(limits) {}

SocketMessageStream::~SocketMessageStream() noexcept(false) = default;

// ------------------------------------------------------------------------------------
// Reading

size_t SocketMessageStream::messageBytes() const {
  const size_t have = end_ - begin_;
  if (have < 8) return 0;
  const kj::byte* at = reinterpret_cast<const kj::byte*>(chunk_->words.begin()) + begin_;
  uint32_t first;
  std::memcpy(&first, at, sizeof first);
  const uint64_t count = uint64_t{first} + 1;
  if (count > limits_.maxSegments)
    throw std::runtime_error("the peer sent a message of " + std::to_string(count) +
                             " segments (at most " + std::to_string(limits_.maxSegments) + ")");
  const size_t table = tableBytes(count);
  if (have < table) return 0;
  uint64_t words = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t size;
    std::memcpy(&size, at + 4 + 4 * i, sizeof size);
    words += size;
  }
  if (words * 8 > limits_.maxMessageBytes)
    throw std::runtime_error("the peer sent a message of " + std::to_string(words * 8) +
                             " bytes, over the maximum message size of " +
                             std::to_string(limits_.maxMessageBytes) + " (max_message_bytes)");
  return table + words * 8;
}

size_t SocketMessageStream::wholeMessageBytes() const {
  const size_t bytes = messageBytes();
  return bytes && end_ - begin_ >= bytes ? bytes : 0;
}

bool SocketMessageStream::messageBuffered() const noexcept {
  try {
    return chunk_ && wholeMessageBytes() > 0;
  } catch (const std::exception&) {
    return true;  // the next read fails at once
  }
}

kj::Own<capnp::MessageReader> SocketMessageStream::takeMessage(size_t bytes,
                                                               const capnp::ReaderOptions& options) {
  const kj::byte* base = reinterpret_cast<const kj::byte*>(chunk_->words.begin());
  const kj::byte* at = base + begin_;
  uint32_t first;
  std::memcpy(&first, at, sizeof first);
  const uint64_t count = uint64_t{first} + 1;
  std::vector<kj::ArrayPtr<const capnp::word>> segments;
  segments.reserve(count);
  const capnp::word* seg = reinterpret_cast<const capnp::word*>(at + tableBytes(count));
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t size;
    std::memcpy(&size, at + 4 + 4 * i, sizeof size);
    segments.push_back(kj::arrayPtr(seg, size));
    seg += size;
  }
  begin_ += bytes;
  auto message = kj::heap<ReceivedMessage>(chunk_, std::move(segments), options);
  noteAbort(*message, receivedAbort_);
  return message;
}

void SocketMessageStream::makeRoom(size_t need) {
  const size_t capacity = chunk_ ? chunk_->words.size() * 8 : 0;
  const bool alone = chunk_ && chunk_.use_count() == 1;  // no reader holds it
  if (alone && begin_ == end_) begin_ = end_ = 0;
  if (chunk_) {
    if (need ? begin_ + need <= capacity : capacity - end_ >= 4096) return;
    if (alone && (need ? need : kChunkBytes) <= capacity) {
      // Nobody reads this chunk: move the partial message to its start.
      std::memmove(chunk_->words.begin(), reinterpret_cast<kj::byte*>(chunk_->words.begin()) + begin_,
                   end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
      return;
    }
  }
  auto fresh = std::make_shared<InputChunk>(roundUpWords(std::max(need, kChunkBytes)));
  if (end_ > begin_)
    std::memcpy(fresh->words.begin(), reinterpret_cast<kj::byte*>(chunk_->words.begin()) + begin_,
                end_ - begin_);
  end_ -= begin_;
  begin_ = 0;
  chunk_ = std::move(fresh);
}

SocketMessageStream::ReadResult SocketMessageStream::readSome() {
  if (ended_) return ReadResult::kEnded;
  bool progress = false;
  for (int reads = 0; reads < 16; ++reads) {
    size_t need = 0;  // the whole message's size once its table is in: room for all of it
    if (chunk_) {
      try {
        need = messageBytes();
      } catch (const std::exception&) {
        break;  // deliver() reports it
      }
      if (need && end_ - begin_ >= need) break;  // a whole message is here: deliver it first
    }
    makeRoom(need);
    kj::byte* into = reinterpret_cast<kj::byte*>(chunk_->words.begin()) + end_;
    const size_t room = chunk_->words.size() * 8 - end_;
    const ssize_t n = stream_->read(into, room);
    if (n > 0) {
      end_ += static_cast<size_t>(n);
      progress = true;
      // The socket is drained (and a TLS layer holds no record it has not given us yet).
      if (static_cast<size_t>(n) < room && !stream_->hasBufferedInput()) break;
      continue;
    }
    if (n == 0) {
      ended_ = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    // A TLS layer's failure has its own words (errno is EPROTO then).
    fail(stream_->failure().empty() ? os::errnoText("receive", errno) : "receive: " + stream_->failure());
    break;
  }
  deliver();
  if (ended_) return ReadResult::kEnded;
  return progress ? ReadResult::kProgress : ReadResult::kWouldBlock;
}

bool SocketMessageStream::writeFailed(int err) {
  out_.clear();
  outBegin_ = 0;
  // After the peer's end of stream a failed write (the RPC system's last words) is
  // expected, not a fault of the peer's.
  if (ended_) {
    writeClosed_ = true;
    return true;
  }
  fail(os::errnoText("send", err));
  return false;
}

void SocketMessageStream::fail(std::string why) {
  if (failure_.empty()) failure_ = std::move(why);
  ended_ = true;
}

void SocketMessageStream::deliver() {
  if (!waiting_) return;
  if (!failure_.empty()) {
    auto f = kj::mv(waiting_);
    endDelivered_ = true;
    f->reject(streamException(kj::Exception::Type::DISCONNECTED, failure_));
    return;
  }
  size_t bytes = 0;
  try {
    bytes = chunk_ ? wholeMessageBytes() : 0;
  } catch (const std::exception& e) {
    fail(e.what());
    brokeRules_ = true;
    auto f = kj::mv(waiting_);
    endDelivered_ = true;
    f->reject(streamException(kj::Exception::Type::FAILED, failure_));
    return;
  }
  if (bytes) {
    auto f = kj::mv(waiting_);
    f->fulfill(capnp::MessageReaderAndFds{takeMessage(bytes, waitingOptions_), nullptr});
  } else if (ended_) {
    auto f = kj::mv(waiting_);
    endDelivered_ = true;
    if (end_ > begin_) {
      fail("the peer closed the connection in the middle of a message");
      f->reject(streamException(kj::Exception::Type::DISCONNECTED, failure_));
    } else {
      f->fulfill(nullptr);
    }
  }
}

kj::Promise<kj::Maybe<capnp::MessageReaderAndFds>> SocketMessageStream::tryReadMessage(
    kj::ArrayPtr<kj::AutoCloseFd>, capnp::ReaderOptions options, kj::ArrayPtr<capnp::word>) {
  KJ_REQUIRE(!waiting_, "two reads at once on one message stream");
  auto paf = kj::newPromiseAndFulfiller<kj::Maybe<capnp::MessageReaderAndFds>>();
  waiting_ = kj::mv(paf.fulfiller);
  waitingOptions_ = options;
  deliver();  // a message already buffered (or the end) completes it at once
  return kj::mv(paf.promise);
}

// ------------------------------------------------------------------------------------
// Writing

bool SocketMessageStream::writeOrKeep(const iovec* iov, size_t count, size_t total) {
  size_t first = 0;   // iovec being written
  size_t offset = 0;  // bytes of it already written
  size_t done = 0;
  std::vector<iovec> rest;
  while (done < total) {
    const iovec* from = iov + first;
    size_t n = count - first;
    if (offset) {
      rest.assign(from, from + n);
      rest[0].iov_base = static_cast<kj::byte*>(rest[0].iov_base) + offset;
      rest[0].iov_len -= offset;
      from = rest.data();
    }
    const ssize_t w = stream_->write(from, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return writeFailed(errno);
    }
    done += static_cast<size_t>(w);
    size_t left = static_cast<size_t>(w);
    while (left && first < count) {
      const size_t inThis = iov[first].iov_len - offset;
      if (left >= inThis) {
        left -= inThis;
        ++first;
        offset = 0;
      } else {
        offset += left;
        left = 0;
      }
    }
    while (first < count && iov[first].iov_len == offset) ++first, offset = 0;
  }
  // Keep what the kernel did not take: the caller's segments go once this returns.
  for (; first < count; ++first, offset = 0) {
    const kj::byte* p = static_cast<const kj::byte*>(iov[first].iov_base) + offset;
    out_.insert(out_.end(), p, p + iov[first].iov_len - offset);
  }
  return true;
}

kj::Promise<void> SocketMessageStream::writeMessage(
    kj::ArrayPtr<const int> fds, kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>> segments) {
  if (!failure_.empty()) return streamException(kj::Exception::Type::DISCONNECTED, failure_);
  if (writeClosed_) return kj::READY_NOW;  // the peer is gone: nobody reads it
  KJ_REQUIRE(fds.size() == 0, "this connection does not pass file descriptors");
  KJ_REQUIRE(segments.size() > 0, "a message has at least one segment");
  const size_t table = tableBytes(segments.size());
  uint32_t small[32];
  std::vector<uint32_t> large;
  uint32_t* t = small;
  if (table / 4 > std::size(small)) {
    large.resize(table / 4);
    t = large.data();
  }
  t[0] = static_cast<uint32_t>(segments.size() - 1);
  size_t total = table;
  for (size_t i = 0; i < segments.size(); ++i) {
    t[i + 1] = static_cast<uint32_t>(segments[i].size());
    total += segments[i].size() * sizeof(capnp::word);
  }
  if (segments.size() % 2 == 0) t[segments.size() + 1] = 0;  // padding to a word
  // An Abort written before the RPC system learnt of the stream's end reports the peer
  // breaking the protocol; one after it is its way of closing.
  if (sentAbort_.empty() && !endDelivered_ && mayBeAbort(segments[0])) {
    capnp::SegmentArrayMessageReader sent(segments);
    noteAbort(sent, sentAbort_);
  }
  if (total < kCoalesceBelow || out_.size() > outBegin_) {
    // Small (written with the others at flush()), or behind output the kernel has not
    // taken yet: into the buffer, in order.
    const auto* tb = reinterpret_cast<const kj::byte*>(t);
    out_.insert(out_.end(), tb, tb + table);
    for (auto s : segments) {
      const auto* sb = reinterpret_cast<const kj::byte*>(s.begin());
      out_.insert(out_.end(), sb, sb + s.size() * sizeof(capnp::word));
    }
    if (total >= kCoalesceBelow && !flush())
      return streamException(kj::Exception::Type::DISCONNECTED, failure_);
    return kj::READY_NOW;
  }
  // Large: straight from the segments, the rest kept.
  std::vector<iovec> iov;
  iov.reserve(segments.size() + 1);
  iov.push_back({t, table});
  for (auto s : segments)
    if (s.size()) iov.push_back({const_cast<capnp::word*>(s.begin()), s.size() * sizeof(capnp::word)});
  if (!writeOrKeep(iov.data(), iov.size(), total))
    return streamException(kj::Exception::Type::DISCONNECTED, failure_);
  return kj::READY_NOW;
}

kj::Promise<void> SocketMessageStream::writeMessages(
    kj::ArrayPtr<kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>> messages) {
  for (auto m : messages) {
    auto p = writeMessage(nullptr, m);
    if (!failure_.empty()) return p;
  }
  return kj::READY_NOW;
}

bool SocketMessageStream::flush() {
  if (writeClosed_) return true;
  while (out_.size() > outBegin_) {
    if (!failure_.empty()) return false;
    iovec v{out_.data() + outBegin_, out_.size() - outBegin_};
    const ssize_t w = stream_->write(&v, 1);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return writeFailed(errno);
    }
    outBegin_ += static_cast<size_t>(w);
  }
  // A TLS layer keeps what the socket did not take: it goes when the socket has room.
  if (out_.size() == outBegin_ && !stream_->flushOutput() && !stream_->failure().empty()) {
    if (ended_) return true;  // the peer's end came first: its last words are dropped
    fail("send: " + stream_->failure());
    return false;
  }
  if (out_.size() == outBegin_) {
    out_.clear();
    outBegin_ = 0;
  } else if (outBegin_ > (1u << 20) && outBegin_ > out_.size() / 2) {
    out_.erase(out_.begin(), out_.begin() + static_cast<long>(outBegin_));
    outBegin_ = 0;
  }
  return failure_.empty();
}

kj::Maybe<int> SocketMessageStream::getSendBufferSize() {
  int size = 0;
  socklen_t len = sizeof size;
  if (::getsockopt(stream_->fd(), SOL_SOCKET, SO_SNDBUF, &size, &len) != 0) return nullptr;
  return size;
}

kj::Promise<void> SocketMessageStream::end() {
  (void)flush();
  ::shutdown(stream_->fd(), SHUT_WR);
  return kj::READY_NOW;
}

}  // namespace zcrpc::compat
