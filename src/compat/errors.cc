#include "compat/errors.h"

#include <charconv>
#include <string_view>

namespace zcrpc::compat {

namespace {
constexpr std::string_view kCodeOpen = " [code ";
constexpr std::string_view kRemotePrefix = "remote exception: ";
}  // namespace

kj::Exception toCapnp(ErrorKind kind, int32_t code, const std::string& message) {
  using Type = kj::Exception::Type;
  Type type = Type::FAILED;
  switch (kind) {
    case ErrorKind::kOverloaded:
      type = Type::OVERLOADED;
      break;
    case ErrorKind::kDisconnected:
      type = Type::DISCONNECTED;
      break;
    case ErrorKind::kUnimplemented:
      type = Type::UNIMPLEMENTED;
      break;
    default:
      break;
  }
  std::string reason = message;
  if (kind == ErrorKind::kApplication && code != 0)
    reason += std::string(kCodeOpen) + std::to_string(code) + "]";
  return kj::Exception(type, "(zcrpc)", 0, kj::str(reason.c_str()));
}

ZcrpcError fromCapnp(const kj::Exception& e) {
  std::string_view text(e.getDescription().cStr(), e.getDescription().size());
  if (text.substr(0, kRemotePrefix.size()) == kRemotePrefix) text.remove_prefix(kRemotePrefix.size());
  ZcrpcError out{ErrorKind::kApplication, 0, {}};
  switch (e.getType()) {
    case kj::Exception::Type::OVERLOADED:
      out.kind = ErrorKind::kOverloaded;
      break;
    case kj::Exception::Type::DISCONNECTED:
      out.kind = ErrorKind::kDisconnected;
      break;
    case kj::Exception::Type::UNIMPLEMENTED:
      out.kind = ErrorKind::kUnimplemented;
      break;
    default:
      break;
  }
  if (out.kind == ErrorKind::kApplication && !text.empty() && text.back() == ']') {
    const size_t open = text.rfind(kCodeOpen);
    if (open != std::string_view::npos) {
      const char* first = text.data() + open + kCodeOpen.size();
      const char* last = text.data() + text.size() - 1;
      int32_t code = 0;
      auto [end, ec] = std::from_chars(first, last, code);
      if (ec == std::errc() && end == last) {
        out.code = code;
        text = text.substr(0, open);
      }
    }
  }
  out.message = std::string(text);
  return out;
}

}  // namespace zcrpc::compat
