#include "system.h"

namespace zcrpc::bench {

std::vector<std::unique_ptr<System>> makeRivals(const Settings&, std::vector<std::string>&) {
  std::vector<std::unique_ptr<System>> out;
  out.push_back(makeCapnpRpc());
  return out;
}

}  // namespace zcrpc::bench
