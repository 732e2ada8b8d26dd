// zcrpc — the entry points of the fuzz targets for every parser a peer reaches (beyond
// the frame parser, frame_fuzz_entry.h). Each is shared by its libFuzzer binary
// (<name>_fuzz, built by tests/fuzz/meson.build in a clang build) and the seed replay
// test (fuzz_seeds_test), so both run exactly the same code. Each drives the real
// listener / connection / server code through its public API over loopback sockets or
// rings, with the input as what a hostile peer sends; a refusal or an error is the
// expected outcome of most inputs and is never a finding. A crash, a sanitizer report,
// a leak, or a hang (each step is bounded by a deadline) is.
//
// Threads: one input at a time (the targets keep listeners and servers between inputs).
#pragma once

#include <cstddef>
#include <cstdint>

namespace zcrpc::fuzz {

/// tcp: byte 0 bit 0 chooses the side. 0: the bytes are what a client sends to a
/// listener (Hello, token, then frames on the connection if it is accepted). 1: they
/// are what a server answers to connectTcp (Answer, then frames).
void runTcpHandshakeInput(const uint8_t* data, size_t size);

/// shm: byte 0 bit 0 chooses the side, byte 1 holds flags (see shm_handshake_entry.cc).
/// 0: a client of a listener: its Hello and Ready (raw bytes or valid), the shared file
/// it passes (valid, missing, wrong size, unsealed, header overwritten), then the bytes
/// it writes into its ring and control words once established. 1: a server that a
/// connectShm() client talks to, the same way round.
void runShmHandshakeInput(const uint8_t* data, size_t size);

/// tcp with TLS, a TLS listener's side: byte 0 bit 0 chooses. 0: raw bytes a client
/// sends instead of (or as) its TLS handshake. 1: what a client that completed a valid
/// TLS handshake sends inside TLS (Hello, token, frames). See tls_stream_entry.cc.
void runTlsStreamInput(const uint8_t* data, size_t size);

/// The server's dispatch: the input is a sequence of frames (kind, call id, interface,
/// method, payload words written raw into the message) sent over a loopback connection
/// to a Server serving the Echo and KeyValue services; the answers are read back.
void runDispatchInput(const uint8_t* data, size_t size);

}  // namespace zcrpc::fuzz
