// zcrpc — errors between zcrpc's kinds and Cap'n Proto's exceptions (rpc.capnp Exception:
// a type and a reason text; Cap'n Proto 0.9 carries nothing else).
#pragma once

#include <kj/exception.h>

#include <cstdint>
#include <string>

#include "zcrpc/error.h"

#pragma GCC visibility push(hidden)
namespace zcrpc::compat {

/// What a zcrpc error becomes for a standard peer. The reason is the message as the handler
/// gave it; an application error's non-zero code follows it as " [code N]", which the
/// other direction parses back. Kinds: overloaded, disconnected and unimplemented have
/// exception types of their own; every other kind is FAILED.
kj::Exception toCapnp(ErrorKind kind, int32_t code, const std::string& message);

/// A Cap'n Proto exception as the caller of a zcrpc stub sees it: FAILED is an application
/// error (Cap'n Proto servers fail calls that way), with the code parsed from a " [code N]"
/// suffix; the other types map to the kinds of the same name. The message is the remote
/// reason without Cap'n Proto's "remote exception: " prefix.
struct ZcrpcError {
  ErrorKind kind;
  int32_t code;
  std::string message;
};
ZcrpcError fromCapnp(const kj::Exception& e);

}  // namespace zcrpc::compat
#pragma GCC visibility pop
