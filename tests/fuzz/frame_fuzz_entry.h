// zcrpc — the one entry point shared by the libFuzzer target (frame_fuzz.cc) and the corpus
// replay test (frame_corpus_test.cc), so both exercise exactly the same code.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zcrpc::fuzz {

/// What parseFrame made of one input.
struct FrameFuzzOutcome {
  /// The whole input as a frame buffer (trailing bytes allowed), without an arena.
  bool acceptedWhole = false;
  /// The input split after the frame's own length field: the frame, then the rest as the
  /// connection's arena (so arena segments can resolve).
  bool acceptedSplit = false;
};

/// Parses `data` both ways (each from its own exactly sized, 8-byte-aligned copy), checks
/// every promise parseFrame makes about an accepted frame, and walks each accepted
/// message generically with a Cap'n Proto reader under small traversal and nesting limits.
/// A broken promise prints what broke and aborts (a fuzzer finding); malformed input is
/// never an error. Thread-compatible; allocates; never throws.
FrameFuzzOutcome runFrameInput(const uint8_t* data, size_t size) noexcept;

}  // namespace zcrpc::fuzz
