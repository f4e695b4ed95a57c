"""The Dockerfile, proven without a Docker engine: its build context (what .dockerignore
lets through and what the COPY lines take) is rebuilt in a temporary directory and installed
the way the image installs it, a regular wheel, which must hold every module, every
migration and the ``baychat`` entry point; and the image runs as a non-root user."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.deploy.compose import REPO

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            joined.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def _copied_sources() -> list[str]:
    sources = []
    for instruction, args in _instructions():
        if instruction == "COPY":
            assert not args.startswith("--from"), "single-stage image expected"
            sources.extend(args.split()[:-1])
    return sources


def _allowed_by_dockerignore() -> set[str]:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert "*" in lines, ".dockerignore should exclude everything by default"
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def test_image_is_python_311_slim_and_runs_as_a_non_root_user() -> None:
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users, "the image must switch away from root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert ("ENTRYPOINT", '["baychat"]') in instructions
    assert ("CMD", '["serve", "--host", "0.0.0.0", "--port", "8000"]') in instructions


def test_every_package_is_copied_and_let_through_dockerignore() -> None:
    sources = {source.rstrip("/") for source in _copied_sources()}
    allowed = _allowed_by_dockerignore()
    assert sources <= allowed
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= sources, "a package missing from the image"
    for needed in ("pyproject.toml", "README.md"):
        assert needed in sources


def test_the_image_install_has_every_module_migration_and_the_entry_point(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in _copied_sources():
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, context / source)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("baychat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    for package in ("protocol", "storage", "server", "loadtest"):
        for module in (REPO / package).rglob("*.py"):
            assert str(module.relative_to(REPO)) in names
    migrations = [p for p in (REPO / "storage" / "migrations").rglob("*") if p.is_file()]
    assert migrations
    for migration in migrations:
        if "__pycache__" not in migration.parts:
            assert str(migration.relative_to(REPO)) in names, "not shipped in the image"
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "baychat = server.cli:main" in text
