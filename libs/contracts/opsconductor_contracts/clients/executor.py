"""Client of the executor's internal run route (callers: jobs, scheduler).

The request carries the run's secret parameter values (the executor holds them encrypted while the
run needs them); nothing here logs or repeats the body. The executor's refusals come back as the
same domain errors, so the caller's caller sees the executor's status and reason.
"""

from __future__ import annotations

from opsconductor_contracts.clients.base import ServiceClient, problem_of
from opsconductor_contracts.jobspec import ExecutionCreated, RunRequest
from opsconductor_core.problems import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
)

_BY_STATUS: dict[int, type[DomainError]] = {
    400: InvalidInput, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: InvalidInput,
}


class ExecutorClient(ServiceClient):
    app_id = "executor"

    async def create_execution(self, run: RunRequest) -> str:
        """Start one execution of `run`; its id. A repeated `idempotency_key` names the same one."""
        # model_dump, not the repr: secret_values must reach the executor (and only it).
        response = await self.call("POST", "/internal/executions",
                                   json_body=run.model_dump(mode="json"))
        if response.status in (200, 201, 202):
            return ExecutionCreated.model_validate(response.json()).execution_id
        detail, errors = problem_of(response)
        if response.status == 429:
            retry_after = next((v for k, v in response.headers.items()
                                if k.lower() == "retry-after"), "1")
            raise TooManyRequests(detail, retry_after_s=int(retry_after)
                                  if retry_after.isdigit() else 1)
        error = _BY_STATUS.get(response.status)
        if error is None:
            raise self.unexpected(response)
        raise error(detail or f"The executor refused the run ({response.status})", errors=errors)
