#!/bin/sh
# .ci/run must run the README's test command and nothing else: the README's test line (the
# one starting "scripts/zcrpc-dev test" in its first code block) must be .ci/run's last line,
# and it must reach the repository's scripts/zcrpc-dev however it is started (a copy of .ci/run
# in a scratch tree, with a stand-in zcrpc-dev, is started from elsewhere, via sh, on stdin,
# and with the executable bits gone).
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
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/repo/.ci" "$scratch/repo/scripts" "$scratch/elsewhere"
cp "$root/.ci/run" "$scratch/repo/.ci/run"
printf '#!/bin/sh\necho "zcrpc-dev $* in $(pwd)" > "%s/ran"\n' "$scratch" > "$scratch/repo/scripts/zcrpc-dev"
chmod +x "$scratch/repo/.ci/run" "$scratch/repo/scripts/zcrpc-dev"
expected="zcrpc-dev test in $(cd "$scratch/repo" && pwd)"
# Every way CI may start it: as a program from another directory, through sh or bash.
check() {
  rm -f "$scratch/ran"
  (eval "$2") >/dev/null 2>&1 || { echo ".ci/run failed when started $1"; exit 1; }
  if [ "$(cat "$scratch/ran" 2>/dev/null)" != "$expected" ]; then
    echo ".ci/run started $1 ran: $(cat "$scratch/ran" 2>/dev/null || echo nothing); expected: $expected"
    exit 1
  fi
}
check "as a program from another directory" 'cd "$scratch/elsewhere" && ../repo/.ci/run'
check "with sh from another directory" 'cd "$scratch/elsewhere" && sh ../repo/.ci/run'
check "with bash from the root" 'cd "$scratch/repo" && bash .ci/run'
check "with sh from the root" 'cd "$scratch/repo" && sh .ci/run'
echo "ok: .ci/run runs the README's test command from the repository root: $readme_line"
