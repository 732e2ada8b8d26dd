// Replays every seed of tests/fuzz/corpus through the fuzzer's entry point with the normal
// compiler, so the seeds stay meaningful even where clang's libFuzzer is missing.
//
// A seed's name says what parseFrame must make of it:
//   ok-*     accepted as a whole and with the bytes after the frame as the arena
//   arena-*  accepted only with the bytes after the frame as the arena
//   bad-*    refused both ways
// Any other file is replayed without an expectation (the entry point still checks every
// accepted frame and reads it in place).
#include <gtest/gtest.h>

#include <string>

#include "frame_fuzz_entry.h"
#include "seed_files.h"

namespace zcrpc::fuzz {
namespace {

std::vector<std::filesystem::path> corpusFiles() { return seedFiles(ZCRPC_FUZZ_CORPUS_DIR); }

TEST(FrameCorpus, HasSeedsOfEveryKind) {
  size_t ok = 0, arena = 0, bad = 0;
  for (const auto& p : corpusFiles()) {
    ok += nameStartsWith(p, "ok-");
    arena += nameStartsWith(p, "arena-");
    bad += nameStartsWith(p, "bad-");
  }
  EXPECT_GE(ok, 3u);
  EXPECT_GE(arena, 1u);
  EXPECT_GE(bad, 10u);
}

TEST(FrameCorpus, EverySeedGetsTheExpectedVerdict) {
  for (const auto& p : corpusFiles()) {
    SCOPED_TRACE(p.filename().string());
    std::vector<uint8_t> bytes = readSeed(p);
    FrameFuzzOutcome o = runFrameInput(bytes.data(), bytes.size());
    if (nameStartsWith(p, "ok-")) {
      EXPECT_TRUE(o.acceptedWhole);
      EXPECT_TRUE(o.acceptedSplit);
    } else if (nameStartsWith(p, "arena-")) {
      EXPECT_FALSE(o.acceptedWhole);
      EXPECT_TRUE(o.acceptedSplit);
    } else if (nameStartsWith(p, "bad-")) {
      EXPECT_FALSE(o.acceptedWhole);
      EXPECT_FALSE(o.acceptedSplit);
    }
  }
}

TEST(FrameCorpus, EveryTruncationIsHandled) {
  // Each prefix of each seed is a frame cut short: it must be refused or checked, never
  // crash. Cheap stand-in for the fuzzer on machines without libFuzzer.
  for (const auto& p : corpusFiles()) {
    std::vector<uint8_t> bytes = readSeed(p);
    for (size_t n = 0; n < bytes.size() && n <= 4096; n += (n < 256 ? 1 : 64))
      (void)runFrameInput(bytes.data(), n);
  }
}

}  // namespace
}  // namespace zcrpc::fuzz
