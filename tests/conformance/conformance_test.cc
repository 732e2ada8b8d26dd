// The transport contract (include/zcrpc/transport.h), checked the same way for every
// transport that is present: ordering, sizes up to the maximum, multi-segment and external
// data, oversize, back-pressure, disconnects, malformed frames, many connections, wait
// modes, wait descriptors and leases. The RPC core over each transport is in
// rpc_conformance_test.cc; *Stress* tests (suite 'stress') in stress_test.cc.
#include <poll.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <random>
#include <thread>
#include <vector>

#include <capnp/orphan.h>

#include "conformance/fixture.h"
#include "test.capnp.h"

namespace zcrpc::conformance {
namespace {

using ::testing::HasSubstr;

// Every transport of the library's list that is usable here, loopback, and tcp with TLS
// (support.cc).
INSTANTIATE_TEST_SUITE_P(AllTransports, Conformance, ::testing::ValuesIn(allTransports()),
                         transportName);

/// Receives Payloads `first`.. `first + count - 1` in order on its own thread.
class Receiver final {
 public:
  Receiver(Connection& c, uint64_t first, uint64_t count, std::chrono::milliseconds timeout = 20s)
      : thread_([this, &c, first, count, timeout] {
          Bound bound(count + 1, timeout);
          for (uint64_t seq = first; seq < first + count && bound.next(); ++seq) {
            auto r = receivePayload(c, seq, kAnySize, std::min<std::chrono::milliseconds>(timeout, 10s));
            if (!r) {
              failure_ = r.message();
              failed_ = true;
              done_ = true;
              return;
            }
            ++received_;
          }
          done_ = true;
        }) {}
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  uint64_t received() const { return received_.load(); }
  bool failed() const { return failed_.load(); }
  bool done() const { return done_.load(); }
  /// Why it stopped early; read after join().
  const std::string& failure() const { return failure_; }

 private:
  std::atomic<uint64_t> received_{0};
  std::atomic<bool> failed_{false};
  std::atomic<bool> done_{false};
  std::string failure_;
  std::jthread thread_;
};

// ---------------------------------------------------------------------------------------
// Basics and ordering

TEST_P(Conformance, EmptyMessageAndHeaderFieldsArrive) {
  auto p = connectPair();
  IncomingMessage in;
  EXPECT_EQ(p.server->tryReceive(in), Status::kWouldBlock);
  {
    OutgoingMessage m;
    ASSERT_EQ(p.client->tryStartMessage(m, 0), Status::kOk);
    m.header().kind = static_cast<uint8_t>(FrameKind::kData);
    m.header().callId = 0x1122'3344'5566'7788ull;
    m.header().interfaceId = 0xdead'beef'cafe'f00dull;
    m.header().methodId = 513;
    ASSERT_EQ(p.client->send(m), Status::kOk);  // no root was ever set
  }
  ASSERT_EQ(p.server->receive(in, deadlineAfter(5s)), Status::kOk) << p.server->lastError();
  EXPECT_EQ(in.header().kind, static_cast<uint8_t>(FrameKind::kData));
  EXPECT_EQ(in.header().callId, 0x1122'3344'5566'7788ull);
  EXPECT_EQ(in.header().interfaceId, 0xdead'beef'cafe'f00dull);
  EXPECT_EQ(in.header().methodId, 513);
  EXPECT_EQ(in.segmentCount(), 1u);
  EXPECT_TRUE(in.reader().getRoot<capnp::AnyPointer>().isNull());
  EXPECT_EQ(p.client->maxMessageBytes(), options().maxMessageBytes);
  EXPECT_EQ(p.server->maxMessageBytes(), options().maxMessageBytes);
  EXPECT_FALSE(p.client->endpoint().empty());
  EXPECT_TRUE(p.client->lastError().empty());
}

TEST_P(Conformance, OrderIsKeptInBothDirectionsAtOnce) {
  auto p = connectPair();
  constexpr uint64_t kCount = 2000;
  std::atomic<bool> stop{false};
  Receiver atServer(*p.server, 0, kCount), atClient(*p.client, 0, kCount);
  auto sender = [&](Connection& c, Receiver& peer) {
    Bound bound(kCount, 20s);
    for (uint64_t seq = 0; seq < kCount && bound.next() && !stop; ++seq) {
      Status s = sendPayload(c, seq, (seq * 37) % 3000, deadlineAfter(10s), seq % 7 != 0);
      if (s != Status::kOk) {
        ADD_FAILURE() << "send " << seq << ": " << statusName(s) << " " << c.lastError();
        stop = true;
        return;
      }
    }
    flushUntil(c, [&] { return peer.done(); });
  };
  {
    std::jthread a([&] { sender(*p.client, atServer); }), b([&] { sender(*p.server, atClient); });
  }
  atServer.join();
  atClient.join();
  EXPECT_EQ(atServer.received(), kCount) << atServer.failure();
  EXPECT_EQ(atClient.received(), kCount) << atClient.failure();
}

// ---------------------------------------------------------------------------------------
// Sizes

TEST_P(Conformance, SizesFromEmptyToTheMaximum) {
  auto o = options();
  auto p = connectPair(o);
  const size_t r = o.ringBytes, max = maxPayloadFor(o.maxMessageBytes);
  const std::vector<size_t> sizes = {0,       1,       7,        8,        9,          100,
                                     4095,    4096,    4097,     r / 8,    r / 4 - 64, r / 4 - 32,
                                     r / 4,   r / 4 + 8, r / 2,  r - 64,   r,          r + 8,
                                     1u << 20, (1u << 20) + 3, (3u << 20) + 5, max - 8, max};
  Receiver receiver(*p.server, 0, sizes.size(), 30s);
  for (size_t i = 0; i < sizes.size(); ++i) {
    Status s = sendPayload(*p.client, i, sizes[i], deadlineAfter(10s));
    ASSERT_EQ(s, Status::kOk) << "size " << sizes[i] << ": " << p.client->lastError();
  }
  flushUntil(*p.client, [&] { return receiver.done(); });
  receiver.join();
  EXPECT_EQ(receiver.received(), sizes.size()) << receiver.failure();
  // The exact maximum went through as one segment; one word more is refused up front.
  OutgoingMessage m;
  EXPECT_THROW((void)p.client->tryStartMessage(m, payloadWords(max) + 1), InvalidArgument);
}

/// Blob i of the multi-segment messages.
size_t blobSize(size_t i) { return 1000 * (i + 1) * (i + 1) + i; }

::testing::AssertionResult checkBlobs(IncomingMessage& in, size_t count, size_t (*size)(size_t)) {
  auto blobs = in.getRoot<::Note>().getBlobs();
  if (blobs.size() != count)
    return ::testing::AssertionFailure() << blobs.size() << " blobs, expected " << count;
  for (size_t i = 0; i < count; ++i) {
    auto b = blobs[static_cast<capnp::uint>(i)];
    std::vector<uint8_t> expect(size(i));
    fillPattern(expect.data(), expect.size(), i);
    if (b.size() != expect.size() || std::memcmp(expect.data(), b.begin(), b.size()) != 0)
      return ::testing::AssertionFailure() << "blob " << i << " differs";
  }
  return ::testing::AssertionSuccess();
}

TEST_P(Conformance, MultiSegmentMessagesArriveWhole) {
  auto p = connectPair();
  // Blobs of growing size built into a message whose first segment is tiny: Cap'n Proto
  // asks the transport for segment after segment. Then many segments close to the maximum.
  constexpr size_t kBlobs = 24;  // ~4.9 MB in total
  auto halfMiB = [](size_t) -> size_t { return 512 << 10; };
  std::atomic<bool> ok{false};
  std::jthread receiver([&] {
    IncomingMessage in;
    Status s = p.server->receive(in, deadlineAfter(10s));
    if (s != Status::kOk) {
      ADD_FAILURE() << statusName(s) << " " << p.server->lastError();
      return;
    }
    EXPECT_GE(in.segmentCount(), 3u);
    EXPECT_EQ(in.getRoot<::Note>().getId(), 99u);
    EXPECT_EQ(in.getRoot<::Note>().getText(), "multi-segment");
    EXPECT_TRUE(checkBlobs(in, kBlobs, blobSize));
    in.release();
    s = p.server->receive(in, deadlineAfter(10s));
    if (s != Status::kOk) {
      ADD_FAILURE() << statusName(s) << " " << p.server->lastError();
      return;
    }
    EXPECT_GE(in.segmentCount(), 4u);
    EXPECT_TRUE(checkBlobs(in, 10, halfMiB));
    ok = true;
  });
  {
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 4, deadlineAfter(5s)), Status::kOk);
    auto note = m.initRoot<::Note>();
    note.setId(99);
    note.setText("multi-segment");
    auto blobs = note.initBlobs(kBlobs);
    for (size_t i = 0; i < kBlobs; ++i) {
      auto b = blobs.init(static_cast<capnp::uint>(i), static_cast<capnp::uint>(blobSize(i)));
      fillPattern(b.begin(), b.size(), i);
    }
    ASSERT_EQ(p.client->send(m), Status::kOk);
  }
  {
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 4, deadlineAfter(5s)), Status::kOk);
    auto blobs = m.initRoot<::Note>().initBlobs(10);
    for (capnp::uint i = 0; i < 10; ++i) fillPattern(blobs.init(i, 512 << 10).begin(), 512 << 10, i);
    ASSERT_EQ(p.client->send(m), Status::kOk);
  }
  flushUntil(*p.client, [&] { return ok.load(); }, 10s);
  receiver.join();
  EXPECT_TRUE(ok);
}

