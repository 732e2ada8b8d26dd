// zcrpc-bench — a small streaming JSON writer for the --json output of every mode.
#pragma once

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace zcrpc::bench {

/// A small streaming JSON writer (objects, arrays, numbers, strings), pretty-printed.
class JsonWriter final {
 public:
  void beginObject(std::string_view key = {}) { open(key, '{'); }
  void endObject() { close('}'); }
  void beginArray(std::string_view key = {}) { open(key, '['); }
  void endArray() { close(']'); }
  void number(std::string_view key, double v) {
    item(key);
    if (std::isfinite(v))
      fmt::format_to(std::back_inserter(out_), "{}", v);
    else
      out_ += "null";
  }
  void integer(std::string_view key, uint64_t v) {
    item(key);
    fmt::format_to(std::back_inserter(out_), "{}", v);
  }
  void optional(std::string_view key, const std::optional<double>& v) {
    if (v) {
      number(key, *v);
    } else {
      item(key);
      out_ += "null";
    }
  }
  void boolean(std::string_view key, bool v) {
    item(key);
    out_ += v ? "true" : "false";
  }
  void string(std::string_view key, std::string_view v) {
    item(key);
    quote(v);
  }
  const std::string& text() const { return out_; }

 private:
  void item(std::string_view key) {
    if (!first_.empty()) {
      if (!first_.back()) out_ += ',';
      first_.back() = false;
      out_ += '\n';
      out_.append(2 * first_.size(), ' ');
    }
    if (!key.empty()) {
      quote(key);
      out_ += ": ";
    }
  }
  void open(std::string_view key, char c) {
    item(key);
    out_ += c;
    first_.push_back(true);
  }
  void close(char c) {
    bool empty = first_.back();
    first_.pop_back();
    if (!empty) {
      out_ += '\n';
      out_.append(2 * first_.size(), ' ');
    }
    out_ += c;
  }
  void quote(std::string_view s) {
    out_ += '"';
    for (char c : s) {
      if (c == '"' || c == '\\') {
        out_ += '\\';
        out_ += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        fmt::format_to(std::back_inserter(out_), "\\u{:04x}", static_cast<unsigned>(c));
      } else {
        out_ += c;
      }
    }
    out_ += '"';
  }

  std::string out_;
  std::vector<bool> first_;
};

/// Writes `text` to `path`. Throws BenchError when the file cannot be written.
void writeTextFile(const std::string& path, const std::string& text);

}  // namespace zcrpc::bench
