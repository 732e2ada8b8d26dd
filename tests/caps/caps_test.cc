// Capabilities (issue 18): a client passes objects it serves (callbacks), a server returns
// objects it made (per-client state), either end passes back what it received (the
// original object, no proxy), in params and results at any depth (nested struct, union,
// group); releases on drop and on disconnect; calls from the wrong thread refused; a
// hostile peer's bad targets and releases refused. Over loopback, shm and tcp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "caps_impl.h"
#include "rpc/frames.h"
#include "zcrpc/loopback.h"
#include "zcrpc/shm.h"
#include "zcrpc/tcp.h"

namespace zcrpc::caps_test {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::ThrowsMessage;

/// Serves `services` on `server`, starts it, and returns the client end of a loopback
/// connection to it.
std::unique_ptr<Connection> serveOverLoopback(Server& server, std::initializer_list<Service*> services) {
  for (Service* service : services) server.addService(*service);
  auto [client, serverEnd] = makeLoopbackPair();
  server.addConnection(std::move(serverEnd));
  server.start();
  return std::move(client);
}

// ------------------------------------------------------------------------------------
// A server with a Hub, and channels to it over one transport

enum class Transport { kLoopback, kShm, kTcp };

std::string transportName(const testing::TestParamInfo<Transport>& info) {
  switch (info.param) {
    case Transport::kLoopback: return "loopback";
    case Transport::kShm: return "shm";
    default: return "tcp";
  }
}

class CapsTest : public testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    server_.addService(hub_);
    if (GetParam() == Transport::kShm) {
      static std::atomic<int> counter{0};
      shmName_ = "caps-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
      server_.addListener(listenShm(shmName_));
    } else if (GetParam() == Transport::kTcp) {
      auto listener = listenTcp("127.0.0.1:0");
      tcpAddress_ = listener->endpoint().substr(std::strlen("tcp://"));
      server_.addListener(std::move(listener));
    }
    server_.start();
  }
  void TearDown() override { server_.shutdown(); }

  std::unique_ptr<Channel> connect(ChannelOptions options = {}) {
    switch (GetParam()) {
      case Transport::kLoopback: {
        auto [client, server] = makeLoopbackPair();
        server_.addConnection(std::move(server));
        return std::make_unique<Channel>(std::move(client), options);
      }
      case Transport::kShm: return std::make_unique<Channel>(connectShm(shmName_), options);
      default: return std::make_unique<Channel>(connectTcp(tcpAddress_), options);
    }
  }

  /// Polls `channel` (which sends the releases its dropped imports queued, and takes the
  /// peer's) until `done()`, for at most 5 s.
  template <typename Done>
  static bool pollUntil(Channel& channel, Done done) {
    const auto until = Clock::now() + 5s;
    while (!done()) {
      if (Clock::now() > until) return false;
      channel.poll();
      std::this_thread::sleep_for(1ms);
    }
    return true;
  }

  HubImpl hub_;
  Server server_;
  std::string shmName_;
  std::string tcpAddress_;
};

TEST_P(CapsTest, LoginReturnsAnObjectCalledOnTheSameConnectionAndReleasedOnDrop) {
  auto ch = connect();
  HubClient hub(*ch);
  const int before = liveAccounts.load();
  {
    auto login = hub.loginRequest();
    login.params().setName("alice");
    AccountClient account(login.call().results().getAccount());
    EXPECT_TRUE(account.capability().isImport());
    EXPECT_EQ(liveAccounts.load(), before + 1);
    for (int i = 0; i < 3; ++i) {
      auto who = account.whoamiRequest();
      EXPECT_EQ(std::string(who.call().results().getName().cStr()), "alice");
    }
  }
  // The last handle went: the release frame tells the server, which drops its object.
  EXPECT_TRUE(pollUntil(*ch, [&] { return liveAccounts.load() == before; }))
      << liveAccounts.load() - before << " account(s) still alive";
}

TEST_P(CapsTest, ServerCallsTheClientsCallbackDuringACall) {
  auto ch = connect();
  HubClient hub(*ch);
  auto sink = std::make_shared<SinkImpl>();
  std::weak_ptr<SinkImpl> watch = sink;
  {
    auto request = hub.subscribeRequest();
    request.params().setSink(Capability::local(sink));
    request.params().setCount(300);  // more than max_leases (256) messages during one call
    EXPECT_EQ(request.call().results().getLast(), 45150);
  }
  EXPECT_EQ(sink->total, 45150);
  sink.reset();
  // The server's handle went with its call: our export is released, the object freed.
  EXPECT_TRUE(pollUntil(*ch, [&] { return watch.expired(); }));
}

TEST_P(CapsTest, AHandlerThatStartedItsResultsCannotCallOnItsConnection) {
  auto ch = connect();
  HubClient hub(*ch);
  auto keep = hub.keepRequest();
  keep.params().setSink(Capability::local(std::make_shared<SinkImpl>()));
  keep.call();
  auto fire = hub.fireRequest();
  fire.params().setCount(-1);
  EXPECT_THAT([&] { fire.call(); },
              ThrowsMessage<InvalidArgument>(HasSubstr("after it started its results")));
  // Nothing else broke: the same connection calls back fine.
  auto again = hub.fireRequest();
  again.params().setCount(2);
  EXPECT_EQ(again.call().results().getLast(), 3);
  hub.dropRequest().call();
}

TEST_P(CapsTest, AHandlerDefersAndCallsTheClientAsynchronously) {
  auto ch = connect();
  HubClient hub(*ch);
  auto sink = std::make_shared<SinkImpl>();
  auto keep = hub.keepRequest();
  keep.params().setSink(Capability::local(sink));
  keep.call();
  for (int64_t v : {5, 7, 30}) {
    auto fire = hub.fireAsyncRequest();
    fire.params().setValue(v);
    EXPECT_EQ(fire.call().results().getLast(), sink->total);
  }
  EXPECT_EQ(sink->total, 42);
  hub.dropRequest().call();
}

