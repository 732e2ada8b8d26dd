// tcp:// beyond the shared conformance suite: addresses and port 0, EOF and reset, connect
// and handshake timeouts, peers that do not speak zcrpc, reconnecting after a server
// restart, access tokens, negotiated message sizes, and a server that keeps accepting
// while one client stays silent. Every peer that misbehaves is a raw socket in this test.
#include <linux/tcp.h>  // struct tcp_info with tcpi_data_segs_in (glibc's lacks it)
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "conformance/support.h"
#include "test.capnp.h"
#include "zcrpc/tcp.h"

namespace zcrpc::conformance {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

TcpOptions tcpOptions(std::string token = {}) {
  TcpOptions t;
  t.connection = tcpTransport().options;
  t.connection.connectTimeout = 2000ms;
  t.token = std::move(token);
  t.allowPlaintextToken = true;  // these tests are about plain tcp; tls_tcp_test covers TLS
  return t;
}

/// A Server with EchoService behind one tcp listener.
struct TcpServer {
  explicit TcpServer(const std::string& hostPort, const TcpOptions& o = tcpOptions(),
                     ServerOptions so = {})
      : server(so) {
    server.addService(service);
    auto l = listenTcp(hostPort, o);
    listener = l.get();
    endpoint = l->endpoint();
    server.addListener(std::move(l));
    server.start();
  }
  EchoService service;
  Server server;
  const Listener* listener = nullptr;  // owned by `server`; refusals() locks internally
  std::string endpoint;
};

/// listen, accept in a thread, connect: a connected pair over `hostPort`.
ConnectionPair tcpPair(const std::string& hostPort, const TcpOptions& o = tcpOptions()) {
  auto listener = listenTcp(hostPort, o);
  const std::string endpoint = listener->endpoint();
  ConnectionPair p;
  std::jthread acceptor([&] { p.server = listener->accept(deadlineAfter(5s)); });
  p.client = connectTcp(endpoint, o);
  acceptor.join();
  if (!p.server) throw Failed("no connection accepted on " + endpoint);
  return p;
}

void exchange(ConnectionPair& p, uint64_t count = 20) {
  for (uint64_t i = 0; i < count; ++i) {
    ASSERT_EQ(sendPayload(*p.client, i, i * 100, deadlineAfter(2s)), Status::kOk);
    ASSERT_TRUE(receivePayload(*p.server, i, i * 100));
    ASSERT_EQ(sendPayload(*p.server, i, i * 50, deadlineAfter(2s)), Status::kOk);
    ASSERT_TRUE(receivePayload(*p.client, i, i * 50));
  }
}

/// A raw socket that has passed the handshake of a real listener; `conn` is the
/// listener's side of it.
struct RawPeer {
  explicit RawPeer(const TcpOptions& o = tcpOptions()) : listener(listenTcp("127.0.0.1:0", o)) {
    raw = rawConnect(portOf(listener->endpoint()));
    if (!raw || !sendHello(raw.get(), o.token, o.connection.maxMessageBytes))
      throw Failed("raw peer could not connect");
    conn = listener->accept(deadlineAfter(3s));
    TcpAnswer answer;
    if (!conn || !readExactly(raw.get(), &answer, sizeof answer) || !answer.accepted)
      throw Failed("raw peer was not accepted");
  }
  void write(const std::vector<std::byte>& bytes) {
    ASSERT_TRUE(writeExactly(raw.get(), bytes.data(), bytes.size()));
  }
  /// Closes the raw end with SO_LINGER 0: the kernel sends a reset instead of a FIN.
  void reset() {
    linger l{1, 0};
    ::setsockopt(raw.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
    raw.reset();
  }
  std::unique_ptr<Listener> listener;
  OwnedFd raw;
  std::unique_ptr<Connection> conn;
};

/// A port on 127.0.0.1 nobody listens on (bound, read, released).
uint16_t unusedPort() {
  OwnedFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return 0;
  return ntohs(a.sin_port);
}

/// A raw listening socket on 127.0.0.1 with `backlog`, never accepting by itself.
OwnedFd rawListener(int backlog, uint16_t& port) {
  OwnedFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(fd.get(), backlog) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return {};
  port = ntohs(a.sin_port);
  return fd;
}

/// The listener's refusals once there are at least `count` (a refusal is recorded just
/// after the refused peer is answered, so it may lag the peer's view by a moment).
std::vector<std::string> refusalsOnceThereAre(const Listener& l, size_t count) {
  auto r = l.refusals();
  for (Bound b(1000, 2s); b.next() && r.size() < count; r = l.refusals())
    std::this_thread::sleep_for(2ms);
  return r;
}

// ---------------------------------------------------------------------------------------
// Addresses

TEST(Tcp, Ipv4PortZeroReportsTheRealPort) {
  auto l = listenTcp("tcp://127.0.0.1:0", tcpOptions());
  const std::string ep = l->endpoint();
  EXPECT_THAT(ep, MatchesRegex("tcp://127\\.0\\.0\\.1:[0-9]+"));
  ASSERT_NE(portOf(ep), 0);
  l.reset();
  auto p = tcpPair("tcp://127.0.0.1:0");
  exchange(p);
  // The scheme is optional.
  auto q = tcpPair("127.0.0.1:0");
  exchange(q, 3);
}

TEST(Tcp, Ipv6PortZeroReportsTheRealPort) {
  std::unique_ptr<Listener> l;
  try {
    l = listenTcp("tcp://[::1]:0", tcpOptions());
  } catch (const Failed& e) {
    GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
  }
  const std::string ep = l->endpoint();
  EXPECT_THAT(ep, MatchesRegex("tcp://\\[::1\\]:[0-9]+"));
  ASSERT_NE(portOf(ep), 0);
  ConnectionPair p;
  std::jthread acceptor([&] { p.server = l->accept(deadlineAfter(5s)); });
  p.client = connectTcp(ep, tcpOptions());
  acceptor.join();
  ASSERT_TRUE(p.server);
  exchange(p);
}

TEST(Tcp, MalformedEndpointsAreInvalidArguments) {
  for (const char* bad : {"tcp://127.0.0.1", "tcp://[::1", "tcp://[::1]0", "tcp://127.0.0.1:99999",
                          "tcp://127.0.0.1:http", "tcp://127.0.0.1:"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(listenTcp(bad, tcpOptions()), InvalidArgument);
    EXPECT_THROW(connectTcp(bad, tcpOptions()), InvalidArgument);
  }
  auto o = tcpOptions();
  o.connection.ringBytes = 5000;  // not a power of two
  EXPECT_THROW(listenTcp("127.0.0.1:0", o), InvalidArgument);
  EXPECT_THROW(connectTcp("127.0.0.1:1", o), InvalidArgument);
}

TEST(Tcp, DeadPeerTimeoutOutsideItsRangeIsRefusedByName) {
  for (auto bad : {std::chrono::milliseconds(500), std::chrono::milliseconds(25h)}) {
    auto o = tcpOptions();
    o.deadPeerTimeout = bad;
    for (int side = 0; side < 2; ++side) {
      std::string what;
      try {
        if (side == 0) (void)listenTcp("127.0.0.1:0", o);
        else (void)connectTcp("127.0.0.1:1", o);
      } catch (const InvalidArgument& e) {
        what = e.what();
      }
      EXPECT_THAT(what, HasSubstr("dead-peer timeout of " + std::to_string(bad.count()) + " ms"))
          << (side == 0 ? "listen" : "connect");
    }
  }
  // 0 (the kernel's defaults) and the range's ends are taken.
  for (auto good : {std::chrono::milliseconds(0), std::chrono::milliseconds(1s),
                    std::chrono::milliseconds(24h)}) {
    auto o = tcpOptions();
    o.deadPeerTimeout = good;
    auto p = tcpPair("127.0.0.1:0", o);
    exchange(p);
  }
}

// ---------------------------------------------------------------------------------------
// End of stream and reset

TEST(Tcp, EndOfStreamAfterFramesIsDisconnected) {
  RawPeer peer;
  peer.write(validEmptyFrame(1));
  peer.write(validEmptyFrame(2));
  ::shutdown(peer.raw.get(), SHUT_WR);
  IncomingMessage in;
  ASSERT_EQ(peer.conn->receive(in, deadlineAfter(2s)), Status::kOk);
  EXPECT_EQ(in.header().callId, 1u);
  ASSERT_EQ(peer.conn->receive(in, deadlineAfter(2s)), Status::kOk);
  EXPECT_EQ(in.header().callId, 2u);
  in.release();
  EXPECT_TRUE(receiveDisconnect(*peer.conn, 2s));
  EXPECT_THAT(peer.conn->lastError(), HasSubstr("closed"));
  OutgoingMessage m;
  EXPECT_EQ(peer.conn->tryStartMessage(m, 4), Status::kDisconnected);
}

TEST(Tcp, ExternalDataTheKernelDidNotTakeIsCopiedBeforeSendReturns) {
  // A referenced blob larger than the socket buffers take while the peer is not reading:
  // send() writes what the kernel takes from the caller's memory and must copy the rest
  // before returning, since the caller may then reuse the buffer.
  auto p = tcpPair("127.0.0.1:0");
  constexpr size_t kBytes = 6u << 20;
  std::vector<capnp::word> blob(kBytes / 8);
  auto* bytes = reinterpret_cast<uint8_t*>(blob.data());
  fillPattern(bytes, kBytes, 7);
  {
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 8, deadlineAfter(2s)), Status::kOk);
    auto root = m.initRoot<bench::Payload>();
    root.setSeq(7);
    root.setChecksum(checksum(bytes, kBytes));
    root.adoptData(m.getOrphanage().referenceExternalData(capnp::Data::Reader(bytes, kBytes)));
    ASSERT_EQ(p.client->send(m), Status::kOk);
  }
  std::memset(bytes, 0xAA, kBytes);  // the buffer is the caller's again
  std::atomic<bool> done{false};
  ::testing::AssertionResult got = ::testing::AssertionFailure() << "nothing received";
  std::jthread receiver([&] {
    got = receivePayload(*p.server, 7, kBytes, 20s);
    done = true;
  });
  flushUntil(*p.client, [&] { return done.load(); }, 20s);
  receiver.join();
  EXPECT_TRUE(got);
}

TEST(Tcp, ABlobWrittenFromTheCallersMemoryArrivesAtItsOffsetInACacheLine) {
  // A referenced blob is written at a position in the stream that matches its address
  // modulo 64 (the kernel's copy into its pages runs fastest so): a frame received at the
  // start of the receive buffer holds it at the same offset within a cache line as the
  // sender's, whatever bytes come before it in the frame, and intact.
  auto p = tcpPair("127.0.0.1:0");
  constexpr size_t kBytes = 32u << 10;  // written from the caller's memory (from 16 KiB)
  std::vector<capnp::word> store((kBytes + 128) / 8 + 8);
  auto* aligned = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(store.data()) + 63) & ~uintptr_t{63});
  for (size_t offset = 0; offset < 64; offset += 8) {
    SCOPED_TRACE("blob at offset " + std::to_string(offset) + " of a cache line");
    uint8_t* bytes = aligned + offset;
    fillPattern(bytes, kBytes, static_cast<uint8_t>(offset));
    {
      OutgoingMessage m;
      ASSERT_EQ(p.client->startMessage(m, 8, deadlineAfter(2s)), Status::kOk);
      auto root = m.initRoot<bench::Payload>();
      root.setSeq(offset);
      root.adoptData(m.getOrphanage().referenceExternalData(capnp::Data::Reader(bytes, kBytes)));
      ASSERT_EQ(p.client->send(m), Status::kOk);
    }
    IncomingMessage in;
    ASSERT_EQ(p.server->receive(in, deadlineAfter(5s)), Status::kOk);
    auto root = in.getRoot<bench::Payload>();
    EXPECT_EQ(root.getSeq(), offset);
    capnp::Data::Reader data = root.getData();
    ASSERT_EQ(data.size(), kBytes);
    EXPECT_EQ(std::memcmp(data.begin(), bytes, kBytes), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(data.begin()) % 64, offset);
  }
  // The connection still carries ordinary frames both ways.
  exchange(p, 4);
}

