"""The dangerous-command policy, as data: rules that flag a step for an approver's review.

A rule is an id, a description, a regular expression (matched case-insensitively, line by line
where it anchors on `^`/`$`) and the protocol it applies to. Built-in rules are below; operators add
their own with a JSON file (`OPSC_JOBS_DANGEROUS_RULES_FILE`: a list of
`{"id", "description", "pattern", "applies_to": "ssh"|"winrm"|"both"}`). Extra rules add to the
built-in ones and may not reuse their ids (a policy file cannot switch a built-in rule off).

What is screened per step (`step_text`): a command step's command, a script step's script, an
upload step's destination (the content is data written to a file, never run by the step). The same
text is what an approval's SHA-256 covers.

The policy flags for review; it is not a sandbox. Text it cannot see (a variable expanded on the
target, a script fetched at run time) is the approver's and the target's permissions' business.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from opsconductor_contracts.jobspec import StepSpec

AppliesTo = Literal["ssh", "winrm", "both"]
RULE_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"

# Where a command starts: line start, after ; & | ( { ` $( , after then/do/else, after `sh -c "`
# (or cmd /c, powershell -Command), then any wrappers (sudo, env, nohup...) and a path (/sbin/...).
# A name quoted in an `echo` is not at a command start.
_START = (r"(?:^|[;&|({`]|\$\(|\b(?:then|do|else)\b"
          r"|\b(?:ba|da|z|k)?sh\s+(?:-\w+\s+)*-\w*c\s+['\"]?|\bcmd(?:\.exe)?\s+/c\s+['\"]?"
          r"|\b(?:powershell|pwsh)(?:\.exe)?\s+(?:-\w+\s+)*-c(?:ommand)?\s+['\"]?)\s*"
          r"(?:(?:sudo|doas|exec|nohup|env|command|time|xargs)(?:\s+-\S+)*\s+)*(?:[\w.\\/-]*[/\\])?")
# An argument that is the root, everything under it, or a top-level system directory.
_SYSTEM_DIRS = ("bin|boot|dev|etc|home|lib|lib32|lib64|opt|proc|root|sbin|srv|sys|usr|var")
_ROOT_ARG = (r"(?:[^;&|\n]*\s)?['\"]?/(?:\*|(?:" + _SYSTEM_DIRS + r")/?\*?)?['\"]?"
             r"(?=\s|$|[;&|)])")
_SAME_COMMAND = r"(?:[^;&|\n]*\s)?"
_BLOCK_DEVICE = (r"/dev/(?:sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|disk\d|rdisk\d|md\d|"
                 r"dm-\d|nbd\d|mapper/)")
_SHELL = r"(?:[\w./-]*/)?(?:ba|da|z|k|c|tc|fi)?sh\b(?![-.])"


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    pattern: str
    applies_to: AppliesTo = "both"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern, re.IGNORECASE | re.MULTILINE))

    def applies(self, protocols: Iterable[str]) -> bool:
        return self.applies_to == "both" or self.applies_to in set(protocols)

    def matches(self, text: str) -> bool:
        regex: re.Pattern[str] = self._regex  # type: ignore[attr-defined]
        return regex.search(text) is not None


BUILTIN_RULES: tuple[Rule, ...] = (
    Rule("rm-rf-root", "Recursive delete of the root file system or a top-level system directory",
         r"\brm\s+(?=" + _SAME_COMMAND + r"(?:-[a-z]*r|--recursive\b))" + _ROOT_ARG
         + r"|\brm\b[^;&|\n]*--no-preserve-root", "ssh"),
    Rule("mkfs", "Creates a file system (erases the device)",
         _START + r"(?:mkfs(?:\.[a-z0-9]+)?|mke2fs|mkswap|wipefs)(?![-.\w])", "ssh"),
    Rule("dd-block-device", "Writes onto a raw block device",
         r"\bdd\b[^;&|\n]*\bof=['\"]?" + _BLOCK_DEVICE
         + r"|(?:^|[^0-9&>])>\s*['\"]?" + _BLOCK_DEVICE
         + r"|" + _START + r"(?:shred|blkdiscard)\b[^;&|\n]*\s['\"]?" + _BLOCK_DEVICE
         + r"|\A\s*['\"]?" + _BLOCK_DEVICE, "ssh"),
    Rule("power-off", "Shuts down, reboots or halts the machine",
         _START + r"(?:shutdown|reboot|halt|poweroff)(?:\.exe)?\b(?![-.\w/])"
         + r"|" + _START + r"(?:tel)?init\s+[06]\b"
         + r"|" + _START + r"systemctl\s+(?:-\S+\s+)*(?:poweroff|reboot|halt|kexec)\b", "both"),
    Rule("fork-bomb", "A fork bomb (a function that pipes into itself in the background)",
         r"(?P<f>[a-z_:.][\w:.]*)\s*\(\)\s*\{\s*(?P=f)\s*\|\s*(?P=f)\s*&\s*;?\s*\}", "ssh"),
    Rule("chmod-777-root", "Makes the root file system or a system directory world-writable",
         r"\bchmod\s+(?=" + _SAME_COMMAND + r"(?:-[a-z]*R|--recursive\b))"
         r"(?=" + _SAME_COMMAND + r"(?:0?777|[ugoa]*[+=]rwx)(?=\s))" + _ROOT_ARG, "ssh"),
    Rule("pipe-to-shell", "Runs a downloaded script without looking at it (curl/wget into a shell)",
         r"\b(?:curl|wget|fetch)\b[^;&\n]*\|\s*(?:sudo\s+(?:-\S+\s+)*)?(?:env\s+)?" + _SHELL
         + r"|\b(?:ba|da|z|k)?sh\s+(?:-\S+\s+)*['\"]?(?:<\(|\$\()\s*(?:curl|wget)\b", "ssh"),
    Rule("format-volume", "Formats or wipes a Windows volume or disk",
         r"\b(?:Format-Volume|Clear-Disk|Initialize-Disk|Remove-Partition)\b"
         r"|(?:^|[;&|({])\s*format(?:\.com)?\s+['\"]?[a-z]:", "winrm"),
    Rule("remove-item-drive", "Recursive delete of a Windows drive root or the Windows directory",
         r"\b(?:Remove-Item|ri|rm|rmdir|rd|del|erase)\s+(?=(?:[^;|\n]*\s)?-r[a-z]*\b)"
         r"(?:[^;|\n]*?\s)?(?:-(?:Path|LiteralPath)\s+)?['\"]?"
         r"(?:[a-z]:\\?\*?|[a-z]:\\Windows\\?\*?|\$env:SystemDrive\\?\*?|\$env:SystemRoot\\?\*?)"
         r"['\"]?(?=\s|$|[;|)])"
         r"|\b(?:rd|rmdir)\s+(?:/[sq]\s+)+['\"]?[a-z]:\\?['\"]?(?=\s|$)", "winrm"),
    Rule("stop-computer", "Shuts down or restarts Windows (Stop-Computer / Restart-Computer)",
         r"\b(?:Stop-Computer|Restart-Computer)\b", "winrm"),
    Rule("download-execute-ps", "Runs downloaded PowerShell without looking at it",
         r"\b(?:iex|Invoke-Expression)\b[^;\n]*\b(?:iwr|irm|Invoke-WebRequest|Invoke-RestMethod|"
         r"DownloadString|DownloadFile)\b"
         r"|\b(?:iwr|irm|Invoke-WebRequest|Invoke-RestMethod)\b[^;\n]*\|\s*(?:iex|Invoke-Expression)\b",
         "winrm"),
)


class RuleSpec(BaseModel):
    """One rule of the operator's JSON file."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=RULE_ID)
    description: str = Field(min_length=1, max_length=300)
    pattern: str = Field(min_length=1, max_length=4000)
    applies_to: AppliesTo = "both"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class PolicyFileError(ValueError):
    """The extra-rules file is unreadable or malformed (the service refuses to start)."""