/// A Sink that notes whether each request reached its handler as a heap copy, and, given a
/// hub on its own channel, tries to wait on that channel from inside the handler.
class PlacedSink final : public SinkService {
 public:
  void push(PushCall& call) override {
    (call.context().request().onHeap() ? copied : inPlace) += 1;
    total += call.params().getValue();
    if (hub) {
      try {
        hub->dropRequest().call();
      } catch (const InvalidArgument& e) {
        refusals.push_back(e.what());
      }
      try {
        channel->poll();
      } catch (const InvalidArgument& e) {
        refusals.push_back(e.what());
      }
    }
    call.results().setTotal(total);
  }
  int copied = 0, inPlace = 0;
  int64_t total = 0;
  HubClient* hub = nullptr;
  Channel* channel = nullptr;
  std::vector<std::string> refusals;
};

TEST_P(CapsTest, AnObjectExportedInPlaceReadsItsRequestsWhereTheyArrived) {
  auto ch = connect();
  HubClient hub(*ch);
  for (auto mode : {Capability::Requests::kInPlace, Capability::Requests::kCopied}) {
    auto sink = std::make_shared<PlacedSink>();
    auto request = hub.subscribeRequest();
    request.params().setSink(Capability::local(sink, mode));
    request.params().setCount(300);  // more than max_leases (256) messages during one call
    EXPECT_EQ(request.call().results().getLast(), 45150);
    EXPECT_EQ(sink->total, 45150);
    if (mode == Capability::Requests::kInPlace) {
      EXPECT_EQ(sink->inPlace, 300);
      EXPECT_EQ(sink->copied, 0);
    } else {
      EXPECT_EQ(sink->copied, 300);  // the default: copied, so that the handler may wait
    }
  }
}

TEST_P(CapsTest, AnInPlaceHandlerThatWaitsOnItsConnectionIsRefusedAndNothingElseBreaks) {
  auto ch = connect();
  HubClient hub(*ch);
  auto sink = std::make_shared<PlacedSink>();
  sink->hub = &hub;
  sink->channel = ch.get();
  auto request = hub.subscribeRequest();
  request.params().setSink(Capability::local(sink, Capability::Requests::kInPlace));
  request.params().setCount(3);
  EXPECT_EQ(request.call().results().getLast(), 6);
  ASSERT_EQ(sink->refusals.size(), 6u);  // a call and a poll in each of the three
  EXPECT_THAT(sink->refusals[0], HasSubstr("call() on "));
  EXPECT_THAT(sink->refusals[0], HasSubstr("Capability::Requests::kInPlace"));
  EXPECT_THAT(sink->refusals[1], HasSubstr("waiting on "));
  EXPECT_EQ(sink->inPlace, 3);
  // Nothing was sent for the refused call, and the connection goes on: the same object
  // answers, now without trying, and so does the server.
  sink->hub = nullptr;
  auto again = hub.subscribeRequest();
  again.params().setSink(Capability::local(sink, Capability::Requests::kInPlace));
  again.params().setCount(2);
  EXPECT_EQ(again.call().results().getLast(), 9);
  hub.dropRequest().call();
}

TEST_P(CapsTest, AKeptCallbackIsCalledLaterAndReleasedWhenTheServerDropsIt) {
  auto ch = connect();
  HubClient hub(*ch);
  auto sink = std::make_shared<SinkImpl>();
  std::weak_ptr<SinkImpl> watch = sink;
  {
    auto keep = hub.keepRequest();
    keep.params().setSink(Capability::local(sink));
    keep.call();
  }
  sink.reset();
  for (int round = 0; round < 2; ++round) {
    auto fire = hub.fireRequest();
    fire.params().setCount(3);
    EXPECT_EQ(fire.call().results().getLast(), 6 * (round + 1));
  }
  EXPECT_FALSE(watch.expired());  // the server holds it
  hub.dropRequest().call();
  EXPECT_TRUE(pollUntil(*ch, [&] { return watch.expired(); }));
}

TEST_P(CapsTest, CapabilitiesPassedBackAreTheOriginalObjectsInEveryPlace) {
  auto ch = connect();
  HubClient hub(*ch);
  auto a = std::make_shared<SinkImpl>(), b = std::make_shared<SinkImpl>(),
       c = std::make_shared<SinkImpl>();
  auto request = hub.echoRequest();
  auto holder = request.params().initHolder();
  holder.setLabel("three");
  holder.setSink(Capability::local(a));
  holder.getChoice().setOther(Capability::local(b));
  holder.getGroup().setInner(Capability::local(c));
  const std::vector<Capability> listed{Capability::local(c), Capability(), Capability::local(a)};
  holder.setSinks(kj::arrayPtr(listed.data(), listed.size()));
  auto response = request.call();
  auto out = response.results().getHolder();
  EXPECT_EQ(std::string(out.getLabel().cStr()), "three");
  EXPECT_EQ(out.getSink().localObject(), a);  // nested struct
  ASSERT_TRUE(out.getChoice().isOther());
  EXPECT_EQ(out.getChoice().getOther().localObject(), b);  // union member
  EXPECT_EQ(out.getGroup().getInner().localObject(), c);   // group
  EXPECT_FALSE(out.getSink().isImport());                  // no proxy of a proxy
  auto sinks = out.getSinks();  // a list in a nested struct
  ASSERT_EQ(sinks.size(), 3u);
  EXPECT_EQ(sinks[0].localObject(), c);
  EXPECT_FALSE(sinks[1]);  // a null entry stays null
  EXPECT_EQ(sinks[2].localObject(), a);
}

