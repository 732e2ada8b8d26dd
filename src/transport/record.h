// zcrpc — records: a frame in a transport's ring with a transport header before it, and how
// much of a ring one frame may take. The ring (shm, loopback) and rdma write records; tcp
// keeps the same share for its buffers.
#pragma once

#include <cstdint>

namespace zcrpc {

/// Bytes of transport header before each frame in a ring: the ring's record word and arena
/// end (ring/layout.h), rdma's credit, flags and length (rdma/rdma_connection.h). Keeps
/// frames 16-byte aligned.
inline constexpr uint32_t kRecordHeaderBytes = 16;
/// A record may use at most this fraction of its ring or buffer. Larger frames go
/// elsewhere: segments to the shm arena, rdma into fragments, tcp into a buffer of their
/// own (received) or a chunk (sent).
inline constexpr uint32_t kRecordShare = 4;

}  // namespace zcrpc
