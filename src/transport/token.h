// zcrpc — access tokens (TcpOptions::token, RdmaOptions::token): compared in time that does
// not depend on their content, and the proof rdma sends instead of the token itself.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

// Internal to libzcrpc (exported only for its tests, as tls/tls.h).
namespace zcrpc {

/// Compares access tokens in time independent of their content and length (SHA-256
/// digests of both, compared with CRYPTO_memcmp).
bool tokensEqual(std::string_view a, std::string_view b) noexcept;

/// What an rdma client puts in its connection request instead of its token (a request
/// carries at most 56 bytes of private data): the first 16 bytes of
/// SHA-256("zcrpc rdma token 1" NUL token). It does not reveal the token, but anyone who
/// reads it off the fabric can present it again to an rdma listener with the same token:
/// rdma traffic is not encrypted (docs/security.md).
inline constexpr size_t kTokenProofBytes = 16;
using TokenProof = std::array<uint8_t, kTokenProofBytes>;
TokenProof tokenProof(std::string_view token) noexcept;
/// Whether `proof` is the proof of `token`, in time independent of either.
bool proofMatches(const TokenProof& proof, std::string_view token) noexcept;

}  // namespace zcrpc
