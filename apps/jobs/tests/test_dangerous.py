"""The dangerous-command policy: each built-in rule flags what it should and lets a harmless
near-miss through; operators extend it with a rules file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from opsconductor_contracts.jobspec import StepSpec
from opsconductor_jobs.config import Settings
from opsconductor_jobs.dangerous import BUILTIN_RULES, Policy, PolicyFileError, step_text
from opsconductor_jobs.main import create_app
from opsconductor_testing.runtime import RecordingRuntime

if TYPE_CHECKING:
    from conftest import World, WorldFactory

POLICY = Policy(BUILTIN_RULES)

# rule id: (texts it must flag, harmless near-misses it must not)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "rm-rf-root": (
        ["rm -rf /", "rm -fr /", "rm -rf /*", "rm -r -f /", "sudo rm -Rf --no-preserve-root /",
         "rm -rf '/'", 'rm -rf "/"', "rm --recursive --force /etc", "echo x; rm -rf / && echo y",
         "/bin/rm -rf /usr/", "rm -rf --no-preserve-root /tmp", "rm -rf -- /",
         "cd /tmp\nrm -rf \\\n  /"],
        ["rm -rf ./build", "rm -rf /tmp/build", "rm -f /", "rm -rf /var/lib/app", "rm -rf $DIR/",
         "rm -rf build/ /opt/app/cache"]),
    "mkfs": (
        ["mkfs.ext4 /dev/sdb1", "sudo mkfs -t xfs /dev/sdc", "/sbin/mkfs.xfs /dev/vdb",
         "x=1; mke2fs /dev/sdb", "bash -c 'mkfs.ext4 /dev/sdb'", "wipefs -a /dev/sdb"],
        ["mkfs_helper --list", "echo 'do not mkfs'", "man mkfs", "grep mkfs /var/log/syslog"]),
    "dd-block-device": (
        ["dd if=/dev/zero of=/dev/sda bs=1M", "dd if=img of=/dev/nvme0n1", "cat img > /dev/sdb",
         "dd if=/dev/urandom of='/dev/mmcblk0'", "shred -n 1 /dev/sdb"],
        ["dd if=/dev/zero of=/tmp/disk.img bs=1M count=10", "dd if=/dev/sda of=/backup/sda.img",
         "echo x > /dev/null", "ls 2>/dev/null", "cat /dev/sda > /backup/img"]),
    "power-off": (
        ["shutdown -h now", "sudo reboot", "halt", "poweroff", "init 0", "init 6",
         "sudo /sbin/shutdown -r +1", "systemctl reboot", "echo bye; reboot", "shutdown /r /t 0",
         "telinit 0", "systemctl --force poweroff", "if true; then reboot; fi",
         "bash -c 'reboot'", "cmd /c shutdown /s"],
        ["echo 'reboot required: no'", "cat /var/run/reboot-required", "systemctl restart nginx",
         "./shutdown.sh", "reboot-notifier --check", "grep -c 'reboot' /var/log/syslog",
         "Restart-Service spooler", "init 3"]),
    "fork-bomb": (
        [":(){ :|:& };:", ":(){ :|: & };:", "bomb() { bomb | bomb & }; bomb"],
        ["f() { echo hi | cat & }; f", "a() { b | a & }"]),
    "chmod-777-root": (
        ["chmod -R 777 /", "chmod 777 -R /", "sudo chmod -R a+rwx /*", "chmod --recursive 0777 /etc"],
        ["chmod -R 755 /var/www", "chmod 777 /tmp/x", "chmod -R 777 /srv/app/cache",
         "chmod 777 /"]),
    "pipe-to-shell": (
        ["curl -fsSL https://x.sh | sh", "wget -qO- http://x | bash",
         "curl http://x | sudo bash -s -- a", "bash <(curl -s http://x)",
         'sh -c "$(curl -fsSL http://x)"', "curl -s x | /bin/sh"],
        ["curl -fsSL https://x/f.tgz -o /tmp/f.tgz && tar xzf /tmp/f.tgz",
         "curl -s url | grep -q ok", "wget -qO- url | sha256sum",
         "curl -s url | python3 -m json.tool"]),
    "format-volume": (
        ["Format-Volume -DriveLetter D", "format-volume -DriveLetter E -FileSystem NTFS",
         "Clear-Disk -Number 1", "format D: /q"],
        ["Get-Volume", "Get-Process | Format-Table", "Write-Host 'will format D: later'"]),
    "remove-item-drive": (
        ["Remove-Item -Recurse C:\\", "remove-item -recurse -force c:\\*",
         "Remove-Item -Path 'C:\\' -Recurse", "Remove-Item C:\\ -Recurse -Force",
         "rm -r C:\\Windows", "rd /s /q C:\\", "Remove-Item -Recurse $env:SystemRoot"],
        ["Remove-Item -Recurse C:\\Temp\\build", "Remove-Item C:\\temp\\x.txt",
         "Remove-Item -Recurse D:\\data\\old"]),
    "stop-computer": (
        ["Stop-Computer -Force", "restart-computer", "Restart-Computer -ComputerName x -Force"],
        ["Stop-Service spooler", "Restart-Service w32time", "Get-Computer"]),
    "download-execute-ps": (
        ["iex (iwr https://x/a.ps1)",
         "Invoke-Expression (New-Object Net.WebClient).DownloadString('http://x')",
         "irm https://x | iex"],
        ["iwr https://x/f.zip -OutFile f.zip", "Invoke-Expression $cmd"]),
}


def flagged(text: str) -> list[str]:
    return [rule.id for rule in POLICY.scan(text)]


def test_every_builtin_rule_is_covered() -> None:
    assert set(CASES) == {rule.id for rule in BUILTIN_RULES}


@pytest.mark.parametrize(("rule", "text"), [(rule, text) for rule, (hits, _) in CASES.items()
                                            for text in hits])
def test_rule_flags(rule: str, text: str) -> None:
    assert rule in flagged(text)


@pytest.mark.parametrize(("rule", "text"), [(rule, text) for rule, (_, misses) in CASES.items()
                                            for text in misses])
def test_near_miss_is_not_flagged(rule: str, text: str) -> None:
    assert flagged(text) == []


def test_rules_apply_to_their_protocol() -> None:
    assert [r.id for r in POLICY.scan("Stop-Computer", ["ssh"])] == []
    assert [r.id for r in POLICY.scan("Stop-Computer", ["winrm"])] == ["stop-computer"]
    assert [r.id for r in POLICY.scan("rm -rf /", ["winrm"])] == []
    assert [r.id for r in POLICY.scan("shutdown /s", ["winrm"])] == ["power-off"]


def test_screened_text_per_step_kind() -> None:
    script = StepSpec(name="s", kind="script", script="#!/bin/sh\nmkfs.ext4 /dev/sdb\n")
    upload = StepSpec(name="u", kind="upload", content="rm -rf /", destination="/dev/sda")
    harmless_upload = StepSpec(name="h", kind="upload", content="rm -rf /",
                               destination="/tmp/notes.txt")
    assert step_text(script) == ("script", script.script)
    hits = POLICY.hits([script, upload, harmless_upload])
    assert [(h.step, h.field, [r.id for r in h.rules]) for h in hits] == [
        ("s", "steps.0.script", ["mkfs"]), ("u", "steps.1.destination", ["dd-block-device"])]


class TestRulesFile:
    def write(self, tmp_path: Path, rules: Any) -> Path:
        path = tmp_path / "rules.json"
        path.write_text(json.dumps(rules))
        return path

    def test_extra_rules_add_to_the_builtin_ones(self, tmp_path: Path) -> None:
        path = self.write(tmp_path, [{"id": "drop-database", "description": "Drops a database",
                                      "pattern": r"\bdrop\s+database\b", "applies_to": "both"}])
        policy = Policy.from_file(path)
        assert [r.id for r in policy.scan("psql -c 'DROP DATABASE prod'")] == ["drop-database"]
        assert [r.id for r in policy.scan("rm -rf /")] == ["rm-rf-root"]

    @pytest.mark.parametrize("rules", [
        [{"id": "x", "description": "d", "pattern": "(unclosed"}],
        [{"id": "Bad Id", "description": "d", "pattern": "x"}],
        [{"id": "x", "description": "d", "pattern": "x", "applies_to": "telnet"}],
        [{"id": "x", "description": "d", "pattern": "x", "severity": "high"}],
        [{"id": "rm-rf-root", "description": "switch it off", "pattern": "$^"}],
        {"id": "x"},
    ])
    def test_a_bad_file_stops_the_service(self, tmp_path: Path, rules: Any) -> None:
        path = self.write(tmp_path, rules)
        with pytest.raises(PolicyFileError):
            create_app(RecordingRuntime(app_id="jobs"),
                       Settings(dangerous_rules_file=path, data_dir=tmp_path))

    def test_a_missing_file_stops_the_service(self, tmp_path: Path) -> None:
        with pytest.raises(PolicyFileError):
            Policy.from_file(tmp_path / "absent.json")

    async def test_the_app_uses_the_file(self, make_world: WorldFactory, tmp_path: Path) -> None:
        path = self.write(tmp_path, [{"id": "drop-database", "description": "Drops a database",
                                      "pattern": r"\bdrop\s+database\b"}])
        async with make_world(dangerous_rules_file=path) as world:
            job = await world.create(steps=[{"name": "drop", "kind": "command",
                                             "command": "psql -c 'drop database old'"}])
            assert job["blocked_steps"] == ["drop"]
            assert job["dangerous_steps"][0]["rules"] == ["drop-database"]


class TestScreeningOverHttp:
    async def test_saved_but_blocked(self, world: World) -> None:
        job = await world.create(steps=[
            {"name": "ok", "kind": "command", "command": "uptime"},
            {"name": "wipe", "kind": "command", "command": "dd if=/dev/zero of=/dev/sda"},
            {"name": "win", "kind": "command", "command": "Stop-Computer -Force"}])
        assert job["blocked_steps"] == ["wipe", "win"]
        assert [(d["step"], d["field"], d["rules"], d["approved"])
                for d in job["dangerous_steps"]] == [
            ("wipe", "steps.1.command", ["dd-block-device"], False),
            ("win", "steps.2.command", ["stop-computer"], False)]
