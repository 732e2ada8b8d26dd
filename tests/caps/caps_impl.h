// The services of caps.capnp as caps_test.cc and the rdma guest's test (tests/rdma) serve
// them: a client's Sink, the server's Account and Hub.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "caps.capnp.zcrpc.h"

namespace zcrpc::caps_test {

// ------------------------------------------------------------------------------------
// Services

/// A client's callback: adds what it is pushed.
class SinkImpl final : public SinkService {
 public:
  void push(PushCall& call) override {
    total += call.params().getValue();
    call.results().setTotal(total);
  }
  int64_t total = 0;  // the thread that polls the client's channel
};

/// Accounts alive in this process (each login makes one; the last release frees it).
inline std::atomic<int> liveAccounts{0};

class AccountImpl final : public AccountService {
 public:
  explicit AccountImpl(std::string name) : name_(std::move(name)) { ++liveAccounts; }
  ~AccountImpl() override { --liveAccounts; }
  void whoami(WhoamiCall& call) override { call.results().setName(name_); }

 private:
  std::string name_;
};

/// The server's end of a client's stream: checks the chunks come in order.
class UploadImpl final : public UploadService {
 public:
  explicit UploadImpl(uint32_t failAt) : failAt_(failAt) {}
  void write(WriteCall& call) override {
    const uint32_t seq = call.params().getSeq();
    if (failAt_ != 0 && seq == failAt_) throw ApplicationError(7, "chunk " + std::to_string(seq) + " is refused");
    inOrder_ &= seq == count_;
    ++count_;
    bytes_ += call.params().getChunk().size();
  }
  void done(DoneCall& call) override {
    auto r = call.results();
    r.setCount(count_);
    r.setBytes(bytes_);
    r.setInOrder(inOrder_);
  }

 private:
  uint32_t failAt_;
  uint32_t count_ = 0;
  uint64_t bytes_ = 0;
  bool inOrder_ = true;
};

/// A client's end of a price feed.
class TickerImpl final : public TickerService {
 public:
  void tick(TickCall& call) override {
    inOrder &= call.params().getSeq() == ticks;
    ++ticks;
    last = call.params().getPrice();
  }
  void end(EndCall&) override { ended = true; }
  uint32_t ticks = 0;
  double last = 0;
  bool inOrder = true;
  bool ended = false;
};

class HubImpl final : public HubService {
 public:
  void login(LoginCall& call) override {
    auto account = std::make_shared<AccountImpl>(std::string(call.params().getName().cStr()));
    {
      std::lock_guard lock(mutex_);
      made_.push_back(account);
    }
    call.results().setAccount(Capability::local(account));
  }
  void subscribe(SubscribeCall& call) override {
    // Callbacks during the call: synchronous calls from the handler, on the worker thread.
    // (Calls first, then results: see the next test.)
    SinkClient sink(call.params().getSink());
    const int64_t last = pushAll(sink, call.params().getCount());
    call.results().setLast(last);
  }
  void keep(KeepCall& call) override {
    std::lock_guard lock(mutex_);
    kept_ = call.params().getSink();
  }
  void fire(FireCall& call) override {
    if (call.params().getCount() < 0) {
      // Results started first: a call on the connection is then refused, by name.
      call.results().setLast(-1);
      SinkClient(kept()).pushRequest();
    }
    SinkClient sink(kept());
    const int64_t last = pushAll(sink, call.params().getCount());
    call.results().setLast(last);
  }
  void drop(DropCall&) override {
    std::lock_guard lock(mutex_);
    kept_ = Capability();
  }
  void echo(EchoCall& call) override {
    auto in = call.params().getHolder();
    auto out = call.results().initHolder();
    out.setLabel(in.getLabel());
    out.setSink(in.getSink());
    if (in.getChoice().isOther()) out.getChoice().setOther(in.getChoice().getOther());
    out.getGroup().setInner(in.getGroup().getInner());
    out.setSinks(in.getSinks());  // a list copied between messages, capabilities and all
  }
  void fanOut(FanOutCall& call) override {
    auto sinks = call.params().getSinks();
    const int64_t value = call.params().getValue();
    std::vector<int64_t> totals;
    for (const Capability& sink : sinks) {
      if (!sink) {
        totals.push_back(0);
        continue;
      }
      auto push = SinkClient(sink).pushRequest();
      push.params().setValue(value);
      totals.push_back(push.call().results().getTotal());
    }
    call.results().setTotals(kj::arrayPtr(totals.data(), totals.size()));
  }
  void accounts(AccountsCall& call) override {
    auto names = call.params().getNames();
    auto out = call.results().initAccounts(names.size());
    for (uint32_t i = 0; i < names.size(); ++i)
      out.set(i, Capability::local(std::make_shared<AccountImpl>(names[i].cStr())));
  }
  void same(SameCall& call) override {
    call.results().setSame(call.params().getA() == call.params().getB());
  }
  void upload(UploadCall& call) override {
    call.results().setUpload(Capability::local(std::make_shared<UploadImpl>(call.params().getFailAt())));
  }
  void feed(FeedCall& call) override {
    // A server-to-client stream: chunks go as the window allows, from this handler.
    TickerClient ticker(call.params().getTicker());
    const uint32_t count = call.params().getCount();
    for (uint32_t i = 0; i < count; ++i) {
      auto tick = ticker.tickRequest();
      tick.params().setSeq(i);
      tick.params().setPrice(100.0 + i);
      tick.send();
    }
    ticker.endRequest().call();  // after every tick was answered
    call.results().setSent(count);
  }
  void fireAsync(FireAsyncCall& call) override {
    const int64_t value = call.params().getValue();  // read before defer() takes the request
    auto reply = std::make_shared<DeferredReply>(call.defer());
    auto push = SinkClient(kept()).pushRequest();
    push.params().setValue(value);
    // The callback runs on this worker thread when the answer arrives; the worker serves
    // its other connections meanwhile.
    push.callAsync([reply](CallResult&& r) {
      if (!r.ok()) return reply->fail(r.errorKind(), r.errorMessage(), r.errorCode());
      const int64_t total = r.results<Sink::PushResults>().getTotal();
      reply->complete([total](OutgoingMessage& m) { m.build<Hub::FireAsyncResults>().setLast(total); });
    });
  }
  void isMine(IsMineCall& call) override {
    std::shared_ptr<Service> object = call.params().getAccount().localObject();
    bool mine = false;
    std::lock_guard lock(mutex_);
    for (auto& weak : made_) mine |= object && weak.lock() == object;
    call.results().setMine(mine);
  }

  Capability kept() {
    std::lock_guard lock(mutex_);
    return kept_;
  }

 private:
  static int64_t pushAll(SinkClient& sink, int64_t count) {
    int64_t last = 0;
    for (int64_t i = 1; i <= count; ++i) {
      auto request = sink.pushRequest();
      request.params().setValue(i);
      last = request.call().results().getTotal();
    }
    return last;
  }

  std::mutex mutex_;
  Capability kept_;
  std::vector<std::weak_ptr<AccountImpl>> made_;
};

}  // namespace zcrpc::caps_test
