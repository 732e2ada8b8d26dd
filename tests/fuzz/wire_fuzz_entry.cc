#include "wire_fuzz_entry.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "wire_compare.h"

namespace zcrpc::fuzz {
namespace {

using wiretest::AllTypes;
using wiretest::Comparison;

void report(WireFuzzOutcome& out, const Comparison& c, bool abortOnMismatch) {
  out.reads += c.reads;
  out.bothThrew += c.bothThrew;
  if (c.ok()) return;
  out.mismatch += c.report();
  if (abortOnMismatch) {
    std::fprintf(stderr, "libcapnp and zcrpc's accessors disagree:\n%s", c.report().c_str());
    std::abort();
  }
}

void readMessage(const uint8_t* data, size_t size, WireFuzzOutcome& out, bool abortOnMismatch) {
  const uint32_t count = 1 + (data[0] & 3);
  wiretest::Limits limits;
  if (size >= 2) {
    static constexpr uint64_t kTraversal[] = {16, 256, 4096, 8 << 20};
    static constexpr int kNesting[] = {1, 2, 8, 64};
    limits.traversalWords = kTraversal[data[1] & 3];
    limits.nestingLimit = kNesting[(data[1] >> 2) & 3];
  }
  size_t at = 2;
  std::vector<uint32_t> words(count, 0);
  for (uint32_t i = 0; i + 1 < count; ++i, at += 2)
    words[i] = at + 1 < size ? static_cast<uint32_t>(data[at] | (data[at + 1] << 8)) : 0;
  at = std::min(at, size);
  // Each segment in its own exactly sized buffer, so ASan sees any read past one.
  std::vector<std::vector<uint64_t>> buffers(count);
  std::vector<kj::ArrayPtr<const capnp::word>> segments(count);
  for (uint32_t i = 0; i < count; ++i) {
    const size_t left = size - at;
    size_t bytes = i + 1 < count ? std::min<size_t>(size_t{words[i]} * 8, left) : left;
    const size_t segmentWords = (bytes + 7) / 8;
    buffers[i].resize(segmentWords);  // zeroed
    if (bytes) std::memcpy(static_cast<void*>(buffers[i].data()), data + at, bytes);
    at += bytes;
    segments[i] = kj::ArrayPtr<const capnp::word>(
        reinterpret_cast<const capnp::word*>(buffers[i].data()), segmentWords);
  }
  report(out, wiretest::compareAll(kj::arrayPtr(segments.data(), segments.size()), limits),
         abortOnMismatch);
}

void buildMessage(const uint8_t* data, size_t size, WireFuzzOutcome& out, bool abortOnMismatch) {
  out.builderMode = true;
  const uint32_t first = size >= 2 ? std::max<uint32_t>(data[1], 1) : 1;
  const uint32_t next = size >= 3 ? data[2] : 0;
  const size_t skip = std::min<size_t>(size, 3);
  auto program = kj::arrayPtr(reinterpret_cast<const kj::byte*>(data) + skip, size - skip);

  capnp::MallocMessageBuilder theirs;
  wiretest::HeapMessage ours(first, next);
  bool theirsThrew = false, oursThrew = false;
  std::string whyTheirs, whyOurs;
  try {
    wiretest::OpReader ops(program);
    wiretest::applyOps(theirs.initRoot<AllTypes>(), ops);
  } catch (const kj::Exception& e) {
    theirsThrew = true;
    whyTheirs = e.getDescription().cStr();
  }
  try {
    wiretest::OpReader ops(program);
    wiretest::applyOps(ours.initRoot<AllTypes>(), ops);
  } catch (const zcrpc::Error& e) {
    oursThrew = true;
    whyOurs = e.what();
  }
  Comparison c;
  if (theirsThrew != oursThrew) {
    c.fail(wiretest::Path{nullptr, "build"}, theirsThrew ? "only libcapnp's builder threw (" + whyTheirs + ")"
                                : "only zcrpc's builder threw (" + whyOurs + ")");
    report(out, c, abortOnMismatch);
    return;
  }
  if (theirsThrew) return;

  // Equal in canonical form (libcapnp reads and canonicalises both).
  capnp::ReaderOptions options;
  options.traversalLimitInWords = uint64_t{1} << 40;
  capnp::SegmentArrayMessageReader oursRead(ours.segments(), options);
  try {
    auto a = capnp::canonicalize(theirs.getRoot<AllTypes>().asReader());
    auto b = capnp::canonicalize(oursRead.getRoot<AllTypes>());
    if (a.size() != b.size() || std::memcmp(a.begin(), b.begin(), a.size() * 8) != 0)
      c.fail(wiretest::Path{nullptr, "build"}, "the messages differ in canonical form (" + std::to_string(a.size()) +
                          " vs " + std::to_string(b.size()) + " words)");
  } catch (const kj::Exception& e) {
    c.fail(wiretest::Path{nullptr, "build"}, std::string("libcapnp cannot read zcrpc's message: ") +
                        e.getDescription().cStr());
  }
  report(out, c, abortOnMismatch);
  // zcrpc's message reads the same through both readers.
  report(out, wiretest::compareAll(ours.segments()), abortOnMismatch);
}

}  // namespace

WireFuzzOutcome runWireInput(const uint8_t* data, size_t size, bool abortOnMismatch) {
  WireFuzzOutcome out;
  if (size == 0) return out;
  if (data[0] & 0x80)
    buildMessage(data, size, out, abortOnMismatch);
  else
    readMessage(data, size, out, abortOnMismatch);
  return out;
}

}  // namespace zcrpc::fuzz
