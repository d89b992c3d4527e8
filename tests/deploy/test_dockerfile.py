"""The Dockerfile and .dockerignore, checked without Docker (which cannot run here).

The structure is parsed and asserted (multi-stage, slim base, non-root numeric user, entrypoint, no build
tools in the final stage), .dockerignore is evaluated with Docker's own matching rules, and the wheel the
builder stage makes is built from exactly the files the build context would contain.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from gateway import settings as gateway_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHART_VALUES = ROOT / "deploy" / "helm" / "opamp-gateway" / "values.yaml"

# What a final image must not install or run: compilers, build systems, package installs.
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|cc|make|build-essential|python3?-dev|libc6?-dev|apt-get|apt|apk|dnf|yum|"
    r"pip\s+install|pip\s+wheel|uv\s+pip|cargo|rustc|git)\b"
)


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for op, args in self.instructions if op == instruction]


def instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile lines joined over backslash continuations, comments and blank lines dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert current == "", "the Dockerfile ends inside a continued line"
    result = []
    for line in logical:
        op, _, args = line.partition(" ")
        result.append((op.upper(), args.strip()))
    return result


def stages() -> list[Stage]:
    args: dict[str, str] = {}
    found: list[Stage] = []
    for op, rest in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if op == "ARG" and not found:
            key, _, default = rest.partition("=")
            args[key] = default
        elif op == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            found.append(Stage(base=base, name=name, instructions=[]))
        else:
            assert found, f"{op} before the first FROM"
            found[-1].instructions.append((op, rest))
    return found


def test_it_is_a_multi_stage_build_on_the_slim_python_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        assert stage.base.startswith("python:3.11-slim"), stage.base
    assert all_stages[0].name == "builder"


def test_the_builder_makes_a_wheel_and_installs_it_into_a_virtualenv() -> None:
    builder = stages()[0]
    runs = " ".join(builder.all("RUN"))
    assert re.search(r"\bpip wheel\b.*--wheel-dir /dist", runs)
    assert "python -m venv /opt/venv" in runs
    assert re.search(r"/opt/venv/bin/pip install .*/dist/\*\.whl", runs)


def test_the_builder_installs_only_the_locked_versions() -> None:
    builder = stages()[0]
    runs = " ".join(builder.all("RUN"))
    assert "requirements/runtime.txt requirements/build.txt ./requirements/" in builder.all("COPY")[0]
    assert re.search(r"/opt/venv/bin/pip install --require-hashes [^&]*-r requirements/runtime\.txt", runs)
    assert re.search(r"pip install --require-hashes [^&]*-r requirements/build\.txt", runs)
    # The project wheel itself is the only thing installed without the lock, and without its deps.
    assert re.search(r"/opt/venv/bin/pip install --no-deps /dist/\*\.whl", runs)
    assert "--no-build-isolation" in runs


def test_the_final_stage_copies_the_virtualenv_and_has_no_build_tools() -> None:
    final = stages()[-1]
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"], "only the built virtualenv enters the image"
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run), run
    env = " ".join(final.all("ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env


def test_the_final_stage_runs_as_the_charts_non_root_numeric_user() -> None:
    final = stages()[-1]
    [user] = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert gid.isdigit() and int(gid) > 0
    runs = " ".join(final.all("RUN"))
    assert f"--uid {uid}" in runs and f"--gid {gid}" in runs
    chart = yaml.safe_load(CHART_VALUES.read_text(encoding="utf-8"))
    assert chart["podSecurityContext"]["runAsUser"] == int(uid)
    assert chart["podSecurityContext"]["runAsGroup"] == int(gid)
    assert [op for op, _ in final.instructions][-1] == "ENTRYPOINT"
    assert [op for op, _ in final.instructions].index("USER") > max(
        i for i, (op, _) in enumerate(final.instructions) if op in ("RUN", "COPY")
    ), "USER comes after everything that needs root"


def test_the_entrypoint_is_opamp_gateway_serve_in_exec_form() -> None:
    final = stages()[-1]
    [entrypoint] = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["opamp-gateway", "serve"]
    assert final.all("CMD") == []


def test_the_exposed_ports_are_the_gateways() -> None:
    [expose] = stages()[-1].all("EXPOSE")
    defaults = gateway_settings.Settings()
    assert sorted(int(p) for p in expose.split()) == sorted([defaults.port, defaults.admin_port])


# --- .dockerignore, with Docker's matching rules (moby/patternmatcher) ------------------------------


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's glob: `*` and `?` stay within a path segment, `**` crosses segments."""
    out = "^"
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + "$")


def ignore_rules() -> list[tuple[bool, str, re.Pattern[str]]]:
    """(is an exception, cleaned pattern, regex) for each line of .dockerignore."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((exception, pattern, pattern_regex(pattern)))
    return rules


def is_ignored(path: str) -> bool:
    """The last rule matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for exception, _, regex in ignore_rules():
        if any(regex.match(c) for c in candidates):
            ignored = not exception
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/deploy/test_chart.py",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/gateway/settings.meta.json",
        ".ruff_cache/content",
        ".hypothesis/examples/x",
        ".coverage",
        "gateway/__pycache__/settings.cpython-311.pyc",
        "gateway/store/__pycache__/base.cpython-311.pyc",
        "opamp-gateway.db",
        "opamp-gateway.db-wal",
        "opamp-gateway.db-writer.lock",
        "gateway/store/leftover.db",
        "deploy/helm/opamp-gateway/values.yaml",
        "docs/deployment.md",
        "Dockerfile",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert is_ignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "gateway/__init__.py",
        "gateway/settings.py",
        "gateway/py.typed",
        "gateway/proto/opamp_pb2.py",
        "requirements/runtime.txt",
        "requirements/build.txt",
        "gateway/proto/opamp_pb2.pyi",
    ],
)
def test_dockerignore_lets_in(path: str) -> None:
    assert not is_ignored(path)


def build_context(destination: Path) -> list[str]:
    """Copy the files Docker would send as the build context; return their paths."""
    exceptions = [pattern for exception, pattern, _ in ignore_rules() if exception]
    files = []
    for directory, subdirectories, names in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # Skip ignored directories that no exception pattern reaches into (as Docker does).
        subdirectories[:] = [
            d
            for d in subdirectories
            if not is_ignored(prefix + d) or any(p.startswith(prefix + d + "/") for p in exceptions)
        ]
        for name in names:
            path = prefix + name
            if not is_ignored(path):
                target = destination / path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, target)
                files.append(path)
    return files


def copy_sources() -> list[str]:
    sources = []
    for args in stages()[0].all("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def test_everything_the_builder_copies_is_in_the_build_context(tmp_path: Path) -> None:
    context = build_context(tmp_path)
    for source in copy_sources():
        assert source in context or any(f.startswith(source.rstrip("/") + "/") for f in context), source


@pytest.mark.skipif(importlib.util.find_spec("hatchling") is None, reason="needs hatchling (build backend)")
def test_the_wheel_builds_from_the_build_context(tmp_path: Path) -> None:
    context = tmp_path / "context"
    build_context(context)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            "dist",
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (context / "dist").glob("opamp_gateway-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "opamp-gateway = gateway.cli:main" in archive.read(entry_points).decode()
    assert "gateway/settings.py" in names
    assert "gateway/proto/opamp_pb2.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n or n.endswith(".db")]
