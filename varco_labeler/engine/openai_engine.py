"""An engine that calls an OpenAI-compatible chat completions server, such as vLLM.

vLLM serves VARCO-VISION with continuous batching, so this engine sends every request on its own,
with bounded concurrency, and lets the server batch. No torch: only httpx.

Three request settings matter for VARCO output: ``skip_special_tokens: false`` (otherwise vLLM
deletes the ``<obj>``/``<bbox>`` tags), ``temperature: 0`` (greedy, as the transformers engine),
and ``logprobs: true`` (token probabilities for region scores).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from PIL import Image

from varco_labeler.engine import progress
from varco_labeler.engine.base import Engine, Request, Result
from varco_labeler.engine.confidence import Token, region_scores
from varco_labeler.engine.profiles import Profile, profile_for
from varco_labeler.engine.profiles import model_version as default_version
from varco_labeler.retries import TransientError, retrying
from varco_labeler.varco import clean_model_text, parse

log = logging.getLogger(__name__)

# Worth retrying: the server is overloaded, restarting or briefly unreachable.
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class OpenAIEngine(Engine):
    """``POST {base_url}/chat/completions``, one request per image, ``max_concurrency`` at once.

    ``model`` is the served model name; the profile is chosen from it unless given. Failed calls
    are retried ``retries`` times with exponential backoff when the failure is transient
    (connection errors, timeouts, 408/429/5xx); other errors raise at once.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        profile: Profile | None = None,
        max_concurrency: int = 8,
        timeout: float = 300.0,
        retries: int = 2,
        backoff: float = 0.5,
        model_version: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.model = model
        self.profile = profile or profile_for(model)
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.backoff = backoff
        self.model_version = default_version(model, model_version)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_concurrency),
        )

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        if not requests:
            return []
        workers = min(self.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="varco-openai") as pool:
            return list(pool.map(self._generate_one, requests))

    def close(self) -> None:
        self._client.close()

    def request_body(self, request: Request) -> dict[str, Any]:
        """The chat completions body for one request."""
        image = self.profile.prepare_image(request.image, request.task)
        messages: list[dict[str, Any]] = []
        if self.profile.system_prompt is not None:
            messages.append({"role": "system", "content": self.profile.system_prompt})
        content = [
            {"type": "image_url", "image_url": {"url": _data_url(image)}},
            {"type": "text", "text": request.prompt},
        ]
        messages.append({"role": "user", "content": content})
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_new_tokens or self.profile.max_new_tokens_for(request.task),
            "temperature": 0.0,
            "logprobs": True,
            "skip_special_tokens": False,
        }

    def _generate_one(self, request: Request) -> Result:
        started = time.perf_counter()
        reply = self._post_with_retries(self.request_body(request))
        progress.report()  # an answer came; a server that never answers stalls the job
        choice = reply["choices"][0]
        raw = clean_model_text(choice["message"]["content"] or "")
        parsed = parse(raw)
        tokens = _tokens(choice.get("logprobs"))
        scores = region_scores(tokens, parsed) if tokens else [None] * len(parsed.grounded)
        parsed, scores = self.profile.postprocess(parsed, scores, request.task)
        usage = reply.get("usage") or {}
        return Result(
            raw=raw,
            parsed=parsed,
            region_scores=scores,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", len(tokens)),
            seconds=time.perf_counter() - started,
        )

    def _post_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        def post_once() -> dict[str, Any]:
            try:
                response = self._client.post("/chat/completions", json=body)
            except httpx.TransportError as error:  # timeouts, refused connections
                raise TransientError(f"chat completion failed: {error!r}") from error
            if response.status_code in _RETRY_STATUS:
                error = httpx.HTTPStatusError(
                    f"{response.status_code} from the server",
                    request=response.request,
                    response=response,
                )
                raise TransientError(f"chat completion failed: {error}") from error
            response.raise_for_status()
            return response.json()

        try:
            return retrying(post_once, attempts=self.retries + 1, backoff=self.backoff)()
        except TransientError as error:  # the server's own error, after the last attempt
            raise error.__cause__ from None  # type: ignore[misc]


def _tokens(logprobs: dict[str, Any] | None) -> list[Token]:
    """Tokens from OpenAI ``logprobs.content``; ``bytes`` is exact where a token splits a char."""
    tokens = []
    for entry in (logprobs or {}).get("content") or []:
        piece = bytes(entry["bytes"]) if entry.get("bytes") is not None else entry["token"].encode()
        tokens.append(Token(piece, math.exp(entry["logprob"])))
    return tokens


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless: OCR of small text suffers from JPEG artefacts
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
