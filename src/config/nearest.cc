#include "config/nearest.h"

#include <algorithm>
#include <cctype>
#include <vector>

namespace zcrpc {

// Hand-written: a dozen lines over names of a few dozen bytes; no library is needed.
size_t editDistance(std::string_view a, std::string_view b) {
  auto low = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  std::vector<size_t> before(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = low(a[i - 1]) == low(b[j - 1]) ? 0 : 1;
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
      if (i > 1 && j > 1 && low(a[i - 1]) == low(b[j - 2]) && low(a[i - 2]) == low(b[j - 1]))
        cur[j] = std::min(cur[j], before[j - 2] + 1);  // two neighbours swapped
    }
    std::swap(before, prev);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string_view nearestName(std::string_view name, std::span<const std::string_view> candidates) {
  const size_t limit = std::clamp<size_t>(name.size() / 5, 1, 3);
  std::string_view best;
  size_t bestDistance = limit + 1;
  for (std::string_view c : candidates) {
    const size_t d = editDistance(name, c);
    if (d < bestDistance) bestDistance = d, best = c;
  }
  return best;
}

std::string didYouMean(std::string_view name, std::span<const std::string_view> candidates) {
  std::string_view near = nearestName(name, candidates);
  return near.empty() ? std::string() : "; did you mean " + std::string(near) + "?";
}

}  // namespace zcrpc
