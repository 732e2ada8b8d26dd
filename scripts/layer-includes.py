#!/usr/bin/env python3
"""Builds the include folder one layer of libzcrpc compiles against (run by src/meson.build
at configure time).

A layer sees only its own headers and those of the layers below it: this folder holds a
link to each of them and to nothing else, so an #include that runs up a floor finds no
file and the build fails. Public headers are linked one by one (include/zcrpc mixes
layers); a private folder (src/os, src/transport, ...) as a whole. Links may point at
headers the build has yet to generate.

  layer-includes.py OUT --public SRC_HEADER... --private SRC_DIR... --generated GEN_HEADER...

OUT is emptied and refilled; a public or generated header lands as OUT/zcrpc/<name>, a
private folder as OUT/<its name>.
"""
import argparse
import os
import shutil
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--public", nargs="*", default=[])
    p.add_argument("--private", nargs="*", default=[])
    p.add_argument("--generated", nargs="*", default=[])
    a = p.parse_args()

    if os.path.isdir(a.out) and not os.path.islink(a.out):
        shutil.rmtree(a.out)
    os.makedirs(os.path.join(a.out, "zcrpc"))
    for target in a.public:
        if not os.path.isfile(target):
            print(f"layer-includes.py: no header {target}", file=sys.stderr)
            return 1
    for target in a.public + a.generated:
        link = os.path.join(a.out, "zcrpc", os.path.basename(target))
        os.symlink(os.path.abspath(target), link)
    for folder in a.private:
        if not os.path.isdir(folder):
            print(f"layer-includes.py: no folder {folder}", file=sys.stderr)
            return 1
        os.symlink(os.path.abspath(folder), os.path.join(a.out, os.path.basename(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
