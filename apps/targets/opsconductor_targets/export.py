"""Exports of the inventory: CSV, and Ansible YAML and INI (tags become groups).

Built from `ExportRow`, which has no secret field: an export cannot carry a password or a key.
The formats read back through `inventory.parse` to the same targets (round trip).
"""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from opsconductor_targets.inventory import CSV_COLUMNS, CSV_INFO_COLUMNS


@dataclass(frozen=True)
class ExportRow:
    """A target as exported: no secret field exists here to leak."""

    name: str
    host: str
    port: int
    protocol: str
    username: str
    tags: list[str]
    os: str | None
    description: str
    winrm_transport: str | None
    winrm_scheme: str | None
    winrm_verify_tls: bool | None
    host_key_fingerprint: str | None


def _host_vars(row: ExportRow) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    if row.host != row.name:
        variables["ansible_host"] = row.host
    variables["ansible_port"] = row.port
    variables["ansible_user"] = row.username
    if row.protocol == "winrm":
        variables["ansible_connection"] = "winrm"
        variables["ansible_winrm_transport"] = row.winrm_transport or "ntlm"
        variables["ansible_winrm_scheme"] = row.winrm_scheme or "https"
        variables["ansible_winrm_server_cert_validation"] = (
            "ignore" if row.winrm_verify_tls is False else "validate")
    if row.os:
        variables["opsconductor_os"] = row.os
    if row.description:
        variables["opsconductor_description"] = row.description
    return variables


def to_csv(rows: Iterable[ExportRow]) -> str:
    out = io.StringIO()
    columns = [c for c in CSV_COLUMNS if c != "password"] + list(CSV_INFO_COLUMNS)
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({
            "name": row.name, "host": row.host, "port": row.port, "protocol": row.protocol,
            "username": row.username, "tags": ";".join(row.tags), "os": row.os or "",
            "description": row.description, "winrm_transport": row.winrm_transport or "",
            "winrm_scheme": row.winrm_scheme or "",
            "winrm_verify_tls": "" if row.winrm_verify_tls is None else str(row.winrm_verify_tls).lower(),
            "host_key_fingerprint": row.host_key_fingerprint or ""})
    return out.getvalue()


def to_yaml(rows: Iterable[ExportRow]) -> str:
    hosts: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for row in rows:
        hosts[row.name] = _host_vars(row)
        for tag in row.tags:
            children.setdefault(tag, {"hosts": {}})["hosts"][row.name] = None
    body: dict[str, Any] = {"hosts": hosts}
    if children:
        body["children"] = dict(sorted(children.items()))
    return yaml.safe_dump({"all": body}, sort_keys=False, default_flow_style=False)


def _ini_token(key: str, value: Any) -> str:
    text = str(value)
    return f"{key}={shlex.quote(text)}"


def to_ini(rows: Iterable[ExportRow]) -> str:
    lines: list[str] = ["[all]"]
    groups: dict[str, list[str]] = {}
    for row in rows:
        lines.append(" ".join([row.name, *(_ini_token(k, v) for k, v in _host_vars(row).items())]))
        for tag in row.tags:
            groups.setdefault(tag, []).append(row.name)
    for tag in sorted(groups):
        lines += ["", f"[{tag}]", *groups[tag]]
    return "\n".join(lines) + "\n"
