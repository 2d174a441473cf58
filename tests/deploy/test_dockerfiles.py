"""Every app's Dockerfile, checked without a Docker engine: pinned base images, a non-root user,
only the app's own workspace package installed from the lock file, a command that starts the
app's real factory, and build inputs that exist and cover what the package depends on."""

from __future__ import annotations

import ast
import json
import logging.config
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from opsconductor_platform.dapr_mode import APP_SERVER_OPTIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO_ROOT / "apps").glob("*/Dockerfile"))
APP_PORT = "8000"
# An exact release: 3.11.14, 0.13.9 (optionally with a variant suffix), or a digest.
PINNED_TAG = re.compile(r"^\d+\.\d+\.\d+(-[a-z0-9.-]+)?$")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(text: str) -> list[Stage]:
    """Dockerfile instructions grouped by stage (line continuations joined, comments and the
    parser directive dropped)."""
    stages: list[Stage] = []
    logical, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        else:
            raise ValueError(f"{keyword} before the first FROM")
    return stages


def workspace_dependencies(package: str) -> dict[str, Path]:
    """package -> its directory, for `package` and every workspace member it needs (uv.lock)."""
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    by_name = {p["name"]: p for p in lock["package"]}
    found: dict[str, Path] = {}
    todo = [package]
    while todo:
        name = todo.pop()
        source = by_name[name]["source"]
        path = source.get("editable") or source.get("directory") or source.get("virtual")
        if path is None or name in found:
            continue
        found[name] = REPO_ROOT / path
        todo.extend(d["name"] for d in by_name[name].get("dependencies", []))
    return found


def all_dependencies(package: str) -> set[str]:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    by_name = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(d["name"] for d in by_name[name].get("dependencies", []))
    return seen


def defines(path: Path, function: str) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == function for node in tree.body)


def problems(dockerfile: Path, text: str | None = None) -> list[str]:
    """What is wrong with the Dockerfile of the app in `dockerfile.parent` (text overrides the
    file's content, for the checks' own tests)."""
    app = dockerfile.parent.name
    app_dir = dockerfile.parent
    package = tomllib.loads((app_dir / "pyproject.toml").read_text())["project"]["name"]
    module = f"opsconductor_{app}"
    found: list[str] = []
    stages = parse(dockerfile.read_text() if text is None else text)
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names:
            continue
        image, _, tag = stage.image.partition(":")
        if "@sha256:" not in stage.image and not PINNED_TAG.match(tag):
            found.append(f"base image {stage.image} is not pinned to a release")
        if image == "python" and not re.match(r"3\.11(\.|-|$)", tag):
            found.append(f"base image {stage.image} is not Python 3.11")
    final = stages[-1]
    users = [rest for keyword, rest in final.instructions if keyword == "USER"]
    if not users:
        found.append("the final stage sets no USER (runs as root)")
    elif users[-1].split(":")[0] in ("0", "root"):
        found.append(f"the final stage runs as {users[-1]}")
    # Build inputs: the sources of every COPY from the build context exist, and the workspace
    # members the package depends on are all copied in.
    copied: list[Path] = []
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword != "COPY" or "--from=" in rest:
                continue
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            for source in words[:-1]:
                path = (REPO_ROOT / source).resolve()
                copied.append(path)
                if not path.exists():
                    found.append(f"COPY source {source} does not exist")
    for member, directory in workspace_dependencies(package).items():
        if not any(directory.resolve().is_relative_to(c) for c in copied):
            found.append(f"{member} ({directory.relative_to(REPO_ROOT)}) is not copied in")
    runs = " ; ".join(rest for s in stages for keyword, rest in s.instructions if keyword == "RUN")
    sync = re.search(r"uv sync ([^;&]*)", runs)
    if sync is None:
        found.append("no `uv sync`")
    else:
        flags = sync.group(1).split()
        if f"--package {package}" not in " ".join(flags):
            found.append(f"uv sync does not install --package {package} alone")
        for flag in ("--frozen", "--no-dev"):
            if flag not in flags:
                found.append(f"uv sync without {flag}")
    cmds = [rest for keyword, rest in final.instructions if keyword == "CMD"]
    try:
        command = json.loads(cmds[-1]) if cmds else []
    except json.JSONDecodeError:
        command = []
        found.append("CMD is not in exec form (JSON array)")
    target = f"{module}.main:create_app"
    if command[:1] != ["uvicorn"] or "--factory" not in command or target not in command:
        found.append(f"CMD does not run `uvicorn --factory {target}`")
    if " ".join(APP_SERVER_OPTIONS) not in " ".join(command):
        found.append(f"CMD does not pass the server options of Dapr mode: "
                     f"{' '.join(APP_SERVER_OPTIONS)}")
    main = app_dir / module / "main.py"
    if not main.is_file() or not defines(main, "create_app"):
        found.append(f"{main.relative_to(REPO_ROOT)} does not define create_app")
    if "uvicorn" not in all_dependencies(package):
        found.append(f"uvicorn is not among {package}'s locked dependencies")
    exposed = [rest for keyword, rest in final.instructions if keyword == "EXPOSE"]
    port = command[command.index("--port") + 1] if "--port" in command else None
    if port != APP_PORT or exposed != [APP_PORT]:
        found.append(f"the app listens on {port}, exposes {exposed}; expected {APP_PORT}")
    if "--log-config" in command:
        config_path = command[command.index("--log-config") + 1]
        sources = [shlex.split(rest) for keyword, rest in final.instructions if keyword == "COPY"]
        if not any(words[-1] == config_path for words in sources):
            found.append(f"the log config {config_path} is not copied into the image")
    return found


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.parent.name)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_there_is_a_dockerfile_per_app() -> None:
    apps = {p.parent.name for p in (REPO_ROOT / "apps").glob("*/pyproject.toml")
            if (p.parent / f"opsconductor_{p.parent.name}" / "main.py").is_file()}
    assert apps - {"platform"} <= {p.parent.name for p in DOCKERFILES}
    assert len(DOCKERFILES) >= 6


