// The RPC core's own frame bodies: error answers.
#pragma once

#include <string>

#include "zcrpc/rpc.h"

namespace zcrpc {

/// Reads an error frame's body into a failed CallResult; a body that cannot be read
/// becomes kFailed with the reason.
CallResult readError(IncomingMessage& msg);

/// Fills `msg` (already started) with an error body.
void writeError(OutgoingMessage& msg, ErrorKind kind, int32_t code, const std::string& message);

}  // namespace zcrpc