TEST_P(CapsTest, AListOfCallbacksIsCalledInOrder) {
  auto ch = connect();
  HubClient hub(*ch);
  std::vector<std::shared_ptr<SinkImpl>> sinks;
  auto request = hub.fanOutRequest();
  auto list = request.params().initSinks(4);
  for (uint32_t i = 0; i < 4; ++i) {
    if (i == 2) continue;  // null
    sinks.push_back(std::make_shared<SinkImpl>());
    sinks.back()->total = 100 * i;
    list.set(i, Capability::local(sinks.back()));
  }
  EXPECT_FALSE(list[2]);
  EXPECT_EQ(list[3].localObject(), sinks[2]);  // read back while building
  request.params().setValue(5);
  auto response = request.call();
  auto totals = response.results().getTotals();
  ASSERT_EQ(totals.size(), 4u);
  EXPECT_EQ(totals[0], 5);
  EXPECT_EQ(totals[1], 105);
  EXPECT_EQ(totals[2], 0);  // skipped
  EXPECT_EQ(totals[3], 305);
  for (auto& sink : sinks) EXPECT_EQ(sink->total % 100, 5);
}

TEST_P(CapsTest, AListOfCapabilitiesInResultsGivesOneClientEachAndReleasesThemAll) {
  auto ch = connect();
  HubClient hub(*ch);
  const int before = liveAccounts.load();
  {
    auto request = hub.accountsRequest();
    const std::vector<capnp::Text::Reader> names{"ann", "bob", "cy"};
    request.params().setNames(kj::arrayPtr(names.data(), names.size()));
    auto response = request.call();
    std::vector<std::string> who;
    for (const Capability& account : response.results().getAccounts())
      who.emplace_back(AccountClient(account).whoamiRequest().call().results().getName().cStr());
    EXPECT_EQ(who, (std::vector<std::string>{"ann", "bob", "cy"}));
    EXPECT_EQ(liveAccounts.load(), before + 3);
  }
  // The response and its handles are gone: the three go back to the server.
  EXPECT_TRUE(pollUntil(*ch, [&] { return liveAccounts.load() == before; }));
}

TEST_P(CapsTest, OneObjectSentTwiceIsOneReferenceAtTheOtherEnd) {
  auto ch = connect();
  HubClient hub(*ch);
  auto s = std::make_shared<SinkImpl>(), t = std::make_shared<SinkImpl>();
  {
    auto request = hub.sameRequest();
    request.params().setA(Capability::local(s));
    request.params().setB(Capability::local(s));
    EXPECT_TRUE(request.call().results().getSame());
  }
  {
    auto request = hub.sameRequest();
    request.params().setA(Capability::local(s));
    request.params().setB(Capability::local(t));
    EXPECT_FALSE(request.call().results().getSame());
  }
}

TEST_P(CapsTest, AServersObjectPassedBackResolvesToItself) {
  auto ch = connect();
  HubClient hub(*ch);
  auto login = hub.loginRequest();
  login.params().setName("bob");
  Capability account = login.call().results().getAccount();
  auto mine = hub.isMineRequest();
  mine.params().setAccount(account);
  EXPECT_TRUE(mine.call().results().getMine());
  // A local object that merely looks the part is not the server's.
  auto other = hub.isMineRequest();
  other.params().setAccount(Capability::local(std::make_shared<AccountImpl>("eve")));
  EXPECT_FALSE(other.call().results().getMine());
}

TEST_P(CapsTest, CallsOnACapabilityWhoseChannelIsGoneFailDisconnected) {
  auto ch = connect();
  Capability account;
  {
    HubClient hub(*ch);
    auto login = hub.loginRequest();
    login.params().setName("carol");
    account = login.call().results().getAccount();
  }
  ch.reset();
  AccountClient client(account);
  EXPECT_THAT([&] { client.whoamiRequest(); },
              ThrowsMessage<Disconnected>(HasSubstr("connection is gone")));
}

TEST_P(CapsTest, AServerHeldCallbackOfAGoneClientFailsDisconnected) {
  auto a = connect();
  {
    HubClient hub(*a);
    auto keep = hub.keepRequest();
    keep.params().setSink(Capability::local(std::make_shared<SinkImpl>()));
    keep.call();
  }
  a.reset();
  const auto until = Clock::now() + 5s;
  while (server_.connectionCount() != 0 && Clock::now() < until) std::this_thread::sleep_for(1ms);
  auto b = connect();
  HubClient hub(*b);
  auto fire = hub.fireRequest();
  fire.params().setCount(1);
  try {
    fire.call();
    FAIL() << "a call on a gone client's callback succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDisconnected) << e.what();
  }
  EXPECT_TRUE(b->connected());  // the caller's own connection is fine
  hub.dropRequest().call();
}

TEST_P(CapsTest, ACallOnAServersCapabilityFromAnotherThreadIsRefused) {
  auto ch = connect();
  HubClient hub(*ch);
  auto keep = hub.keepRequest();
  keep.params().setSink(Capability::local(std::make_shared<SinkImpl>()));
  keep.call();
  std::string error;
  std::thread([&] {
    try {
      SinkClient sink(hub_.kept());
      sink.pushRequest();
    } catch (const InvalidArgument& e) {
      error = e.what();
    }
  }).join();
  EXPECT_THAT(error, HasSubstr("worker thread"));
  hub.dropRequest().call();
}

// ------------------------------------------------------------------------------------
// Streaming

