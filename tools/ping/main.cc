// zcrpc-ping ENDPOINT... — round trips of ping frames to a running zcrpc server, as ping(8)
// reports them: one line per pong, then count, loss and min/avg/p50/p99/max. Stops after
// -c COUNT pings or at Ctrl-C. The server answers pings on its polling thread, with no
// service involved, so this works against any zcrpc server. With --health [SERVICE] each
// probe is a health check instead (zcrpc/health.h; the server's enableHealth()), which
// also says whether the server serves SERVICE ("" : the server as a whole).
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "zcrpc/context.h"
#include "zcrpc/health.h"
#include "zcrpc/rpc.h"

namespace {

std::atomic<bool> gStop{false};

void onSignal(int) { gStop.store(true); }

/// Sleeps `d`, waking early on Ctrl-C (std::this_thread::sleep_for resumes after signals).
void sleepFor(std::chrono::nanoseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (!gStop.load() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(
        until - std::chrono::steady_clock::now(), std::chrono::milliseconds(10)));
}

std::string micros(double ns) {
  double us = ns / 1000.0;
  return us < 10 ? fmt::format("{:.3f}", us) : us < 1000 ? fmt::format("{:.1f}", us) : fmt::format("{:.0f}", us);
}

double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zcrpc-ping: round-trip times of ping frames to a zcrpc server"};
  std::vector<std::string> endpoints;
  uint64_t count = 0;
  double interval = 1.0;
  double timeout = 2.0;
  bool quiet = false;
  app.add_option("endpoints", endpoints,
                 "the server's endpoint(s): shm://NAME, tcp://HOST:PORT, rdma://HOST:PORT "
                 "(several: the transport preference picks one)")
      ->required();
  app.add_option("-c,--count", count, "stop after this many pings (default: until Ctrl-C)");
  app.add_option("-i,--interval", interval, "seconds between pings (0: back to back)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("-W,--timeout", timeout, "seconds to wait for each pong")
      ->check(CLI::PositiveNumber);
  app.add_flag("-q,--quiet", quiet, "print only the summary");
  std::string healthService;
  auto* health = app.add_option("--health", healthService,
                                "probe with health checks of SERVICE (none: the server as a "
                                "whole) instead of ping frames; exit status 3 when the last "
                                "answer was not 'serving'")
                     ->expected(0, 1);
  CLI11_PARSE(app, argc, argv);

  struct sigaction sa{};
  sa.sa_handler = onSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::unique_ptr<zcrpc::Channel> channel;
  std::string target;
  try {
    zcrpc::Context context;
    zcrpc::TransportChoice choice;
    auto connection = context.connect(endpoints, &choice);
    target = choice.chosen() ? choice.chosen()->endpoint : endpoints.front();
    channel = std::make_unique<zcrpc::Channel>(std::move(connection), context.config().channelOptions());
  } catch (const std::exception& e) {
    fmt::print(stderr, "zcrpc-ping: {}\n", e.what());
    return 2;
  }
  fmt::print("PING {}\n", target);
  std::fflush(stdout);

  const bool checking = health->count() > 0;
  zcrpc::ServingStatus last = zcrpc::ServingStatus::kUnknown;
  std::vector<double> rtts;
  uint64_t sent = 0;
  int status = 0;
  const auto started = std::chrono::steady_clock::now();
  const auto wait = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(timeout));
  const auto gap = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(interval));
  while (!gStop.load() && (count == 0 || sent < count)) {
    if (sent > 0) sleepFor(gap);
    if (gStop.load()) break;
    ++sent;
    try {
      if (checking) {
        const auto start = std::chrono::steady_clock::now();
        last = zcrpc::checkHealth(*channel, healthService, zcrpc::deadlineAfter(wait));
        double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
        rtts.push_back(ns);
        if (!quiet)
          fmt::print("health of {} from {}: seq={} {} time={} us\n",
                     healthService.empty() ? std::string("the server") : "'" + healthService + "'",
                     target, sent, zcrpc::servingStatusName(last), micros(ns));
      } else {
        auto rtt = channel->ping(zcrpc::deadlineAfter(wait));
        double ns = static_cast<double>(rtt.count());
        rtts.push_back(ns);
        if (!quiet) fmt::print("pong from {}: seq={} time={} us\n", target, sent, micros(ns));
      }
    } catch (const zcrpc::Unimplemented&) {
      fmt::print(stderr, "zcrpc-ping: {} does not serve health checks (Server::enableHealth())\n", target);
      status = 1;
      break;
    } catch (const zcrpc::DeadlineExceeded&) {
      if (!quiet) fmt::print("no pong from {}: seq={} timed out after {} s\n", target, sent, timeout);
    } catch (const std::exception& e) {
      fmt::print(stderr, "zcrpc-ping: seq={}: {}\n", sent, e.what());
      status = 1;
      break;
    }
    std::fflush(stdout);
  }
  const double elapsedMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();

  std::sort(rtts.begin(), rtts.end());
  fmt::print("--- {} ping statistics ---\n", target);
  fmt::print("{} sent, {} received, {:.1f}% loss, time {:.0f} ms\n", sent, rtts.size(),
             sent ? 100.0 * static_cast<double>(sent - rtts.size()) / static_cast<double>(sent) : 0.0,
             elapsedMs);
  if (!rtts.empty()) {
    double sum = 0;
    for (double r : rtts) sum += r;
    fmt::print("rtt min/avg/p50/p99/max = {}/{}/{}/{}/{} us\n", micros(rtts.front()),
               micros(sum / static_cast<double>(rtts.size())), micros(percentile(rtts, 0.5)),
               micros(percentile(rtts, 0.99)), micros(rtts.back()));
  }
  if (rtts.empty()) status = 1;
  if (checking && status == 0 && last != zcrpc::ServingStatus::kServing) status = 3;
  return status;
}
