"""Write what `make test-floors` installs: every runtime dependency at the lowest version pyproject.toml
allows (`floors.txt`), and the lock's pins of the test tools as constraints (`constraints.txt`).

A floor in pyproject.toml is then a version the gateway is known to work with, not a guess. The runtime
packages' own dependencies (anything in requirements/runtime.txt) are left free, since an old floor may
need older ones than the lock has; the tools the tests run with stay as locked.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


class NoFloorError(ValueError):
    """A runtime dependency without a lower bound: there is no floor to test."""


def floors(pyproject_text: str) -> dict[str, str]:
    """Canonical name (with its extras: an override replaces the whole requirement) -> lowest allowed
    version, for each of `[project] dependencies`."""
    pins: dict[str, str] = {}
    for line in tomllib.loads(pyproject_text)["project"]["dependencies"]:
        requirement = Requirement(line)
        lows = [s.version for s in requirement.specifier if s.operator in (">=", "==", "~=")]
        if not lows:
            raise NoFloorError(f"{requirement.name}: no lower bound in pyproject.toml ({line!r})")
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        pins[canonicalize_name(requirement.name) + extras] = max(lows, key=Version)
    return pins


def locked(lock_text: str) -> dict[str, str]:
    """Canonical name -> version for each `name==version` line of a pip-style lock."""
    return {canonicalize_name(m[1]): m[2] for m in map(_PIN.match, lock_text.splitlines()) if m}


def constraints(lock_text: str, runtime_text: str) -> list[str]:
    runtime = locked(runtime_text)
    return [f"{name}=={version}" for name, version in locked(lock_text).items() if name not in runtime]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    pins = floors((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    lock = (ROOT / "requirements" / "lock.txt").read_text(encoding="utf-8")
    runtime = (ROOT / "requirements" / "runtime.txt").read_text(encoding="utf-8")
    (out / "floors.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()), encoding="utf-8")
    (out / "constraints.txt").write_text(
        "".join(f"{c}\n" for c in constraints(lock, runtime)), encoding="utf-8"
    )
    print("floors: " + ", ".join(f"{n}=={v}" for n, v in pins.items()))


if __name__ == "__main__":
    main()
