// The one parametrised fixture of the conformance suite. Its TEST_Ps live in
// conformance_test.cc (transport contract), rpc_conformance_test.cc (RPC core) and
// stress_test.cc; the single INSTANTIATE_TEST_SUITE_P in conformance_test.cc lists the
// transports.
#pragma once

#include <signal.h>

#include <gtest/gtest.h>

#include <cctype>
#include <string>

#include "conformance/support.h"

namespace zcrpc::conformance {

class Conformance : public ::testing::TestWithParam<const TransportFactory*> {
 public:
  /// A SIGPIPE from a transport writing to a reset peer would end the whole program and
  /// hide every later result; tcp_test checks that case on its own, in a child process.
  static void SetUpTestSuite() { ::signal(SIGPIPE, SIG_IGN); }
  /// A transport that carries RPC frames only (standard Cap'n Proto peers) runs the RPC
  /// core's cases (named Rpc*), not the transport contract's plain messages.
  void SetUp() override {
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    if (transport().rpcFramesOnly && name.rfind("Rpc", 0) != 0)
      GTEST_SKIP() << transport().name << " carries RPC frames only, not plain messages";
  }

  const TransportFactory& transport() const { return *GetParam(); }
  /// The tcp transport, plain or with TLS: what tcp.h documents holds for both.
  bool overTcp() const { return transport().name == "tcp" || transport().name == "tls"; }
  ConnectionOptions options() const { return GetParam()->options; }
  ConnectionPair connectPair(const ConnectionOptions& o) const { return transport().makePair(o); }
  ConnectionPair connectPair() const { return connectPair(options()); }
  bool hasListener() const { return static_cast<bool>(transport().makeListener); }
};

/// The transport's name as a test name allows it ("capnp+unix" -> "capnp_unix").
inline std::string transportName(const ::testing::TestParamInfo<const TransportFactory*>& info) {
  std::string name = info.param->name;
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

}  // namespace zcrpc::conformance
