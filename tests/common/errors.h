// What a call throws, as text, for tests of error messages. Test code only.
#pragma once

#include <exception>
#include <string>

#include "zcrpc/error.h"

namespace zcrpc::test {

/// The message of the InvalidArgument `f` throws ("" if it throws none).
template <typename F>
std::string errorOf(F&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "";
}

}  // namespace zcrpc::test
