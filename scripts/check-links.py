#!/usr/bin/env python3
"""Checks every relative link of README.md, docs/*.md and the clients'
READMEs: the file it names
exists in the repository and, with a #fragment, the heading it names exists
in that file (anchors as GitHub makes them). Links to other sites are not
followed (CI has no network for them); a bare #fragment is checked against
the file it is in.

Usage: scripts/check-links.py [FILE.md ...]
       (default: README.md docs/*.md clients/*/README.md)
Exit status 0 when every link resolves, 1 listing each one that does not.
"""

import re
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent

# [text](target) and ![alt](target), the target up to the first space or ')'
# (a title after a space is allowed); and <a href="..."> / <img src="...">.
INLINE = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def prose_lines(text):
    """The lines outside fenced code blocks, with their numbers."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading: markup and punctuation dropped,
    lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, _, -, space
    return text.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        found, seen = set(), {}
        for _, line in prose_lines(path.read_text(encoding="utf-8")):
            found.update(EXPLICIT_ANCHOR.findall(line))
            match = HEADING.match(line)
            if not match:
                continue
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        cache[path] = found
    return cache[path]


def check(path):
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        # Inline code is not a link: `[x](y)` inside backticks is left alone.
        line = re.sub(r"`[^`]*`", "", line)
        for target in INLINE.findall(line) + HTML.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # https:, mailto:, ...: not ours to check
            file_part, _, fragment = target.partition("#")
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            linked = (path.parent / unquote(file_part)).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{where}: no such file")
                continue
            try:
                linked.relative_to(ROOT)
            except ValueError:
                problems.append(f"{where}: outside the repository")
                continue
            if fragment and linked.is_file() and linked.suffix == ".md":
                if unquote(fragment) not in anchors(linked):
                    problems.append(f"{where}: no heading with anchor #{fragment}")
            elif fragment and linked.is_dir():
                problems.append(f"{where}: an anchor into a folder")
    return problems


def main(args):
    files = [Path(a).resolve() for a in args] or [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted(ROOT.glob("clients/*/README.md")),
    ]
    problems = [p for f in files for p in check(f)]
    for problem in problems:
        print(problem, file=sys.stderr)
    links = len(files)
    if problems:
        print(f"{len(problems)} broken link(s) in {links} file(s)", file=sys.stderr)
        return 1
    print(f"links: every relative link and anchor of {links} file(s) resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