/// A Payload whose data is `external` (Orphanage::referenceExternalData), not a copy.
void buildExternalPayload(OutgoingMessage& m, uint64_t seq, std::span<const uint8_t> external) {
  auto root = m.initRoot<bench::Payload>();
  root.setSeq(seq);
  root.setChecksum(checksum(external.data(), external.size()));
  root.adoptData(m.getOrphanage().referenceExternalData(
      capnp::Data::Reader(external.data(), external.size())));
}

struct ExternalBuffer {
  explicit ExternalBuffer(size_t bytes, uint64_t seq) : words((bytes + 7) / 8), size(bytes) {
    fillPattern(data(), size, seq);
  }
  uint8_t* data() { return reinterpret_cast<uint8_t*>(words.data()); }
  std::span<const uint8_t> span() { return {data(), size}; }
  std::vector<capnp::word> words;  // word-aligned, as referenceExternalData requires
  size_t size;
};

TEST_P(Conformance, ExternalDataArrivesIntact) {
  auto p = connectPair();
  const std::vector<size_t> sizes = {8, 100, 20 << 10, 64 << 10, (3u << 20) + 5};
  std::vector<std::unique_ptr<ExternalBuffer>> buffers;  // kept until received
  Receiver receiver(*p.server, 0, sizes.size(), 20s);
  for (size_t i = 0; i < sizes.size(); ++i) {
    buffers.push_back(std::make_unique<ExternalBuffer>(sizes[i], i));
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 8, deadlineAfter(5s)), Status::kOk);
    buildExternalPayload(m, i, buffers.back()->span());
    ASSERT_EQ(p.client->send(m), Status::kOk);
  }
  flushUntil(*p.client, [&] { return receiver.done(); });
  receiver.join();
  EXPECT_EQ(receiver.received(), sizes.size()) << receiver.failure();
}

TEST_P(Conformance, ExternalDataMayBeReusedOnceSent) {
  // Once send() returned and the message is gone, Cap'n Proto's contract lets the caller
  // reuse the external buffer: the transport must not read it later (e.g. at flush()).
  auto p = connectPair();
  ExternalBuffer ext(200 << 10, 7);
  {
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 8, deadlineAfter(5s)), Status::kOk);
    buildExternalPayload(m, 7, ext.span());
    ASSERT_EQ(p.client->send(m, /*flush=*/false), Status::kOk);
  }
  std::memset(ext.data(), 0xAA, ext.size);  // the buffer is the caller's again
  ASSERT_EQ(p.client->flush(), Status::kOk);
  EXPECT_TRUE(receivePayload(*p.server, 7, 200 << 10));
}

// ---------------------------------------------------------------------------------------
// OutgoingMessage::referenceData

/// Bytes for referenceData: a pattern, at an odd address (nothing asks for alignment).
struct Bytes {
  Bytes(size_t n, uint64_t seed) : storage(n + 1), size(n) { fillPattern(data(), n, seed); }
  uint8_t* data() { return storage.data() + 1; }
  kj::ArrayPtr<const kj::byte> ptr() { return {data(), size}; }
  void scribble() { std::memset(data(), 0xAA, size); }
  std::vector<uint8_t> storage;
  size_t size;
};

::testing::AssertionResult hasPattern(capnp::Data::Reader got, size_t size, uint64_t seed) {
  if (got.size() != size)
    return ::testing::AssertionFailure() << got.size() << " bytes, expected " << size;
  std::vector<uint8_t> want(size);
  fillPattern(want.data(), size, seed);
  if (size && std::memcmp(got.begin(), want.data(), size) != 0)
    return ::testing::AssertionFailure() << "the bytes differ from pattern " << seed;
  return ::testing::AssertionSuccess();
}

