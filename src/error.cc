#include "zcrpc/error.h"


namespace zcrpc {

std::string_view errorKindName(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::kFailed: return "Failed";
    case ErrorKind::kOverloaded: return "Overloaded";
    case ErrorKind::kDisconnected: return "Disconnected";
    case ErrorKind::kUnimplemented: return "Unimplemented";
    case ErrorKind::kInvalidArgument: return "InvalidArgument";
    case ErrorKind::kDeadlineExceeded: return "DeadlineExceeded";
    case ErrorKind::kCancelled: return "Cancelled";
    case ErrorKind::kApplication: return "Application";
  }
  return "Unknown";
}

void throwError(ErrorKind kind, std::string message) {
  switch (kind) {
    case ErrorKind::kFailed: throw Failed(std::move(message));
    case ErrorKind::kOverloaded: throw Overloaded(std::move(message));
    case ErrorKind::kDisconnected: throw Disconnected(std::move(message));
    case ErrorKind::kUnimplemented: throw Unimplemented(std::move(message));
    case ErrorKind::kInvalidArgument: throw InvalidArgument(std::move(message));
    case ErrorKind::kDeadlineExceeded: throw DeadlineExceeded(std::move(message));
    case ErrorKind::kCancelled: throw Cancelled(std::move(message));
    case ErrorKind::kApplication: break;
  }
  throw Error(kind, std::move(message));
}

std::string_view statusName(Status status) noexcept {
  switch (status) {
    case Status::kOk: return "ok";
    case Status::kWouldBlock: return "would-block";
    case Status::kTimedOut: return "timed-out";
    case Status::kDisconnected: return "disconnected";
  }
  return "unknown";
}

}  // namespace zcrpc
