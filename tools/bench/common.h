// zcrpc-bench — small pieces shared by the bench's modules.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "os/spin.h"
#include "zcrpc/transport.h"

namespace zcrpc::bench {

using zcrpc::Clock;
using zcrpc::Deadline;

/// Anything that stops a measurement: a failed system call, a peer that went silent, an
/// echo that came back wrong. The message names what failed; main() prints it and exits 1.
class BenchError final : public std::runtime_error {
 public:
  explicit BenchError(const std::string& what) : std::runtime_error(what) {}
};

/// "context: strerror(errno)" as a BenchError.
[[noreturn]] void throwErrno(const std::string& context);

using os::cpuRelax;

/// Pins the calling thread to `cpu` and checks it now runs there. Throws BenchError.
void pinToCpu(int cpu);

/// Involuntary context switches of this process so far (the other load on the host
/// taking our CPU): a cell's count says how much its tail figures were disturbed.
uint64_t preemptionCount() noexcept;

/// "64 B", "4 KiB", "1 MiB", or "1000 B" for sizes that are not whole KiB/MiB.
std::string formatSize(uint64_t bytes);

/// The host's 1-minute load average (-1 if unknown): how many tasks compete with the two
/// pinned processes.
double loadAverage() noexcept;

/// "64", "4K", "4KiB", "64k", "1M", "1MiB" -> bytes, between 1 byte and 16 MiB. Throws
/// BenchError naming the text.
size_t parseSize(const std::string& text);

/// "A,B": two different CPUs this process may run on. Throws BenchError.
std::pair<int, int> parseCpus(const std::string& text);

/// Largest payload any mode sends.
inline constexpr size_t kMaxPayloadBytes = size_t{16} << 20;

/// How long a side waits without progress before it declares its peer stuck.
inline constexpr std::chrono::seconds kStallTimeout{10};

}  // namespace zcrpc::bench
