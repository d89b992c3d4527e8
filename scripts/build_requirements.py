"""Print pyproject.toml's build-system requirements, one a line, for `make lock` (requirements/build.txt).

The image builds the wheel without build isolation from these pins, so the build backend is locked too.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    print("\n".join(pyproject["build-system"]["requires"]))


if __name__ == "__main__":
    main()
