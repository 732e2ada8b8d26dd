// zcrpc — the payloads of the frame extension records that carry capabilities and metadata
// (docs/wire-format.md, "The extension area"), read one way by each of their readers: the
// session (session_caps.cc) and the standard Cap'n Proto connections (src/compat), which
// translate the capability records to rpc.capnp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "zcrpc/error.h"
#include "zcrpc/metadata.h"

namespace zcrpc::records {

/// One entry of a capTable record.
struct CapDescriptor {
  uint32_t id;
  uint8_t kind;  ///< a CapKind
  uint8_t zero[3];
};
static_assert(sizeof(CapDescriptor) == 8);

/// One entry of a releases record (the session queues its own as ReleaseNote, the same
/// layout).
struct ReleaseEntry {
  uint32_t exportId;
  uint32_t refs;
};
static_assert(sizeof(ReleaseEntry) == 8);

/// The fixed part of a capTable or releases record's payload.
struct CountWord {
  uint32_t count;
  uint32_t zero;
};

/// A T copied out of `bytes` at `offset` (the caller checked that it fits).
template <typename T>
T readAt(std::span<const std::byte> bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof value);
  return value;
}

/// A capTable or releases record: its bytes copied out of transport memory once, its count
/// (set in `count`) checked against its size; the 8-byte entries start at byte 16. Throws
/// InvalidArgument naming `what` when they disagree.
inline std::vector<std::byte> entriesOf(std::span<const std::byte> record, const char* what, uint32_t& count) {
  std::vector<std::byte> copy(record.begin(), record.end());
  if (copy.size() < 16)
    throw InvalidArgument(std::string("a ") + what + " record is shorter than its count");
  const auto head = readAt<CountWord>(copy, 8);
  if (head.zero != 0)
    throw InvalidArgument(std::string("a ") + what + " record's word after its count is " +
                          std::to_string(head.zero) + ", not 0");
  if (uint64_t{head.count} * 8 + 16 != copy.size())
    throw InvalidArgument(std::string("a ") + what + " record's count (" + std::to_string(head.count) +
                          ") does not match its " + std::to_string(copy.size()) + " bytes");
  count = head.count;
  return copy;
}

/// A metadata record's payload (after its 8-byte header): `u32 count, u32 0`, then per
/// entry `u16 keyBytes, u16 0, u32 valueBytes`, the key, the value, zeros to a multiple of
/// 8 bytes. metadata.cc.
std::vector<std::byte> metadataPayload(const Metadata& m);
/// The metadata of a record (header included): copied out of transport memory once, every
/// size, count and key checked. Throws InvalidArgument naming the fault.
Metadata readMetadata(std::span<const std::byte> record);

}  // namespace zcrpc::records
