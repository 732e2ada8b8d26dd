// The one parametrised fixture of the conformance suite. Its TEST_Ps live in
// conformance_test.cc (transport contract), rpc_conformance_test.cc (RPC core) and
// stress_test.cc; the single INSTANTIATE_TEST_SUITE_P in conformance_test.cc lists the
// transports.
#pragma once

#include <signal.h>

#include <gtest/gtest.h>

#include <string>

#include "conformance/support.h"

namespace zcrpc::conformance {

class Conformance : public ::testing::TestWithParam<const TransportFactory*> {
 public:
  /// A SIGPIPE from a transport writing to a reset peer would end the whole program and
  /// hide every later result; tcp_test checks that case on its own, in a child process.
  static void SetUpTestSuite() { ::signal(SIGPIPE, SIG_IGN); }

  const TransportFactory& transport() const { return *GetParam(); }
  ConnectionOptions options() const { return GetParam()->options; }
  ConnectionPair connectPair(const ConnectionOptions& o) const { return transport().makePair(o); }
  ConnectionPair connectPair() const { return connectPair(options()); }
  bool hasListener() const { return static_cast<bool>(transport().makeListener); }
};

inline std::string transportName(const ::testing::TestParamInfo<const TransportFactory*>& info) {
  return info.param->name;
}

}  // namespace zcrpc::conformance