def test_the_dockerfile_builds_only_the_app_and_runs_it_unprivileged(dockerfile: Path) -> None:
    assert problems(dockerfile) == []


def test_the_image_logs_json_lines() -> None:
    config: dict[str, Any] = json.loads((REPO_ROOT / "tilt" / "logging.json").read_text())
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        formatter = root.handlers[-1].formatter
        assert formatter is not None
        record = logging.LogRecord("opsconductor.test", logging.INFO, __file__, 1, "hello", None,
                                   None)
        assert json.loads(formatter.format(record))["message"] == "hello"
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class TestTheChecksBite:
    @pytest.fixture
    def users(self) -> tuple[Path, str]:
        path = REPO_ROOT / "apps" / "users" / "Dockerfile"
        return path, path.read_text()

    def test_an_unpinned_base_image(self, users: tuple[Path, str]) -> None:
        path, text = users
        assert problems(path, text.replace("python:3.11.14-slim-bookworm AS build",
                                           "python:3.11-slim AS build")) == [
            "base image python:3.11-slim is not pinned to a release"]

    def test_running_as_root(self, users: tuple[Path, str]) -> None:
        path, text = users
        assert problems(path, text.replace("USER 10001:10001", "USER root")) == [
            "the final stage runs as root"]

    def test_a_command_for_a_module_that_does_not_exist(self, users: tuple[Path, str]) -> None:
        path, text = users
        found = problems(path, text.replace("opsconductor_users.main:create_app",
                                            "opsconductor_users.app:create_app"))
        assert found == ["CMD does not run `uvicorn --factory opsconductor_users.main:create_app`"]

    def test_an_app_server_closing_idle_connections_before_its_sidecar(
            self, users: tuple[Path, str]) -> None:
        path, text = users
        found = problems(path, text.replace(', \\\n     "--timeout-keep-alive", "120"', ""))
        assert found == ["CMD does not pass the server options of Dapr mode: "
                         + " ".join(APP_SERVER_OPTIONS)]

    def test_a_missing_workspace_member_and_a_missing_source(self,
                                                             users: tuple[Path, str]) -> None:
        path, text = users
        found = problems(path, text.replace("COPY libs/ libs/", "COPY libs/core/ libs/core/\n"
                                            "COPY libs/nonexistent/ libs/nonexistent/"))
        assert "COPY source libs/nonexistent/ does not exist" in found
        assert "opsconductor-db (libs/db) is not copied in" in found

    def test_installing_the_whole_workspace(self, users: tuple[Path, str]) -> None:
        path, text = users
        found = problems(path, text.replace("--package opsconductor-users --frozen --no-dev",
                                            "--all-packages --frozen"))
        assert found == ["uv sync does not install --package opsconductor-users alone",
                         "uv sync without --no-dev"]