TEST(Tcp, ABlobQueuedBehindAPartialWriteStillMakesWholeFrames) {
  // A receiver that reads in bursts makes the kernel take what it has room for at the
  // moment, so writes end at any byte count and leave the rest queued; blobs sent after
  // that are placed (padded) relative to it, and their frames must still be whole words
  // with every byte intact. The receiver's pauses are bounded, and so is the count.
  auto p = tcpPair("127.0.0.1:0");
  constexpr size_t kBlob = 40u << 10;
  constexpr uint64_t kBlobs = 400;
  std::vector<capnp::word> store((kBlob + 64) / 8 * 8);
  std::atomic<bool> done{false};
  ::testing::AssertionResult got = ::testing::AssertionSuccess();
  std::jthread receiver([&] {
    for (uint64_t seq = 0; seq < kBlobs && got; ++seq) {
      got = receivePayload(*p.server, seq, kBlob, 20s);
      if (seq % 16 == 0) std::this_thread::sleep_for(200us);
    }
    done = true;
  });
  for (uint64_t seq = 0; seq < kBlobs && got; ++seq) {
    // Each blob at another word offset in a cache line, in its own slot of the store.
    auto* bytes = reinterpret_cast<uint8_t*>(store.data() + (seq % 8) * ((kBlob + 64) / 8));
    fillPattern(bytes, kBlob, seq);
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, 8, deadlineAfter(5s)), Status::kOk) << "seq " << seq;
    auto root = m.initRoot<bench::Payload>();
    root.setSeq(seq);
    root.setChecksum(checksum(bytes, kBlob));
    root.adoptData(m.getOrphanage().referenceExternalData(capnp::Data::Reader(bytes, kBlob)));
    ASSERT_EQ(p.client->send(m), Status::kOk) << "seq " << seq;  // copies what is left
  }
  flushUntil(*p.client, [&] { return done.load(); }, 20s);
  receiver.join();
  EXPECT_TRUE(got);
}

