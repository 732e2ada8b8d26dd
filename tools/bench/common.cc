#include "common.h"

#include <sched.h>
#include <sys/resource.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
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

double loadAverage() noexcept {
  double load[1] = {0};
  return ::getloadavg(load, 1) == 1 ? load[0] : -1;
}

size_t parseSize(const std::string& text) {
  constexpr size_t kMiB = size_t{1} << 20;
  size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &pos);
  } catch (const std::exception&) {
    throw BenchError("size '" + text + "' is not a number");
  }
  std::string unit = text.substr(pos);
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  size_t mul = 1;
  if (unit == "" || unit == "b") mul = 1;
  else if (unit == "k" || unit == "kib") mul = 1024;
  else if (unit == "m" || unit == "mib") mul = kMiB;
  else throw BenchError("size '" + text + "': unit must be B, K/KiB or M/MiB");
  if (v == 0 || v > kMaxPayloadBytes / mul)
    throw BenchError("size '" + text + "' must be between 1 byte and 16 MiB");
  return static_cast<size_t>(v) * mul;
}

std::pair<int, int> parseCpus(const std::string& text) {
  int a = -1, b = -1;
  char tail = 0;
  if (std::sscanf(text.c_str(), "%d,%d%c", &a, &b, &tail) != 2 || a < 0 || b < 0)
    throw BenchError("--cpus '" + text + "' must be two CPU numbers, like 0,1");
  if (a == b) throw BenchError("--cpus: the two processes need two different CPUs");
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) throwErrno("sched_getaffinity");
  for (int cpu : {a, b})
    if (cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed))
      throw BenchError(fmt::format("--cpus: CPU {} is not available to this process", cpu));
  return {a, b};
}

std::string formatSize(uint64_t bytes) {
  constexpr uint64_t kKiB = 1024, kMiB = kKiB * 1024;
  if (bytes >= kMiB && bytes % kMiB == 0) return fmt::format("{} MiB", bytes / kMiB);
  if (bytes >= kKiB && bytes % kKiB == 0) return fmt::format("{} KiB", bytes / kKiB);
  return fmt::format("{} B", bytes);
}

}  // namespace zcrpc::bench
