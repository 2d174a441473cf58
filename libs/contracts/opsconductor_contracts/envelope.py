"""CloudEvents 1.0 envelope. Every event carries actor, correlation id and resource."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from opsconductor_core.context import correlation_id_var, traceparent_var


class CloudEvent(BaseModel):
    """What a subscriber receives. Extension attributes are lowercase per the spec."""

    model_config = ConfigDict(extra="allow")

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    time: str | None = None
    datacontenttype: str = "application/json"
    subject: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    actor: str | None = None
    correlationid: str | None = None
    resourcetype: str | None = None
    resourceid: str | None = None
    traceparent: str | None = None
    topic: str | None = None
    pubsubname: str | None = None


def new_event(
    topic: str,
    data: BaseModel | dict[str, Any],
    *,
    source: str,
    actor: str | None,
    resource_type: str,
    resource_id: str,
) -> dict[str, Any]:
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": topic,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "subject": f"{resource_type}/{resource_id}",
        "data": payload,
        "actor": actor,
        "correlationid": correlation_id_var.get(),
        "resourcetype": resource_type,
        "resourceid": resource_id,
    }
    if tp := traceparent_var.get():
        event["traceparent"] = tp
    return event