TEST(Tcp, AMessageOfTheMaximumSizeInManyPaddedBlobsIsReceived) {
  // 30 blobs written from the caller's memory, each padded to its cache-line offset, in a
  // message just under the maximum size: the padding (up to 56 bytes a blob) must not push
  // the frame over what the receiver accepts.
  TcpOptions o = tcpOptions();
  o.connection.maxMessageBytes = 1u << 20;
  auto p = tcpPair("127.0.0.1:0", o);
  constexpr size_t kBlobs = kMaxSegments - 2;
  // The first segment holds the root pointer, the Note (one data word, two pointers), the
  // list's pointers and the two-word landing pads of the far pointers to the blobs (with
  // no room for those, Cap'n Proto would add segments); the blobs fill the rest of the
  // maximum to within a few words.
  constexpr uint32_t kFirstWords = 1 + 3 + 3 * kBlobs;
  const size_t blobBytes = ((o.connection.maxMessageBytes - kFirstWords * 8) / kBlobs) & ~size_t{7};
  ASSERT_GE(blobBytes, 16u << 10);  // large enough to be written from where it lies
  std::vector<capnp::word> store(kBlobs * (blobBytes + 64) / 8);
  std::vector<const uint8_t*> blobs;
  {
    OutgoingMessage m;
    ASSERT_EQ(p.client->startMessage(m, kFirstWords, deadlineAfter(2s)), Status::kOk);
    auto note = m.initRoot<::Note>();
    note.setId(31);
    auto list = note.initBlobs(kBlobs);
    for (size_t i = 0; i < kBlobs; ++i) {
      // Each blob a word before where the previous one ended, modulo 64: 56 bytes of
      // padding each, the most there can be.
      auto* bytes = reinterpret_cast<uint8_t*>(store.data()) + i * (blobBytes + 64) +
                    8 * ((8 - i % 8) % 8);
      fillPattern(bytes, blobBytes, i);
      blobs.push_back(bytes);
      list.adopt(static_cast<capnp::uint>(i),
                 m.getOrphanage().referenceExternalData(capnp::Data::Reader(bytes, blobBytes)));
    }
    ASSERT_EQ(p.client->send(m), Status::kOk) << p.client->lastError();
  }
  std::atomic<bool> done{false};
  std::jthread receiver([&] {
    IncomingMessage in;
    Status st = p.server->receive(in, deadlineAfter(10s));
    done = true;
    ASSERT_EQ(st, Status::kOk) << p.server->lastError();
    auto list = in.getRoot<::Note>().getBlobs();
    ASSERT_EQ(list.size(), kBlobs);
    for (size_t i = 0; i < kBlobs; ++i) {
      auto b = list[static_cast<capnp::uint>(i)];
      ASSERT_EQ(b.size(), blobBytes);
      EXPECT_EQ(std::memcmp(b.begin(), blobs[i], blobBytes), 0) << "blob " << i;
    }
  });
  flushUntil(*p.client, [&] { return done.load(); }, 10s);
  receiver.join();
  exchange(p, 2);  // and the connection goes on
}

