#include "zcrpc/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>

namespace zcrpc {

namespace {

// The sink and the lock that serialises its calls. Function-local statics: zcrpc's own
// static destructors may still log while this file's statics are gone otherwise.
struct Hook {
  std::mutex mutex;
  LogSink sink;  // empty: stderr
};
Hook& hook() {
  static Hook* h = new Hook;  // never destroyed: logging stays possible during exit
  return *h;
}
std::atomic<uint8_t> minLevel{static_cast<uint8_t>(LogLevel::kInfo)};

}  // namespace

std::string_view logLevelName(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}

void setLogSink(LogSink sink) {
  Hook& h = hook();
  std::lock_guard lock(h.mutex);
  h.sink = std::move(sink);
}

void setLogLevel(LogLevel level) noexcept {
  minLevel.store(static_cast<uint8_t>(level), std::memory_order_relaxed);
}

bool logEnabled(LogLevel level) noexcept {
  return static_cast<uint8_t>(level) >= minLevel.load(std::memory_order_relaxed);
}

void logMessage(LogLevel level, std::string_view text) noexcept {
  if (!logEnabled(level)) return;
  Hook& h = hook();
  std::lock_guard lock(h.mutex);
  if (!h.sink) {
    std::fprintf(stderr, "zcrpc: %.*s\n", static_cast<int>(text.size()), text.data());
    return;
  }
  try {
    h.sink(level, text);
  } catch (...) {
  }
}

}  // namespace zcrpc
