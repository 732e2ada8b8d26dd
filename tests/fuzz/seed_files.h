// zcrpc — reading a fuzz target's seed files, for the tests that replay them with the
// project's compiler (frame_corpus_test, wire_corpus_test, fuzz_seeds_test). Test code only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace zcrpc::fuzz {

/// The regular files of `dir`, sorted by name (so failures name seeds in a stable order).
inline std::vector<std::filesystem::path> seedFiles(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

inline std::vector<uint8_t> readSeed(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// True when the seed's file name starts with `prefix` (the names say what a seed must do).
inline bool nameStartsWith(const std::filesystem::path& p, const char* prefix) {
  return p.filename().string().rfind(prefix, 0) == 0;
}

}  // namespace zcrpc::fuzz
