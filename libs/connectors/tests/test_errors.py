"""The error taxonomy: stages, timeouts that name their stage, secrets scrubbed from messages."""

from __future__ import annotations

from opsconductor_connectors import ConnectorError, Stage
from opsconductor_connectors.errors import REDACTED, scrub, timeout_error

KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBh0T1sGyzXc8rNR2A0lD2ZTQW8ssPwY3Hc0VQ8pP8wAAAAJgAAAAAAAAAA
-----END OPENSSH PRIVATE KEY-----"""


class TestTaxonomy:
    def test_every_stage_of_the_api_exists(self) -> None:
        assert [s.value for s in Stage] == [
            "resolve", "connect", "host_key", "auth", "command", "timeout"
        ]  # fmt: skip

    def test_a_timeout_names_the_stage_that_ran_out(self) -> None:
        error = timeout_error(Stage.AUTH, 2.5)
        assert error.stage is Stage.TIMEOUT
        assert error.during is Stage.AUTH
        assert error.reported_stage is Stage.AUTH
        assert "2.5s" in error.message

    def test_other_errors_report_their_own_stage(self) -> None:
        error = ConnectorError(Stage.CONNECT, "refused")
        assert (error.during, error.reported_stage) == (Stage.CONNECT, Stage.CONNECT)
        assert str(error) == "connect: refused"


class TestScrub:
    def test_password_is_removed(self) -> None:
        error = ConnectorError(Stage.AUTH, "server said: bad password s3cr3t-pw!", secrets=["s3cr3t-pw!"])
        assert "s3cr3t-pw!" not in f"{error} {error!r} {error.args}"
        assert REDACTED in error.message

    def test_every_line_of_a_key_is_removed(self) -> None:
        leaked = "parse error near " + KEY.splitlines()[2]
        cleaned = scrub(leaked, [KEY])
        for line in KEY.splitlines()[1:-1]:
            assert line not in cleaned

    def test_short_or_missing_secrets_do_not_mangle_text(self) -> None:
        assert scrub("connect to host a", ["a", None, ""]) == "connect to host a"
