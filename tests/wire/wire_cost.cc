// wire_cost — what building and reading one 64-byte Echo.echo params message costs, with
// libcapnp's accessors and with zcrpc's generated ones, in instructions:
//
//   valgrind --tool=callgrind --collect-atstart=no build/tests/wire/wire_cost [MESSAGES]
//
// Each variant builds the message into pre-zeroed memory and reads it back with bounds and
// traversal checks (ReaderLimits' defaults), MESSAGES times in its own collection window,
// dumped under its name; divide each dump's total Ir by MESSAGES:
//
//   capnp-raw   libcapnp: a MessageBuilder over the memory, initRoot, setData; then a
//               SegmentArrayMessageReader, getRoot, getData (the issue's ~975 Ir baseline)
//   wire-raw    zcrpc's accessors: a BuildArena over the memory and a ReadContext over the
//               segments, nothing else
//   capnp-msg   through zcrpc's OutgoingMessage / IncomingMessage as the stubs used them
//               before (getRoot / getRoot)
//   wire-msg    through OutgoingMessage::build() / IncomingMessage::read(), as the stubs
//               use them now
//
// Without valgrind it runs the same loops and prints nothing but a checksum.
#include <valgrind/callgrind.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "echo.capnp.zcrpc.h"
#include "zcrpc/message.h"

namespace zcrpc {
namespace {

using Params = echo::Echo::EchoParams;
constexpr uint32_t kWords = 16;  // the first segment (the echo stubs' size hint)
const char kData[64] = "sixty-four bytes of payload, the size the zero-alloc test uses.";

capnp::Data::Reader payload() {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(kData), sizeof kData);
}

/// libcapnp's builder over one pre-zeroed buffer (what OutgoingMessage does with the ring).
class BufferBuilder final : public capnp::MessageBuilder {
 public:
  explicit BufferBuilder(kj::ArrayPtr<capnp::word> first) : first_(first) {}
  kj::ArrayPtr<capnp::word> allocateSegment(capnp::uint) override {
    if (taken_) std::abort();
    taken_ = true;
    return first_;
  }

 private:
  kj::ArrayPtr<capnp::word> first_;
  bool taken_ = false;
};

/// The transport side of OutgoingMessage / IncomingMessage, over one buffer.
class Buffer final : public SegmentSource, public LeaseOwner {
 public:
  Buffer() : words_(kWords) {}
  void open(OutgoingMessage& msg) {
    std::memset(static_cast<void*>(words_.data()), 0, kWords * 8);
    msg.open(*this, header_, kj::ArrayPtr<capnp::word>(reinterpret_cast<capnp::word*>(words_.data()), kWords));
  }
  /// The message's segments, as a receiver's validated frame.
  void receive(OutgoingMessage& msg) {
    auto segs = msg.segmentsForSend();
    frame_.segmentCount = segs.size();
    for (size_t i = 0; i < segs.size(); ++i) frame_.segments[i] = segs[i];
    msg.markSent();
  }
  kj::ArrayPtr<capnp::word> allocateMore(uint32_t) override { std::abort(); }
  void abandon() noexcept override {}
  const ParsedFrame& leasedFrame(uint32_t) const noexcept override { return frame_; }
  const ReaderLimits& readerLimits() const noexcept override { return limits_; }
  void releaseLease(uint32_t) noexcept override {}
  kj::ArrayPtr<capnp::word> memory() {
    return kj::ArrayPtr<capnp::word>(reinterpret_cast<capnp::word*>(words_.data()), kWords);
  }

 private:
  std::vector<uint64_t> words_;
  FrameHeader header_{};
  ParsedFrame frame_{};
  ReaderLimits limits_{};
};

uint64_t sum(capnp::Data::Reader d) { return d.size() + d[0] + d[d.size() - 1]; }

uint64_t capnpRaw(Buffer& b) {
  auto mem = b.memory();
  std::memset(static_cast<void*>(mem.begin()), 0, mem.size() * 8);
  uint64_t s;
  {
    BufferBuilder builder(mem);
    builder.initRoot<Params>().setData(payload());
    capnp::ReaderOptions options;  // ReaderLimits' values
    options.traversalLimitInWords = 8 * 1024 * 1024;
    options.nestingLimit = 64;
    capnp::SegmentArrayMessageReader reader(builder.getSegmentsForOutput(), options);
    s = sum(reader.getRoot<Params>().getData());
  }
  return s;
}

/// zcrpc's BuildArena needs a Source only for further segments.
class NoMore final : public wire::BuildArena::Source {
 public:
  kj::ArrayPtr<capnp::word> newSegment(uint32_t) override { std::abort(); }
};

uint64_t wireRaw(Buffer& b) {
  auto mem = b.memory();
  std::memset(static_cast<void*>(mem.begin()), 0, mem.size() * 8);
  NoMore more;
  wire::BuildArena arena;
  arena.reset(more, mem);
  using W = wire::Accessors<Params>::Wire;
  wire::Builder<Params>(arena.rootSlot().getStruct(W::kDataWords, W::kPointers, nullptr))
      .setData(payload());
  auto segs = arena.segmentsForOutput();
  wire::ReadContext ctx;
  ctx.reset(segs.begin(), static_cast<uint32_t>(segs.size()), 8 * 1024 * 1024, 64);
  return sum(wire::Reader<Params>(ctx.root()).getData());
}

uint64_t capnpMsg(Buffer& b) {
  OutgoingMessage out;
  b.open(out);
  out.getRoot<Params>().setData(payload());
  b.receive(out);
  IncomingMessage in(b, 0);
  return sum(in.getRoot<Params>().getData());
}

uint64_t wireMsg(Buffer& b) {
  OutgoingMessage out;
  b.open(out);
  out.build<Params>().setData(payload());
  b.receive(out);
  IncomingMessage in(b, 0);
  return sum(in.read<Params>().getData());
}

}  // namespace
}  // namespace zcrpc

int main(int argc, char** argv) {
  const size_t n = argc >= 2 ? std::strtoul(argv[1], nullptr, 10) : 10'000;
  zcrpc::Buffer buffer;
  struct Variant {
    const char* name;
    uint64_t (*run)(zcrpc::Buffer&);
  };
  const Variant variants[] = {{"capnp-raw", zcrpc::capnpRaw},
                              {"wire-raw", zcrpc::wireRaw},
                              {"capnp-msg", zcrpc::capnpMsg},
                              {"wire-msg", zcrpc::wireMsg}};
  uint64_t check = 0;
  for (const Variant& v : variants) {
    for (size_t i = 0; i < 1000; ++i) check += v.run(buffer);  // warm up
    CALLGRIND_ZERO_STATS;
    CALLGRIND_TOGGLE_COLLECT;
    for (size_t i = 0; i < n; ++i) check += v.run(buffer);
    CALLGRIND_TOGGLE_COLLECT;
    CALLGRIND_DUMP_STATS_AT(v.name);
  }
  std::printf("%zu messages per variant, checksum %llu\n", n,
              static_cast<unsigned long long>(check));
  return 0;
}
