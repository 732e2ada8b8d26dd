// zcrpc — error vocabulary shared by every layer.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace zcrpc {

/// What went wrong, as seen by a caller. The same kinds travel in error frames.
enum class ErrorKind : uint8_t {
  kFailed = 1,           ///< set-up or system failure; the message names the object and errno
  kOverloaded = 2,       ///< a ring, arena or call window is full
  kDisconnected = 3,     ///< the peer went away, or the connection was closed after a fault
  kUnimplemented = 4,    ///< unknown interface or method
  kInvalidArgument = 5,  ///< input that could not be accepted (bad frame, bad URI, oversize)
  kDeadlineExceeded = 6,
  kCancelled = 7,
  kApplication = 8,      ///< thrown by a service handler
};

std::string_view errorKindName(ErrorKind kind) noexcept;

/// Base of every exception zcrpc throws. Catch this to handle them all; use `kind()` to
/// branch. Thread-safe to copy and read.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

/// One exception class per kind, so callers can `catch (const zcrpc::Disconnected&)`.
template <ErrorKind K>
class TypedError final : public Error {
 public:
  explicit TypedError(std::string message) : Error(K, std::move(message)) {}
};
using Failed = TypedError<ErrorKind::kFailed>;
using Overloaded = TypedError<ErrorKind::kOverloaded>;
using Disconnected = TypedError<ErrorKind::kDisconnected>;
using Unimplemented = TypedError<ErrorKind::kUnimplemented>;
using InvalidArgument = TypedError<ErrorKind::kInvalidArgument>;
using DeadlineExceeded = TypedError<ErrorKind::kDeadlineExceeded>;
using Cancelled = TypedError<ErrorKind::kCancelled>;

/// Throws the exception class matching `kind` (Error itself for kApplication).
[[noreturn]] void throwError(ErrorKind kind, std::string message);

/// Result of a data-path operation. Nothing on the data path throws for "try again".
enum class [[nodiscard]] Status : uint8_t {
  kOk = 0,
  kWouldBlock,    ///< ring full (send) or nothing to read (receive): try again later
  kTimedOut,      ///< a wait reached its deadline
  kDisconnected,  ///< the peer is gone or the connection was closed after a fault
};

std::string_view statusName(Status status) noexcept;

}  // namespace zcrpc
