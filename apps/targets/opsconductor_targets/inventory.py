"""Ansible inventories (INI and YAML) and CSV, parsed into target specs (export.py writes them).

Hosts become targets named by their inventory name; the groups a host belongs to (directly or
through `children`) become its tags; `ansible_host`, `ansible_port`, `ansible_user`,
`ansible_connection=winrm` and the `ansible_winrm_*` options map onto the target. Variables
merge as Ansible merges them: `all`, then groups from the outermost in, then the host's own.
A password (`ansible_password`, `ansible_ssh_pass`) is taken as the target's credential and
encrypted; exports never contain one.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

FORMATS = ("ini", "yaml", "csv")
CSV_COLUMNS = ("name", "host", "port", "protocol", "username", "tags", "os", "description",
               "password", "winrm_transport", "winrm_scheme", "winrm_verify_tls")
# Written by the export for reference, ignored on import (a pin is approved, not imported).
CSV_INFO_COLUMNS = ("host_key_fingerprint",)
_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::(\d+))?\]")
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_IMPLICIT_GROUPS = ("all", "ungrouped")
_MAX_DEPTH = 32
_UNSUPPORTED_KEY_VARS = ("ansible_ssh_private_key_file", "ansible_private_key_file")


class InventoryError(ValueError):
    """The file cannot be read; `errors` maps a place (line, host) to what is wrong."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("the inventory has errors")
        self.errors = errors


@dataclass
class HostSpec:
    """One target as the file describes it; None means "not said" (keep what is there)."""

    name: str
    host: str | None = None
    port: int | str | None = None
    protocol: str | None = None
    username: str | None = None
    tags: list[str] | None = None  # None: the file says nothing about tags (CSV without the column)
    os: str | None = None
    description: str | None = None
    password: str | None = field(default=None, repr=False)
    winrm_transport: str | None = None
    winrm_scheme: str | None = None
    winrm_verify_tls: bool | None = None
    where: str = ""


@dataclass
class _Group:
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: set[str] = field(default_factory=set)
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Inventory:
    groups: dict[str, _Group] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # hosts in first-seen order
    where: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    max_hosts: int = 10_000

    def group(self, name: str) -> _Group:
        return self.groups.setdefault(name, _Group())

    def add_host(self, group: str, name: str, variables: dict[str, Any], where: str) -> None:
        if name not in self.where:
            if len(self.order) >= self.max_hosts:
                raise InventoryError({"file": f"more than {self.max_hosts} hosts"})
            self.order.append(name)
            self.where[name] = where
        self.group(group).hosts.setdefault(name, {}).update(variables)


def detect_format(text: str, content_type: str | None = None) -> str:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in ("text/csv", "application/csv"):
        return "csv"
    if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
        return "yaml"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return "ini"
    first = lines[0]
    if first == "---" or re.match(r"^[A-Za-z0-9_.-]+:\s*$", first):
        return "yaml"
    if first.lower().startswith("name,") or first.lower().startswith('"name"'):
        return "csv"
    return "ini"


# --- parsing ---------------------------------------------------------------------------------

