"""Benchmark: SSH connection tests of 200 targets on 200 loopback addresses (127.0.x.y) of one local
OpenSSH server, run through the connectors library (`check_ssh_connection`, in this process)
beside OpenSSH's own client (`ssh ... true`, one process per target) in the same run, with the same
concurrency. Prints a table and the ratios, writes .benchmarks/connection_tests.json.
A measurement, not a test: nothing is asserted.

How to run (needs only what `bash scripts/services.sh install sshd` installs: openssh-server, which
brings openssh-client; as root, since sshd needs /run/sshd and the login account below):

    uv run python tests/benchmarks/bench_connection_tests.py [--targets 200] [--concurrency 50]
        [--rounds 1] [--warmup 4]

Both sides do the same work per target: TCP connect, key exchange, check the server's host key
against the pinned one, public-key login with the same ed25519 client key, run `true`, read its
exit status, close. The login is the fixture's local test account (shell /bin/sh), not root:
root's ~/.bashrc here runs `pyenv init`, which bash sources for every SSH command and which
would cost far more than the connection itself. (The connectors prefix every command with one
`printf` of the shell's PID on stderr, used to kill timed-out commands; that line is part of the
check as shipped.) Key exchange: asyncssh offers no sntrup761 hybrid, so against OpenSSH 9.2 it
negotiates curve25519-sha256; the `openssh` row uses that same exchange (-o KexAlgorithms=...),
and a third row, `openssh-pq`, shows ssh with its default sntrup761x25519-sha512, whose key
generation dominates ssh's CPU. The ratios are against `openssh` (the same work).
Client CPU: getrusage(RUSAGE_SELF) around our in-process checks; RUSAGE_CHILDREN around the ssh
processes (their spawning costs this process some CPU too, reported as "driver"). Server CPU:
the sshd processes' own and reaped-children's time from /proc, the same server for both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opsconductor_connectors import HostKeyPin, SshCredential, SshTarget, check_ssh_connection
from opsconductor_testing.sshd import MAX_LISTEN_PER_PROCESS, SSHD, SshServer, loopback_addresses

ROOT = Path(__file__).resolve().parents[2]
SSH = "/usr/bin/ssh"
COMMAND = "true"
# What asyncssh negotiates with OpenSSH 9.2 (its mlkem768 hybrids are newer than that server).
SAME_KEX = "curve25519-sha256"
SIDES = ("connectors", "openssh", "openssh-pq")
SERVER_SETTLE_S = 0.5  # lets sshd reap its per-connection children before /proc is read


@dataclass
class Side:
    name: str
    wall_s: float
    client_cpu_ms: float
    driver_cpu_ms: float  # this process's CPU when the client work runs in child processes
    server_cpu_ms: float
    logins: int  # "Accepted publickey" lines sshd logged during the phase
    ok: int
    failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def count(self) -> int:
        return self.ok + len(self.failures)

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("latencies_ms")
        data["failures"] = self.failures[:5]
        data["failed"] = len(self.failures)
        data["client_cpu_ms_per_conn"] = self.client_cpu_ms / self.count
        data["driver_cpu_ms_per_conn"] = self.driver_cpu_ms / self.count
        data["server_cpu_ms_per_conn"] = self.server_cpu_ms / self.count
        data["conn_per_s"] = self.count / self.wall_s
        data["latency_p50_ms"] = statistics.median(self.latencies_ms)
        data["latency_p95_ms"] = statistics.quantiles(self.latencies_ms, n=20)[18]
        return data


def cpu_ms(who: int) -> float:
    usage = resource.getrusage(who)
    return (usage.ru_utime + usage.ru_stime) * 1000


def sshd_processes(server: SshServer) -> int:
    return -(-len(server.addresses) // MAX_LISTEN_PER_PROCESS)


def listener_pids(server: SshServer) -> list[int]:
    """The sshd listeners: our direct children running this server's config files."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and SSHD in text and str(server.directory) in text:
            found.append(int(cmdline.parent.name))
    return found


