"""docker-compose.yml read the way Compose reads it: YAML anchors and merge keys resolved,
``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` filled in from an env file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines; single or double quotes around a value are removed."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def referenced_variables(text: str) -> set[str]:
    return {m["name"] for m in _VARIABLE.finditer(text)}


def required_variables(text: str) -> set[str]:
    return {m["name"] for m in _VARIABLE.finditer(text) if m["op"] in {":?", "?"}}


def _interpolate(value: str, env: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        found = env.get(name)
        if op in {":-", "-"}:
            unset = found is None or (op == ":-" and found == "")
            return arg if unset else str(found)
        if op in {":?", "?"} and (found is None or (op == ":?" and found == "")):
            raise MissingVariable(f"{name}: {arg}")
        return found or ""

    return _VARIABLE.sub(fill, value.replace("$$", "\x00")).replace("\x00", "$")


def _walk(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, str):
        return _interpolate(node, env)
    return node


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    resolved: dict[str, Any] = _walk(raw, env)
    return resolved


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def networks(service: dict[str, Any]) -> set[str]:
    found = service.get("networks") or []
    return set(found if isinstance(found, list) else found.keys())
