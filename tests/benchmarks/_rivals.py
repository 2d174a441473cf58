"""The rivals of bench_fanout.py: ansible-core (the `ansible` command) and parallel-ssh.

Each `*_run(targets, concurrency, command)` returns {"wall_s", "ok", "failures", "client_cpu_ms"}
for one cold fan-out, after an unmeasured warm-up on two targets (page cache, .pyc files).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _targets import LoopbackTargets, cpu_ms

BIN = Path(sys.executable).parent
EXPECTED = "Linux"
SAME_KEX = "curve25519-sha256"  # what asyncssh and libssh2 negotiate with OpenSSH 9.2


# --- parallel-ssh -----------------------------------------------------------------------------


def pssh_run(targets: LoopbackTargets, concurrency: int, command: str) -> dict[str, Any]:
    """In a fresh worker process (gevent stays out of our asyncio process)."""
    job = {"spec": targets.spec(), "pool_size": concurrency, "command": command}
    worker = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("bench_fanout.py")), "--pssh-worker"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if worker.returncode != 0:
        raise RuntimeError(f"the parallel-ssh worker failed:\n{worker.stderr[-3000:]}")
    return json.loads(worker.stdout.strip().splitlines()[-1])


def pssh_worker() -> None:
    """Reads a job on stdin, prints one JSON line: the measured cold fan-out."""
    from pssh.clients import ParallelSSHClient

    job = json.loads(sys.stdin.read())
    spec, command = job["spec"], job["command"]

    def fan_out(hosts: list[str]) -> tuple[int, list[str]]:
        client = ParallelSSHClient(
            hosts,
            user=spec["user"],
            port=spec["port"],
            pkey=spec["client_key_path"],
            pool_size=job["pool_size"],
            allow_agent=False,  # only the given key, as IdentitiesOnly on the ssh side
            identity_auth=False,
            num_retries=1,
        )
        output = client.run_command(command, stop_on_errors=False)
        client.join(output)
        ok, failures = 0, []
        for host_output in output:
            text = "\n".join(host_output.stdout or []) if host_output.exception is None else ""
            if host_output.exit_code == 0 and EXPECTED in text:
                ok += 1
            else:
                failures.append(
                    f"{host_output.host}: exit {host_output.exit_code}: {host_output.exception!r}"
                )
        return ok, failures

    fan_out(spec["addresses"][:2])  # warm-up, not measured
    before = cpu_ms(resource.RUSAGE_SELF)
    started = time.monotonic()
    ok, failures = fan_out(spec["addresses"])
    wall = time.monotonic() - started
    result = {
        "wall_s": wall,
        "ok": ok,
        "failures": failures,
        "client_cpu_ms": cpu_ms(resource.RUSAGE_SELF) - before,
    }
    print(json.dumps(result))


# --- ansible-core -----------------------------------------------------------------------------


def _ansible_files(targets: LoopbackTargets, forks: int, name: str) -> tuple[Path, dict[str, str]]:
    """A fresh directory with inventory, ansible.cfg and ControlPath dir; the env to run in."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=targets.work))
    (work / "cp").mkdir()
    inventory = work / "inventory.ini"
    hosts = "".join(
        f"t{n:04d} ansible_host={address} ansible_port={targets.port}\n"
        for n, address in enumerate(targets.addresses)
    )
    inventory.write_text(
        f"[bench]\n{hosts}\n[bench:vars]\nansible_connection=ssh\nansible_user={targets.user}\n"
        f"ansible_ssh_private_key_file={targets.client_key_path}\n"
    )
    # -F none: no ssh_config (Debian's adds SendEnv); the pinned keys only, strictly checked.
    common = (
        f"-F none -o UserKnownHostsFile={targets.known_hosts} -o StrictHostKeyChecking=yes"
        f" -o IdentitiesOnly=yes -o KexAlgorithms={SAME_KEX}"
    )
    config = work / "ansible.cfg"
    config.write_text(
        "[defaults]\n"
        "host_key_checking = True\n"
        f"forks = {forks}\n"
        "gathering = explicit\n"
        "deprecation_warnings = False\n"
        f"local_tmp = {work / 'tmp'}\n"
        "[ssh_connection]\n"
        "pipelining = True\n"
        f"control_path_dir = {work / 'cp'}\n"
        f"ssh_common_args = {common}\n"
    )
    # Bytecode caches as any normal install has them (this machine sets PYTHONDONTWRITEBYTECODE
    # and uv installs without .pyc): otherwise every run, and every forked worker for the modules
    # it imports late, compiles Ansible's sources again.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(ANSIBLE_CONFIG=str(config), HOME=str(work))
    return inventory, env


