// zcrpc tests — certificates made at test time with OpenSSL (no private key is ever
// committed): a CA, a server and a client it signed, and a second, unrelated CA with a
// client of its own, written as PEM files into a fresh temporary directory.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace zcrpc::test {

struct CertSpec {
  std::string commonName;
  std::vector<std::string> altNames;  ///< "DNS:localhost", "IP:127.0.0.1", "URI:..."
  int validFromDays = -1;             ///< notBefore, in days from now
  int validToDays = 30;               ///< notAfter, in days from now (negative: expired)
};

/// The files of one certificate and its key.
struct CertFiles {
  std::string cert;
  std::string key;
};

/// A test public-key infrastructure in its own temporary directory (removed with it).
/// Threads: build it on one thread; the file names may be read from any.
class TestPki final {
 public:
  TestPki();
  ~TestPki();
  TestPki(const TestPki&) = delete;
  TestPki& operator=(const TestPki&) = delete;

  const std::string& dir() const noexcept { return dir_; }
  /// "CN=zcrpc test CA": signs server and client.
  const std::string& caFile() const noexcept { return ca_.cert; }
  /// CN=zcrpc-test-server, DNS:localhost, IP:127.0.0.1, IP:::1.
  const CertFiles& server() const noexcept { return server_; }
  /// CN=zcrpc-test-client, URI:spiffe://zcrpc.test/client.
  const CertFiles& client() const noexcept { return client_; }
  /// "CN=zcrpc other CA" and a client it signed (CN=intruder).
  const std::string& otherCaFile() const noexcept { return otherCa_.cert; }
  const CertFiles& otherClient() const noexcept { return otherClient_; }

  /// Issues another certificate signed by the test CA (or self-signed), written as
  /// `<name>.pem` / `<name>.key` (over an existing pair of that name, for reload tests).
  CertFiles issue(const std::string& name, const CertSpec& spec, bool byTestCa = true);

 private:
  struct Issuer;
  std::string dir_;
  CertFiles ca_, server_, client_, otherCa_, otherClient_;
  std::unique_ptr<Issuer> testCa_, otherIssuer_;
};

}  // namespace zcrpc::test
