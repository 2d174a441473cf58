"""Rules a job definition and a run's parameter values must meet (pure functions, no I/O).

`check_definition` returns findings: errors (the job cannot be saved), dangers (dangerous-command
rules; the job is saved but blocked until approved) and warnings. `run_values` types a run's
parameter values; its messages never repeat a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opsconductor_contracts.jobspec import (
    PLACEHOLDER,
    ParameterSpec,
    ParameterValue,
    StepSpec,
    placeholders,
)
from opsconductor_core.problems import InvalidInput
from opsconductor_jobs.dangerous import Policy
from opsconductor_jobs.schemas import PARAMETER_VALUE_MAX, Definition, Finding

# A program and plain arguments (`/usr/bin/env python3`, `powershell -NoProfile`): no shell syntax,
# so the interpreter field cannot carry a second command past the policy.
INTERPRETER_RE = re.compile(r"^[A-Za-z0-9_./:\\ =+-]{1,200}$")
CHOICES_MAX = 200
CHOICE_MAX = 200
_INT_TEXT = re.compile(r"^[+-]?\d{1,18}$")
_BOOL_TEXT = {"true": True, "false": False}
_FIELDS_BY_KIND = {
    "command": {"command"},
    "script": {"script", "interpreter"},
    "upload": {"content", "destination"},
}


def nul_paths(value: Any, path: str = "") -> Iterator[str]:
    """Field paths of every string holding a NUL byte (refused: no database stores it as text)."""
    if isinstance(value, str):
        if "\x00" in value:
            yield path or "body"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                yield f"{path}.{key!r}".lstrip(".")
            yield from nul_paths(item, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from nul_paths(item, f"{path}.{index}".lstrip("."))


def refuse_nul(value: Any) -> None:
    paths = list(nul_paths(value))
    if paths:
        raise InvalidInput("NUL bytes are not allowed",
                           errors={p: "NUL bytes are not allowed" for p in paths[:20]})


@dataclass
class _Findings:
    items: list[Finding] = field(default_factory=list)

    def error(self, path: str, message: str, step: str | None = None) -> None:
        self.items.append(Finding(severity="error", field=path, step=step, message=message))

    def warning(self, path: str | None, message: str, step: str | None = None) -> None:
        self.items.append(Finding(severity="warning", field=path, step=step, message=message))


def _check_steps(steps: list[StepSpec], declared: set[str], out: _Findings) -> set[str]:
    used: set[str] = set()
    seen: dict[str, int] = {}
    for index, step in enumerate(steps):
        at = f"steps.{index}"
        name = step.name.strip()
        if not name or any(ord(ch) < 32 for ch in step.name):
            out.error(f"{at}.name", "a step name needs visible characters and no control "
                                    "characters", step.name)
        elif name.lower() in seen:
            out.error(f"{at}.name", f"step {seen[name.lower()] + 1} has the same name", step.name)
        else:
            seen[name.lower()] = index
        allowed = _FIELDS_BY_KIND[step.kind]
        for other in ("command", "script", "interpreter", "content", "destination"):
            if other not in allowed and getattr(step, other) is not None:
                out.error(f"{at}.{other}", f"a {step.kind} step takes no {other}", step.name)
        if step.kind == "command" and not (step.command or "").strip():
            out.error(f"{at}.command", "a command step needs a command", step.name)
        if step.kind == "script":
            if not (step.script or "").strip():
                out.error(f"{at}.script", "a script step needs a script", step.name)
            if step.interpreter is not None and not INTERPRETER_RE.match(step.interpreter):
                out.error(f"{at}.interpreter", "an interpreter is a program path and plain "
                          "arguments (no quotes, variables or shell symbols)", step.name)
        if step.kind == "upload":
            if step.content is None:
                out.error(f"{at}.content", "an upload step needs content (may be empty)",
                          step.name)
            if not (step.destination or "").strip():
                out.error(f"{at}.destination", "an upload step needs a destination path",
                          step.name)
            elif PLACEHOLDER.search(step.destination or ""):
                out.warning(f"{at}.destination", "parameters are not replaced in an upload's "
                            "destination; it is taken literally", step.name)
        for key in ("command", "script"):
            text = getattr(step, key)
            if step.kind != key or text is None:
                continue
            names = placeholders(text)
            used |= names
            for missing in sorted(names - declared):
                out.error(f"{at}.{key}", f"{{{{ {missing} }}}} is not a declared parameter",
                          step.name)
    return used


def _check_default(spec: ParameterSpec) -> str | None:
    default = spec.default
    if default is None:
        return None
    if spec.type == "secret":
        return "a secret parameter may not have a stored default (give the value at run time)"
    if spec.type == "int" and (isinstance(default, bool) or not isinstance(default, int)):
        return "the default of an int parameter is a whole number"
    if spec.type == "bool" and not isinstance(default, bool):
        return "the default of a bool parameter is true or false"
    if spec.type in ("string", "choice") and not isinstance(default, str):
        return f"the default of a {spec.type} parameter is text"
    if isinstance(default, str) and len(default) > PARAMETER_VALUE_MAX:
        return f"at most {PARAMETER_VALUE_MAX} characters"
    if spec.type == "choice" and spec.choices and default not in spec.choices:
        return "the default is not one of the choices"
    return None


def _check_parameters(parameters: list[ParameterSpec], out: _Findings) -> set[str]:
    declared: set[str] = set()
    for index, spec in enumerate(parameters):
        at = f"parameters.{index}"
        if spec.name in declared:
            out.error(f"{at}.name", f"{spec.name!r} is declared twice")
        declared.add(spec.name)
        if spec.type == "choice":
            choices = spec.choices or []
            if not choices:
                out.error(f"{at}.choices", "a choice parameter needs choices")
            elif len(choices) > CHOICES_MAX:
                out.error(f"{at}.choices", f"at most {CHOICES_MAX} choices")
            elif len(set(choices)) != len(choices):
                out.error(f"{at}.choices", "each choice once")
            elif any(not c or len(c) > CHOICE_MAX for c in choices):
                out.error(f"{at}.choices", f"each choice is 1 to {CHOICE_MAX} characters")
        elif spec.choices is not None:
            out.error(f"{at}.choices", "only choice parameters take choices")
        problem = _check_default(spec)
        if problem:
            out.error(f"{at}.default", problem)
    return declared


def check_definition(definition: Definition, policy: Policy) -> list[Finding]:
    out = _Findings()
    declared = _check_parameters(definition.parameters, out)
    used = _check_steps(definition.steps, declared, out)
    for index, spec in enumerate(definition.parameters):
        if spec.name not in used:
            out.warning(f"parameters.{index}", f"{spec.name!r} is used by no step")
    if definition.targets.empty:
        out.warning("targets", "no targets selected: every run must name its targets")
    job_timeout = definition.timeout_s
    for index, step in enumerate(definition.steps):
        if job_timeout and step.timeout_s and step.timeout_s > job_timeout:
            out.warning(f"steps.{index}.timeout_s", "longer than the job's timeout", step.name)
    for hit in policy.hits(definition.steps):
        for rule in hit.rules:
            out.items.append(Finding(severity="danger", step=hit.step, field=hit.field,
                                     rule=rule.id, message=rule.description))
    return out.items


def raise_errors(findings: list[Finding]) -> None:
    errors: dict[str, str] = {}
    for finding in findings:
        if finding.severity == "error":
            errors.setdefault(finding.field or "body", finding.message)
    if errors:
        raise InvalidInput("The job definition is not valid", errors=errors)


@dataclass
class RunValues:
    values: dict[str, ParameterValue]
    # Never stored, logged or returned: only handed to the executor.
    secret_values: dict[str, str] = field(repr=False)

    def all(self) -> dict[str, ParameterValue]:
        return {**self.values, **self.secret_values}


def _typed(spec: ParameterSpec, raw: ParameterValue) -> ParameterValue:
    """The value as the parameter's type, or ValueError (whose text never quotes the value)."""
    if spec.type == "int":
        if isinstance(raw, bool):
            raise ValueError("expected a whole number")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and _INT_TEXT.match(raw.strip()):
            return int(raw.strip())
        raise ValueError("expected a whole number")
    if spec.type == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[raw.strip().lower()]
        raise ValueError("expected true or false")
    if not isinstance(raw, str):
        raise ValueError("expected text")
    if "\x00" in raw:
        raise ValueError("NUL bytes are not allowed")
    if spec.type == "choice" and raw not in (spec.choices or []):
        raise ValueError("not one of the choices: " + ", ".join(spec.choices or []))
    return raw


def run_values(specs: list[ParameterSpec], given: Mapping[str, ParameterValue]) -> RunValues:
    """Typed values of every declared parameter: given, else the default, else (when optional)
    the empty string; secret ones apart."""
    errors: dict[str, str] = {}
    known = {spec.name for spec in specs}
    for name in given:
        if name not in known:
            errors[f"parameters.{name}"] = "not a parameter of this job"
    values: dict[str, ParameterValue] = {}
    secrets: dict[str, str] = {}
    for spec in specs:
        raw = given.get(spec.name, spec.default)
        value: ParameterValue = ""  # no value: the empty string (refused when required)
        if raw is not None and raw != "":
            try:
                value = _typed(spec, raw)
            except ValueError as exc:
                errors[f"parameters.{spec.name}"] = str(exc)
                continue
        if spec.required and value == "":
            errors[f"parameters.{spec.name}"] = "required"
            continue
        if spec.type == "secret":
            secrets[spec.name] = str(value)
        else:
            values[spec.name] = value
    if errors:
        raise InvalidInput("The parameter values are not valid", errors=errors)
    return RunValues(values=values, secret_values=secrets)