TEST(Tcp, ResetWakesABlockedReceiverAndFailsSends) {
  auto o = tcpOptions();
  o.connection.waitMode = WaitMode::kBlocking;
  RawPeer peer(o);
  std::atomic<int> status{-1};
  std::atomic<double> tookMs{0};
  std::jthread waiter([&] {
    IncomingMessage in;
    auto start = Clock::now();
    status = static_cast<int>(peer.conn->receive(in, deadlineAfter(5s)));
    tookMs = msSince(start);
  });
  std::this_thread::sleep_for(50ms);
  peer.reset();
  waiter.join();
  EXPECT_EQ(status.load(), static_cast<int>(Status::kDisconnected));
  EXPECT_LT(tookMs.load(), 1500.0);
  EXPECT_THAT(peer.conn->lastError(), HasSubstr("reset"));
  Status s = Status::kOk;
  for (Bound b(1000, 2s); b.next() && s == Status::kOk;)
    s = sendPayload(*peer.conn, 1, 1000, deadlineAfter(100ms));
  EXPECT_EQ(s, Status::kDisconnected);
}

TEST(Tcp, ResetWhileSendingIsDisconnected) {
  RawPeer peer;
  peer.reset();
  Status s = Status::kOk;
  for (Bound b(10'000, 3s); b.next() && s == Status::kOk;)
    s = sendPayload(*peer.conn, 1, 20'000, deadlineAfter(100ms));
  EXPECT_EQ(s, Status::kDisconnected);
  IncomingMessage in;
  EXPECT_EQ(peer.conn->receive(in, deadlineAfter(1s)), Status::kDisconnected);
}

TEST(Tcp, AnsweringAPeerThatHasResetDoesNotRaiseSigpipe) {
  // A client sends a request, closes, and its kernel then resets the connection (as it
  // does when our earlier data reaches its closed socket). We still hold the request and
  // answer it: that write must end in kDisconnected, not a SIGPIPE that kills the whole
  // process (a server with every other client on it). Run in a child so a signal cannot
  // take the test program down.
  Child child([] {
    ::signal(SIGPIPE, SIG_DFL);  // as in a server that did not think of it
    RawPeer peer;
    auto frame = validEmptyFrame(1);
    if (!writeExactly(peer.raw.get(), frame.data(), frame.size())) return 2;
    ::shutdown(peer.raw.get(), SHUT_WR);  // FIN: our side goes to CLOSE_WAIT
    std::this_thread::sleep_for(20ms);
    peer.reset();  // then RST: the kernel records EPIPE for our next write
    std::this_thread::sleep_for(20ms);
    IncomingMessage in;
    if (peer.conn->receive(in, deadlineAfter(2s)) != Status::kOk) return 3;
    in.release();
    Status s = sendPayload(*peer.conn, 1, 100, deadlineAfter(1s));
    return s == Status::kDisconnected ? 0 : 4;
  });
  int code = child.wait(10s);
  EXPECT_NE(code, 128 + SIGPIPE) << "the answer raised SIGPIPE and killed the process";
  EXPECT_EQ(code, 0);
}

/// A valid frame with one segment of `words` words (a null root pointer, then zeros).
std::vector<std::byte> validFrameOfWords(uint64_t callId, uint32_t words) {
  const uint32_t frameBytes = static_cast<uint32_t>(kFrameHeaderBytes + words * 8 + 8);
  std::vector<std::byte> frame(frameBytes);
  FrameHeader h{};
  h.frameBytes = frameBytes;
  h.kind = static_cast<uint8_t>(FrameKind::kData);
  h.segmentCount = 1;
  h.callId = callId;
  h.tableOffset = frameBytes - 8;
  std::memcpy(frame.data(), &h, sizeof h);
  SegmentEntry e{words, static_cast<uint32_t>(kFrameHeaderBytes / 8)};
  std::memcpy(frame.data() + h.tableOffset, &e, sizeof e);
  return frame;
}

TEST(Tcp, ABigFrameArrivingInPiecesKeepsLaterFramesAligned) {
  // A frame larger than a quarter of the receive buffer is read into a buffer of its own;
  // the part that had already arrived in the ring is copied from there. When that part
  // is not a multiple of 8 bytes, the frames after it must still be read 8-byte aligned.
  auto o = tcpOptions();
  o.connection.ringBytes = 4096;
  RawPeer peer(o);
  auto big = validFrameOfWords(1, 2000);  // 16 KiB: above 4096 / 4
  const size_t firstPart = kFrameHeaderBytes + 100;  // 132 bytes: not a multiple of 8
  ASSERT_TRUE(writeExactly(peer.raw.get(), big.data(), firstPart));
  IncomingMessage in;
  for (Bound b(100, 1s); b.next();) {  // let the connection read the first part
    ASSERT_EQ(peer.conn->tryReceive(in), Status::kWouldBlock);
    std::this_thread::sleep_for(2ms);
  }
  ASSERT_TRUE(writeExactly(peer.raw.get(), big.data() + firstPart, big.size() - firstPart));
  auto small = validEmptyFrame(2);
  ASSERT_TRUE(writeExactly(peer.raw.get(), small.data(), small.size()));
  ASSERT_EQ(peer.conn->receive(in, deadlineAfter(2s)), Status::kOk) << peer.conn->lastError();
  EXPECT_EQ(in.header().callId, 1u);
  EXPECT_EQ(in.segmentCount(), 1u);
  in.release();
  ASSERT_EQ(peer.conn->receive(in, deadlineAfter(2s)), Status::kOk) << peer.conn->lastError();
  EXPECT_EQ(in.header().callId, 2u);
}

// ---------------------------------------------------------------------------------------
// Connecting: refused, timed out, peers that are not zcrpc

TEST(Tcp, ConnectToAClosedPortFailsAtOnce) {
  uint16_t port = unusedPort();
  ASSERT_NE(port, 0);
  auto start = Clock::now();
  try {
    (void)connectTcp("127.0.0.1:" + std::to_string(port), tcpOptions());
    ADD_FAILURE() << "connected to a port nobody listens on";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr("127.0.0.1:" + std::to_string(port)), HasSubstr("refused")));
  }
  EXPECT_LT(msSince(start), 1000.0);
}

TEST(Tcp, ConnectTimesOutWhenTheBacklogIsFull) {
  uint16_t port = 0;
  OwnedFd listener = rawListener(0, port);
  ASSERT_TRUE(listener);
  // Fill the accept queue (backlog 0 holds one); further SYNs are dropped.
  std::vector<OwnedFd> fillers;
  bool full = false;
  for (Bound b(16, 5s); b.next() && !full;) {
    OwnedFd c = rawConnect(port, 200ms);
    if (c)
      fillers.push_back(std::move(c));
    else
      full = true;
  }
  ASSERT_TRUE(full) << "the backlog never filled";
  auto o = tcpOptions();
  o.connection.connectTimeout = 300ms;
  auto start = Clock::now();
  try {
    (void)connectTcp("127.0.0.1:" + std::to_string(port), o);
    ADD_FAILURE() << "connected through a full backlog";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), HasSubstr("timed out"));
  }
  EXPECT_GE(msSince(start), 250.0);
  EXPECT_LT(msSince(start), 1500.0);
}

