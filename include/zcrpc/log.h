// zcrpc — where the library's messages go: one hook (level, text), stderr by default.
//
// zcrpc prints nothing on the data path. What it does say (a client refused by a
// listener, an accept that failed, ...) goes through the hook below, so a service can
// send it to its own log instead of stderr.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

namespace zcrpc {

enum class LogLevel : uint8_t {
  kDebug,
  kInfo,
  kWarning,  ///< something a peer or the environment did that zcrpc refused or survived
  kError,    ///< something that stops part of zcrpc from working (a listener that fails)
};
/// "debug", "info", "warning", "error".
std::string_view logLevelName(LogLevel level) noexcept;

/// Receives each message: its level and one line of text (no trailing newline; it names
/// the object concerned, e.g. "tcp://0.0.0.0:7000: refused 10.0.0.5:4711: access token
/// does not match"). Called from whichever zcrpc thread has something to say (listener,
/// server worker, accept thread, the caller's own), never two at once: zcrpc serialises
/// the calls. It must not call back into zcrpc's logging; it should return quickly.
using LogSink = std::function<void(LogLevel level, std::string_view text)>;

/// Sends zcrpc's messages to `sink` from now on; an empty sink restores the default,
/// which writes "zcrpc: <text>\n" to stderr. Thread-safe; messages being written while it
/// changes go to the old or the new sink, each whole.
void setLogSink(LogSink sink);
/// Messages below `level` are dropped before they are formatted (default: kInfo).
/// Thread-safe.
void setLogLevel(LogLevel level) noexcept;
/// True when a message of `level` would be passed on: check it before building text
/// that is expensive to build.
bool logEnabled(LogLevel level) noexcept;
/// Passes one message to the sink (for zcrpc's own code and its tools). Thread-safe;
/// never throws (a sink that throws loses that message).
void logMessage(LogLevel level, std::string_view text) noexcept;

}  // namespace zcrpc
