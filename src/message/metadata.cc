// zcrpc — per-call metadata and the W3C traceparent (the record that carries them:
// src/rpc/metadata_record.cc).
#include "zcrpc/metadata.h"

#include <algorithm>

#include "zcrpc/error.h"

namespace zcrpc {

namespace {

bool keyByte(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
}

constexpr char kHex[] = "0123456789abcdef";

int hexValue(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // uppercase is not allowed either
}

template <size_t N>
bool readHex(std::string_view text, std::array<uint8_t, N>& out) noexcept {
  if (text.size() != 2 * N) return false;
  for (size_t i = 0; i < N; ++i) {
    const int hi = hexValue(text[2 * i]), lo = hexValue(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

template <size_t N>
void writeHex(std::string& out, const std::array<uint8_t, N>& bytes) {
  for (uint8_t b : bytes) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
}

template <size_t N>
bool allZero(const std::array<uint8_t, N>& a) noexcept {
  return std::all_of(a.begin(), a.end(), [](uint8_t b) { return b == 0; });
}

}  // namespace

// ------------------------------------------------------------------------------------
// Metadata

std::string Metadata::keyFault(std::string_view key) {
  if (key.empty()) return "a metadata key is empty";
  if (key.size() > kMaxKeyBytes)
    return "the metadata key \"" + std::string(key.substr(0, 16)) + "...\" is " + std::to_string(key.size()) +
           " bytes, more than " + std::to_string(kMaxKeyBytes);
  for (char c : key)
    if (!keyByte(c))
      return "the metadata key \"" + std::string(key) +
             "\" has a byte other than a-z, 0-9, '-', '_' or '.'";
  return {};
}

void Metadata::set(std::string_view key, std::string_view value) {
  if (std::string fault = keyFault(key); !fault.empty()) throw InvalidArgument(fault);
  if (value.size() > kMaxValueBytes)
    throw InvalidArgument("the value of metadata key \"" + std::string(key) + "\" is " +
                          std::to_string(value.size()) + " bytes, more than " + std::to_string(kMaxValueBytes));
  for (auto& [k, v] : entries_)
    if (k == key) {
      v.assign(value);
      return;
    }
  if (entries_.size() == kMaxEntries)
    throw InvalidArgument("metadata holds " + std::to_string(kMaxEntries) + " entries already, the most a call carries");
  entries_.emplace_back(key, value);
}

std::optional<std::string_view> Metadata::get(std::string_view key) const noexcept {
  for (const auto& [k, v] : entries_)
    if (k == key) return std::string_view(v);
  return std::nullopt;
}

bool Metadata::erase(std::string_view key) noexcept {
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const auto& e) { return e.first == key; });
  if (it == entries_.end()) return false;
  entries_.erase(it);
  return true;
}

// ------------------------------------------------------------------------------------
// TraceParent

bool TraceParent::valid() const noexcept { return !allZero(traceId) && !allZero(parentId); }

std::string TraceParent::format() const {
  std::string out = "00-";
  out.reserve(55);
  writeHex(out, traceId);
  out += '-';
  writeHex(out, parentId);
  out += '-';
  out += kHex[flags >> 4];
  out += kHex[flags & 15];
  return out;
}

std::optional<TraceParent> TraceParent::parse(std::string_view text) noexcept {
  // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55 bytes;
  // a later version may append "-" and more, which a version-00 reader ignores.
  if (text.size() < 55) return std::nullopt;
  std::array<uint8_t, 1> version{}, flags{};
  TraceParent t;
  if (!readHex(text.substr(0, 2), version) || version[0] == 0xff) return std::nullopt;
  if (text[2] != '-' || text[35] != '-' || text[52] != '-') return std::nullopt;
  if (!readHex(text.substr(3, 32), t.traceId) || !readHex(text.substr(36, 16), t.parentId) ||
      !readHex(text.substr(53, 2), flags))
    return std::nullopt;
  if (version[0] == 0 ? text.size() != 55 : (text.size() > 55 && text[55] != '-')) return std::nullopt;
  t.flags = flags[0];
  if (!t.valid()) return std::nullopt;
  return t;
}

std::optional<TraceParent> TraceParent::from(const Metadata& m) noexcept {
  const auto text = m.get(kKey);
  return text ? parse(*text) : std::nullopt;
}

}  // namespace zcrpc
