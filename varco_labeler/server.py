"""The HTTP layer that speaks Label Studio's ML backend protocol; all logic is in ``backend``.

Endpoints: GET /health, POST /setup, POST /predict, GET|POST /versions, POST /webhook.
Label Studio shows only "500 Server Error" for failures, so every error is also logged, and
/health reports the last problem.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field

from varco_labeler.backend import Backend, BadRequest, Busy
from varco_labeler.feedback.store import FeedbackStore
from varco_labeler.queue import QueueUnavailable

log = logging.getLogger(__name__)


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    project: str | int | None = None
    label_config: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = Field(default=None, repr=False)
    extra_params: dict[str, Any] | str | None = None


class PredictParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    context: dict[str, Any] | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(min_length=1)
    label_config: str
    project: str | int | None = None
    params: PredictParams | None = None


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str = Field(min_length=1)


def create_app(backend: Backend, feedback: FeedbackStore) -> FastAPI:
    settings = backend.settings
    app = FastAPI(title="varco-labeler ML backend", version=backend.model_version)
    guard = _basic_auth(settings.basic_auth_user, settings.basic_auth_pass)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, error: BadRequest) -> JSONResponse:
        log.warning("bad request: %s", error)
        backend.last_problem = str(error)
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(QueueUnavailable)
    async def queue_down(_: Request, error: QueueUnavailable) -> JSONResponse:
        log.error("%s", error)
        backend.last_problem = str(error)
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        log.warning("rejected request: %s", problems)
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.get("/health")
    @app.get("/")
    def health() -> dict[str, Any]:
        return backend.health()

    @app.post("/setup", dependencies=[guard])
    def setup(body: SetupRequest) -> dict[str, Any]:
        return backend.setup(body.project, body.label_config, body.extra_params)

    @app.get("/versions", dependencies=[guard])
    @app.post("/versions", dependencies=[guard])
    def versions() -> dict[str, Any]:
        return backend.versions()

    @app.exception_handler(Busy)
    async def busy(_: Request, error: Busy) -> JSONResponse:
        log.warning("%s", error)
        return JSONResponse({"error": str(error)}, status_code=503, headers={"Retry-After": "5"})

    @app.post("/predict", dependencies=[guard])
    async def predict(body: PredictRequest) -> dict[str, Any]:
        # Admission happens here, on the event loop, before a worker thread is taken: a flood
        # of requests is refused at once instead of piling up behind the thread pool.
        context = body.params.context if body.params else None
        with backend.admission(len(body.tasks)):
            return await run_in_threadpool(
                backend.predict, body.tasks, body.label_config, body.project, context
            )

    @app.post("/webhook", dependencies=[guard])
    def webhook(body: WebhookRequest) -> dict[str, Any]:
        feedback.append(body.model_dump())
        return {"status": "ok", "action": body.action}

    return app


# Module level: FastAPI resolves the (postponed) annotation below in this module's namespace.
_BASIC = HTTPBasic(auto_error=False)


def _basic_auth(user: str | None, password: str | None) -> Any:
    if not user or not password:
        return Depends(lambda: None)

    def check(credentials: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)]) -> None:
        ok = credentials is not None and (
            secrets.compare_digest(credentials.username.encode(), user.encode())
            & secrets.compare_digest(credentials.password.encode(), password.encode())
        )
        if not ok:
            raise HTTPException(
                status_code=401,
                detail="basic auth required: set the user and password in Label Studio's model "
                "settings",
                headers={"WWW-Authenticate": "Basic"},
            )

    return Depends(check)
