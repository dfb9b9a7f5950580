"""The HTTP layer that speaks Label Studio's ML backend protocol; all logic is in ``backend``.

Endpoints: GET /health, POST /setup, POST /predict, GET|POST /versions, POST /webhook,
GET /metrics (Prometheus; see ``metrics``).
Label Studio shows only "500 Server Error" for failures, so every error is also logged, and
/health reports the last problem.

Webhooks are notifications: /webhook keeps one and answers; a :class:`Reconciler` reads what it
names back from Label Studio right after (see ``feedback.sync``).

Threads: Label Studio sends each webhook once, with a 1 s timeout, never retried, while a bulk
"Retrieve predictions" can keep hundreds of /predict requests waiting on the model. So /predict
runs on its own bounded pool (PREDICT_THREADS) and /webhook on its own small one
(WEBHOOK_THREADS); neither takes a thread of the shared AnyIO pool that the other (sync)
endpoints use, and a webhook never queues behind a prediction.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field

from varco_labeler.backend import Backend, BadRequest, Busy
from varco_labeler.feedback.reconciler import Reconciler
from varco_labeler.feedback.store import EventState, FeedbackStore
from varco_labeler.metrics import HttpMetrics, PendingWebhooksCollector
from varco_labeler.queue import QueueUnavailable
from varco_labeler.settings import reveal

log = logging.getLogger(__name__)

T = TypeVar("T")

# Threads that run /predict (each waits on the model up to VARCO_PREDICT_DEADLINE). Requests
# admitted beyond this (VARCO_MAX_PENDING_TASKS bounds them) wait for a thread, and their deadline
# counts from their arrival. Below AnyIO's default 40, though /predict no longer uses that pool.
PREDICT_THREADS = 32
# Threads that write webhooks to the feedback store (a few ms each; SQLite serialises writers).
WEBHOOK_THREADS = 2


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


def create_app(
    backend: Backend, feedback: FeedbackStore, reconciler: Reconciler | None = None
) -> FastAPI:
    """``reconciler``: reads webhook notifications back from Label Studio (and syncs on a
    timer); without one (no LABEL_STUDIO_URL or API key) they wait in the store for ``sync``."""
    settings = backend.settings
    predict_pool = ThreadPoolExecutor(PREDICT_THREADS, thread_name_prefix="predict")
    webhook_pool = ThreadPoolExecutor(WEBHOOK_THREADS, thread_name_prefix="webhook")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if reconciler is not None:
            reconciler.start()  # first, notifications left pending by the last run
        else:
            log.warning(
                "LABEL_STUDIO_URL or LABEL_STUDIO_API_KEY unset: webhooks are kept as "
                "notifications but not read back, so no annotation reaches the feedback store "
                "until `varco-labeler sync` runs with them set"
            )
        try:
            yield
        finally:
            webhook_pool.shutdown(wait=True)  # a webhook being written is finished, not dropped
            predict_pool.shutdown(wait=False, cancel_futures=True)
            if reconciler is not None:
                reconciler.stop()

    app = FastAPI(
        title="varco-labeler ML backend", version=backend.model_version, lifespan=lifespan
    )
    guard, authorized = _basic_auth(settings.basic_auth_user, reveal(settings.basic_auth_pass))
    metrics = backend.metrics
    metrics.watch(PendingWebhooksCollector(feedback.event_states))
    app.add_middleware(HttpMetrics, metrics=metrics)

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
    def health(full: bool = Depends(authorized)) -> dict[str, Any]:
        # With basic auth on, a probe without credentials learns only up or degraded and the
        # model version; problems, counts and queues are for those who may connect.
        details = backend.health()
        if not full:
            return {k: details[k] for k in ("status", "model_version")}
        webhooks = {"pending": feedback.event_states().get(EventState.PENDING, 0)}
        if reconciler is not None and reconciler.last_problem:
            webhooks["problem"] = reconciler.last_problem
        return details | {"webhooks": webhooks}

    @app.get("/metrics", dependencies=[guard])
    def metrics_text() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

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
        # Admission happens here, on the event loop, before a predict thread is taken: a flood
        # of requests is refused at once instead of piling up behind the thread pool. The
        # deadline counts from arrival: time spent waiting for one of the PREDICT_THREADS is
        # taken off it, so a queued request still answers within VARCO_PREDICT_DEADLINE.
        context = body.params.context if body.params else None
        arrived = time.monotonic()

        def run() -> dict[str, Any]:
            left = max(0.0, settings.predict_deadline - (time.monotonic() - arrived))
            return backend.predict(body.tasks, body.label_config, body.project, context, left)

        with backend.admission(len(body.tasks)):
            return await _on(predict_pool, run)

    @app.post("/webhook", dependencies=[guard])
    async def webhook(body: WebhookRequest) -> dict[str, Any]:
        # Its own threads: the reply (within Label Studio's 1 s) comes after the notification
        # is written, so an acknowledged event is kept, whatever /predict is doing. What it
        # names is read back from Label Studio after the reply, never taken from the body.
        state = await _on(webhook_pool, feedback.notify, body.model_dump())
        metrics.webhook_events.labels(state).inc()
        if reconciler is not None and state == EventState.PENDING:
            reconciler.wake()
        return {"status": "ok", "action": body.action}

    return app


async def _on(pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


# Module level: FastAPI resolves the (postponed) annotation below in this module's namespace.
_BASIC = HTTPBasic(auto_error=False)


def _basic_auth(user: str | None, password: str | None) -> tuple[Any, Any]:
    """Two dependencies: one that refuses a request without the credentials (when basic auth is
    on), and one that only says whether it has them. Async on purpose: a sync dependency would
    take a thread of the shared AnyIO pool, and /webhook must not wait for one."""

    async def authorized(
        credentials: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)],
    ) -> bool:
        if not user or not password:
            return True
        return credentials is not None and bool(
            secrets.compare_digest(credentials.username.encode(), user.encode())
            & secrets.compare_digest(credentials.password.encode(), password.encode())
        )

    # Defaults, not Annotated: postponed annotations resolve in the module, not in this scope.
    async def check(ok: bool = Depends(authorized)) -> None:
        if not ok:
            raise HTTPException(
                status_code=401,
                detail="basic auth required: set the user and password in Label Studio's model "
                "settings",
                headers={"WWW-Authenticate": "Basic"},
            )

    return Depends(check), authorized
