#include "common.h"

#include <sched.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace zcrpc::bench {

void throwErrno(const std::string& context) {
  int err = errno;
  throw BenchError(context + ": " + std::strerror(err));
}

void pinToCpu(int cpu) {
  if (cpu < 0 || cpu >= CPU_SETSIZE) throw BenchError(fmt::format("CPU {} is out of range", cpu));
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0)
    throwErrno(fmt::format("pin to CPU {} (sched_setaffinity)", cpu));
  // The kernel migrates the thread before sched_setaffinity returns.
  int now = ::sched_getcpu();
  if (now != cpu)
    throw BenchError(fmt::format("pinned to CPU {} but running on CPU {}", cpu, now));
}

uint64_t preemptionCount() noexcept {
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_nivcsw);
}

std::string formatSize(uint64_t bytes) {
  constexpr uint64_t kKiB = 1024, kMiB = kKiB * 1024;
  if (bytes >= kMiB && bytes % kMiB == 0) return fmt::format("{} MiB", bytes / kMiB);
  if (bytes >= kKiB && bytes % kKiB == 0) return fmt::format("{} KiB", bytes / kKiB);
  return fmt::format("{} B", bytes);
}

}  // namespace zcrpc::bench
