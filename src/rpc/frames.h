// The RPC core's own frame bodies (error answers), and small helpers its parts share.
#pragma once

#include <cstdint>
#include <string>

#include "zcrpc/rpc.h"

namespace zcrpc {

/// Reads an error frame's body into a failed CallResult; a body that cannot be read
/// becomes kFailed with the reason.
CallResult readError(IncomingMessage& msg);
/// The same for an error body read through any Cap'n Proto reader (standard peers' frames).
CallResult readError(capnp::MessageReader& msg);

/// Fills `msg` (already started) with an error body.
void writeError(OutgoingMessage& msg, ErrorKind kind, int32_t code, const std::string& message);

/// Cap'n Proto payload of a message about to be sent (what the metrics call bytes): its
/// segments' words from the builder's own bookkeeping (not transport memory), plus what
/// the transport gathered.
uint64_t sentPayloadBytes(OutgoingMessage& msg);

/// `v` as 16 hex digits, as error messages name interface ids.
std::string hex(uint64_t v);

}  // namespace zcrpc