def server_cpu_ms(pids: list[int]) -> float:
    """utime + stime + cutime + cstime of the listeners (each connection's sshd is reaped there)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += sum(int(value) for value in fields[11:15])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def ssh_argv(server: SshServer, user: str, known_hosts: Path, address: str, kex: str | None) -> list[str]:
    return [
        SSH,
        # -F none: neither /etc/ssh/ssh_config nor ~/.ssh/config (the connectors read no config
        # either; Debian's default would add SendEnv requests); IdentitiesOnly: only the -i key.
        "-F", "none",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "IdentitiesOnly=yes",
        *(["-o", f"KexAlgorithms={kex}"] if kex else []),
        "-i", str(server.client_key_path),
        "-p", str(server.port),
        f"{user}@{address}",
        COMMAND,
    ]  # fmt: skip


async def connectors_checks(server: SshServer, user: str, addresses: list[str], concurrency: int) -> tuple:
    gate = asyncio.Semaphore(concurrency)
    public_key, private_key = server.host_public_key, server.client_private_key

    async def one(address: str) -> tuple[bool, str, float]:
        async with gate:
            # Built per target, as the targets service does from a stored row.
            target = SshTarget(address, server.port, HostKeyPin.from_public_key(public_key))
            credential = SshCredential(user, private_key=private_key, version=1)
            check = await check_ssh_connection(target, credential, os_command=COMMAND)
            return check.ok, f"{address}: {check.stage.value}: {check.message}", check.latency_ms

    return await asyncio.gather(*(one(address) for address in addresses))


async def openssh_runs(
    server: SshServer, user: str, known_hosts: Path, addresses: list[str], concurrency: int, kex: str | None
) -> tuple:
    gate = asyncio.Semaphore(concurrency)

    async def one(address: str) -> tuple[bool, str, float]:
        async with gate:
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *ssh_argv(server, user, known_hosts, address, kex),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await process.communicate()
            latency = (time.monotonic() - started) * 1000
            reason = stderr.decode(errors="replace").strip()[-200:]
            return process.returncode == 0, f"{address}: exit {process.returncode}: {reason}", latency

    return await asyncio.gather(*(one(address) for address in addresses))


async def measure(name: str, server: SshServer, pids: list[int], run) -> Side:  # type: ignore[no-untyped-def]
    logins = server.accepted_logins()
    server_before = server_cpu_ms(pids)
    self_before, children_before = cpu_ms(resource.RUSAGE_SELF), cpu_ms(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    outcomes = await run()
    wall = time.monotonic() - started
    self_spent = cpu_ms(resource.RUSAGE_SELF) - self_before
    children_spent = cpu_ms(resource.RUSAGE_CHILDREN) - children_before
    await asyncio.sleep(SERVER_SETTLE_S)
    in_process = name == "connectors"
    return Side(
        name=name,
        wall_s=wall,
        client_cpu_ms=self_spent if in_process else children_spent,
        driver_cpu_ms=children_spent if in_process else self_spent,  # ~0 for the connectors
        server_cpu_ms=server_cpu_ms(pids) - server_before,
        logins=server.accepted_logins() - logins,
        ok=sum(1 for ok, _, _ in outcomes if ok),
        failures=[text for ok, text, _ in outcomes if not ok],
        latencies_ms=[latency for _, _, latency in outcomes],
    )


async def bench(
    args: argparse.Namespace, server: SshServer, user: str, known_hosts: Path
) -> dict[str, object]:
    addresses = server.addresses
    pids = listener_pids(server)
    if len(pids) != sshd_processes(server):
        raise RuntimeError(f"expected {sshd_processes(server)} sshd listeners, found {len(pids)}")
    phases = {
        "connectors": lambda: connectors_checks(server, user, addresses, args.concurrency),
        "openssh": lambda: openssh_runs(server, user, known_hosts, addresses, args.concurrency, SAME_KEX),
        "openssh-pq": lambda: openssh_runs(server, user, known_hosts, addresses, args.concurrency, None),
    }
    # Warm-up (not measured): imports, crypto setup, the ssh binary in the page cache.
    await connectors_checks(server, user, addresses[: args.warmup], args.warmup)
    await openssh_runs(server, user, known_hosts, addresses[: args.warmup], args.warmup, SAME_KEX)
    rounds = []
    for number in range(args.rounds):
        order = list(phases)[number % 3 :] + list(phases)[: number % 3]  # rotated per round
        sides = {name: await measure(name, server, pids, phases[name]) for name in order}
        rounds.append({name: side.summary() for name, side in sides.items()})
    return {"rounds": rounds}


def median_of(rounds: list[dict], side: str, key: str) -> float:
    return statistics.median(float(r[side][key]) for r in rounds)


def report(result: dict, args: argparse.Namespace) -> None:
    rounds = result["rounds"]
    header = (
        f"{'':12}{'wall s':>8}{'conn/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'cli CPU':>9}"
        f"{'driver':>8}{'srv CPU':>9}{'logins':>7}{'ok':>5}{'fail':>5}"
    )
    print(
        f"{args.targets} targets on {args.targets} loopback addresses of {result['sshd_processes']}"
        f" sshd processes (port {result['port']}), concurrency {args.concurrency}, "
        f"remote command {COMMAND!r} on both sides; CPU columns are ms per connection"
    )
    for number, sides in enumerate(rounds, 1):
        print(f"round {number}\n{header}")
        for name in SIDES:
            row = sides[name]
            print(
                f"{name:12}{row['wall_s']:>8.2f}{row['conn_per_s']:>8.1f}{row['latency_p50_ms']:>8.1f}"
                f"{row['latency_p95_ms']:>8.1f}{row['client_cpu_ms_per_conn']:>9.2f}"
                f"{row['driver_cpu_ms_per_conn']:>8.2f}{row['server_cpu_ms_per_conn']:>9.2f}"
                f"{row['logins']:>7}{row['ok']:>5}{row['failed']:>5}"
            )
            for failure in row["failures"]:
                print(f"    {failure}")
    for rival, ratio in result["ratios"].items():
        print(
            f"connectors / {rival} (median of {len(rounds)} round(s)): wall x{ratio['wall']:.2f}, "
            f"client CPU per connection x{ratio['client_cpu_per_conn']:.2f} "
            f"(x{ratio['client_cpu_per_conn_with_driver']:.2f} counting ssh's spawning cost)"
        )
    load = result["loadavg"]
    print(f"load average before {load['before']}, after {load['after']} ({os.cpu_count()} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1, help="alternating order; medians reported")
    parser.add_argument("--warmup", type=int, default=4)
    args = parser.parse_args()
    if not (Path(SSHD).is_file() and Path(SSH).is_file()):
        sys.exit("OpenSSH is needed: bash scripts/services.sh install sshd (openssh-server)")

    work = Path(tempfile.mkdtemp(prefix="opsc-bench-ssh-"))
    server = SshServer(work / "sshd", addresses=loopback_addresses(args.targets), max_startups=1000)
    server.directory.mkdir()
    loadavg_before = os.getloadavg()
    try:
        try:
            server.start()
            # Created (or unlocked) here and locked again by close(); only its key login is used.
            user, _password = server.password_user()
            # sshd reads authorized_keys as that user: let it through our private temp dirs.
            for path in (work, server.directory):
                path.chmod(0o711)
            server.authorized_keys_path.chmod(0o644)
        except BaseException as exc:  # the fixture's skip/fail outside pytest: say why, plainly
            sys.exit(f"sshd or its test account is not available: {exc}")
        # The pinned key for every address, as ssh looks it up on a non-default port.
        known_hosts = work / "known_hosts"
        known_hosts.write_text(
            "".join(f"[{address}]:{server.port} {server.host_public_key}\n" for address in server.addresses)
        )
        result = asyncio.run(bench(args, server, user, known_hosts))
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    rounds = result["rounds"]
    con_cpu = median_of(rounds, "connectors", "client_cpu_ms_per_conn")
    con_wall = median_of(rounds, "connectors", "wall_s")
    ratios = {}
    for rival in SIDES[1:]:
        ssh_cpu = median_of(rounds, rival, "client_cpu_ms_per_conn")
        ssh_driver = median_of(rounds, rival, "driver_cpu_ms_per_conn")
        ratios[rival] = {
            "wall": con_wall / median_of(rounds, rival, "wall_s"),
            "client_cpu_per_conn": con_cpu / ssh_cpu,
            "client_cpu_per_conn_with_driver": con_cpu / (ssh_cpu + ssh_driver),
        }
    result.update(
        targets=args.targets,
        concurrency=args.concurrency,
        command=COMMAND,
        port=server.port,
        sshd_processes=sshd_processes(server),
        login=user,
        same_kex=SAME_KEX,
        ssh_argv={
            "openssh": ssh_argv(server, user, Path("<known_hosts>"), "<address>", SAME_KEX),
            "openssh-pq": ssh_argv(server, user, Path("<known_hosts>"), "<address>", None),
        },
        cores=os.cpu_count(),
        loadavg={
            "before": [round(v, 2) for v in loadavg_before],
            "after": [round(v, 2) for v in os.getloadavg()],
        },
        ratios=ratios,
    )
    out_dir = ROOT / ".benchmarks"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "connection_tests.json").write_text(json.dumps(result, indent=2))
    report(result, args)


if __name__ == "__main__":
    main()
