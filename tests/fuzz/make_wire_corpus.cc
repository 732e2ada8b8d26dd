// Writes the seed corpus of the wire accessors' fuzzer (format: wire_fuzz_entry.h): messages
// libcapnp and zcrpc built (one to four segments, far pointers, defaults, lists of every
// element size, deep nesting), malformed ones, and builder programs. The seeds are committed
// (tests/fuzz/wire_corpus/); re-run this after a change to tests/wire/wire_test.capnp:
//
//   build/tests/fuzz/make_wire_corpus tests/fuzz/wire_corpus
//
// Names: msg-* are messages both readers read in full, bad-* are messages both refuse
// somewhere, build-* are builder programs (wire_corpus_test.cc checks the first two).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "wire_compare.h"

namespace {

using namespace zcrpc::wiretest;
using Bytes = std::vector<uint8_t>;
using Segments = kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>;

/// A message seed: at most four segments, limits byte `limits`.
Bytes encode(Segments segs, uint8_t limits = 0x0f) {
  if (segs.size() == 0 || segs.size() > 4) {
    std::fprintf(stderr, "a seed needs 1 to 4 segments, not %zu\n", segs.size());
    std::exit(1);
  }
  Bytes out{static_cast<uint8_t>(segs.size() - 1), limits};
  for (size_t i = 0; i + 1 < segs.size(); ++i) {
    out.push_back(static_cast<uint8_t>(segs[i].size()));
    out.push_back(static_cast<uint8_t>(segs[i].size() >> 8));
  }
  for (auto s : segs) {
    auto b = s.asBytes();
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

Bytes encodeWords(std::vector<std::vector<uint64_t>> segs, uint8_t limits = 0x0f) {
  std::vector<kj::ArrayPtr<const capnp::word>> views;
  for (auto& s : segs) views.emplace_back(reinterpret_cast<const capnp::word*>(s.data()), s.size());
  return encode(kj::arrayPtr(views.data(), views.size()), limits);
}

void write(const std::filesystem::path& dir, const std::string& name, const Bytes& bytes) {
  std::ofstream(dir / name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);

  {
    capnp::MallocMessageBuilder m;
    fillAll(m.initRoot<AllTypes>());
    write(dir, "msg-alltypes-libcapnp", encode(m.getSegmentsForOutput()));
    write(dir, "msg-alltypes-tight-limits", encode(m.getSegmentsForOutput(), 0x09));
  }
  for (uint32_t first : {2u, 9u, 40u}) {
    HeapMessage m(first, 1 << 14);  // two segments: far pointers into the second
    fillAll(m.initRoot<AllTypes>());
    write(dir, "msg-alltypes-zcrpc-first" + std::to_string(first), encode(m.segments()));
  }
  {
    HeapMessage m(3, 3);  // many small segments; the seed keeps the first four
    auto root = m.initRoot<AllTypes>();
    root.setTextField("far");
    root.initInnerField().setB("farther");
    auto segs = m.segments();
    write(dir, "msg-far-pointers", encode(segs.slice(0, std::min<size_t>(segs.size(), 4))));
  }
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<Defaults>();
    write(dir, "msg-defaults-unset", encode(m.getSegmentsForOutput()));
  }
  {
    capnp::MallocMessageBuilder m;
    auto a = m.initRoot<ListsA>();
    a.initL0(4);
    a.setL1({true, false, true});
    a.setL2({1, 2, 3});
    a.setL3({1000, 2000});
    a.setL4({100000, 200000});
    a.setL5({1ull << 50});
    a.setL6({"x", "yy"});
    a.initL7(2)[1].setB("b");
    write(dir, "msg-lists", encode(m.getSegmentsForOutput()));
  }
  {
    capnp::MallocMessageBuilder m;
    auto n = m.initRoot<Nest>();
    for (int i = 0; i < 70; ++i) {
      n.setValue(static_cast<uint8_t>(i));
      n.initChildren(1)[0].setValue(1);
      n = n.initChild();
    }
    write(dir, "msg-nest-70", encode(m.getSegmentsForOutput()));
    write(dir, "msg-nest-70-nesting8", encode(m.getSegmentsForOutput(), 0x0b));
  }
  {
    capnp::MallocMessageBuilder m;
    auto l = m.initRoot<Large>();
    l.setC("large");
    l.initD().setA(1);
    write(dir, "msg-large", encode(m.getSegmentsForOutput()));
  }

  // Malformed: an AllTypes root with one pointer field set (allTypesWith), what it points to
  // after it.
  write(dir, "bad-root-out-of-bounds", encodeWords({{structPtr(0, 100, 0)}}));
  write(dir, "bad-text-no-nul",
        encodeWords({allTypesWith("textField", listPtr(toEnd("textField"), 2, 8),
                                  {0x6161616161616161ull})}));
  write(dir, "bad-far-missing-segment",
        encodeWords({allTypesWith("structField", farPtr(false, 0, 7))}));
  write(dir, "bad-double-far-pad", encodeWords({allTypesWith("structField", farPtr(true, 0, 1)),
                                                {structPtr(0, 1, 0), structPtr(0, 1, 0)}}));
  write(dir, "bad-double-far-ok-then-bad",
        encodeWords({allTypesWith("structField", farPtr(true, 0, 1)),
                     {farPtr(false, 0, 2), structPtr(0, 1, 0)},
                     {0x1234}}));
  write(dir, "bad-inline-composite-overrun",
        encodeWords({allTypesWith("innerList", listPtr(toEnd("innerList"), 7, 2),
                                  {structPtr(3, 1, 1), 0, 0})}));
  write(dir, "bad-amplified-empty-structs",
        encodeWords({allTypesWith("innerList", listPtr(toEnd("innerList"), 7, 0),
                                  {structPtr(1 << 20, 0, 0)})},
                    0x0e));
  write(dir, "bad-amplified-voids",
        encodeWords({allTypesWith("voidList", listPtr(toEnd("voidList"), 0, 1 << 20))}, 0x0e));
  write(dir, "bad-cycle",
        encodeWords({allTypesWith("structField", pointerToRoot("structField"))}));
  write(dir, "bad-capability", encodeWords({allTypesWith("structField", 3 | (uint64_t{5} << 32))}));

  // Builder programs.
  uint64_t seed = 0x243f6a8885a308d3ull;
  for (int i = 0; i < 8; ++i) {
    Bytes program{0x80, static_cast<uint8_t>(1 + i * 7), static_cast<uint8_t>(i)};
    for (int j = 0; j < 300; ++j) {
      seed ^= seed << 13;
      seed ^= seed >> 7;
      seed ^= seed << 17;
      program.push_back(static_cast<uint8_t>(seed));
    }
    write(dir, "build-program-" + std::to_string(i), program);
  }
  return 0;
}
