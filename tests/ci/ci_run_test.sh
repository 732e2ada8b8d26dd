#!/bin/sh
# .ci/run must run the README's test command and nothing else: the README's test line (the
# one starting "scripts/zcrpc-dev test" in its first code block) must be .ci/run's last line.
# Usage: ci_run_test.sh SOURCE_ROOT
set -eu
root=${1:?usage: ci_run_test.sh SOURCE_ROOT}
readme_line=$(awk '/^```/ { n++; next } n == 1 && /^scripts\/zcrpc-dev test/ { print; exit }' "$root/README.md")
[ -n "$readme_line" ] || { echo "README.md's first code block has no 'scripts/zcrpc-dev test' line"; exit 1; }
ci_line=$(grep -v '^[[:space:]]*$' "$root/.ci/run" | tail -n 1)
if [ "$ci_line" != "$readme_line" ]; then
  echo ".ci/run ends with:       $ci_line"
  echo "README's test command is: $readme_line"
  exit 1
fi
echo "ok: .ci/run runs the README's test command: $readme_line"