/// Receives one message on its own thread and checks it with `check`.
class OneReceiver final {
 public:
  OneReceiver(Connection& c, std::function<void(IncomingMessage&)> check)
      : thread_([this, &c, check = std::move(check)] {
          IncomingMessage in;
          status_ = c.receive(in, deadlineAfter(20s));
          if (status_ == Status::kOk) check(in);
          done_ = true;
        }) {}
  Status join() {
    thread_.join();
    return status_;
  }
  bool done() const { return done_.load(); }

 private:
  std::atomic<bool> done_{false};
  Status status_ = Status::kWouldBlock;
  std::jthread thread_;
};

TEST_P(Conformance, ReferencedDataArrivesInItsFields) {
  auto p = connectPair();
  // Large, odd-sized, small (copied at once), in a union, in a nested struct and in a list
  // element. 3 MiB is more than a socket takes at once, so tcp copies what the kernel has
  // not taken before send() returns; the buffers are overwritten right after it.
  Bytes first(3u << 20, 1), second((20u << 10) + 3, 2), blob((17u << 10) + 5, 3), small(100, 4),
      innerFirst(64u << 10, 5), replaced(32u << 10, 6), listed(24u << 10, 7);
  OneReceiver receiver(*p.server, [&](IncomingMessage& in) {
    auto root = in.getRoot<::Refs>();
    EXPECT_EQ(root.getId(), 7u);
    EXPECT_TRUE(hasPattern(root.getFirst(), first.size, 1));
    EXPECT_EQ(root.getNote(), "between");
    EXPECT_TRUE(hasPattern(root.getSecond(), second.size, 2));
    ASSERT_TRUE(root.getChoice().isBlob());
    EXPECT_TRUE(hasPattern(root.getChoice().getBlob(), blob.size, 3));
    EXPECT_EQ(root.getInner().getId(), 8u);
    EXPECT_TRUE(hasPattern(root.getInner().getFirst(), innerFirst.size, 5));
    EXPECT_TRUE(hasPattern(root.getInner().getSecond(), small.size, 4));
    ASSERT_EQ(root.getItems().size(), 2u);
    EXPECT_FALSE(root.getItems()[0].hasFirst());
    EXPECT_TRUE(hasPattern(root.getItems()[1].getFirst(), listed.size, 7));
    // tcp gathers all of it into the segment of its field: the reader sees one segment.
    // (The rings add what does not fit the record, the 3 MiB here, as a segment of its own.)
    if (overTcp()) {
      EXPECT_EQ(in.segmentCount(), 1u);
    }
  });
  {
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 64, deadlineAfter(5s)), Status::kOk);
    auto root = m.initRoot<::Refs>();
    root.setId(7);
    m.referenceData(root, "first", replaced.ptr());
    m.referenceData(root, "first", first.ptr());  // replaces the reference before
    root.setNote("between");
    m.referenceData(root, "second", second.ptr());
    m.referenceData(root.getChoice(), "blob", blob.ptr());  // makes blob the union's member
    EXPECT_TRUE(root.getChoice().isBlob());
    auto inner = root.initInner();
    inner.setId(8);
    m.referenceData(inner, "first", innerFirst.ptr());
    m.referenceData(inner, "second", small.ptr());
    auto items = root.initItems(2);  // a struct in a list
    m.referenceData(items[1], "first", listed.ptr());
    // Gathered at send() (by every transport here), till when the field reads as empty.
    EXPECT_EQ(root.getFirst().size(), 0u);
    ASSERT_EQ(p.client->send(m, /*flush=*/false), Status::kOk);
  }
  for (Bytes* b : {&first, &second, &blob, &small, &innerFirst, &replaced, &listed}) b->scribble();
  flushUntil(*p.client, [&] { return receiver.done(); });
  EXPECT_EQ(receiver.join(), Status::kOk) << p.server->lastError();
}

TEST_P(Conformance, AReferencedFieldSetAgainKeepsTheLaterValue) {
  auto p = connectPair();
  Bytes first(64u << 10, 1), second(32u << 10, 2), blob(20u << 10, 3), many(16u << 10, 9);
  constexpr int kChain = 10;  // more references than a message keeps: the last are copied
  OneReceiver receiver(*p.server, [&](IncomingMessage& in) {
    auto root = in.getRoot<::Refs>();
    EXPECT_EQ(root.getFirst(), capnp::Data::Reader(reinterpret_cast<const kj::byte*>("later"), 5));
    EXPECT_FALSE(root.hasSecond());
    ASSERT_TRUE(root.getChoice().isText());
    EXPECT_EQ(root.getChoice().getText(), "text wins");
    auto r = root.getInner();
    for (int i = 0; i < kChain; ++i, r = r.getInner())
      EXPECT_TRUE(hasPattern(r.getFirst(), many.size, 9)) << "link " << i;
  });
  {
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 64, deadlineAfter(5s)), Status::kOk);
    auto root = m.initRoot<::Refs>();
    m.referenceData(root, "first", first.ptr());
    root.setFirst(capnp::Data::Reader(reinterpret_cast<const kj::byte*>("later"), 5));
    m.referenceData(root, "second", second.ptr());
    root.disownSecond();
    m.referenceData(root.getChoice(), "blob", blob.ptr());
    root.getChoice().setText("text wins");
    auto link = root;
    for (int i = 0; i < kChain; ++i) {
      link = link.initInner();
      m.referenceData(link, "first", many.ptr());
    }
    ASSERT_EQ(p.client->send(m), Status::kOk);
  }
  many.scribble();
  flushUntil(*p.client, [&] { return receiver.done(); });
  EXPECT_EQ(receiver.join(), Status::kOk) << p.server->lastError();
}

TEST_P(Conformance, ReferenceDataRefusesWhatItCannotDoByName) {
  auto p = connectPair();
  Bytes bytes(20u << 10, 1);
  OutgoingMessage m;
  ASSERT_EQ(p.client->startMessage(m, 16, deadlineAfter(5s)), Status::kOk);
  auto root = m.initRoot<::Refs>();
  auto refused = [&](auto target, const char* field, const char* why) {
    try {
      m.referenceData(target, field, bytes.ptr());
      ADD_FAILURE() << field << ": accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr(field));
      EXPECT_THAT(e.what(), HasSubstr(why));
    }
  };
  refused(root, "nosuch", "has no field of that name");
  refused(root, "note", "is not of type Data");
  refused(root, "inner", "is not of type Data");
  capnp::MallocMessageBuilder other;
  auto foreign = other.initRoot<::Refs>();
  refused(foreign, "first", "is not part of this message");
  EXPECT_FALSE(foreign.hasFirst());
  // The message itself is unharmed, and sends.
  root.setId(3);
  m.referenceData(root, "first", bytes.ptr());
  ASSERT_EQ(p.client->send(m), Status::kOk);
  refused(root, "first", "the message is not open");
  IncomingMessage in;
  ASSERT_EQ(p.server->receive(in, deadlineAfter(5s)), Status::kOk) << p.server->lastError();
  EXPECT_EQ(in.getRoot<::Refs>().getId(), 3u);
  EXPECT_TRUE(hasPattern(in.getRoot<::Refs>().getFirst(), bytes.size, 1));
  EXPECT_EQ(in.segmentCount(), 1u) << "the data follows its field's segment";
}

