#include "rpc/frames.h"

#include <algorithm>
#include <cstdio>

#include <kj/exception.h>

#include "rpc/rpc_frames.capnp.h"

namespace zcrpc {

CallResult readError(IncomingMessage& msg) { return readError(msg.reader()); }

CallResult readError(capnp::MessageReader& msg) {
  try {
    auto e = msg.getRoot<wire::RpcError>();
    uint8_t kind = e.getKind();
    if (kind < static_cast<uint8_t>(ErrorKind::kFailed) ||
        kind > static_cast<uint8_t>(ErrorKind::kApplication))
      return CallResult(ErrorKind::kFailed, 0,
                        "server sent an error of unknown kind " + std::to_string(kind));
    return CallResult(static_cast<ErrorKind>(kind), e.getCode(), e.getMessage().cStr());
  } catch (const kj::Exception& e) {
    return CallResult(ErrorKind::kFailed, 0,
                      std::string("server sent an unreadable error: ") + e.getDescription().cStr());
  }
}

void writeError(OutgoingMessage& msg, ErrorKind kind, int32_t code, const std::string& message) {
  auto e = msg.initRoot<wire::RpcError>();
  e.setKind(static_cast<uint8_t>(kind));
  e.setCode(code);
  // Bounded, so an error always fits the ring.
  e.setMessage(capnp::Text::Reader(message.data(), std::min<size_t>(message.size(), 4000)));
}

uint64_t sentPayloadBytes(OutgoingMessage& msg) {
  uint64_t words = 0;
  for (auto segment : msg.segmentsForSend()) words += segment.size();
  return words * sizeof(capnp::word) + msg.gatheredBytes();
}

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace zcrpc
