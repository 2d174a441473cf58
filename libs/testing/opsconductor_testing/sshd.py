"""A real OpenSSH server for tests: Debian's `/usr/sbin/sshd` on loopback, with its own keys.

`SshServer` writes its own sshd_config, an ed25519 host key, a generated client key and an
authorized_keys file into a temporary directory, then runs `sshd -D -e -f <config>` as a
child process. The log (sshd's stderr, LogLevel VERBOSE) is kept per process so a test can
check what the SERVER saw: connections, "Accepted publickey" lines, closed sessions.

sshd binds at most 16 listen sockets per process (MAX_LISTEN_SOCKS in OpenSSH), so a server
asked for more 127.x.y.z addresses runs one sshd process per 16 addresses, all with the same
port, host key, authorized keys and users.

Password logins use a dedicated local account (`LOCAL_TEST_USER`) whose password is random per
server and which is locked again when the server stops. It is created only when the tests run
as root (as in CI); elsewhere `password_user()` skips (or fails under CI).
"""

# This module exists to run sshd, ssh-keygen and the account tools with fixed argv lists.

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from opsconductor_testing.tiers import missing_dependency

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
MAX_LISTEN_PER_PROCESS = 16
LOCAL_TEST_USER = "opsc-sshtest"
INSTALL_HINT = "bash scripts/services.sh install sshd (Debian package openssh-server)"


def require_sshd() -> None:
    """Skip (fail under CI) when the OpenSSH server or ssh-keygen is not installed."""
    if not Path(SSHD).is_file() or not Path(SSH_KEYGEN).is_file():
        missing_dependency(f"OpenSSH server: {SSHD} not found; run {INSTALL_HINT}")


def generate_key(path: Path, *, key_type: str = "ed25519", passphrase: str = "") -> str:
    """Write an OpenSSH private key at `path` (public key beside it); return the public line."""
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", key_type, "-N", passphrase, "-C", "opsc-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def fingerprint_of(public_key_path: Path) -> str:
    """`SHA256:...` as `ssh-keygen -l` prints it (an independent check of our own hashing)."""
    out = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(public_key_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def loopback_addresses(count: int) -> list[str]:
    """`count` distinct addresses in 127.0.0.0/8 from 127.0.0.1 on (Linux routes all of them)."""
    return [f"127.0.{n // 254}.{n % 254 + 1}" for n in range(count)]


def _processes_where(test: Callable[[str], bool]) -> list[int]:
    """Local processes (ascending) for which `test(pid)` holds; one that exits meanwhile is not."""
    found = []
    # os.listdir, not Path.glob: glob stats each entry, and a process that exits meanwhile
    # makes it raise outside any handler here.
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if test(pid):
                found.append(int(pid))
    return sorted(found)


def process_ids_matching(text: str) -> list[int]:
    """Local processes whose command line contains `text` (the test sshd runs on this host)."""
    return _processes_where(
        lambda pid: text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))


def process_group_members(group: int) -> list[int]:
    """Local processes in process group `group` (field 5 of /proc/<pid>/stat, counted after
    the command name's closing parenthesis)."""
    return _processes_where(
        lambda pid: int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[2]) == group)


def unique_sleep() -> str:
    """A `sleep` duration unique to one test, to find its remote process in /proc."""
    return f"{3000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"


