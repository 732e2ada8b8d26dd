// zcrpc — the one entry point shared by the wire accessors' libFuzzer target (wire_fuzz.cc)
// and its corpus replay test (wire_corpus_test.cc), so both run exactly the same checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace zcrpc::fuzz {

/// What one input did.
struct WireFuzzOutcome {
  bool builderMode = false;  ///< the input was a builder program, not a message
  uint64_t reads = 0;        ///< getters compared
  uint64_t bothThrew = 0;    ///< getters both readers refused
  std::string mismatch;      ///< empty unless libcapnp and zcrpc disagreed (then it aborted)
};

/// Input format (first byte `mode`):
///   * mode & 0x80 clear: a message. Segment count 1 + (mode & 3); byte 1 picks the
///     traversal limit (bits 0-1: 16, 256, 4096 or 8 Mi words) and the nesting limit (bits
///     2-3: 1, 2, 8, 64); then a 16-bit word count for each segment but the last; the rest
///     of the input is the segments' bytes (each segment gets its count, clamped to what is
///     left; the last gets the rest, zero-padded to whole words). The message is read as every
///     struct of tests/wire/wire_test.capnp by libcapnp and by zcrpc's generated readers,
///     getter by getter (wiretest::compareAll): both must refuse the same reads and return
///     equal values for the others.
///   * mode & 0x80 set: a builder program. Byte 1 is zcrpc's first segment size in words
///     (0: 1), byte 2 the size of further ones, the rest the operations
///     (wiretest::applyOps) run on an AllTypes root by libcapnp's builder and zcrpc's. The
///     two messages must be equal in canonical form, and zcrpc's must read identically
///     through both readers.
/// A disagreement prints what differed and aborts (a finding). Thread-compatible; allocates.
WireFuzzOutcome runWireInput(const uint8_t* data, size_t size, bool abortOnMismatch = true);

}  // namespace zcrpc::fuzz
