#include "transport/options.h"

#include <unistd.h>

#include <string>

namespace zcrpc {

std::string_view waitModeName(WaitMode mode) noexcept {
  switch (mode) {
    case WaitMode::kBusyPoll: return "busy-poll";
    case WaitMode::kSpinThenSleep: return "spin-then-sleep";
    case WaitMode::kBlocking: return "blocking";
  }
  return "unknown";
}

WaitMode parseWaitMode(std::string_view text) {
  if (text == "busy-poll") return WaitMode::kBusyPoll;
  if (text == "spin-then-sleep") return WaitMode::kSpinThenSleep;
  if (text == "blocking") return WaitMode::kBlocking;
  throw InvalidArgument("wait mode '" + std::string(text) +
                        "' is not one of busy-poll, spin-then-sleep, blocking");
}

std::string_view spinPolicyName(SpinPolicy policy) noexcept {
  switch (policy) {
    case SpinPolicy::kAdaptive: return "adaptive";
    case SpinPolicy::kFixed: return "fixed";
  }
  return "unknown";
}

SpinPolicy parseSpinPolicy(std::string_view text) {
  if (text == "adaptive") return SpinPolicy::kAdaptive;
  if (text == "fixed") return SpinPolicy::kFixed;
  throw InvalidArgument("spin policy '" + std::string(text) + "' is not one of adaptive, fixed");
}

void checkConnectionOptions(const ConnectionOptions& o, std::string_view ringName) {
  if (!validRingBytes(o.ringBytes))
    throw InvalidArgument(std::string(ringName) + " size " + std::to_string(o.ringBytes) +
                          " must be a power of two between " + std::to_string(kMinRingBytes) + " and " +
                          std::to_string(kMaxRingBytes) + " bytes");
  if (!validMaxMessageBytes(o.maxMessageBytes))
    throw InvalidArgument("maximum message size " + std::to_string(o.maxMessageBytes) +
                          " must be between 64 bytes and 4 GiB");
  if (!isPowerOfTwo(o.maxLeases) || o.maxLeases > kMaxLeases)
    throw InvalidArgument("maxLeases " + std::to_string(o.maxLeases) + " must be a power of two up to " +
                          std::to_string(kMaxLeases));
}

const PeerIdentity& Connection::peer() const noexcept {
  static const PeerIdentity kUnknown;
  return kUnknown;
}

std::string PeerIdentity::describe() const {
  std::string out = transport.empty() ? "unknown peer" : transport;
  if (!address.empty()) out += " " + address;
  if (hasCredentials)
    out += ", pid " + std::to_string(pid) + " uid " + std::to_string(uid) + " gid " + std::to_string(gid);
  if (tokenVerified) out += ", token";
  if (!tlsProtocol.empty()) {
    out += ", " + tlsProtocol + " " + tlsCipher;
    if (kernelTlsSend || kernelTlsReceive)
      out += std::string(" (kernel TLS") + (kernelTlsSend ? " send" : "") +
             (kernelTlsReceive ? " receive" : "") + ")";
  }
  if (hasCertificate()) out += ", certificate " + certificateSubject;
  return out;
}

bool CredentialPolicy::admits(uid_t uid, gid_t gid) const noexcept {
  if (sameUid && uid == ::geteuid()) return true;
  for (uid_t u : uids)
    if (u == uid) return true;
  for (gid_t g : gids)
    if (g == gid) return true;
  return false;
}

}  // namespace zcrpc
