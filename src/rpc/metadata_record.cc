// zcrpc — the metadata record (extension record 5, docs/wire-format.md): written by the
// session for a request whose metadata is set, read into the received message's Metadata.
#include <cstring>

#include "rpc/extension_records.h"

namespace zcrpc::records {

namespace {

struct EntryHead {
  uint16_t keyBytes;
  uint16_t zero;
  uint32_t valueBytes;
};
static_assert(sizeof(EntryHead) == 8);

size_t padded(size_t n) noexcept { return (n + 7) & ~size_t{7}; }

}  // namespace

std::vector<std::byte> metadataPayload(const Metadata& m) {
  size_t bytes = 8;
  for (const auto& [k, v] : m.entries()) bytes += 8 + padded(k.size() + v.size());
  std::vector<std::byte> out(bytes);  // zeroed: the padding
  const CountWord head{static_cast<uint32_t>(m.size()), 0};
  std::memcpy(out.data(), &head, sizeof head);
  size_t at = 8;
  for (const auto& [k, v] : m.entries()) {
    const EntryHead e{static_cast<uint16_t>(k.size()), 0, static_cast<uint32_t>(v.size())};
    std::memcpy(out.data() + at, &e, sizeof e);
    std::memcpy(out.data() + at + 8, k.data(), k.size());
    if (!v.empty()) std::memcpy(out.data() + at + 8 + k.size(), v.data(), v.size());
    at += 8 + padded(k.size() + v.size());
  }
  return out;
}

Metadata readMetadata(std::span<const std::byte> record) {
  const std::vector<std::byte> copy(record.begin(), record.end());
  auto fail = [](const std::string& why) { return InvalidArgument("the metadata record is refused: " + why); };
  if (copy.size() < 16) throw fail("it is shorter than its count");
  const auto head = readAt<CountWord>(copy, 8);
  if (head.zero != 0) throw fail("the word after its count is not 0");
  if (head.count > Metadata::kMaxEntries)
    throw fail("it has " + std::to_string(head.count) + " entries, more than " +
               std::to_string(Metadata::kMaxEntries));
  Metadata m;
  size_t at = 16;
  for (uint32_t i = 0; i < head.count; ++i) {
    if (copy.size() - at < 8) throw fail("entry " + std::to_string(i) + " lies past its end");
    const auto e = readAt<EntryHead>(copy, at);
    if (e.zero != 0) throw fail("entry " + std::to_string(i) + " has a reserved field that is not 0");
    if (e.valueBytes > Metadata::kMaxValueBytes)
      throw fail("entry " + std::to_string(i) + "'s value is " + std::to_string(e.valueBytes) +
                 " bytes, more than " + std::to_string(Metadata::kMaxValueBytes));
    const size_t body = padded(size_t{e.keyBytes} + e.valueBytes);
    if (copy.size() - at - 8 < body) throw fail("entry " + std::to_string(i) + " lies past its end");
    const std::string_view key(reinterpret_cast<const char*>(copy.data() + at + 8), e.keyBytes);
    const std::string_view value(reinterpret_cast<const char*>(copy.data() + at + 8 + e.keyBytes), e.valueBytes);
    if (std::string fault = Metadata::keyFault(key); !fault.empty())
      throw fail("entry " + std::to_string(i) + ": " + fault);
    if (m.get(key)) throw fail("the key \"" + std::string(key) + "\" comes twice");
    m.set(key, value);
    at += 8 + body;
  }
  if (at != copy.size()) throw fail("it has " + std::to_string(copy.size() - at) + " bytes after its last entry");
  return m;
}

}  // namespace zcrpc::records