def load_rules(path: Path) -> list[Rule]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        specs = TypeAdapter(list[RuleSpec]).validate_python(raw)
    except (OSError, ValueError, ValidationError) as exc:
        raise PolicyFileError(f"dangerous-command rules file {path}: {exc}") from None
    return [Rule(s.id, s.description, s.pattern, s.applies_to) for s in specs]


@dataclass(frozen=True)
class Hit:
    """Rules one step's text matches."""

    index: int
    step: str
    field: str
    sha256: str
    rules: tuple[Rule, ...]


def step_text(step: StepSpec) -> tuple[str, str]:
    """(field, text) the policy screens and an approval covers."""
    if step.kind == "command":
        return "command", step.command or ""
    if step.kind == "script":
        return "script", step.script or ""
    return "destination", step.destination or ""


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalize(text: str) -> str:
    # Line continuations (POSIX `\`, PowerShell backtick) would split one command over lines.
    return re.sub(r"[\\`]\r?\n", " ", text)


class Policy:
    def __init__(self, rules: Sequence[Rule]) -> None:
        ids = [r.id for r in rules]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise PolicyFileError(f"dangerous-command rule ids used twice: {duplicates}")
        self.rules = tuple(rules)

    @classmethod
    def from_file(cls, path: Path | None) -> Policy:
        return cls([*BUILTIN_RULES, *(load_rules(path) if path else [])])

    def scan(self, text: str, protocols: Iterable[str] = ("ssh", "winrm")) -> tuple[Rule, ...]:
        wanted = list(protocols)
        normalized = _normalize(text)
        return tuple(r for r in self.rules if r.applies(wanted) and r.matches(normalized))

    def hits(self, steps: Sequence[StepSpec],
             protocols: Iterable[str] = ("ssh", "winrm")) -> list[Hit]:
        """Every step whose screened text matches a rule for one of `protocols`."""
        wanted = list(protocols)
        found: list[Hit] = []
        for index, step in enumerate(steps):
            field, text = step_text(step)
            rules = self.scan(text, wanted)
            if rules:
                found.append(Hit(index, step.name, f"steps.{index}.{field}", text_sha256(text),
                                 rules))
        return found