def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll `check` until true or the timeout (sync: fine for /proc or log checks)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """`wait_until` for async tests: the event loop keeps running while it polls."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


class SshServer:
    """A running (after `start()`) set of sshd processes sharing one port and one host key."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        addresses: Sequence[str] = ("127.0.0.1",),
        max_startups: int = 1000,
        max_sessions: int = 64,
        extra_config: Sequence[str] = (),
        login_profile: bool = False,
    ) -> None:
        """`login_profile`: let the login shell read the account's own startup files. Off by
        default: bash sources ~/.bashrc for SSH commands, and a machine's .bashrc may run tools
        (`pyenv init` rehashes under a lock) that take seconds when twenty logins start at once,
        so a test's step timeout would measure the machine, not OpsConductor. Tests of a slow or
        noisy login build one on purpose with ForceCommand."""
        if not addresses:
            raise ValueError("at least one listen address")
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="opsc-sshd-"))
        self.addresses = list(addresses)
        self.max_startups = max_startups
        self.max_sessions = max_sessions
        self.extra_config = list(extra_config)
        if not login_profile and not any(line.startswith("SetEnv") for line in extra_config):
            # bash skips ~/.bashrc for a remote command when it is not the first shell level.
            self.extra_config.append("SetEnv SHLVL=1")
        self.port = 0
        self.user = getpass.getuser()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._password: str | None = None
        self.host_key_path = self.directory / "ssh_host_ed25519_key"
        self.client_key_path = self.directory / "client_ed25519"
        self.authorized_keys_path = self.directory / "authorized_keys"
        self.host_public_key = ""
        self.client_public_key = ""

    # --- keys and users -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.addresses[0]

    @property
    def client_private_key(self) -> str:
        return self.client_key_path.read_text()

    @property
    def host_key_fingerprint(self) -> str:
        return fingerprint_of(self.host_key_path.with_suffix(".pub"))

    def _write_keys(self) -> None:
        self.host_public_key = generate_key(self.host_key_path)
        if not self.client_key_path.exists():
            self.client_public_key = generate_key(self.client_key_path)
            self.authorized_keys_path.write_text(self.client_public_key + "\n")
        self.host_key_path.chmod(0o600)

    def authorize(self, public_key_line: str) -> None:
        """Also accept `public_key_line` (read by sshd on every login, no restart needed)."""
        with self.authorized_keys_path.open("a") as fh:
            fh.write(public_key_line.strip() + "\n")

    def password_user(self) -> tuple[str, str]:
        """(username, password) of a local account that may log in with a password here.

        The account is created once (idempotent), gets a fresh random password per server and
        is locked again by `stop()`. Needs root; otherwise a loud skip (a failure under CI).
        """
        if self._password is not None:
            return LOCAL_TEST_USER, self._password
        if os.geteuid() != 0:
            missing_dependency("SSH password logins need a local test account; run as root")
        exists = subprocess.run(["id", "-u", LOCAL_TEST_USER], capture_output=True).returncode == 0
        if not exists:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/",
                    "--shell",
                    "/bin/sh",
                    LOCAL_TEST_USER,
                ],
                check=True,
                capture_output=True,
            )
        password = "Pw-" + secrets.token_urlsafe(18)
        subprocess.run(
            ["chpasswd"],
            input=f"{LOCAL_TEST_USER}:{password}\n".encode(),
            check=True,
            capture_output=True,
        )
        subprocess.run(["usermod", "--unlock", LOCAL_TEST_USER], capture_output=True)
        self._password = password
        return LOCAL_TEST_USER, password

    def _lock_password_user(self) -> None:
        if self._password is None:
            return
        subprocess.run(["usermod", "--lock", LOCAL_TEST_USER], capture_output=True)
        self._password = None

    # --- config and processes ----------------------------------------------------------------

    def _config_text(self, index: int, addresses: Sequence[str]) -> str:
        lines = [
            *(f"ListenAddress {address}:{self.port}" for address in addresses),
            f"HostKey {self.host_key_path}",
            f"PidFile {self.directory / f'sshd-{index}.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "UsePAM no",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            "PermitRootLogin prohibit-password",
            "LogLevel VERBOSE",
            f"MaxStartups {self.max_startups}",
            f"MaxSessions {self.max_sessions}",
            "MaxAuthTries 6",
            "LoginGraceTime 30",
            "UseDNS no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def log_path(self, index: int = 0) -> Path:
        return self.directory / f"sshd-{index}.log"

    def start(self, *, timeout_s: float = 10.0) -> SshServer:
        require_sshd()
        try:
            PRIVSEP_DIR.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            missing_dependency(f"OpenSSH server: cannot create {PRIVSEP_DIR} (needs root)")
        if not self.host_key_path.exists():
            self._write_keys()
        for _attempt in range(5):
            self.port = free_port(self.addresses[0])
            if self._spawn_all(timeout_s):
                return self
            self._kill_all()
        raise RuntimeError(f"sshd did not start; log:\n{self.log_text()}")

    def _spawn_all(self, timeout_s: float) -> bool:
        groups = self._groups()
        for index, group in enumerate(groups):
            config = self.directory / f"sshd_config-{index}"
            config.write_text(self._config_text(index, group))
            log = self.log_path(index)
            log.write_bytes(b"")
            with log.open("ab") as log_file:
                self._processes.append(
                    subprocess.Popen(
                        [SSHD, "-D", "-e", "-f", str(config)],
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=log_file,
                    )
                )
        deadline = time.monotonic() + timeout_s
        for index, group in enumerate(groups):
            if not self._wait_listening(index, len(group), deadline):
                return False
        return True

    def _wait_listening(self, index: int, expected: int, deadline: float) -> bool:
        process = self._processes[index]
        log = self.log_path(index)
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "Address already in use" in text:
                return False
            if text.count("Server listening on") >= expected:
                return True
            if process.poll() is not None:
                raise RuntimeError(f"sshd exited with {process.returncode}:\n{text}")
            time.sleep(0.02)
        raise RuntimeError(f"sshd not listening after the timeout:\n{log.read_text()}")

    def _kill_all(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()

    def restart(self, *, new_host_key: bool = False) -> SshServer:
        """Stop and start on the same port; `new_host_key` simulates a re-installed server."""
        self._kill_all()
        if new_host_key:
            self._write_keys()
        if not self._spawn_all(10.0):  # same port: clients keep their target address
            raise RuntimeError(f"sshd did not restart on port {self.port}:\n{self.log_text()}")
        return self

    def _groups(self) -> list[list[str]]:
        return [
            self.addresses[i : i + MAX_LISTEN_PER_PROCESS]
            for i in range(0, len(self.addresses), MAX_LISTEN_PER_PROCESS)
        ]

    def stop(self) -> None:
        self._kill_all()
        self._lock_password_user()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what the server saw -------------------------------------------------------------------

    def log_text(self) -> str:
        return "".join(
            self.log_path(index).read_text(errors="replace")
            for index in range(len(self._groups()))
            if self.log_path(index).exists()
        )

    def count(self, pattern: str) -> int:
        """How many log lines match the regular expression `pattern`."""
        regex = re.compile(pattern)
        return sum(1 for line in self.log_text().splitlines() if regex.search(line))

    def accepted_logins(self) -> int:
        return self.count(r"Accepted (publickey|password) for ")

    def connections(self) -> int:
        return self.count(r"Connection from \S+ port \d+ on ")

    def drop_connections(self) -> int:
        """Kill the server side of every open connection (a restart would not: sshd's
        per-connection processes outlive the listener). Returns how many were killed."""
        return self.signal_connections(signal.SIGKILL)

    def signal_connections(self, sig: signal.Signals) -> int:
        """Send `sig` to the listeners' descendants only; SIGSTOP makes half-dead connections."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parents[int(stat.parent.name)] = int(fields[1])
        ours = {process.pid for process in self._processes}
        doomed = []
        for pid in parents:
            ancestor = parents.get(pid)
            while ancestor and ancestor not in ours and ancestor != 1:
                ancestor = parents.get(ancestor)
            if ancestor in ours:
                doomed.append(pid)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(doomed)

    def established_connections(self) -> int:
        """TCP connections established to this server right now, as the kernel sees them (ss)."""
        if shutil.which("ss") is None:
            return -1
        out = subprocess.run(
            ["ss", "-Htn", "state", "established", f"( sport = :{self.port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sum(1 for line in out.splitlines() if line.strip())


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A running sshd on 127.0.0.1 (fresh keys, fresh log) for one test."""
    require_sshd()
    server = SshServer(tmp_path / "sshd")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[SshFactory]:
    """`sshd_factory(addresses=[...])` starts more servers; all are stopped after the test."""
    require_sshd()
    factory = SshFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


class SshFactory:
    def __init__(self, base: Path) -> None:
        self._base = base
        self._servers: list[SshServer] = []

    def __call__(self, **kwargs: object) -> SshServer:
        directory = self._base / f"sshd-{len(self._servers)}"
        directory.mkdir()
        server = SshServer(directory, **kwargs)  # type: ignore[arg-type]
        self._servers.append(server)
        return server.start()

    def close(self) -> None:
        for server in self._servers:
            server.close()
