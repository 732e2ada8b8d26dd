// zcrpc-bench — the rival: Cap'n Proto's own RPC (capnp::EzRpcServer / EzRpcClient from
// <capnp/ez-rpc.h>) serving the same Echo interface (schemas/echo.capnp, through the
// Echo::Server / Echo::Client classes capnpc-c++ generates), over a unix socket or TCP.
//
// Cap'n Proto RPC serialises each message onto the socket and reads it back into its own
// buffers, and both sides wait in epoll: it has no wait modes, so its figures are the same
// whatever zcrpc's wait mode is.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <span>
#include <string>

#include "cells.h"

namespace zcrpc::bench {

/// Serves Echo with capnp::EzRpcServer bound to `bindAddress` ("unix:/path" or
/// "127.0.0.1:0"), calls `ready` with the address a client should use once it listens, then
/// runs the event loop until one message of `stop.size()` bytes arrives on `controlFd` (a
/// SOCK_SEQPACKET socket; it is read into `stop`, and the descriptor's flags are restored) or
/// `maxTime` passes. Returns whether the message came. A unix socket's file is removed
/// before binding and afterwards. Throws BenchError or kj::Exception.
bool serveCapnpEcho(const std::string& bindAddress, int controlFd, std::chrono::nanoseconds maxTime,
                    const std::function<void(const std::string& address)>& ready,
                    std::span<std::byte> stop);

/// Echo round trips through Cap'n Proto RPC to `address`: request built with `payload`
/// copied into its data, sent, waited for, its data's size and last byte checked.
Latency capnpPingPong(const std::string& address, std::span<const std::byte> payload,
                      const Budget& budget, std::span<uint64_t> samples);

}  // namespace zcrpc::bench
