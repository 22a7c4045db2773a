"""Splice generated tables into README.md: each block between
``<!-- BEGIN path -->`` and ``<!-- END path -->`` is replaced by the file at ``path``.

The files are written by the commands named next to each block in the README
(experiments, `fedlrs compare --out`, benchmark scripts); nothing in those blocks
is typed by hand.  Run: ``python scripts/update_readme.py`` (``--check`` exits 1
when the README is out of date).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- BEGIN (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- END (?P=path) -->)", re.S)


def render(text: str) -> str:
    def replace(match: re.Match) -> str:
        source = ROOT / match["path"]
        body = source.read_text() if source.exists() else f"(not generated yet: run the command that writes {match['path']})\n"
        if source.suffix == ".txt":
            body = "```\n" + body.rstrip("\n") + "\n```\n"
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text)


def main() -> None:
    readme = ROOT / "README.md"
    new = render(readme.read_text())
    if "--check" in sys.argv[1:]:
        sys.exit(0 if new == readme.read_text() else 1)
    readme.write_text(new)


if __name__ == "__main__":
    main()
