"""SSH and WinRM connectors: pinned host keys, streamed commands, uploads, pools, one error type.

    session = await connect_ssh(SshTarget(host, 22, HostKeyPin.parse(fp)), credential)
    result = await session.run("uptime", timeout_s=30)

Every failure is a `ConnectorError` whose `stage` is resolve, connect, host_key, auth, command
or timeout (then `during` names the stage that ran out of time); its message never holds a
secret.
"""

from opsconductor_connectors.check import check_ssh_connection, check_winrm_connection
from opsconductor_connectors.errors import ConnectorError, Stage
from opsconductor_connectors.hostkeys import HostKeyPin, HostKeyProbe, normalize_fingerprint
from opsconductor_connectors.pool import PoolStats, SshPool
from opsconductor_connectors.results import (
    CommandResult,
    ConnectionCheck,
    OutputChunk,
    StageTiming,
    UploadResult,
)
from opsconductor_connectors.running import RunningCommand
from opsconductor_connectors.ssh import (
    SshCredential,
    SshTarget,
    SshTimeouts,
    connect_ssh,
    probe_host_key,
)
from opsconductor_connectors.ssh_session import SshCommand, SshSession
from opsconductor_connectors.winrm import (
    WinrmClient,
    WinrmCommand,
    WinrmCredential,
    WinrmTarget,
    WinrmTimeouts,
)

__all__ = [
    "CommandResult",
    "ConnectionCheck",
    "ConnectorError",
    "HostKeyPin",
    "HostKeyProbe",
    "OutputChunk",
    "PoolStats",
    "RunningCommand",
    "SshCommand",
    "SshCredential",
    "SshPool",
    "SshSession",
    "SshTarget",
    "SshTimeouts",
    "Stage",
    "StageTiming",
    "UploadResult",
    "WinrmClient",
    "WinrmCommand",
    "WinrmCredential",
    "WinrmTarget",
    "WinrmTimeouts",
    "check_ssh_connection",
    "check_winrm_connection",
    "connect_ssh",
    "normalize_fingerprint",
    "probe_host_key",
]
