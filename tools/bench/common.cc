#include "common.h"

#include <fmt/format.h>
#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <dirent.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace zcrpc::bench {

void throwErrno(const std::string& context) {
  int err = errno;
  throw BenchError(context + ": " + std::strerror(err));
}

UnlinkOnExit::UnlinkOnExit(std::string path) : path_(std::move(path)) {
  if (!path_.empty()) ::unlink(path_.c_str());
}

UnlinkOnExit::~UnlinkOnExit() {
  if (!path_.empty()) ::unlink(path_.c_str());
}

bool readable(int fd) noexcept {
  pollfd p{fd, POLLIN, 0};
  return fd >= 0 && ::poll(&p, 1, 0) > 0;
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
  if (now != cpu) throw BenchError(fmt::format("pinned to CPU {} but running on CPU {}", cpu, now));
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
  if (unit == "" || unit == "b")
    mul = 1;
  else if (unit == "k" || unit == "kib")
    mul = 1024;
  else if (unit == "m" || unit == "mib")
    mul = kMiB;
  else
    throw BenchError("size '" + text + "': unit must be B, K/KiB or M/MiB");
  if (v == 0 || v > kMaxPayloadBytes / mul)
    throw BenchError("size '" + text + "' must be between 1 byte and 16 MiB");
  return static_cast<size_t>(v) * mul;
}

double parseRate(const std::string& text) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw BenchError("rate '" + text + "' is not a number of calls per second");
  }
  const std::string unit = text.substr(pos);
  if (unit == "k" || unit == "K") v *= 1e3;
  else if (unit == "M") v *= 1e6;
  else if (!unit.empty()) throw BenchError("rate '" + text + "': unit must be k or M");
  if (!(v >= 1 && v <= 1e6)) throw BenchError("rate '" + text + "' must be 1 to 1M calls/s");
  return v;
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

std::string_view transportName(Transport t) noexcept {
  return t == Transport::kShm ? "shm" : "tcp";
}

Transport parseTransport(std::string_view text) {
  if (text == "shm") return Transport::kShm;
  if (text == "tcp") return Transport::kTcp;
  throw BenchError("transport '" + std::string(text) + "' must be shm or tcp");
}

Budget Budget::forPayload(size_t payloadBytes, double seconds) {
  Budget b;
  auto ns = std::chrono::nanoseconds(static_cast<int64_t>(seconds * 1e9));
  // ~1.9 M round trips for 64 B, ~650 k for 4 KiB, ~60 k for 64 KiB, ~3.8 k for 1 MiB: more
  // than fit in the time at the expected speeds, so time is the usual bound.
  b.maxIterations =
      std::clamp<uint64_t>(static_cast<uint64_t>(4e9 / (payloadBytes + 2000.0)), 5000, 2'000'000);
  b.measure = ns;
  b.warmup = ns / 4;
  b.warmupIterations = b.maxIterations / 4;
  return b;
}

Rate rateOf(uint64_t count, double seconds, size_t bytes) {
  Rate r;
  r.count = count;
  r.seconds = seconds;
  r.perSecond = static_cast<double>(count) / seconds;
  r.bytesPerSecond = r.perSecond * static_cast<double>(bytes);
  return r;
}

uint64_t processCpuNs(pid_t pid) {
  const std::string dir = fmt::format("/proc/{}/task", pid);
  DIR* d = ::opendir(dir.c_str());
  if (!d) throwErrno("open " + dir);
  uint64_t total = 0;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::FILE* f = std::fopen((dir + "/" + e->d_name + "/schedstat").c_str(), "r");
    if (!f) continue;  // a thread that just ended
    unsigned long long ns = 0;
    if (std::fscanf(f, "%llu", &ns) == 1) total += ns;
    std::fclose(f);
  }
  ::closedir(d);
  return total;
}

std::chrono::nanoseconds paceUntil(Clock::time_point due) {
  const auto wake = due - kPaceSpin;
  if (Clock::now() < wake) {
    const auto ns = wake.time_since_epoch().count();  // steady_clock is CLOCK_MONOTONIC
    const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
  }
  const auto spinStart = Clock::now();
  auto now = spinStart;
  while (now < due) {
    cpuRelax();
    now = Clock::now();
  }
  return now - spinStart;
}

Latency summarizeLatency(std::span<uint64_t> samples) {
  Latency l;
  l.samples = samples.size();
  if (samples.empty()) return l;
  std::sort(samples.begin(), samples.end());
  auto rank = [&](double q) {  // nearest rank
    size_t r = static_cast<size_t>(std::ceil(q * static_cast<double>(samples.size())));
    return samples[std::clamp<size_t>(r, 1, samples.size()) - 1];
  };
  l.minNs = samples.front();
  l.p50Ns = rank(0.50);
  l.p99Ns = rank(0.99);
  l.p999Ns = rank(0.999);
  l.maxNs = samples.back();
  return l;
}

}  // namespace zcrpc::bench