// Sent each at once, and as one burst whose chunks wait in the sender (kMoreComing) until
// the window is full or the final call.
TEST_P(CapsTest, AStreamArrivesInOrderAndTheFinalCallSeesAllOfIt) {
  auto ch = connect();
  HubClient hub(*ch);
  for (SendHint hint : {SendHint::kNow, SendHint::kMoreComing}) {
    SCOPED_TRACE(hint == SendHint::kNow ? "kNow" : "kMoreComing");
    auto up = hub.uploadRequest();
    UploadClient upload(up.call().results().getUpload());
    std::vector<kj::byte> chunk(200, kj::byte{7});
    constexpr uint32_t kChunks = 2000;
    for (uint32_t i = 0; i < kChunks; ++i) {
      auto w = upload.writeRequest();
      w.params().setSeq(i);
      w.params().setChunk(kj::arrayPtr(chunk.data(), chunk.size()));
      w.send(hint);
    }
    auto done = upload.doneRequest().call();
    EXPECT_EQ(done.results().getCount(), kChunks);
    EXPECT_EQ(done.results().getBytes(), uint64_t{kChunks} * chunk.size());
    EXPECT_TRUE(done.results().getInOrder());
    EXPECT_EQ(upload.streamFlow().inFlight(), 0u);
  }
}

TEST_P(CapsTest, TheStreamWindowBoundsChunksInFlightInCallsAndBytes) {
  for (const bool byBytes : {false, true}) {
    ChannelOptions co;
    co.streamWindowCalls = byBytes ? 16 : 3;
    co.streamWindowBytes = byBytes ? 2048 : 1 << 20;
    auto ch = connect(co);
    HubClient hub(*ch);
    UploadClient upload(hub.uploadRequest().call().results().getUpload());
    std::vector<kj::byte> chunk(1000, kj::byte{1});
    uint32_t most = 0;
    uint64_t mostBytes = 0;
    for (uint32_t i = 0; i < 300; ++i) {
      auto w = upload.writeRequest();
      w.params().setSeq(i);
      w.params().setChunk(kj::arrayPtr(chunk.data(), chunk.size()));
      w.send();
      most = std::max(most, upload.streamFlow().inFlight());
      mostBytes = std::max(mostBytes, upload.streamFlow().bytesInFlight());
    }
    if (byBytes)
      EXPECT_LT(mostBytes, 2048u);  // a send returns only with room below the byte window
    else
      EXPECT_LT(most, 3u);
    EXPECT_TRUE(upload.doneRequest().call().results().getInOrder());
  }
}

TEST_P(CapsTest, AnErrorMidStreamFailsTheNextSendAndTheFinalCall) {
  auto ch = connect();
  HubClient hub(*ch);
  auto up = hub.uploadRequest();
  up.params().setFailAt(10);
  UploadClient upload(up.call().results().getUpload());
  int failedAt = -1;
  // The sender hears of the error when it next handles answers: at the latest when the
  // window is full.
  const uint32_t bound = 4 * ChannelOptions{}.streamWindowCalls;
  for (uint32_t i = 0; i < bound && failedAt < 0; ++i) {
    try {
      auto w = upload.writeRequest();
      w.params().setSeq(i);
      w.send();
    } catch (const ApplicationError& e) {
      EXPECT_EQ(e.code(), 7);
      EXPECT_THAT(e.what(), HasSubstr("chunk 10 is refused"));
      failedAt = static_cast<int>(i);
    }
  }
  EXPECT_GT(failedAt, 10);  // a later chunk saw it: never a round trip per chunk
  EXPECT_THAT([&] { upload.doneRequest().call(); },
              ThrowsMessage<ApplicationError>(HasSubstr("chunk 10 is refused")));
}

TEST_P(CapsTest, AFailedLastChunkFailsTheOrdinaryCallAfterIt) {
  // No send after the failed chunk to report it: the next ordinary call on the object
  // (which first waits for the stream's chunks) does; the hub, another object, serves on.
  auto ch = connect();
  HubClient hub(*ch);
  auto up = hub.uploadRequest();
  up.params().setFailAt(3);
  UploadClient upload(up.call().results().getUpload());
  for (uint32_t i = 0; i <= 3; ++i) {
    auto w = upload.writeRequest();
    w.params().setSeq(i);
    w.send();
  }
  EXPECT_THAT([&] { upload.doneRequest().call(); },
              ThrowsMessage<ApplicationError>(HasSubstr("chunk 3 is refused")));
  EXPECT_EQ(hub.loginRequest().call().results().getAccount().isImport(), true);
}

TEST_P(CapsTest, AServerStreamsToAnObjectTheClientPassed) {
  auto ch = connect();
  HubClient hub(*ch);
  auto ticker = std::make_shared<TickerImpl>();
  auto feed = hub.feedRequest();
  feed.params().setTicker(Capability::local(ticker));
  feed.params().setCount(1000);
  EXPECT_EQ(feed.call().results().getSent(), 1000u);
  EXPECT_EQ(ticker->ticks, 1000u);
  EXPECT_TRUE(ticker->inOrder);
  EXPECT_TRUE(ticker->ended);
  EXPECT_DOUBLE_EQ(ticker->last, 1099.0);
}

TEST_P(CapsTest, LocalAndNullCapabilitiesAreNotCallable) {
  SinkClient local(Capability::local(std::make_shared<SinkImpl>()));
  EXPECT_THROW(local.pushRequest(), InvalidArgument);
  SinkClient none{Capability()};
  EXPECT_THROW(none.pushRequest(), InvalidArgument);
}

