// A raw verbs RDMA WRITE WITH IMMEDIATE ping-pong: the floor zcrpc's rdma echo is measured
// against. Test code only.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace zcrpc::test {

/// Two RC queue pairs in this process (server thread, client on the calling thread), set
/// up with librdmacm on `addr`; the client writes `bytes` with immediate into the
/// server's buffer, the server answers the same way; both busy-poll their receive CQ,
/// re-post zero-length receives and signal every 16th send. Round-trip times (µs, by
/// clock_gettime) of `iterations` exchanges after a warm-up go to `rttUs`. Returns an
/// empty string or what failed.
std::string rawPingPong(const std::string& addr, const std::string& serverDevice,
                        const std::string& clientDevice, size_t bytes, int iterations,
                        std::vector<double>& rttUs);

}  // namespace zcrpc::test