TEST(Tcp, HandshakeTimesOutWhenTheServerStaysSilent) {
  uint16_t port = 0;
  OwnedFd listener = rawListener(16, port);  // the kernel completes connects; nobody answers
  ASSERT_TRUE(listener);
  auto o = tcpOptions();
  o.connection.connectTimeout = 300ms;
  auto start = Clock::now();
  try {
    (void)connectTcp("127.0.0.1:" + std::to_string(port), o);
    ADD_FAILURE() << "a silent server was taken for a zcrpc server";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), HasSubstr("no handshake answer within 300 ms (connect_timeout): is it "
                                    "a zcrpc tcp server?"));
  }
  EXPECT_GE(msSince(start), 250.0);
  EXPECT_LT(msSince(start), 1500.0);
}

/// A raw server on `listener` that reads the client's hello, then writes `reply` and
/// holds the connection open for `hold` (or closes it at once when `reply` is empty and
/// `hold` is zero), as servers of other protocols do.
std::jthread otherProtocolServer(const OwnedFd& listener, std::string reply,
                                 std::chrono::milliseconds hold) {
  return std::jthread([&listener, reply = std::move(reply), hold] {
    pollfd p{listener.get(), POLLIN, 0};
    if (::poll(&p, 1, 3000) <= 0) return;
    OwnedFd c(::accept(listener.get(), nullptr, nullptr));
    TcpHello hello;
    (void)readExactly(c.get(), &hello, sizeof hello);
    if (!reply.empty()) (void)writeExactly(c.get(), reply.data(), reply.size());
    std::this_thread::sleep_for(hold);
  });
}

// Another protocol's short answer (an HTTP server answering binary with 400 and waiting
// for more) fails the handshake at once, naming what came, not at connect_timeout.
TEST(Tcp, AServerOfAnotherProtocolFailsAtOnceNamingWhatItSent) {
  uint16_t port = 0;
  OwnedFd listener = rawListener(16, port);
  ASSERT_TRUE(listener);
  auto fake = otherProtocolServer(listener, "HTTP/1.1 400 Bad Request\r\n\r\n", 1200ms);
  auto o = tcpOptions();
  o.connection.connectTimeout = 2000ms;
  auto start = Clock::now();
  try {
    (void)connectTcp("127.0.0.1:" + std::to_string(port), o);
    ADD_FAILURE() << "accepted a server that is not zcrpc";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), HasSubstr("the peer answered \"HTTP/1.1 400 Bad Request\\r\\n\\r\\n\" "
                                    "instead of a zcrpc handshake: not a zcrpc tcp server"));
  }
  EXPECT_LT(msSince(start), 1000.0) << "failed at once, not at the 2 s connect_timeout";
}

TEST(Tcp, AServerThatClosesWithoutAnsweringSaysSo) {
  uint16_t port = 0;
  OwnedFd listener = rawListener(16, port);
  ASSERT_TRUE(listener);
  auto fake = otherProtocolServer(listener, "", 0ms);
  try {
    (void)connectTcp("127.0.0.1:" + std::to_string(port), tcpOptions());
    ADD_FAILURE() << "accepted a server that closed at once";
  } catch (const Disconnected& e) {
    EXPECT_THAT(e.what(), HasSubstr("the peer closed the connection without answering the "
                                    "handshake: is it a zcrpc tcp server?"));
  }
}

