#include "tls/test_pki.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace zcrpc::test {

namespace {

struct KeyFree {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
struct CertFree {
  void operator()(X509* c) const noexcept { X509_free(c); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;
using CertPtr = std::unique_ptr<X509, CertFree>;

[[noreturn]] void opensslFailed(const char* what) {
  char buf[256] = "";
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  throw std::runtime_error(std::string("test PKI: ") + what + ": " + buf);
}

void addExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext) opensslFailed(("extension " + value).c_str());
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

void writePem(const std::string& path, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw std::runtime_error("test PKI: cannot write " + path);
  bool ok = cert ? PEM_write_X509(f, cert) == 1
                 : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  std::fclose(f);
  if (!ok) opensslFailed(path.c_str());
}

}  // namespace

struct TestPki::Issuer {
  CertPtr cert;
  KeyPtr key;
};

namespace {

/// A P-256 key and a certificate for it, signed by `issuer` or (null) by itself.
std::pair<CertPtr, KeyPtr> makeCert(const CertSpec& spec, bool ca, X509* issuerCert,
                                    EVP_PKEY* issuerKey) {
  static long serial = 1;
  KeyPtr key(EVP_EC_gen("P-256"));
  if (!key) opensslFailed("EC key");
  CertPtr cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++ + (::getpid() << 8));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), long{spec.validFromDays} * 86400);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), long{spec.validToDays} * 86400);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("zcrpc tests"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(spec.commonName.c_str()), -1, -1, 0);
  X509* issuer = issuerCert ? issuerCert : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer));
  addExtension(cert.get(), issuer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  addExtension(cert.get(), issuer, NID_key_usage,
               ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  addExtension(cert.get(), issuer, NID_subject_key_identifier, "hash");
  if (!ca) addExtension(cert.get(), issuer, NID_ext_key_usage, "serverAuth,clientAuth");
  std::string sans;
  for (const auto& n : spec.altNames) sans += (sans.empty() ? "" : ",") + n;
  if (!sans.empty()) addExtension(cert.get(), issuer, NID_subject_alt_name, sans);
  if (!X509_sign(cert.get(), issuerKey ? issuerKey : key.get(), EVP_sha256())) opensslFailed("sign");
  return {std::move(cert), std::move(key)};
}

}  // namespace

TestPki::TestPki() {
  char tmpl[] = "/tmp/zcrpc-pki-XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::runtime_error("test PKI: mkdtemp failed");
  dir_ = tmpl;
  auto caPair = makeCert({"zcrpc test CA", {}, -1, 365}, true, nullptr, nullptr);
  testCa_ = std::make_unique<Issuer>(Issuer{std::move(caPair.first), std::move(caPair.second)});
  ca_ = {dir_ + "/ca.pem", dir_ + "/ca.key"};
  writePem(ca_.cert, testCa_->cert.get(), nullptr);
  auto otherPair = makeCert({"zcrpc other CA", {}, -1, 365}, true, nullptr, nullptr);
  otherIssuer_ = std::make_unique<Issuer>(Issuer{std::move(otherPair.first), std::move(otherPair.second)});
  otherCa_ = {dir_ + "/other-ca.pem", dir_ + "/other-ca.key"};
  writePem(otherCa_.cert, otherIssuer_->cert.get(), nullptr);

  server_ = issue("server", {"zcrpc-test-server", {"DNS:localhost", "IP:127.0.0.1", "IP:::1"}});
  client_ = issue("client", {"zcrpc-test-client", {"URI:spiffe://zcrpc.test/client"}});
  // The other CA's client.
  auto pair = makeCert({"intruder", {}}, false, otherIssuer_->cert.get(), otherIssuer_->key.get());
  otherClient_ = {dir_ + "/intruder.pem", dir_ + "/intruder.key"};
  writePem(otherClient_.cert, pair.first.get(), nullptr);
  writePem(otherClient_.key, nullptr, pair.second.get());
}

TestPki::~TestPki() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

CertFiles TestPki::issue(const std::string& name, const CertSpec& spec, bool byTestCa) {
  auto pair = byTestCa ? makeCert(spec, false, testCa_->cert.get(), testCa_->key.get())
                       : makeCert(spec, false, nullptr, nullptr);
  CertFiles files{dir_ + "/" + name + ".pem", dir_ + "/" + name + ".key"};
  // Written to new files and renamed over the old ones, as a deployment would.
  writePem(files.cert + ".new", pair.first.get(), nullptr);
  writePem(files.key + ".new", nullptr, pair.second.get());
  std::filesystem::rename(files.key + ".new", files.key);
  std::filesystem::rename(files.cert + ".new", files.cert);
  return files;
}

}  // namespace zcrpc::test