TEST_P(Conformance, OversizeIsRefusedAndTheConnectionStaysUsable) {
  auto o = options();
  auto p = connectPair(o);
  const uint32_t tooManyWords = static_cast<uint32_t>(o.maxMessageBytes / 8 + 1);
  {
    OutgoingMessage m;
    EXPECT_THROW((void)p.client->tryStartMessage(m, tooManyWords), InvalidArgument);
    EXPECT_THROW((void)p.client->startMessage(m, tooManyWords, deadlineAfter(1s)),
                 InvalidArgument);
  }
  ASSERT_EQ(sendPayload(*p.client, 1, 1000, deadlineAfter(5s)), Status::kOk);
  {
    // Growing past the maximum while building: Cap'n Proto's allocation throws.
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 4, deadlineAfter(5s)), Status::kOk);
    auto root = m.initRoot<bench::Payload>();
    EXPECT_THROW(root.initData(static_cast<capnp::uint>(o.maxMessageBytes)), InvalidArgument);
  }
  // A message left unflushed, then one whose external data is over the limit: the refusal
  // must not disturb what was queued before it.
  ASSERT_EQ(sendPayload(*p.client, 2, 3000, deadlineAfter(5s), /*flush=*/false), Status::kOk);
  {
    ExternalBuffer ext(o.maxMessageBytes + 8, 3);
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 8, deadlineAfter(5s)), Status::kOk);
    buildExternalPayload(m, 3, ext.span());
    EXPECT_THROW((void)p.client->send(m), InvalidArgument);
  }
  {
    // Data given to referenceData over the limit: refused when copied in, or (tcp) at send().
    ExternalBuffer ext(o.maxMessageBytes - 8, 3);
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 8, deadlineAfter(5s)), Status::kOk);
    auto root = m.initRoot<bench::Payload>();
    root.setSeq(3);
    auto data = kj::arrayPtr(static_cast<const kj::byte*>(ext.data()), ext.size);
    try {
      m.referenceData(root, "data", data);
      (void)p.client->send(m);
      ADD_FAILURE() << "a message over the maximum was sent";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr("maximum message size"));
    }
  }
  ASSERT_EQ(sendPayload(*p.client, 4, 5000, deadlineAfter(5s)), Status::kOk);
  EXPECT_TRUE(receivePayload(*p.server, 1, 1000));
  EXPECT_TRUE(receivePayload(*p.server, 2, 3000));
  EXPECT_TRUE(receivePayload(*p.server, 4, 5000));
  IncomingMessage in;
  EXPECT_EQ(p.server->receive(in, deadlineAfter(100ms)), Status::kTimedOut)
      << "lastError: " << p.server->lastError();
  // And the other direction still works too.
  ASSERT_EQ(sendPayload(*p.server, 5, 10, deadlineAfter(5s)), Status::kOk);
  EXPECT_TRUE(receivePayload(*p.client, 5, 10));
}

TEST_P(Conformance, FlushedLargeMessageArrivesWithoutFurtherCalls) {
  // send(flush=true) publishes the whole message: the sender may go idle right after
  // (e.g. wait on something else) and the peer must still get all of it.
  // Here the peer starts reading only once send() has returned, so a transport cannot
  // have written everything during the call; it must still deliver what it accepted.
  if (overTcp())
    GTEST_SKIP() << "tcp: output the kernel did not take at send() moves on the connection's "
                    "next call or when its waitFd() event loop wakes (documented in tcp.h); "
                    "a sender that goes fully idle needs a writer thread, which zcrpc does "
                    "not have yet";
  auto p = connectPair();
  ASSERT_EQ(sendPayload(*p.client, 1, 4u << 20, deadlineAfter(5s)), Status::kOk);
  Receiver receiver(*p.server, 1, 1, 5s);
  receiver.join();  // meanwhile the sender makes no further call on its connection
  EXPECT_EQ(receiver.received(), 1u) << receiver.failure();
}

// ---------------------------------------------------------------------------------------
// Back-pressure