TEST(Tcp, AServerThatIsNotZcrpcIsRefused) {
  uint16_t port = 0;
  OwnedFd listener = rawListener(16, port);
  ASSERT_TRUE(listener);
  std::jthread fake([&] {
    pollfd p{listener.get(), POLLIN, 0};
    if (::poll(&p, 1, 3000) <= 0) return;
    OwnedFd c(::accept(listener.get(), nullptr, nullptr));
    TcpHello hello;
    (void)readExactly(c.get(), &hello, sizeof hello);
    std::string http = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    http.resize(sizeof(TcpAnswer), ' ');
    (void)writeExactly(c.get(), http.data(), http.size());
    std::this_thread::sleep_for(100ms);
  });
  try {
    (void)connectTcp("127.0.0.1:" + std::to_string(port), tcpOptions());
    ADD_FAILURE() << "accepted a server that is not zcrpc";
  } catch (const Failed& e) {
    EXPECT_THAT(e.what(), HasSubstr("not a zcrpc tcp server"));
  }
}

TEST(Tcp, AClientThatIsNotZcrpcIsRefusedAndOthersStillGetIn) {
  auto listener = listenTcp("127.0.0.1:0", tcpOptions());
  uint16_t port = portOf(listener->endpoint());
  OwnedFd http = rawConnect(port);
  ASSERT_TRUE(http);
  const std::string get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(writeExactly(http.get(), get.data(), get.size()));
  EXPECT_EQ(listener->accept(deadlineAfter(300ms)), nullptr);
  auto refusals = refusalsOnceThereAre(*listener, 1);
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_THAT(refusals[0], AllOf(HasSubstr(localAddress(http.get())),
                                 HasSubstr("not speaking the zcrpc tcp handshake")));
  // The listener goes on: a real client is accepted after it.
  ConnectionPair p;
  std::jthread acceptor([&] { p.server = listener->accept(deadlineAfter(5s)); });
  p.client = connectTcp(listener->endpoint(), tcpOptions());
  acceptor.join();
  ASSERT_TRUE(p.server);
  exchange(p, 3);
}

TEST(Tcp, AcceptKeepsItsDeadlineWhileAClientIsSilent) {
  // accept(deadline) returns "the next connection, or nullptr at deadline": a client that
  // connects and never says hello must not keep it past the deadline (the handshake has
  // its own, longer, timeout: connectTimeout).
  auto o = tcpOptions();
  o.connection.connectTimeout = 3000ms;
  auto listener = listenTcp("127.0.0.1:0", o);
  OwnedFd silent = rawConnect(portOf(listener->endpoint()));
  ASSERT_TRUE(silent);
  auto start = Clock::now();
  EXPECT_EQ(listener->accept(deadlineAfter(200ms)), nullptr);
  EXPECT_LT(msSince(start), 1000.0) << "accept() waited for the silent client's handshake";
}

TEST(Tcp, ASilentClientDoesNotHoldUpOthers) {
  // One peer that connects and never says hello must not keep the listener from
  // accepting everyone else until its handshake times out.
  auto so = tcpOptions();
  so.connection.connectTimeout = 3000ms;  // the server's handshake deadline per client
  TcpServer server("127.0.0.1:0", so);
  OwnedFd silent = rawConnect(portOf(server.endpoint));
  ASSERT_TRUE(silent);
  std::this_thread::sleep_for(100ms);  // the acceptor has picked it up by now
  auto co = tcpOptions();
  co.connection.connectTimeout = 1000ms;
  auto start = Clock::now();
  try {
    Channel ch(connectTcp(server.endpoint, co));
    EXPECT_TRUE(echoCall(ch, 1, 100, 1000ms));
  } catch (const Error& e) {
    ADD_FAILURE() << "a good client was held up by a silent one: " << e.what();
  }
  EXPECT_LT(msSince(start), 1500.0);
}

TEST(Tcp, AServersHandshakeArrivingInPiecesIsAnsweredWhenItCompletes) {
  // The server's acceptor sleeps until something happens (no periodic wake-up): the
  // sockets of handshakes in progress must be among what it waits on.
  auto so = tcpOptions("s3cret");
  so.connection.connectTimeout = 3000ms;
  TcpServer server("127.0.0.1:0", so);
  OwnedFd raw = rawConnect(portOf(server.endpoint));
  ASSERT_TRUE(raw);
  TcpHello hello;
  hello.tokenBytes = 6;
  hello.maxMessageBytes = 1 << 20;
  ASSERT_TRUE(writeExactly(raw.get(), &hello, 8));  // part of the Hello
  std::this_thread::sleep_for(100ms);
  ASSERT_TRUE(writeExactly(raw.get(), reinterpret_cast<const char*>(&hello) + 8, sizeof hello - 8));
  std::this_thread::sleep_for(100ms);
  auto start = Clock::now();
  ASSERT_TRUE(writeExactly(raw.get(), "s3cret", 6));  // the token completes it
  TcpAnswer answer;
  ASSERT_TRUE(readExactly(raw.get(), &answer, sizeof answer, 2500ms));
  EXPECT_EQ(answer.accepted, 1u);
  EXPECT_LT(msSince(start), 1000.0) << "answered only when the handshake's deadline woke it";
}

