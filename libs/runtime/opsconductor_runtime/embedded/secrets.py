"""Secrets from a local JSON key file (mode 0600), created on first start."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from opsconductor_runtime.interface import SecretNotFound

SecretFactory = Callable[[], str]


def ensure_secret_file(path: Path, factories: Mapping[str, SecretFactory]) -> list[str]:
    """Create the file if needed and add any missing secrets; returns the names it created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, str] = {}
    if path.exists():
        current = json.loads(path.read_text() or "{}")
    missing = [name for name in factories if name not in current]
    if missing or not path.exists():
        for name in missing:
            current[name] = factories[name]()
        write_secret_file(path, current)
    return missing


def write_secret_file(path: Path, secrets: Mapping[str, str]) -> None:
    """Atomic replace; the file never exists with wider permissions than 0600."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(secrets), handle)
    os.replace(tmp, path)


class LocalFileSecretStore:
    """Re-reads the file when it changes, so a rotated key is picked up while running."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, str] = {}
        self._version: tuple[int, int, int] | None = None

    def _refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._cache, self._version = {}, None
            return
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.chmod(self.path, 0o600)
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        if version != self._version:
            self._cache = json.loads(self.path.read_text() or "{}")
            self._version = version

    def get(self, key: str) -> str:
        self._refresh()
        try:
            return self._cache[key]
        except KeyError:
            raise SecretNotFound(key) from None
