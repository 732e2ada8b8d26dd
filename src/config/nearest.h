// Suggestions for misspelt names: the known name nearest to what was written.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace zcrpc {

/// Edit distance between `a` and `b`: insertions, deletions, substitutions and swaps of
/// two neighbouring characters count one each (optimal string alignment); ASCII letters
/// compare case-insensitively.
size_t editDistance(std::string_view a, std::string_view b);

/// The candidate nearest to `name` when it is near enough to be a likely misspelling of
/// it (at most a fifth of the name's length apart, at least 1 and at most 3 edits), else
/// empty. Ties go to the first candidate.
std::string_view nearestName(std::string_view name, std::span<const std::string_view> candidates);

/// "; did you mean X?" with X the nearest candidate, or "" when none is near.
std::string didYouMean(std::string_view name, std::span<const std::string_view> candidates);

}  // namespace zcrpc