TEST(Tcp, AServerDropsASilentClientAtItsHandshakeDeadline) {
  auto so = tcpOptions();
  so.connection.connectTimeout = 300ms;
  TcpServer server("127.0.0.1:0", so);
  OwnedFd silent = rawConnect(portOf(server.endpoint));
  ASSERT_TRUE(silent);
  auto start = Clock::now();
  TcpAnswer answer;
  // Nothing arrives on any socket: only the deadline can wake the acceptor to drop it.
  EXPECT_FALSE(readExactly(silent.get(), &answer, sizeof answer, 2500ms));
  EXPECT_LT(msSince(start), 2000.0) << "the silent client was not dropped at its deadline";
  EXPECT_THAT(refusalsOnceThereAre(*server.listener, 1), Contains(HasSubstr("handshake timed out")));
}

// ---------------------------------------------------------------------------------------
// Server restarts, tokens, limits

TEST(Tcp, ClientReconnectsAfterTheServerRestarts) {
  auto server = std::make_unique<TcpServer>("127.0.0.1:0");
  const std::string endpoint = server->endpoint;
  ChannelPool pool([&] { return connectTcp(endpoint, tcpOptions()); });
  ASSERT_TRUE(echoCall(pool.channel(), 1, 100));
  server.reset();  // shut down: listener and connections closed
  auto start = Clock::now();
  std::optional<ErrorKind> kind;
  try {
    auto req = pool.channel().newRequest(kEchoInterface, kEcho, 16);
    req.setTimeout(2s);
    buildPayload(req.message(), 2, 0);
    (void)req.call();
  } catch (const Error& e) {
    kind = e.kind();
  }
  EXPECT_EQ(kind, ErrorKind::kDisconnected);
  EXPECT_LT(msSince(start), 2500.0);
  EXPECT_THROW((void)connectTcp(endpoint, tcpOptions()), Failed) << "nobody listens now";
  server = std::make_unique<TcpServer>(endpoint);  // same port again
  ASSERT_EQ(server->endpoint, endpoint);
  pool.resetThisThread();
  EXPECT_TRUE(echoCall(pool.channel(), 3, 100));
}

TEST(Tcp, MatchingTokenIsAdmitted) {
  TcpServer server("127.0.0.1:0", tcpOptions("s3cret"));
  Channel ch(connectTcp(server.endpoint, tcpOptions("s3cret")));
  EXPECT_TRUE(echoCall(ch, 1, 100));
  EXPECT_TRUE(server.listener->refusals().empty());
}

TEST(Tcp, WrongOrMissingTokenIsRefusedBeforeAnyCall) {
  TcpServer server("127.0.0.1:0", tcpOptions("s3cret"));
  for (const char* token : {"wrong", "", "s3cret-and-more", "s3crex"}) {
    SCOPED_TRACE(std::string("token '") + token + "'");
    try {
      (void)connectTcp(server.endpoint, tcpOptions(token));
      ADD_FAILURE() << "admitted";
    } catch (const Failed& e) {
      EXPECT_THAT(e.what(), HasSubstr("access token does not match"));
    }
  }
  auto refusals = refusalsOnceThereAre(*server.listener, 4);
  EXPECT_EQ(refusals.size(), 4u);
  for (auto& r : refusals)
    EXPECT_THAT(r, AllOf(MatchesRegex(".*127\\.0\\.0\\.1:[0-9]+.*"),
                         HasSubstr("access token does not match")));
  EXPECT_EQ(server.service.calls(), 0u);
}

/// Reads one frame from a raw socket (header, then the rest).
bool readFrame(int fd, std::vector<std::byte>& frame, std::chrono::milliseconds timeout) {
  frame.resize(kFrameHeaderBytes);
  if (!readExactly(fd, frame.data(), kFrameHeaderBytes, timeout)) return false;
  FrameHeader h;
  std::memcpy(&h, frame.data(), sizeof h);
  if (h.frameBytes < kFrameHeaderBytes || h.frameBytes > (1u << 20)) return false;
  frame.resize(h.frameBytes);
  return readExactly(fd, frame.data() + kFrameHeaderBytes, h.frameBytes - kFrameHeaderBytes,
                     timeout);
}

/// Data segments the kernel has received on `fd` (TCP_INFO), or -1.
int64_t dataSegmentsIn(int fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 ||
      len < offsetof(tcp_info, tcpi_data_segs_in) + sizeof info.tcpi_data_segs_in)
    return -1;
  return info.tcpi_data_segs_in;
}

TEST(Tcp, AnswersToRequestsThatArriveTogetherLeaveInOneWrite) {
  // Sixteen requests in one write reach the server in one read; it answers them in one
  // pump and flushes once, so the answers leave in one write: one segment (TCP_NODELAY
  // sends each write at once, so sixteen writes would be sixteen segments).
  TcpServer server("127.0.0.1:0");
  OwnedFd raw = rawConnect(portOf(server.endpoint));
  ASSERT_TRUE(raw && sendHello(raw.get()));
  TcpAnswer answer;
  ASSERT_TRUE(readExactly(raw.get(), &answer, sizeof answer));
  ASSERT_EQ(answer.accepted, 1u);
  constexpr uint64_t kRequests = 16;
  std::vector<std::byte> requests;
  for (uint64_t id = 1; id <= kRequests; ++id) {
    auto frame = validEmptyFrame(id, FrameKind::kRequest, kEchoInterface, kCount);
    requests.insert(requests.end(), frame.begin(), frame.end());
  }
  const int64_t before = dataSegmentsIn(raw.get());
  ASSERT_GE(before, 0) << "TCP_INFO: " << std::strerror(errno);
  ASSERT_TRUE(writeExactly(raw.get(), requests.data(), requests.size()));
  for (uint64_t id = 1; id <= kRequests; ++id) {
    std::vector<std::byte> frame;
    ASSERT_TRUE(readFrame(raw.get(), frame, 2s)) << "answer " << id;
    FrameHeader h;
    std::memcpy(&h, frame.data(), sizeof h);
    EXPECT_EQ(h.kind, static_cast<uint8_t>(FrameKind::kResponse));
    EXPECT_EQ(h.callId, id);
  }
  const int64_t segments = dataSegmentsIn(raw.get()) - before;
  EXPECT_LE(segments, 2) << kRequests << " answers came in " << segments << " segments";
  EXPECT_EQ(server.service.calls(), kRequests);
}