def _ansible(
    inventory: Path, env: dict[str, str], command: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ansible"), "all", "-i", str(inventory), "-m", "raw", "-a", command, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )


def _masters(control_dir: Path) -> list[int]:
    """The ssh ControlPersist masters of one run (daemons now, found by their ControlPath)."""
    found = []
    needle = str(control_dir).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def _end_masters(control_dir: Path) -> float:
    """End this run's masters (each by PID); returns the CPU they had used, in ms."""
    used = 0.0
    pids = _masters(control_dir)
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used += sum(int(v) for v in fields[11:15]) * 1000 / os.sysconf("SC_CLK_TCK")
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue
    deadline = time.monotonic() + 10
    while _masters(control_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    return used


# The ad-hoc (minimal) callback: "<host> | CHANGED | rc=0 >>" then the output, or "<host> | X! => {...}".
_RESULT = re.compile(r"^(\S+) \| ([A-Z!]+)(?: \| rc=(-?\d+))?(?: >>| =>)", re.M)


def _verify(completed: subprocess.CompletedProcess[str], expected_hosts: int) -> tuple[int, list[str]]:
    text = completed.stdout
    heads = list(_RESULT.finditer(text))
    ok, failures = 0, []
    for head, following in zip(heads, [*heads[1:], None], strict=True):
        body = text[head.end() : following.start() if following else len(text)]
        host, status, rc = head.groups()
        if status == "CHANGED" and rc == "0" and EXPECTED in body:
            ok += 1
        else:
            failures.append(f"{host}: {status} rc {rc}: {body.strip()[:200]!r}")
    if len(heads) != expected_hosts:
        failures.append(
            f"ansible reported {len(heads)} of {expected_hosts} hosts (exit {completed.returncode}):"
            f" {completed.stderr[-300:]!r}"
        )
    return ok, failures


def compile_ansible() -> None:
    """Write Ansible's .pyc files once (a no-op when they are up to date)."""
    import ansible

    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", str(Path(ansible.__file__).parent)],
        capture_output=True,
        check=True,
        timeout=600,
    )


def ansible_run(targets: LoopbackTargets, forks: int, command: str) -> dict[str, Any]:
    compile_ansible()
    warm_inventory, warm_env = _ansible_files(targets, forks, "ansible-warmup")
    _ansible(warm_inventory, warm_env, command, "--limit", "t0000,t0001")  # .pyc files, page cache
    _end_masters(warm_inventory.parent / "cp")
    targets.wait_idle()

    inventory, env = _ansible_files(targets, forks, "ansible-run")
    before = cpu_ms(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    completed = _ansible(inventory, env, command)
    wall = time.monotonic() - started
    client = cpu_ms(resource.RUSAGE_CHILDREN) - before
    client += _end_masters(inventory.parent / "cp")
    ok, failures = _verify(completed, targets.count)
    return {"wall_s": wall, "ok": ok, "failures": failures, "client_cpu_ms": client}


def ansible_startup(targets: LoopbackTargets) -> float:
    """`ansible all --list-hosts` on the same inventory: start, config, inventory, no SSH."""
    inventory, env = _ansible_files(targets, 50, "ansible-startup")
    started = time.monotonic()
    subprocess.run(
        [str(BIN / "ansible"), "all", "-i", str(inventory), "--list-hosts"],
        capture_output=True,
        env=env,
        check=True,
        timeout=300,
    )
    return time.monotonic() - started
