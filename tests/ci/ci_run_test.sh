#!/bin/sh
# .ci/run must be the README's test command and nothing else: its one command (the lines
# that are neither blank nor comments) is the README's test line (the one starting
# "scripts/zcrpc-dev test" in its first code block), and started from the repository root
# (as CI starts it: as a program, through sh or bash) it runs the repository's
# scripts/zcrpc-dev (a copy of .ci/run in a scratch tree, with a stand-in zcrpc-dev).
# Usage: ci_run_test.sh SOURCE_ROOT
set -eu
root=${1:?usage: ci_run_test.sh SOURCE_ROOT}
readme_line=$(awk '/^```/ { n++; next } n == 1 && /^scripts\/zcrpc-dev test/ { print; exit }' "$root/README.md")
[ -n "$readme_line" ] || { echo "README.md's first code block has no 'scripts/zcrpc-dev test' line"; exit 1; }
commands=$(grep -v '^[[:space:]]*$' "$root/.ci/run" | grep -v '^[[:space:]]*#')
if [ "$commands" != "$readme_line" ]; then
  echo ".ci/run runs:             $commands"
  echo "README's test command is: $readme_line"
  exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/repo/.ci" "$scratch/repo/scripts"
cp "$root/.ci/run" "$scratch/repo/.ci/run"
printf '#!/bin/sh\necho "zcrpc-dev $* in $(pwd)" > "%s/ran"\n' "$scratch" > "$scratch/repo/scripts/zcrpc-dev"
chmod +x "$scratch/repo/.ci/run" "$scratch/repo/scripts/zcrpc-dev"
expected="zcrpc-dev test in $(cd "$scratch/repo" && pwd)"
check() {
  rm -f "$scratch/ran"
  (eval "$2") >/dev/null 2>&1 || { echo ".ci/run failed when started $1"; exit 1; }
  if [ "$(cat "$scratch/ran" 2>/dev/null)" != "$expected" ]; then
    echo ".ci/run started $1 ran: $(cat "$scratch/ran" 2>/dev/null || echo nothing); expected: $expected"
    exit 1
  fi
}
check "as a program from the root" 'cd "$scratch/repo" && ./.ci/run'
check "with bash from the root" 'cd "$scratch/repo" && bash .ci/run'
check "with sh from the root" 'cd "$scratch/repo" && sh .ci/run'
echo "ok: .ci/run is the README's test command: $readme_line"