TEST(Tcp, ARequestSentWithAWrongTokenIsNeverDispatched) {
  TcpServer server("127.0.0.1:0", tcpOptions("s3cret"));
  const auto request = validEmptyFrame(1, FrameKind::kRequest, kEchoInterface, kCount);
  {
    // The raw protocol works: the right token and a request get an answer.
    OwnedFd raw = rawConnect(portOf(server.endpoint));
    ASSERT_TRUE(raw && sendHello(raw.get(), "s3cret"));
    ASSERT_TRUE(writeExactly(raw.get(), request.data(), request.size()));
    TcpAnswer answer;
    ASSERT_TRUE(readExactly(raw.get(), &answer, sizeof answer));
    ASSERT_EQ(answer.accepted, 1u);
    std::vector<std::byte> frame;
    ASSERT_TRUE(readFrame(raw.get(), frame, 2s));
    FrameHeader h;
    std::memcpy(&h, frame.data(), sizeof h);
    EXPECT_EQ(h.kind, static_cast<uint8_t>(FrameKind::kResponse));
    EXPECT_EQ(h.callId, 1u);
    EXPECT_EQ(server.service.calls(), 1u);
  }
  // A wrong token with the same request right behind it: refused, never dispatched.
  OwnedFd raw = rawConnect(portOf(server.endpoint));
  ASSERT_TRUE(raw && sendHello(raw.get(), "guess"));
  const std::string me = localAddress(raw.get());
  ASSERT_TRUE(writeExactly(raw.get(), request.data(), request.size()));
  TcpAnswer answer;
  ASSERT_TRUE(readExactly(raw.get(), &answer, sizeof answer));
  EXPECT_EQ(answer.accepted, 0u);
  answer.reason[sizeof answer.reason - 1] = 0;
  EXPECT_THAT(answer.reason, HasSubstr("access token does not match"));
  char byte;
  EXPECT_FALSE(readExactly(raw.get(), &byte, 1, 2s)) << "the server kept talking";
  EXPECT_EQ(server.service.calls(), 1u);
  auto refusals = refusalsOnceThereAre(*server.listener, 1);
  EXPECT_THAT(refusals, Contains(AllOf(HasSubstr(me), HasSubstr("access token does not match"))));
}

TEST(Tcp, BothSidesUseTheSmallerMaximumMessageSize) {
  auto so = tcpOptions();  // 8 MiB
  TcpServer server("127.0.0.1:0", so);
  auto co = tcpOptions();
  co.connection.maxMessageBytes = 1 << 20;
  Channel ch(connectTcp(server.endpoint, co));
  EXPECT_EQ(ch.connection().maxMessageBytes(), uint64_t{1} << 20);
  // A response the client could not accept is refused at the server, as an error for
  // this one call; the connection lives on.
  std::optional<ErrorKind> kind;
  try {
    auto req = ch.newRequest(kEchoInterface, kMake, 16);
    req.setTimeout(3s);
    buildPayload(req.message(), 2u << 20, 0);
    (void)req.call();
  } catch (const Error& e) {
    kind = e.kind();
  }
  EXPECT_EQ(kind, ErrorKind::kInvalidArgument);
  EXPECT_TRUE(echoCall(ch, 5, 1000));
  EXPECT_TRUE(ch.connected());
}

TEST(Tcp, TinyBuffersCarryLargeAndManyFrames) {
  // A 4 KiB receive ring: most frames are read into buffers of their own, small ones wrap.
  auto o = tcpOptions();
  o.connection.ringBytes = 4096;
  o.connection.maxMessageBytes = 1 << 20;
  auto p = tcpPair("127.0.0.1:0", o);
  constexpr uint64_t kCount = 600;
  std::atomic<bool> failed{false}, done{false};
  std::jthread sender([&] {
    std::mt19937_64 rng(5);
    Bound bound(kCount, 20s);
    for (uint64_t seq = 0; seq < kCount && bound.next() && !failed; ++seq) {
      size_t size = rng() % 3 == 0 ? rng() % 200'000 : rng() % 900;
      if (sendPayload(*p.client, seq, size, deadlineAfter(5s), rng() % 3 != 0) != Status::kOk) {
        failed = true;
        return;
      }
    }
    flushUntil(*p.client, [&] { return failed.load() || done.load(); }, 20s);
  });
  Bound bound(kCount, 20s);
  for (uint64_t seq = 0; seq < kCount && bound.next(); ++seq) {
    auto r = receivePayload(*p.server, seq, kAnySize, 5s);
    if (!r) {
      failed = true;
      FAIL() << r.message();
    }
  }
  done = true;  // stops the sender's flushing
}

}  // namespace
}  // namespace zcrpc::conformance
