// zcrpc — zeroed heap memory for a message built outside transport memory: the segments of
// the SegmentSources that are no transport's (the answer backlog's spill, the frames of
// standard Cap'n Proto connections), in chunks, up to a message size limit.
#pragma once

#include <capnp/common.h>
#include <kj/array.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "zcrpc/error.h"

namespace zcrpc {

/// The chunks of one message under construction; they live until reset() or the object goes.
///
/// Threads: one at a time (its owner's).
class __attribute__((visibility("hidden"))) HeapSegments final {
 public:
  /// Drops the chunks; the next message may take up to `maxBytes`.
  void reset(uint64_t maxBytes) noexcept {
    chunks_.clear();
    allocated_ = 0;
    max_ = maxBytes;
  }
  /// Words taken since reset().
  uint64_t allocated() const noexcept { return allocated_; }

  /// A zeroed chunk of `words` words, or of what is left under the limit when that is less.
  /// Throws InvalidArgument ("`what` exceeds the maximum message size ...") when nothing is.
  kj::ArrayPtr<capnp::word> take(uint64_t words, std::string_view what) {
    if ((allocated_ + words) * 8 > max_) {
      if ((allocated_ + 1) * 8 > max_ || words == 0)
        throw InvalidArgument(std::string(what) + " exceeds the maximum message size of " +
                              std::to_string(max_) + " bytes (max_message_bytes)");
      words = max_ / 8 - allocated_;
    }
    auto chunk = kj::heapArray<capnp::word>(words);
    std::memset(chunk.begin(), 0, words * sizeof(capnp::word));
    allocated_ += words;
    auto out = chunk.asPtr();
    chunks_.push_back(std::move(chunk));
    return out;
  }

 private:
  std::vector<kj::Array<capnp::word>> chunks_;
  uint64_t allocated_ = 0;  // words
  uint64_t max_ = 0;        // bytes
};

}  // namespace zcrpc
