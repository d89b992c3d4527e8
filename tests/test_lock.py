"""requirements/: the lock says exactly what `make test`, `make run`, CI and the image install.

These catch a pyproject.toml change without `make lock`, a pin without hashes, and an image that would
install other versions than the ones the tests ran with.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.floors import locked

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# The platform the lock is resolved for (Makefile LOCK_PLATFORM): CPython 3.11 on x86_64 Linux.
LOCK_ENV: dict[str, str] = {
    **{key: str(value) for key, value in default_environment().items()},
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def _text(name: str) -> str:
    return (REQUIREMENTS / name).read_text(encoding="utf-8")


def _requirements(group: str) -> list[Requirement]:
    if group == "runtime":
        lines = PYPROJECT["project"]["dependencies"]
    elif group == "build":
        lines = PYPROJECT["build-system"]["requires"]
    else:
        lines = PYPROJECT["project"]["optional-dependencies"][group]
    return [Requirement(line) for line in lines]


def _pinned_blocks(text: str) -> list[str]:
    """Each pin with its continuation lines (the hashes)."""
    blocks: list[str] = []
    for line in text.splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            blocks.append(line)
        elif blocks and line.startswith("    --hash="):
            blocks[-1] += "\n" + line
    return blocks


GROUPS = ["runtime", "build", *PYPROJECT["project"]["optional-dependencies"]]


@pytest.mark.parametrize("group", GROUPS)
def test_every_requirement_of_pyproject_is_locked_within_its_range(group: str) -> None:
    pins = locked(_text("lock.txt"))
    for requirement in _requirements(group):
        if requirement.marker is not None and not requirement.marker.evaluate(LOCK_ENV):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements/lock.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{requirement} but the lock has {name}=={pins[name]}: run `make lock`"
        )


@pytest.mark.parametrize("name", ["lock.txt", "runtime.txt", "build.txt"])
def test_every_pin_is_exact_and_hashed(name: str) -> None:
    blocks = _pinned_blocks(_text(name))
    assert blocks
    for block in blocks:
        first = block.splitlines()[0]
        assert "==" in first, first
        assert "--hash=sha256:" in block, f"{name}: {first} has no hash"


@pytest.mark.parametrize(("name", "group"), [("runtime.txt", "runtime"), ("build.txt", "build")])
def test_the_images_files_are_cut_from_the_lock(name: str, group: str) -> None:
    lock = locked(_text("lock.txt"))
    cut = locked(_text(name))
    for requirement in _requirements(group):
        assert canonicalize_name(requirement.name) in cut, f"{requirement.name} missing from {name}"
    for package, version in cut.items():
        if package in lock:  # packages only other platforms need (e.g. colorama) are not in the lock
            assert lock[package] == version, f"{name} has {package}=={version}, the lock {lock[package]}"


def test_the_runtime_file_holds_no_test_tool() -> None:
    runtime = locked(_text("runtime.txt"))
    for tool in ("pytest", "mypy", "ruff", "locust", "hypothesis", "uv"):
        assert tool not in runtime


def test_make_installs_from_the_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    install = makefile[makefile.index("$(STAMP): ") : makefile.index("venv: ")]
    assert "pip install --quiet --require-hashes -r $(LOCK)" in install
    assert (
        "pip install --quiet --require-hashes -r requirements/runtime.txt -r requirements/build.txt"
        in install
    )
    assert install.count("--no-deps --no-build-isolation -e .") == 2
    assert "run: $(RUNTIME_STAMP)" in makefile
    assert "LOCK := requirements/lock.txt" in makefile
    assert not re.search(r"pip install[^\n]*'\.\[", makefile), "an unpinned extras install is left"


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test " in readme.split("\n## ", 1)[0]
    assert re.search(r"^make test$", ci, re.MULTILINE)


def test_the_coverage_floor_is_committed() -> None:
    """`make test` reads .coverage-floor; a lost file only shows at the very end of a green run."""
    floor = (ROOT / ".coverage-floor").read_text(encoding="utf-8").strip()
    assert float(floor) >= 95, "the floor only goes up"