TEST_P(CapsTest, ManyCapabilitiesCreatedAndReleasedLeaveNothingBehind) {
  auto ch = connect();
  HubClient hub(*ch);
  const int rounds = GetParam() == Transport::kShm ? 100'000 : 20'000;
  std::vector<std::weak_ptr<SinkImpl>> watch;
  watch.reserve(static_cast<size_t>(rounds));
  const auto until = Clock::now() + 120s;  // bounded in time as well as in count
  for (int i = 0; i < rounds && Clock::now() < until; ++i) {
    auto s = std::make_shared<SinkImpl>();
    watch.push_back(s);
    auto request = hub.sameRequest();
    request.params().setA(Capability::local(s));
    request.params().setB(Capability::local(s));
    ASSERT_TRUE(request.call().results().getSame()) << i;
  }
  EXPECT_TRUE(pollUntil(*ch, [&] {
    for (auto& w : watch)
      if (!w.expired()) return false;
    return true;
  })) << "exports still held by the server";
}

INSTANTIATE_TEST_SUITE_P(Transports, CapsTest,
                         testing::Values(Transport::kLoopback, Transport::kShm, Transport::kTcp),
                         transportName);

// ------------------------------------------------------------------------------------
// Limits: exports and imports per connection

TEST(CapsLimits, AMessageOverTheReceiversImportLimitIsRefusedAndItsCapabilitiesReleased) {
  HubImpl hub;
  ServerOptions so;
  so.maxImportsPerConnection = 1;
  Server server(so);
  auto client = serveOverLoopback(server, {&hub});
  {
    Channel ch(std::move(client));
    HubClient hubClient(ch);
    auto s = std::make_shared<SinkImpl>(), t = std::make_shared<SinkImpl>();
    std::weak_ptr<SinkImpl> ws = s, wt = t;
    {
      auto request = hubClient.sameRequest();
      request.params().setA(Capability::local(s));
      request.params().setB(Capability::local(t));
      s.reset(), t.reset();
      try {
        request.call();
        ADD_FAILURE() << "two imports passed a limit of one";
      } catch (const InvalidArgument& e) {
        EXPECT_THAT(e.what(), HasSubstr("max_imports"));
      }
    }
    // The server gave both references back at once: the objects go.
    const auto until = Clock::now() + 5s;
    while ((!ws.expired() || !wt.expired()) && Clock::now() < until) {
      ch.poll();
      std::this_thread::sleep_for(1ms);
    }
    EXPECT_TRUE(ws.expired() && wt.expired());
    // One is within the limit.
    auto request = hubClient.sameRequest();
    auto u = std::make_shared<SinkImpl>();
    request.params().setA(Capability::local(u));
    request.params().setB(Capability::local(u));
    EXPECT_TRUE(request.call().results().getSame());
  }
  server.shutdown();
}

TEST(CapsLimits, PassingMoreObjectsThanTheExportLimitFailsOverloaded) {
  HubImpl hub;
  Server server;
  auto client = serveOverLoopback(server, {&hub});
  {
    ChannelOptions co;
    co.maxExports = 2;
    Channel ch(std::move(client), co);
    HubClient hubClient(ch);
    auto keep = hubClient.keepRequest();
    keep.params().setSink(Capability::local(std::make_shared<SinkImpl>()));
    keep.call();  // the server holds it: one export
    {
      // A is the second export, B would be the third: refused, and A's reference, counted
      // for a message never sent, taken back.
      auto request = hubClient.sameRequest();
      request.params().setA(Capability::local(std::make_shared<SinkImpl>()));
      request.params().setB(Capability::local(std::make_shared<SinkImpl>()));
      EXPECT_THROW(request.call(), Overloaded);
    }
    auto request = hubClient.sameRequest();
    auto c = std::make_shared<SinkImpl>();
    request.params().setA(Capability::local(c));
    request.params().setB(Capability::local(c));
    EXPECT_TRUE(request.call().results().getSame());
    hubClient.dropRequest().call();
  }
  server.shutdown();
}

// ------------------------------------------------------------------------------------
// A hostile peer, writing frames by hand over a raw connection

class HostileTest : public testing::Test {
 protected:
  void SetUp() override {
    server_.addService(hub_);
    auto [client, server] = makeLoopbackPair();
    server_.addConnection(std::move(server));
    server_.start();
    raw_ = std::move(client);
  }
  void TearDown() override {
    raw_.reset();
    server_.shutdown();
  }

  /// Sends a frame of `kind` to the Hub whose extension area is `records`.
  void send(FrameKind kind, uint64_t callId, std::vector<uint64_t> records) {
    OutgoingMessage m;
    ASSERT_EQ(raw_->tryStartMessage(m, 8), Status::kOk);
    m.header().kind = static_cast<uint8_t>(kind);
    m.header().callId = callId;
    m.header().interfaceId = HubService::kInterfaceId;
    m.header().methodId = 6;  // same(a, b)
    m.initRoot<capnp::AnyPointer>();
    extensions_ = std::move(records);
    m.setExtensions(kj::arrayPtr(reinterpret_cast<const capnp::word*>(extensions_.data()),
                                 extensions_.size()));
    ASSERT_EQ(raw_->send(m), Status::kOk);
  }

  /// A record of `type` whose payload is the 32-bit values `fields`.
  static std::vector<uint64_t> record(uint16_t type, std::vector<uint32_t> fields) {
    if (fields.size() % 2) fields.push_back(0);
    std::vector<uint64_t> out(1 + fields.size() / 2);
    const ExtensionHeader h{type, 0, static_cast<uint32_t>(8 * out.size())};
    std::memcpy(static_cast<void*>(out.data()), &h, sizeof h);
    std::memcpy(static_cast<void*>(out.data() + 1), fields.data(), fields.size() * 4);
    return out;
  }

  /// The next frame's error message (an error frame's body is {kind, code, message}; other
  /// frames give ""), or "disconnected".
  std::string receiveText(FrameKind& kind) {
    IncomingMessage in;
    const Status s = raw_->receive(in, deadlineAfter(5s));
    if (s == Status::kDisconnected) return "disconnected";
    if (s != Status::kOk) return "status " + std::to_string(static_cast<int>(s));
    kind = static_cast<FrameKind>(in.header().kind);
    if (kind != FrameKind::kError) return "";
    auto body = in.getRoot<capnp::AnyStruct>();
    return body.getPointerSection().size() ? body.getPointerSection()[0].getAs<capnp::Text>().cStr()
                                           : "";
  }

