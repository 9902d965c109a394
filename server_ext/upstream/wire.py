"""The request and response shapes of LlamaFarm's Universal Runtime (`runtimes/universal/`: its
`api_types/` and the dicts its routers return) that every door route shares, as pydantic types; each
task's own shapes live with its door routes (`server_ext/tasks/<task>_upstream.py`).

Requests ignore unknown fields (as upstream's FastAPI models do). Where upstream's request takes a
field that this runtime cannot honour, the field is there with upstream's default, and the door answers
400 when a request sets it to something else: a value is never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class UpstreamRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class TextsUsage(BaseModel):
    texts_processed: int


# Health (routers/health/router.py) -------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["healthy"] = "healthy"
    device: dict[str, Any]
    loaded_models: list[str]
    timestamp: str
    pid: int