TEST_P(Conformance, SenderWaitsWhileThePeerDoesNotRead) {
  auto p = connectPair();
  constexpr size_t kSize = 1000;
  uint64_t sent = 0;
  // Fill until kWouldBlock, then wait for room with a deadline. Kernel buffers (tcp) may
  // still grow a little after the first kWouldBlock, so repeat until the wait times out.
  Status waited = Status::kOk;
  double waitedMs = 0;
  for (Bound rounds(50, 20s); rounds.next() && waited != Status::kTimedOut;) {
    Status last = Status::kOk;
    for (Bound b(500'000, 10s); b.next();) {
      last = trySendPayload(*p.client, sent, kSize);
      if (last != Status::kOk) break;
      ++sent;
    }
    ASSERT_EQ(last, Status::kWouldBlock) << "after " << sent << " messages nobody read";
    auto start = Clock::now();
    OutgoingMessage m;
    waited = p.client->startMessage(m, payloadWords(kSize), deadlineAfter(100ms));
    waitedMs = msSince(start);
    if (waited == Status::kOk) {
      buildPayload(m, sent++, kSize);
      ASSERT_EQ(p.client->send(m), Status::kOk);
    }
  }
  ASSERT_EQ(waited, Status::kTimedOut) << "room kept appearing though nobody read";
  EXPECT_GE(waitedMs, 90.0);
  EXPECT_LT(waitedMs, 3000.0);
  EXPECT_GT(sent, 0u);
  // Reading on the other side lets sending continue, nothing lost or reordered.
  constexpr uint64_t kMore = 300;
  Receiver receiver(*p.server, 0, sent + kMore, 30s);
  for (uint64_t seq = sent; seq < sent + kMore; ++seq)
    ASSERT_EQ(sendPayload(*p.client, seq, kSize, deadlineAfter(10s)), Status::kOk) << seq;
  flushUntil(*p.client, [&] { return receiver.done(); });
  receiver.join();
  EXPECT_EQ(receiver.received(), sent + kMore) << receiver.failure();
}

TEST_P(Conformance, BackPressureBoundsQueuedLargeMessages) {
  // Large messages must meet back-pressure too, not pile up in sender memory.
  auto p = connectPair();
  constexpr size_t kSize = 512 << 10;
  constexpr uint64_t kAllowed = uint64_t{64} << 20;    // generous: buffers + arena + kernel
  constexpr uint64_t kGiveUp = uint64_t{160} << 20;
  uint64_t sent = 0;
  Status last = Status::kOk;
  for (Bound b(kGiveUp / kSize, 20s); b.next();) {
    last = trySendPayload(*p.client, sent, kSize);
    if (last != Status::kOk) break;
    ++sent;
  }
  EXPECT_EQ(last, Status::kWouldBlock);
  EXPECT_LE(sent * kSize, kAllowed) << sent << " messages of " << kSize
                                    << " bytes were accepted while the peer read nothing";
  // Drain, flushing meanwhile as a sender with a backlog would.
  Receiver receiver(*p.server, 0, sent, 60s);
  flushUntil(*p.client, [&] { return receiver.done(); }, 60s);
  receiver.join();
  EXPECT_EQ(receiver.received(), sent) << receiver.failure();
}

// ---------------------------------------------------------------------------------------
// Disconnects

TEST_P(Conformance, CloseDeliversWhatWasSentThenDisconnects) {
  for (bool serverCloses : {false, true}) {
    SCOPED_TRACE(serverCloses ? "server end closes" : "client end closes");
    auto p = connectPair();
    Connection& closer = serverCloses ? *p.server : *p.client;
    Connection& other = serverCloses ? *p.client : *p.server;
    for (uint64_t seq = 0; seq < 20; ++seq)
      ASSERT_EQ(sendPayload(closer, seq, 10'000, deadlineAfter(5s)), Status::kOk);
    closer.close();
    closer.close();  // idempotent
    for (uint64_t seq = 0; seq < 20; ++seq) ASSERT_TRUE(receivePayload(other, seq, 10'000));
    EXPECT_TRUE(receiveDisconnect(other, 3s));
    // Both ends now refuse new work with kDisconnected, without throwing or waiting.
    OutgoingMessage m;
    EXPECT_EQ(other.tryStartMessage(m, 4), Status::kDisconnected);
    EXPECT_EQ(closer.tryStartMessage(m, 4), Status::kDisconnected);
    IncomingMessage in;
    EXPECT_EQ(closer.tryReceive(in), Status::kDisconnected);
    EXPECT_EQ(other.receive(in, deadlineAfter(50ms)), Status::kDisconnected);
  }
}

TEST_P(Conformance, CloseKeepsMessagesSentWithoutFlush) {
  // send(flush=false) publishes the message; only the wake-up may be deferred. A close()
  // right after must not drop it.
  for (bool serverCloses : {false, true}) {
    SCOPED_TRACE(serverCloses ? "server end closes" : "client end closes");
    auto p = connectPair();
    Connection& closer = serverCloses ? *p.server : *p.client;
    Connection& other = serverCloses ? *p.client : *p.server;
    for (uint64_t seq = 0; seq < 5; ++seq)
      ASSERT_EQ(sendPayload(closer, seq, 500, deadlineAfter(5s), /*flush=*/false), Status::kOk);
    closer.close();
    for (uint64_t seq = 0; seq < 5; ++seq) EXPECT_TRUE(receivePayload(other, seq, 500, 2s));
    EXPECT_TRUE(receiveDisconnect(other, 3s));
  }
}

TEST_P(Conformance, DestroyingAnEndWakesABlockedPeer) {
  for (WaitMode mode : {WaitMode::kBlocking, WaitMode::kSpinThenSleep}) {
    SCOPED_TRACE(std::string(waitModeName(mode)));
    auto o = options();
    o.waitMode = mode;
    auto p = connectPair(o);
    std::atomic<int> result{-1};
    std::atomic<double> tookMs{0};
    std::jthread waiter([&] {
      IncomingMessage in;
      auto start = Clock::now();
      result = static_cast<int>(p.server->receive(in, deadlineAfter(5s)));
      tookMs = msSince(start);
    });
    std::this_thread::sleep_for(50ms);
    p.client.reset();
    waiter.join();
    EXPECT_EQ(result.load(), static_cast<int>(Status::kDisconnected));
    EXPECT_LT(tookMs.load(), 2000.0);
  }
}

// ---------------------------------------------------------------------------------------
// Malformed frames from a hostile peer

std::vector<std::byte> headerOnly(uint32_t frameBytes) {
  std::vector<std::byte> bytes(kFrameHeaderBytes);
  FrameHeader h{};
  h.frameBytes = frameBytes;
  h.kind = static_cast<uint8_t>(FrameKind::kData);
  h.segmentCount = 1;
  h.tableOffset = frameBytes >= 8 ? frameBytes - 8 : 0;
  std::memcpy(bytes.data(), &h, sizeof h);
  return bytes;
}

TEST_P(Conformance, MalformedFramesAreRefused) {
  if (!transport().injectGarbage) GTEST_SKIP() << transport().noGarbageReason;
  auto o = options();
  auto expectRefused = [&](GarbagePeer& g, const std::string& text) {
    auto start = Clock::now();
    EXPECT_TRUE(receiveDisconnect(g.victim(), 3s));
    EXPECT_LT(msSince(start), 3000.0);
    EXPECT_THAT(g.victim().lastError(), HasSubstr(text));
  };
  {
    SCOPED_TRACE("a header claiming ~4 GiB, far above the 8 MiB maximum");
    auto g = transport().injectGarbage(o);
    uint64_t rss = residentBytes(), peak = peakVirtualBytes();
    g->write(headerOnly(0xFFFF'FFF8u));
    expectRefused(*g, "exceeds the maximum message size");
    EXPECT_LT(residentBytes(), rss + (uint64_t{16} << 20)) << "RSS jumped";
    EXPECT_LT(peakVirtualBytes(), peak + (uint64_t{1} << 30))
        << "the claimed size was allocated before it was checked";
  }
  {
    SCOPED_TRACE("a header claiming just above the maximum");
    auto g = transport().injectGarbage(o);
    // Above what any transport allows a frame beyond its segments (tcp: table, trace
    // context, an extension area of 16 KiB and up to 32 x 56 bytes of blob padding).
    g->write(headerOnly(static_cast<uint32_t>(o.maxMessageBytes + kFrameHeaderBytes +
                                              kMaxExtensionBytes + 4096)));
    expectRefused(*g, "exceeds the maximum message size");
  }
  {
    SCOPED_TRACE("a length that is not a multiple of 8");
    auto g = transport().injectGarbage(o);
    g->write(headerOnly(41));
    expectRefused(*g, "malformed");
  }
  {
    SCOPED_TRACE("a valid frame, then one with no segments");
    auto g = transport().injectGarbage(o);
    g->write(validEmptyFrame(1));
    auto bad = validEmptyFrame(2);
    bad[6] = std::byte{0};  // segmentCount = 0
    g->write(bad);
    IncomingMessage in;
    ASSERT_EQ(g->victim().receive(in, deadlineAfter(3s)), Status::kOk);
    EXPECT_EQ(in.header().callId, 1u);
    in.release();
    expectRefused(*g, "segment count 0");
  }
  {
    SCOPED_TRACE("a frame whose table points into its header");
    auto g = transport().injectGarbage(o);
    auto bad = validEmptyFrame(3);
    SegmentEntry e{1, 0};
    std::memcpy(bad.data() + 40, &e, sizeof e);
    g->write(bad);
    expectRefused(*g, "overlaps");
  }
  {
    SCOPED_TRACE("a large frame cut short by the peer's end of stream");
    auto g = transport().injectGarbage(o);
    g->write(headerOnly(1u << 20));
    std::vector<std::byte> some(4096);
    g->write(some);
    ::shutdown(g->rawFd(), SHUT_WR);
    EXPECT_TRUE(receiveDisconnect(g->victim(), 3s));
  }
}

// ---------------------------------------------------------------------------------------
// Many connections

TEST_P(Conformance, ManyConnectionsAtOnce) {
  constexpr size_t kConnections = 32;
  constexpr uint64_t kRounds = 20;
  auto o = options();
  o.ringBytes = 64 << 10;
  o.arenaBytes = 1 << 20;
  o.maxMessageBytes = 512 << 10;
  std::vector<ConnectionPair> pairs(kConnections);
  if (hasListener()) {
    auto listener = transport().makeListener(o);
    const std::string endpoint = listener->endpoint();
    std::atomic<size_t> accepted{0};
    std::jthread acceptor([&] {
      Bound bound(kConnections, 20s);
      for (size_t i = 0; i < kConnections && bound.next(); ++i) {
        auto c = listener->accept(bound.deadline());
        if (!c) return;
        pairs[i].server = std::move(c);
        ++accepted;
      }
    });
    for (size_t i = 0; i < kConnections; ++i) ASSERT_TRUE(pairs[i].client = transport().connect(endpoint, o));
    acceptor.join();
    ASSERT_EQ(accepted.load(), kConnections);
    EXPECT_TRUE(listener->refusals().empty());
  } else {
    for (auto& p : pairs) p = transport().makePair(o);
  }
  // Accept order matches connect order (connects are sequential), so pairs line up; each
  // round every client sends, every server answers, every client checks the answer.
  for (uint64_t round = 0; round < kRounds; ++round) {
    for (size_t i = 0; i < kConnections; ++i)
      ASSERT_EQ(sendPayload(*pairs[i].client, i * 1000 + round, (round * 97 + i) % 4000,
                            deadlineAfter(5s)),
                Status::kOk);
    for (size_t i = 0; i < kConnections; ++i) {
      ASSERT_TRUE(receivePayload(*pairs[i].server, i * 1000 + round)) << "connection " << i;
      ASSERT_EQ(sendPayload(*pairs[i].server, i * 1000 + round, round, deadlineAfter(5s)),
                Status::kOk);
    }
    for (size_t i = 0; i < kConnections; ++i)
      ASSERT_TRUE(receivePayload(*pairs[i].client, i * 1000 + round, round)) << "connection " << i;
  }
}

// ---------------------------------------------------------------------------------------
// Wait modes and wait descriptors

TEST_P(Conformance, EveryWaitModeExchangesAndTimesOut) {
  for (WaitMode mode : {WaitMode::kBusyPoll, WaitMode::kSpinThenSleep, WaitMode::kBlocking}) {
    SCOPED_TRACE(std::string(waitModeName(mode)));
    auto o = options();
    o.waitMode = mode;
    auto p = connectPair(o);
    // Busy-poll ping-pong on a loaded 2-core machine costs a time slice per round trip.
    const uint64_t kCount = mode == WaitMode::kBusyPoll ? 100 : 300;
    std::jthread echo([&] {
      Bound bound(kCount, 20s);
      for (uint64_t i = 0; i < kCount && bound.next(); ++i) {
        IncomingMessage in;
        if (p.server->receive(in, deadlineAfter(5s)) != Status::kOk) return;
        uint64_t seq = in.getRoot<bench::Payload>().getSeq();
        size_t size = in.getRoot<bench::Payload>().getData().size();
        in.release();
        if (sendPayload(*p.server, seq, size, deadlineAfter(5s)) != Status::kOk) return;
      }
    });
    auto start = Clock::now();
    for (uint64_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(sendPayload(*p.client, i, i % 500, deadlineAfter(5s)), Status::kOk);
      ASSERT_TRUE(receivePayload(*p.client, i, i % 500));
    }
    echo.join();
    EXPECT_LT(msSince(start), 15'000.0);

    // Nothing to read: the wait ends at its deadline, neither early nor much later.
    IncomingMessage in;
    start = Clock::now();
    EXPECT_EQ(p.client->receive(in, deadlineAfter(80ms)), Status::kTimedOut);
    EXPECT_GE(msSince(start), 75.0);
    EXPECT_LT(msSince(start), 2000.0);

    // A receiver already waiting is woken by a message that comes later.
    std::atomic<int64_t> receivedAt{0};
    std::jthread waiter([&] {
      IncomingMessage m;
      if (p.server->receive(m, deadlineAfter(3s)) == Status::kOk)
        receivedAt = Clock::now().time_since_epoch().count();
    });
    std::this_thread::sleep_for(30ms);
    auto sentAt = Clock::now();
    ASSERT_EQ(sendPayload(*p.client, 5, 10, deadlineAfter(1s)), Status::kOk);
    waiter.join();
    ASSERT_NE(receivedAt.load(), 0) << "the waiting receiver never got the message";
    auto latency = Clock::time_point(Clock::duration(receivedAt.load())) - sentAt;
    EXPECT_LT(latency, 1000ms);
  }
}

bool readable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) > 0;
}

TEST_P(Conformance, WaitFdSignalsMessagesAndHangUp) {
  auto o = options();
  o.waitMode = WaitMode::kBlocking;
  auto p = connectPair(o);
  Connection& c = *p.server;
  ASSERT_TRUE(c.armWait()) << "nothing has arrived, so a sleep is needed";
  ASSERT_EQ(sendPayload(*p.client, 1, 100, deadlineAfter(1s)), Status::kOk);
  EXPECT_TRUE(readable(c.waitFd(), 2000ms));
  c.disarmWait();
  IncomingMessage in;
  Status s = Status::kWouldBlock;
  for (Bound b(100'000, 2s); b.next() && s == Status::kWouldBlock;) s = c.tryReceive(in);
  ASSERT_EQ(s, Status::kOk);
  EXPECT_TRUE(checkPayload(in, 1, 100));
  in.release();
  // A message already there: armWait says so instead of sleeping.
  ASSERT_EQ(sendPayload(*p.client, 2, 100, deadlineAfter(1s)), Status::kOk);
  // A message already sent: either armWait says no sleep is needed, or the descriptor is
  // already readable (tcp: the bytes wait in the kernel), so no wake-up is lost.
  if (c.armWait()) {
    EXPECT_TRUE(readable(c.waitFd(), 0ms)) << "a sleep here would miss message 2";
  }
  c.disarmWait();
  EXPECT_TRUE(receivePayload(c, 2, 100));
  // The peer going away also wakes the descriptor.
  ASSERT_TRUE(c.armWait());
  p.client->close();
  EXPECT_TRUE(readable(c.waitFd(), 2000ms));
  c.disarmWait();
  s = Status::kWouldBlock;
  for (Bound b(100'000, 2s); b.next() && s == Status::kWouldBlock;) s = c.tryReceive(in);
  EXPECT_EQ(s, Status::kDisconnected);
}

// ---------------------------------------------------------------------------------------
// Leases

TEST_P(Conformance, LeasesAreReleasedInAnyOrder) {
  auto o = options();
  o.maxLeases = 8;
  auto p = connectPair(o);
  std::vector<IncomingMessage> held(8);
  for (uint64_t seq = 0; seq < 9; ++seq)
    ASSERT_EQ(sendPayload(*p.client, seq, 2000 + seq, deadlineAfter(1s)), Status::kOk);
  for (uint64_t seq = 0; seq < 8; ++seq) {
    ASSERT_EQ(p.server->receive(held[seq], deadlineAfter(2s)), Status::kOk);
    ASSERT_TRUE(checkPayload(held[seq], seq, 2000 + seq));
  }
  // Every lease is taken: the ninth message waits (it is not lost).
  IncomingMessage ninth;
  EXPECT_EQ(p.server->receive(ninth, deadlineAfter(50ms)), Status::kTimedOut);
  for (size_t i : {5u, 2u, 7u, 1u, 6u, 3u, 4u, 0u}) {
    // Each lease still reads its own bytes until it is released.
    for (size_t j = 0; j < 8; ++j) {
      if (held[j].valid()) {
        ASSERT_TRUE(checkPayload(held[j], j, 2000 + j));
      }
    }
    held[i].release();
  }
  EXPECT_TRUE(receivePayload(*p.server, 8, 2008));
}

/// An extension area of `records` records (1 .. bytes / 8) filling `bytes` bytes (whole
/// words): record r has type 100 + r and payload words (seed << 32 | word index).
std::vector<capnp::word> extensionArea(size_t bytes, size_t records, uint64_t seed) {
  std::vector<capnp::word> area(bytes / 8);
  auto* words = reinterpret_cast<uint64_t*>(area.data());
  size_t at = 0;
  for (size_t r = 0; r < records; ++r) {
    const size_t recordWords = r + 1 < records ? 1 + (area.size() - records) / records
                                               : area.size() - at;
    const ExtensionHeader h{static_cast<uint16_t>(100 + r), 0,
                            static_cast<uint32_t>(recordWords * 8)};
    std::memcpy(&words[at], &h, sizeof h);
    for (size_t w = 1; w < recordWords; ++w) words[at + w] = seed << 32 | (at + w);
    at += recordWords;
  }
  return area;
}

TEST_P(Conformance, ExtensionAreasArriveWithTheirMessage) {
  // The default buffers, and the smallest (4 KiB: the area may not fit after the table
  // in the send buffer, and the ring carries less).
  auto small = options();
  small.ringBytes = 4096;
  for (const ConnectionOptions& o : {options(), small}) {
  SCOPED_TRACE(::testing::Message() << "ring/buffer of " << o.ringBytes << " bytes");
  auto p = connectPair(o);
  const uint32_t most = p.client->maxExtensionBytes();
  ASSERT_GE(most, 64u);
  ASSERT_LE(most, kMaxExtensionBytes);
  struct Case {
    size_t bytes, records, payload;
    bool traced;
  };
  // Small and large areas; with a trace context; with small, multi-segment and large
  // messages (whose segments may lie in an arena or a buffer of their own).
  const std::vector<Case> cases = {{8, 1, 0, false},     {24, 2, 100, true},
                                   {most, 8, 10, false}, {most, 3, 200000, true},
                                   {64, 1, 3000, false}, {most / 2, 5, 0, true}};
  uint64_t seq = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.bytes << " bytes in " << c.records << " records, "
                                      << c.payload << " bytes of payload");
    const size_t records = std::min(c.records, c.bytes / 8);  // a record takes a word at least
    const auto area = extensionArea(c.bytes, records, ++seq);
    {
      OutgoingMessage m;
      ASSERT_EQ(p.client->startMessage(m, 4, deadlineAfter(5s)), Status::kOk);
      auto root = m.initRoot<bench::Payload>();
      root.setSeq(seq);
      std::vector<uint8_t> data(c.payload);
      fillPattern(data.data(), data.size(), seq);
      root.setData(capnp::Data::Reader(data.data(), data.size()));
      if (c.traced) m.setTrace({seq, seq + 1});
      m.setExtensions(kj::arrayPtr(area.data(), area.size()));
      ASSERT_EQ(p.client->send(m), Status::kOk);
    }
    IncomingMessage in;
    ASSERT_EQ(p.server->receive(in, deadlineAfter(10s)), Status::kOk) << p.server->lastError();
    EXPECT_EQ(in.getRoot<bench::Payload>().getSeq(), seq);
    EXPECT_EQ(in.getRoot<bench::Payload>().getData().size(), c.payload);
    EXPECT_EQ(in.trace().traceId, c.traced ? seq : 0);
    ASSERT_EQ(in.extensions().size(), records);
    size_t at = 0;
    for (size_t r = 0; r < records; ++r) {
      const ExtensionRecord& rec = in.extensions()[r];
      EXPECT_EQ(rec.type, 100 + r);
      EXPECT_EQ(rec.offset, at);
      auto bytes = in.extensionBytes(rec);
      ASSERT_EQ(bytes.size(), rec.bytes);
      EXPECT_EQ(std::memcmp(bytes.data(), reinterpret_cast<const std::byte*>(area.data()) + at,
                            rec.bytes),
                0);
      at += rec.bytes;
    }
    EXPECT_EQ(at, c.bytes);
    // A heap copy keeps its records.
    in.moveToHeap();
    ASSERT_EQ(in.extensions().size(), records);
    EXPECT_EQ(std::memcmp(in.extensionBytes(in.extensions()[0]).data(), area.data(),
                          in.extensions()[0].bytes),
              0);
  }
  }
}

TEST_P(Conformance, AnExtensionAreaThePeerWouldRefuseIsRefusedByNameOnSend) {
  auto p = connectPair();
  // Too large for the transport; more records than a frame may carry; a record that
  // claims more than the area holds; a record with its reserved field set.
  auto tooMany = extensionArea(8 * (kMaxExtensionRecords + 1), kMaxExtensionRecords + 1, 1);
  auto overlong = extensionArea(16, 1, 1);
  reinterpret_cast<ExtensionHeader*>(overlong.data())->bytes = 24;
  auto reserved = extensionArea(16, 1, 1);
  reinterpret_cast<ExtensionHeader*>(reserved.data())->reserved = 1;
  const std::pair<std::vector<capnp::word>, const char*> cases[] = {
      {extensionArea(p.client->maxExtensionBytes() + 8, 1, 1), "bytes exceeds the"},
      {tooMany, "has more than 8 records"},
      {overlong, "record 0 claims 24 bytes"},
      {reserved, "record 0 has a non-zero reserved field"}};
  uint64_t seq = 0;
  for (const auto& [area, why] : cases) {
    SCOPED_TRACE(why);
    {
      OutgoingMessage m;
      ASSERT_EQ(p.client->startMessage(m, 4, deadlineAfter(5s)), Status::kOk);
      m.initRoot<bench::Payload>().setSeq(1);
      m.setExtensions(kj::arrayPtr(area.data(), area.size()));
      EXPECT_THROW(
          {
            try {
              (void)p.client->send(m);
            } catch (const InvalidArgument& e) {
              EXPECT_THAT(e.what(), ::testing::HasSubstr("extension"));
              EXPECT_THAT(e.what(), ::testing::HasSubstr(why));
              EXPECT_THAT(e.what(), ::testing::HasSubstr(p.client->endpoint()));
              throw;
            }
          },
          InvalidArgument);
    }
    // The message was dropped unsent; the connection goes on.
    ++seq;
    ASSERT_EQ(sendPayload(*p.client, seq, 100, deadlineAfter(5s)), Status::kOk);
    EXPECT_TRUE(receivePayload(*p.server, seq, 100));
  }
}

TEST_P(Conformance, AMessageMovedToTheHeapGivesItsSpaceBack) {
  auto o = options();
  auto p = connectPair(o);
  const size_t size = o.ringBytes / 8;  // in the ring, not in a buffer of its own
  ASSERT_EQ(sendPayload(*p.client, 1, size, deadlineAfter(2s)), Status::kOk);
  IncomingMessage kept;
  ASSERT_EQ(p.server->receive(kept, deadlineAfter(2s)), Status::kOk);
  EXPECT_FALSE(kept.onHeap());
  const uint64_t callId = kept.header().callId;
  kept.moveToHeap();
  ASSERT_TRUE(kept.onHeap());
  kept.moveToHeap();  // a heap copy stays as it is
  EXPECT_EQ(kept.header().callId, callId);
  // Three rings' worth through the ring while the copy is kept: held in place, it would
  // stop the ring reclaiming space after it, and the sender would wait for room.
  for (uint64_t seq = 2; seq < 26; ++seq) {
    ASSERT_EQ(sendPayload(*p.client, seq, size, deadlineAfter(2s)), Status::kOk) << seq;
    ASSERT_TRUE(receivePayload(*p.server, seq, size, 2s));
  }
  EXPECT_TRUE(checkPayload(kept, 1, size));
  kept.release();
  EXPECT_FALSE(kept.valid());
}

TEST_P(Conformance, RandomSizesWithHeldLeases) {
  auto o = options();
  o.maxLeases = 16;
  auto p = connectPair(o);
  constexpr uint64_t kCount = 1500;
  const size_t top = 2 * size_t{o.ringBytes};
  std::atomic<bool> failed{false}, receiverDone{false};
  std::jthread sender([&] {
    std::mt19937_64 rng(12345);
    Bound bound(kCount, 30s);
    for (uint64_t seq = 0; seq < kCount && bound.next() && !failed; ++seq) {
      // Log-uniform sizes; sometimes a small first segment, so data spills into more.
      size_t size = static_cast<size_t>(std::exp2(std::uniform_real_distribution<>(0, std::log2(double(top)))(rng)));
      if (rng() % 5 == 0) size = 0;
      uint32_t hint = rng() % 3 == 0 ? 4 : 0;
      if (sendPayload(*p.client, seq, size, deadlineAfter(10s), rng() % 4 != 0, hint) != Status::kOk) {
        failed = true;
        return;
      }
    }
    flushUntil(*p.client, [&] { return failed.load() || receiverDone.load(); });
  });
  std::mt19937_64 rng(777);
  std::deque<std::pair<uint64_t, IncomingMessage>> window;
  Bound bound(kCount * 2, 30s);
  for (uint64_t seq = 0; seq < kCount && bound.next(); ++seq) {
    IncomingMessage in;
    Status s = Status::kTimedOut;
    // Held leases may hold back the next message (space is reclaimed in arrival order):
    // then give back the oldest, as a receiver must, and wait again.
    for (Bound retry(64, 10s); retry.next();) {
      s = p.server->receive(in, deadlineAfter(window.empty() ? 10s : 50ms));
      if (s != Status::kTimedOut || window.empty()) break;
      window.pop_front();
    }
    if (s != Status::kOk) {
      failed = true;
      FAIL() << "seq " << seq << ": " << statusName(s) << " " << p.server->lastError();
    }
    if (!checkPayload(in, seq)) {
      failed = true;
      FAIL() << checkPayload(in, seq).message();
    }
    window.emplace_back(seq, std::move(in));
    size_t keep = rng() % 7;
    while (window.size() > keep) {
      // Release a random one of the held leases, after re-checking it is still intact.
      size_t k = rng() % window.size();
      auto& [heldSeq, msg] = window[k];
      if (!checkPayload(msg, heldSeq)) {
        failed = true;
        FAIL() << "held lease overwritten: " << checkPayload(msg, heldSeq).message();
      }
      window.erase(window.begin() + static_cast<long>(k));
    }
  }
  receiverDone = true;
}

}  // namespace
}  // namespace zcrpc::conformance
