#!/usr/bin/env python3
"""Checks that every capnp and cpp block of a Markdown document is an excerpt of one of
the given source files: its lines, with leading and trailing blanks stripped, appear in
that file in the same order, one after another. Lines that are only `// ...` stand for
an elision. Exit status 0 when all are; otherwise each block that is not, and why.

usage: doc_excerpts_test.py DOC.md SOURCE...
"""
import re
import sys


def normalise(lines):
    return [l.strip() for l in lines]


def blocks(text):
    for m in re.finditer(r"^```(capnp|cpp)\n(.*?)^```", text, flags=re.S | re.M):
        yield text[: m.start()].count("\n") + 1, m.group(2).splitlines()


def pieces(block):
    """The block split at elision lines into runs of consecutive lines."""
    run = []
    for line in normalise(block):
        if line in ("// ...", "# ..."):
            if run:
                yield run
            run = []
        elif line:
            run.append(line)
        elif run:
            run.append(line)
    while run and not run[-1]:
        run.pop()
    if run:
        yield run


def find(run, lines, start):
    for i in range(start, len(lines) - len(run) + 1):
        if lines[i : i + len(run)] == run:
            return i + len(run)
    return -1


def main():
    doc, *sources = sys.argv[1:]
    files = {s: normalise(open(s).read().splitlines()) for s in sources}
    text = open(doc).read()
    bad = 0
    count = 0
    for line_no, block in blocks(text):
        count += 1
        runs = list(pieces(block))
        ok = False
        for path, lines in files.items():
            at = 0
            for run in runs:
                at = find(run, lines, at)
                if at < 0:
                    break
            if at >= 0:
                ok = True
                break
        if not ok:
            bad += 1
            print("%s:%d: this block is not an excerpt of %s:\n%s" %
                  (doc, line_no, ", ".join(sources), "\n".join(block)), file=sys.stderr)
    if count == 0:
        print("%s has no capnp or cpp blocks" % doc, file=sys.stderr)
        return 1
    print("%d blocks checked, %d not excerpts" % (count, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