  HubImpl hub_;
  Server server_;
  std::unique_ptr<Connection> raw_;
  std::vector<uint64_t> extensions_;
};

TEST_F(HostileTest, ACallToAnExportNeverMadeIsAnErrorNamingIt) {
  send(FrameKind::kRequest, 1, record(extension::kTarget, {77}));
  FrameKind kind{};
  const std::string text = receiveText(kind);
  EXPECT_EQ(kind, FrameKind::kError);
  EXPECT_THAT(text, HasSubstr("export 77"));
  // The connection still serves.
  send(FrameKind::kRequest, 2, record(extension::kTarget, {78}));
  EXPECT_THAT(receiveText(kind), HasSubstr("export 78"));
}

TEST_F(HostileTest, ACapabilityTableNamingOurMissingExportIsRefused) {
  // Receiver-hosted entry 5: "your export 5", which the server never made.
  send(FrameKind::kRequest, 1, record(extension::kCapTable, {1, 0, 5, 2}));
  FrameKind kind{};
  const std::string text = receiveText(kind);
  EXPECT_EQ(kind, FrameKind::kError);
  EXPECT_THAT(text, HasSubstr("export 5"));
}

TEST_F(HostileTest, AMalformedCapabilityTableIsRefused) {
  // Count 3, but one entry.
  send(FrameKind::kRequest, 1, record(extension::kCapTable, {3, 0, 1, 1}));
  FrameKind kind{};
  EXPECT_THAT(receiveText(kind), HasSubstr("does not match"));
  // An unknown kind.
  send(FrameKind::kRequest, 2, record(extension::kCapTable, {1, 0, 1, 9}));
  EXPECT_THAT(receiveText(kind), HasSubstr("unknown kind"));
}

// Metadata records (record 5): each fault is refused by name and the connection serves on.
TEST_F(HostileTest, AMalformedMetadataRecordIsRefusedByName) {
  auto entry = [](std::string_view key, std::string_view value) {
    std::vector<uint32_t> w{static_cast<uint32_t>(key.size()), static_cast<uint32_t>(value.size())};
    std::string body = std::string(key) + std::string(value);
    body.resize((body.size() + 7) & ~size_t{7}, '\0');
    for (size_t i = 0; i < body.size(); i += 4) {
      uint32_t v;
      std::memcpy(&v, body.data() + i, 4);
      w.push_back(v);
    }
    return w;
  };
  auto metadata = [&](uint32_t count, std::vector<std::vector<uint32_t>> entries) {
    std::vector<uint32_t> fields{count, 0};
    for (auto& e : entries) fields.insert(fields.end(), e.begin(), e.end());
    return record(extension::kMetadata, fields);
  };
  FrameKind kind{};
  send(FrameKind::kRequest, 1, metadata(2, {entry("tenant", "a")}));  // one entry, count 2
  EXPECT_THAT(receiveText(kind), HasSubstr("metadata record is refused: entry 1 lies past its end"));
  send(FrameKind::kRequest, 2, metadata(1, {entry("Tenant", "a")}));
  EXPECT_THAT(receiveText(kind), HasSubstr("other than a-z"));
  send(FrameKind::kRequest, 3, metadata(2, {entry("k", "1"), entry("k", "2")}));
  EXPECT_THAT(receiveText(kind), HasSubstr("comes twice"));
  send(FrameKind::kRequest, 4, metadata(1000, {}));
  EXPECT_THAT(receiveText(kind), HasSubstr("1000 entries"));
  // {keyBytes 1, valueBytes 1 << 20}: a value past the limit (and past the record).
  send(FrameKind::kRequest, 5, metadata(1, {{1, 1u << 20, 0x61, 0}}));
  EXPECT_THAT(receiveText(kind), HasSubstr("more than 1024"));
  // Still serving: a well-formed record passes.
  send(FrameKind::kRequest, 6, metadata(1, {entry("tenant", "a")}));
  EXPECT_THAT(receiveText(kind), Not(HasSubstr("metadata")));
}

TEST_F(HostileTest, AReleaseOfSomethingNeverGivenClosesTheConnection) {
  send(FrameKind::kRelease, 0, record(extension::kReleases, {1, 0, 5, 1}));
  FrameKind kind{};
  std::string text;
  const auto until = Clock::now() + 5s;
  do text = receiveText(kind);
  while (text != "disconnected" && Clock::now() < until);
  EXPECT_EQ(text, "disconnected");
}

TEST_F(HostileTest, ReleasingMoreThanWasGivenClosesTheConnection) {
  // The server exports an Account (one reference); releasing it twice over is a lie.
  std::vector<uint64_t> none;
  OutgoingMessage m;
  ASSERT_EQ(raw_->tryStartMessage(m, 8), Status::kOk);
  m.header().kind = static_cast<uint8_t>(FrameKind::kRequest);
  m.header().callId = 1;
  m.header().interfaceId = HubService::kInterfaceId;
  m.header().methodId = 0;  // login
  m.build<Hub::LoginParams>().setName("mallory");
  ASSERT_EQ(raw_->send(m), Status::kOk);
  FrameKind kind{};
  (void)receiveText(kind);
  ASSERT_EQ(kind, FrameKind::kResponse);
  send(FrameKind::kRelease, 0, record(extension::kReleases, {1, 0, 1, 2}));
  std::string text;
  const auto until = Clock::now() + 5s;
  do text = receiveText(kind);
  while (text != "disconnected" && Clock::now() < until);
  EXPECT_EQ(text, "disconnected");
}

