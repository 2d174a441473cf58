"""The rules without HTTP: definition findings and a run's parameter values."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from opsconductor_contracts.jobspec import ParameterSpec, StepSpec
from opsconductor_core.problems import InvalidInput
from opsconductor_core.security import Principal
from opsconductor_jobs.checks import check_definition, nul_paths, run_values
from opsconductor_jobs.dangerous import BUILTIN_RULES, Policy
from opsconductor_jobs.schemas import Definition
from opsconductor_jobs.service import argument_view, is_admin, scoped_idempotency_key

POLICY = Policy(BUILTIN_RULES)


def definition(**fields: Any) -> Definition:
    fields.setdefault("steps", [StepSpec(name="a", kind="command", command="uptime")])
    fields.setdefault("targets", {"tags": ["web"]})
    return Definition.model_validate(fields)


class TestDefinition:
    def test_placeholders_in_commands_and_scripts_must_be_declared(self) -> None:
        findings = check_definition(definition(
            steps=[StepSpec(name="a", kind="command", command="echo {{ a }} {{b}}"),
                   StepSpec(name="s", kind="script", script="echo {{ c }}\n")],
            parameters=[ParameterSpec(name="a")]), POLICY)
        errors = [(f.field, f.message) for f in findings if f.severity == "error"]
        assert errors == [("steps.0.command", "{{ b }} is not a declared parameter"),
                          ("steps.1.script", "{{ c }} is not a declared parameter")]

    def test_upload_destination_is_literal(self) -> None:
        findings = check_definition(definition(
            steps=[StepSpec(name="u", kind="upload", content="{{ jinja }}",
                            destination="/etc/{{ x }}.conf")]), POLICY)
        assert [(f.severity, f.field) for f in findings] == [("warning", "steps.0.destination")]

    def test_a_clean_definition_has_no_findings(self) -> None:
        assert check_definition(definition(
            steps=[StepSpec(name="a", kind="command", command="echo {{ who }}")],
            parameters=[ParameterSpec(name="who", default="world")]), POLICY) == []


class TestRunValues:
    SPECS = [ParameterSpec(name="n", type="int", default=2), ParameterSpec(name="b", type="bool"),
             ParameterSpec(name="pw", type="secret", required=True),
             ParameterSpec(name="c", type="choice", choices=["x", "y"])]

    def test_types_defaults_and_secrets(self) -> None:
        result = run_values(self.SPECS, {"b": False, "pw": "hunter2-value", "c": "y"})
        assert result.values == {"n": 2, "b": False, "c": "y"}
        assert result.secret_values == {"pw": "hunter2-value"}
        assert "hunter2-value" not in repr(result)
        assert run_values(self.SPECS, {"n": "-7", "b": "false", "pw": "p"}).values == {
            "n": -7, "b": False, "c": ""}

    def test_errors_never_repeat_the_value(self) -> None:
        with pytest.raises(InvalidInput) as caught:
            run_values(self.SPECS, {"n": "1e9-secretish", "b": "secretish", "pw": 12,
                                    "c": "secretish", "zz": "secretish"})
        errors = caught.value.errors or {}
        assert set(errors) == {"parameters.n", "parameters.b", "parameters.pw", "parameters.c",
                               "parameters.zz"}
        assert "secretish" not in str(errors) and "12" not in errors["parameters.pw"]


class TestHelpers:
    def test_nul_paths(self) -> None:
        assert list(nul_paths({"a": ["ok", "b\x00"], "c": {"d": "\x00"}})) == ["a.1", "c.d"]

    def test_admin(self) -> None:
        assert is_admin(Principal(subject="u", username="u", roles=("admin",)))
        assert is_admin(Principal(subject="u", username="u", permissions=frozenset(
            {"jobs:read", "jobs:write", "jobs:run", "jobs:approve_dangerous"})))
        assert not is_admin(Principal(subject="u", username="u", roles=("operator",),
                                      permissions=frozenset({"jobs:read", "jobs:write",
                                                             "jobs:run"})))

    def test_argument_view(self) -> None:
        assert argument_view("/dev/sda") == "/dev/sda"
        assert argument_view("C:\\") == "C:\\"
        assert argument_view("a b") == argument_view("; reboot") == "__value__"

    def test_idempotency_keys_are_scoped(self) -> None:
        alice = Principal(subject="alice", username="a")
        bob = Principal(subject="bob", username="b")
        job = uuid.uuid4()
        assert scoped_idempotency_key(alice, job, "k") == scoped_idempotency_key(alice, job, "k")
        assert scoped_idempotency_key(alice, job, "k") != scoped_idempotency_key(bob, job, "k")
        assert scoped_idempotency_key(alice, job, "k") != scoped_idempotency_key(
            alice, uuid.uuid4(), "k")
        assert len(scoped_idempotency_key(alice, job, "x" * 200)) <= 200
