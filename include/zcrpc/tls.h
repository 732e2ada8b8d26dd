// zcrpc — TLS 1.3 for the tcp transport (OpenSSL 3), with optional client certificates.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace zcrpc {

/// Whether a TLS server asks its clients for a certificate (mutual TLS).
enum class ClientAuth : uint8_t {
  kNone,      ///< no client certificate is asked for
  kOptional,  ///< asked for; a client without one is admitted, one with a bad one is refused
  kRequired,  ///< a client without a certificate that chains to `caFile` is refused
};

std::string_view clientAuthName(ClientAuth auth) noexcept;
/// Parses "none", "optional" or "required"; throws InvalidArgument naming it.
ClientAuth parseClientAuth(std::string_view text);

/// TLS settings of one end of a tcp connection. With `enabled`, the tcp handshake, the
/// access token and every frame travel inside TLS 1.3 (nothing older is negotiated).
struct TlsOptions {
  bool enabled = false;
  /// PEM certificate chain (leaf first) and its private key: the server's (required on
  /// a TLS listener), or the client's for mutual TLS (optional on a client).
  std::string certFile;
  std::string keyFile;
  /// PEM CA certificates the peer's certificate must chain to. Client: empty uses the
  /// system's trust store. Server: the CAs that client certificates are checked against
  /// (required when `clientAuth` is not kNone).
  std::string caFile;
  /// Client: the name the server's certificate must carry (DNS name, or IP address for
  /// a numeric host). Empty: the endpoint's host.
  std::string serverName;
  /// Server: whether clients must present a certificate.
  ClientAuth clientAuth = ClientAuth::kNone;
  /// Use the kernel's TLS (kTLS) where the kernel has it, so data is encrypted by the
  /// kernel as it is sent: frames go from the message segments to the socket with no
  /// user-space encryption copy. Where the kernel has none, OpenSSL's record layer runs.
  bool kernelTls = true;
  /// TLS 1.3 cipher suites in order of preference (OpenSSL's syntax).
  std::string ciphersuites =
      "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
  /// Server: the certificate, key and CA files are checked for changes at most this
  /// often (when a client connects) and reloaded without a restart; connections already
  /// open keep the credentials they started with. A failed reload keeps the old ones
  /// and is logged. 0: never (Listener-independent `reload` still works, see tcp.h).
  std::chrono::milliseconds reloadInterval{10'000};
};

}  // namespace zcrpc