// ------------------------------------------------------------------------------------
// Stream requests: a chunk that succeeds is answered by nothing; the answer to a later call
// confirms it (docs/wire-format.md, "Streams")

/// Builds a frame on `raw` and sends it.
template <typename Build>
void sendRaw(Connection& raw, FrameKind kind, uint64_t callId, uint64_t interfaceId,
             uint16_t methodId, Build build) {
  OutgoingMessage m;
  ASSERT_EQ(raw.tryStartMessage(m, 16), Status::kOk);
  m.header().kind = static_cast<uint8_t>(kind);
  m.header().callId = callId;
  m.header().interfaceId = interfaceId;
  m.header().methodId = methodId;
  build(m);
  ASSERT_EQ(raw.send(m), Status::kOk);
}

TEST(StreamRequests, TheServerAnswersOnlyTheChunkThatFailed) {
  UploadImpl upload(3);  // refuses the chunk with seq 3
  Server server;
  auto client = serveOverLoopback(server, {&upload});
  for (uint32_t i = 0; i < 6; ++i)
    sendRaw(*client, FrameKind::kStreamRequest, i + 1, UploadService::kInterfaceId, 0,
            [i](OutgoingMessage& m) { m.build<Upload::WriteParams>().setSeq(i); });
  sendRaw(*client, FrameKind::kPing, 100, 0, 0,
          [](OutgoingMessage& m) { m.initRoot<capnp::AnyPointer>(); });
  std::vector<std::pair<FrameKind, uint64_t>> got;  // what came back, in order
  const auto until = Clock::now() + 5s;
  while ((got.empty() || got.back().first != FrameKind::kPong) && Clock::now() < until) {
    IncomingMessage in;
    if (client->receive(in, deadlineAfter(100ms)) == Status::kOk)
      got.emplace_back(static_cast<FrameKind>(in.header().kind), in.header().callId);
  }
  // The pong comes after everything the chunks caused: only the failed one said anything.
  EXPECT_EQ(got, (std::vector<std::pair<FrameKind, uint64_t>>{{FrameKind::kError, 4},
                                                              {FrameKind::kPong, 100}}));
  client.reset();
  server.shutdown();
}

TEST(StreamRequests, ChunksThatSucceedStayInFlightUntilFinishConfirmsThem) {
  UploadImpl upload(0);
  Server server;
  Channel channel(serveOverLoopback(server, {&upload}));
  UploadClient stream(channel);
  for (uint32_t i = 0; i < 5; ++i) {
    auto w = stream.writeRequest();
    w.params().setSeq(i);
    w.send();
  }
  // Nothing comes back for them, however long we listen...
  const auto until = Clock::now() + 50ms;
  while (Clock::now() < until) channel.poll();
  EXPECT_EQ(stream.streamFlow().inFlight(), 5u);
  // ...until a later call's answer says the server handled everything before it.
  stream.streamFlow().finish();
  EXPECT_EQ(stream.streamFlow().inFlight(), 0u);
  EXPECT_EQ(stream.streamFlow().bytesInFlight(), 0u);
  EXPECT_EQ(stream.doneRequest().call().results().getCount(), 5u);
  server.shutdown();
}

/// A Channel whose peer is the test: the raw end of a loopback pair.
class StreamRequestsFromAPeerTest : public testing::Test {
 protected:
  void SetUp() override {
    auto [client, peer] = makeLoopbackPair();
    channel_ = std::make_unique<Channel>(std::move(client));
    peer_ = std::move(peer);
  }
  /// The next frame the channel sent (fails the test after 5 s).
  IncomingMessage next() {
    IncomingMessage in;
    EXPECT_EQ(peer_->receive(in, deadlineAfter(5s)), Status::kOk);
    return in;
  }
  /// Polls (5 s at most) until `stream` has failed: the error its next send would throw.
  std::optional<ApplicationError> pollUntilFailed(UploadClient& stream) {
    for (const auto until = Clock::now() + 5s; Clock::now() < until;) {
      channel_->poll();
      try {
        stream.streamFlow().throwIfFailed();
      } catch (const ApplicationError& e) {
        return e;
      }
    }
    return std::nullopt;
  }
  std::unique_ptr<Channel> channel_;
  std::unique_ptr<Connection> peer_;
};

TEST_F(StreamRequestsFromAPeerTest, TheChunkAtHalfTheWindowIsAMarkWhoseAnswerConfirmsAllBefore) {
  UploadClient stream(*channel_);
  const uint32_t half = ChannelOptions{}.streamWindowCalls / 2;
  for (uint32_t i = 0; i < half; ++i) {
    auto w = stream.writeRequest();
    w.params().setSeq(i);
    w.send();  // far from the window: returns at once
  }
  EXPECT_EQ(stream.streamFlow().inFlight(), half);
  uint64_t mark = 0;
  for (uint32_t i = 0; i < half; ++i) {
    IncomingMessage in = next();
    if (i + 1 < half) {
      EXPECT_EQ(in.header().kind, static_cast<uint8_t>(FrameKind::kStreamRequest)) << "chunk " << i;
    } else {
      EXPECT_EQ(in.header().kind, static_cast<uint8_t>(FrameKind::kRequest));
      mark = in.header().callId;
    }
  }
  sendRaw(*peer_, FrameKind::kResponse, mark, 0, 0,
          [](OutgoingMessage& m) { m.initRoot<capnp::AnyPointer>(); });
  const auto until = Clock::now() + 5s;
  while (stream.streamFlow().inFlight() > 0 && Clock::now() < until) channel_->poll();
  EXPECT_EQ(stream.streamFlow().inFlight(), 0u);
  EXPECT_EQ(stream.streamFlow().bytesInFlight(), 0u);
}

