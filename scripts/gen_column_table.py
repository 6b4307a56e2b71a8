"""Write the lesion-table column tables into README.md from pipeline/columns.py.

Usage::

    python scripts/gen_column_table.py          # rewrite the section between the markers
    python scripts/gen_column_table.py --check  # exit 1 when README.md is out of date

The section lies between ``<!-- columns:start -->`` and ``<!-- columns:end -->``; everything
else in README.md is left as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.columns import replace_readme_section  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--readme", default=str(REPO / "README.md"))
    p.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = p.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text(encoding="utf-8")
    new = replace_readme_section(text)
    if args.check:
        if new != text:
            print(f"{path}: column table out of date; run python scripts/gen_column_table.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: column table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
