"""Put a ``jiio demo`` record into the README: the table between the demo-table markers.

    jiio demo --out /tmp/demo                           # the full budgets
    python scripts/demo_table.py /tmp/demo/<time>/record.json --write

``--write`` copies the record to ``docs/demo_record.json`` (tests/test_readme.py compares the
README's table with it) and replaces the README's table; without it the table is printed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
STORED = ROOT / "docs" / "demo_record.json"
BLOCK = re.compile(r"(<!-- demo-table -->\n)(?:.*?\n)?(<!-- /demo-table -->)", re.S)


def main(argv: list[str] | None = None) -> int:
    """Print or write the README's demo table; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path, help="record.json of a jiio demo run")
    parser.add_argument("--write", action="store_true", help="update README.md and the copy")
    args = parser.parse_args(argv)
    from jiio_ext.apps.summary import summary_markdown

    record = json.loads(args.record.read_text())
    table = summary_markdown(record)
    if not args.write:
        print(table)
        return 0
    text = README.read_text()
    if not BLOCK.search(text):
        raise SystemExit("README.md: no <!-- demo-table --> ... <!-- /demo-table --> block")
    README.write_text(BLOCK.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text))
    shutil.copy(args.record, STORED)
    print(f"wrote the table into {README} and the record to {STORED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