TEST_F(StreamRequestsFromAPeerTest, AnErrorForOneChunkFailsTheStreamsNextSend) {
  UploadClient stream(*channel_);
  uint64_t second = 0;
  for (uint32_t i = 0; i < 3; ++i) {
    auto w = stream.writeRequest();
    w.params().setSeq(i);
    w.send();
    IncomingMessage in = next();
    if (i == 1) second = in.header().callId;
  }
  auto error = [&](uint64_t callId, const char* why) {
    sendRaw(*peer_, FrameKind::kError, callId, 0, 0,
            [&](OutgoingMessage& m) { writeError(m, ErrorKind::kApplication, 9, why); });
  };
  error(second + 1000, "names no call of ours");  // ignored
  error(second, "chunk 1 is refused");
  const auto failure = pollUntilFailed(stream);
  ASSERT_TRUE(failure);
  EXPECT_EQ(failure->code(), 9);
  EXPECT_THAT(failure->what(), HasSubstr("chunk 1 is refused"));
  EXPECT_THROW(stream.writeRequest().send(), ApplicationError);  // the next chunk
}

// Two streams whose chunks alternate make a run of call ids per chunk: the error of the
// first chunk must still find its stream however many runs came after it, while that
// chunk is in flight.
TEST_F(StreamRequestsFromAPeerTest, AnErrorFindsItsStreamAmongManyInterleavedChunks) {
  UploadClient a(*channel_), b(*channel_);
  const uint32_t perStream = ChannelOptions{}.streamWindowCalls / 2 - 1;  // no mark, no wait
  ASSERT_GE(perStream, 40u) << "a window this small does not make enough runs";
  uint64_t firstOfA = 0;
  for (uint32_t i = 0; i < perStream; ++i) {
    for (UploadClient* s : {&a, &b}) {
      auto w = s->writeRequest();
      w.params().setSeq(i);
      w.send();
      IncomingMessage in = next();
      EXPECT_EQ(in.header().kind, static_cast<uint8_t>(FrameKind::kStreamRequest));
      if (i == 0 && s == &a) firstOfA = in.header().callId;
    }
  }
  sendRaw(*peer_, FrameKind::kError, firstOfA, 0, 0,
          [&](OutgoingMessage& m) { writeError(m, ErrorKind::kApplication, 7, "a's first chunk"); });
  const auto failure = pollUntilFailed(a);
  ASSERT_TRUE(failure) << "the error of a's first chunk, behind " << 2 * perStream - 1
                       << " runs, did not reach it";
  EXPECT_THAT(failure->what(), HasSubstr("a's first chunk"));
  EXPECT_NO_THROW(b.streamFlow().throwIfFailed());
}

// ------------------------------------------------------------------------------------
// A server driven from the caller's event loop (ServerOptions::workerThreads = 0)

/// Records the thread its handler ran on.
class ThreadProbe final : public SinkService {
 public:
  void push(PushCall& call) override {
    ranOn = std::this_thread::get_id();
    call.results().setTotal(call.params().getValue());
  }
  std::thread::id ranOn;
};

TEST(UserDrivenServer, ServesCallsAndCallbacksFromTheCallersEventLoop) {
  HubImpl hub;
  ThreadProbe probe;
  ServerOptions so;
  so.workerThreads = 0;
  Server server(so);
  EXPECT_THROW(server.poll(), InvalidArgument);  // before start()
  auto client = serveOverLoopback(server, {&hub, &probe});

  std::atomic<bool> done{false};
  int64_t last = 0, probed = 0;
  std::string failure;
  std::thread user([&, c = std::move(client)]() mutable {
    try {
      Channel channel(std::move(c));
      auto req = SinkClient(channel).pushRequest();
      req.params().setValue(7);
      probed = req.call().results().getTotal();
      // The server calls back into our Sink 50 times (from the loop's thread) before it
      // answers; the callbacks run here, inside this call.
      auto sink = std::make_shared<SinkImpl>();
      auto sub = HubClient(channel).subscribeRequest();
      sub.params().setSink(Capability::local(sink));
      sub.params().setCount(50);
      last = sub.call().results().getLast();
    } catch (const std::exception& e) {
      failure = e.what();
    }
    done = true;
  });

  // The loop: this thread is the server's only one.
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ASSERT_EQ(::epoll_ctl(ep, EPOLL_CTL_ADD, server.waitFd(), &ev), 0);
  size_t sleeps = 0;
  const auto until = Clock::now() + 10s;
  while (!done && Clock::now() < until) {
    server.poll();
    const auto left = server.armWait();
    if (left.count() == 0) continue;  // more is there already
    epoll_event out[4];
    sleeps += ::epoll_wait(ep, out, 4, static_cast<int>(std::min<int64_t>(left.count(), 100))) >= 0;
  }
  user.join();
  ::close(ep);
  EXPECT_EQ(failure, "");
  EXPECT_EQ(probed, 7);
  EXPECT_EQ(probe.ranOn, std::this_thread::get_id());  // handlers run in poll()
  EXPECT_EQ(last, 50 * 51 / 2);  // 1 + 2 + ... + 50, pushed to the client's sink
  EXPECT_GT(sleeps, 0u);         // it waited on waitFd() between calls, not only spun
  server.shutdown();             // from the thread that drives it
  EXPECT_EQ(server.connectionCount(), 0u);
}

TEST(UserDrivenServer, PollIsRefusedOnAServerWithWorkerThreads) {
  Server server;
  server.start();
  EXPECT_THAT([&] { server.poll(); },
              ThrowsMessage<InvalidArgument>(HasSubstr("workerThreads = 0")));
  EXPECT_THROW((void)server.waitFd(), InvalidArgument);
  server.shutdown();
}

}  // namespace
}  // namespace zcrpc::caps_test
