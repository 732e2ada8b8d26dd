#include "transport/token.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include <cstring>

namespace zcrpc {

bool tokensEqual(std::string_view a, std::string_view b) noexcept {
  // Digests first: equal-length inputs for CRYPTO_memcmp, whose time does not depend on
  // where they differ, and nothing learnt from the length either.
  unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(a.data()), a.size(), da);
  SHA256(reinterpret_cast<const unsigned char*>(b.data()), b.size(), db);
  return CRYPTO_memcmp(da, db, sizeof da) == 0;
}

TokenProof tokenProof(std::string_view token) noexcept {
  static constexpr char kLabel[] = "zcrpc rdma token 1";  // and its NUL
  unsigned char digest[SHA256_DIGEST_LENGTH];
  unsigned int len = 0;
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), nullptr) == 1 &&
            EVP_DigestUpdate(md, kLabel, sizeof kLabel) == 1 &&
            EVP_DigestUpdate(md, token.data(), token.size()) == 1 &&
            EVP_DigestFinal_ex(md, digest, &len) == 1;
  EVP_MD_CTX_free(md);
  TokenProof out{};
  // Without a digest (out of memory) the proof is all ones, which no token's matches in
  // practice; the listener then refuses, it never admits.
  if (!ok) out.fill(0xff);
  else std::memcpy(out.data(), digest, out.size());
  return out;
}

bool proofMatches(const TokenProof& proof, std::string_view token) noexcept {
  const TokenProof want = tokenProof(token);
  return CRYPTO_memcmp(proof.data(), want.data(), proof.size()) == 0;
}

}  // namespace zcrpc