def expand_pattern(pattern: str) -> list[str]:
    """Ansible host ranges: `web[01:03].example.com`, `db-[a:c]`, `n[0:10:5]`."""
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    start, end, step_text = match.group(1), match.group(2), match.group(3)
    step = int(step_text) if step_text else 1
    if step < 1:
        raise ValueError("a range step must be positive")
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        values = [str(n).zfill(width) for n in range(int(start), int(end) + 1, step)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        values = [chr(c) for c in range(ord(start), ord(end) + 1, step)]
    else:
        raise ValueError(f"not a host range: [{start}:{end}]")
    if not values:
        raise ValueError("the host range is empty")
    if len(values) > 100_000:
        raise ValueError("the host range is too large")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [name for value in values for name in expand_pattern(head + value + tail)]


def _ini_value(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_ini(text: str, *, max_hosts: int = 10_000) -> _Inventory:
    inv = _Inventory(max_hosts=max_hosts)
    inv.group("all")
    inv.group("ungrouped")
    group, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"line {number}"
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                inv.errors[where] = "a section header ends with ']'"
                continue
            name, _, kind = line[1:-1].strip().partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children") or not _GROUP.match(name):
                inv.errors[where] = "not a group header ([name], [name:vars], [name:children])"
                group, kind = "ungrouped", "invalid"
                continue
            group = name
            inv.group(group)
            continue
        if kind == "invalid":
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            inv.errors[where] = "unbalanced quotes"
            continue
        if not tokens:
            continue
        if kind == "children":
            if not _GROUP.match(tokens[0]):
                inv.errors[where] = "not a group name"
                continue
            inv.group(group).children.add(tokens[0])
            inv.group(tokens[0])
        elif kind == "vars":
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                inv.errors[where] = "a group variable is key=value"
                continue
            inv.group(group).vars[key.strip()] = _ini_value(value)
        else:
            variables: dict[str, Any] = {}
            for token in tokens[1:]:
                key, sep, value = token.partition("=")
                if not sep or not key:
                    inv.errors[where] = f"expected key=value, got {token[:40]!r}"
                    break
                variables[key] = value
            try:
                names = expand_pattern(tokens[0])
            except ValueError as exc:
                inv.errors[where] = str(exc)
                continue
            for name in names:
                inv.add_host(group, name, variables, where)
    return inv


def parse_yaml(text: str, *, max_hosts: int = 10_000) -> _Inventory:
    inv = _Inventory(max_hosts=max_hosts)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f"line {mark.line + 1}" if mark is not None else "file"
        raise InventoryError({place: "not valid YAML"}) from None
    if data is None:
        return inv
    if not isinstance(data, dict):
        raise InventoryError({"file": "a YAML inventory is a mapping of groups"})
    inv.group("all")
    inv.group("ungrouped")
    seen: set[int] = set()

    def walk(name: Any, body: Any, depth: int) -> None:
        if not isinstance(name, str) or not _GROUP.match(name):
            inv.errors[f"group {str(name)[:40]!r}"] = "not a group name"
            return
        if depth > _MAX_DEPTH:
            inv.errors[f"group {name}"] = "groups nest too deeply"
            return
        group = inv.group(name)
        if body is None:
            return
        if not isinstance(body, dict):
            inv.errors[f"group {name}"] = "a group is a mapping (hosts, children, vars)"
            return
        if id(body) in seen:  # YAML aliases can repeat (or loop) a group
            return
        seen.add(id(body))
        unknown = set(body) - {"hosts", "children", "vars"}
        if unknown:
            inv.errors[f"group {name}"] = f"unknown keys: {', '.join(sorted(map(str, unknown)))}"
        variables = body.get("vars") or {}
        if not isinstance(variables, dict):
            inv.errors[f"group {name}"] = "vars is a mapping"
        else:
            group.vars.update({str(k): v for k, v in variables.items()})
        hosts = body.get("hosts") or {}
        if not isinstance(hosts, dict):
            inv.errors[f"group {name}"] = "hosts is a mapping of host names"
            hosts = {}
        for pattern, host_vars in hosts.items():
            where = f"host {str(pattern)[:60]}"
            if host_vars is not None and not isinstance(host_vars, dict):
                inv.errors[where] = "host variables are a mapping"
                continue
            try:
                names = expand_pattern(str(pattern))
            except ValueError as exc:
                inv.errors[where] = str(exc)
                continue
            for host in names:
                inv.add_host(name, host, {str(k): v for k, v in (host_vars or {}).items()}, where)
        children = body.get("children") or {}
        if not isinstance(children, dict):
            inv.errors[f"group {name}"] = "children is a mapping of groups"
            return
        for child, child_body in children.items():
            if isinstance(child, str) and _GROUP.match(child):
                group.children.add(child)
            walk(child, child_body, depth + 1)

    for name, body in data.items():
        walk(name, body, 0)
    return inv


def _depths(inv: _Inventory) -> dict[str, int]:
    """Each group's distance from `all` (longest path), so outer groups' vars apply first."""
    depth = {name: 0 for name in inv.groups}
    for _ in range(_MAX_DEPTH):
        changed = False
        for name, group in inv.groups.items():
            for child in group.children:
                if child in depth and depth[child] < depth[name] + 1 and child != "all":
                    depth[child] = depth[name] + 1
                    changed = True
        if not changed:
            break
    return depth


def _memberships(inv: _Inventory) -> dict[str, set[str]]:
    """host -> every group it belongs to, directly or through children."""
    parents: dict[str, set[str]] = {}
    for name, group in inv.groups.items():
        for child in group.children:
            parents.setdefault(child, set()).add(name)
    members: dict[str, set[str]] = {}
    for name, group in inv.groups.items():
        for host in group.hosts:
            found = members.setdefault(host, set())
            stack = [name]
            while stack:
                current = stack.pop()
                if current in found:
                    continue
                found.add(current)
                stack.extend(parents.get(current, ()))
    return members


def _first(variables: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in variables and variables[name] is not None:
            return variables[name]
    return None


def _spec_from_vars(name: str, groups: Iterable[str], variables: dict[str, Any], where: str,
                    warnings: list[str]) -> HostSpec:
    spec = HostSpec(name=name, where=where)
    spec.tags = sorted(g.lower() for g in groups if g not in _IMPLICIT_GROUPS)
    host = _first(variables, "ansible_host", "ansible_ssh_host")
    spec.host = str(host) if host is not None else name
    spec.port = _first(variables, "ansible_port", "ansible_ssh_port")
    user = _first(variables, "ansible_user", "ansible_ssh_user")
    spec.username = str(user) if user is not None else None
    connection = str(_first(variables, "ansible_connection") or "ssh").lower()
    spec.protocol = {"ssh": "ssh", "smart": "ssh", "paramiko": "ssh", "winrm": "winrm",
                     "psrp": "winrm"}.get(connection, connection)
    password = _first(variables, "ansible_password", "ansible_ssh_pass", "ansible_winrm_password")
    spec.password = str(password) if password is not None else None
    if spec.protocol == "winrm":
        transport = _first(variables, "ansible_winrm_transport")
        if transport is not None:
            options = transport if isinstance(transport, list) else str(transport).split(",")
            spec.winrm_transport = str(options[0]).strip().lower() if options else None
        scheme = _first(variables, "ansible_winrm_scheme")
        spec.winrm_scheme = str(scheme).lower() if scheme is not None else None
        validation = _first(variables, "ansible_winrm_server_cert_validation")
        if validation is not None:
            spec.winrm_verify_tls = str(validation).lower() != "ignore"
    os_name = _first(variables, "opsconductor_os")
    spec.os = str(os_name) if os_name is not None else None
    description = _first(variables, "opsconductor_description")
    spec.description = str(description) if description is not None else None
    if _first(variables, *_UNSUPPORTED_KEY_VARS) is not None:
        warnings.append(f"{name}: key files are not imported; upload the key with "
                        "PUT /targets/{id}/credential")
    return spec


def specs_from_inventory(inv: _Inventory, warnings: list[str]) -> list[HostSpec]:
    if inv.errors:
        raise InventoryError(inv.errors)
    depth = _depths(inv)
    members = _memberships(inv)
    specs = []
    for host in inv.order:
        groups = members.get(host, set())
        variables: dict[str, Any] = dict(inv.groups["all"].vars)
        for group in sorted(groups - {"all"}, key=lambda g: (depth.get(g, 0), g)):
            variables.update(inv.groups[group].vars)
        for group in sorted(groups, key=lambda g: (depth.get(g, 0), g)):
            variables.update(inv.groups[group].hosts.get(host, {}))
        specs.append(_spec_from_vars(host, groups, variables, inv.where[host], warnings))
    return specs


def _cell(row: dict[str, str | None], key: str) -> str | None:
    value = (row.get(key) or "").strip()
    return value or None


def parse_csv(text: str, *, max_hosts: int = 10_000) -> list[HostSpec]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "name" not in header:
        raise InventoryError({"line 1": "the header needs at least a 'name' column"})
    unknown = set(header) - set(CSV_COLUMNS) - set(CSV_INFO_COLUMNS)
    if unknown:
        raise InventoryError({"line 1": f"unknown columns: {', '.join(sorted(unknown))}"})
    reader.fieldnames = header
    specs: list[HostSpec] = []
    errors: dict[str, str] = {}
    seen: set[str] = set()
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            errors[where] = "more cells than columns"
            continue
        name = _cell(row, "name")
        if name is None:
            if any(_cell(row, k) for k in header):
                errors[where] = "name is empty"
            continue
        if name.lower() in seen:
            errors[where] = f"{name} appears twice"
            continue
        seen.add(name.lower())
        if len(specs) >= max_hosts:
            raise InventoryError({"file": f"more than {max_hosts} hosts"})
        verify = _cell(row, "winrm_verify_tls")
        specs.append(HostSpec(
            name=name, host=_cell(row, "host") or name, port=_cell(row, "port"),
            protocol=(_cell(row, "protocol") or "").lower() or None,
            username=_cell(row, "username"),
            tags=None if "tags" not in header else [
                t for t in re.split(r"[;,\s]+", _cell(row, "tags") or "") if t],
            os=_cell(row, "os"), description=_cell(row, "description"),
            password=_cell(row, "password"), winrm_transport=_cell(row, "winrm_transport"),
            winrm_scheme=_cell(row, "winrm_scheme"),
            winrm_verify_tls=None if verify is None else verify.lower() in ("1", "true", "yes"),
            where=where))
    if errors:
        raise InventoryError(errors)
    return specs


def parse(text: str, fmt: str, *, max_hosts: int = 10_000) -> tuple[list[HostSpec], list[str]]:
    """(specs, warnings) or InventoryError."""
    warnings: list[str] = []
    if fmt == "csv":
        return parse_csv(text, max_hosts=max_hosts), warnings
    inv = parse_yaml(text, max_hosts=max_hosts) if fmt == "yaml" else parse_ini(
        text, max_hosts=max_hosts)
    return specs_from_inventory(inv, warnings), warnings
