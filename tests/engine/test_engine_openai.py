"""The OpenAI-compatible engine against a loopback server that answers like vLLM."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from varco_labeler.engine.base import Request
from varco_labeler.engine.openai_engine import OpenAIEngine
from varco_labeler.varco import Task, prompt_for

ANSWER_TOKENS = [
    ("A ", 0.5),
    ("<obj>", 0.9),
    ("cat", 0.8),
    ("</obj>", 0.9),
    ("<bbox>", 0.9),
    ("0.1, 0.2, 0.5, 0.9", 0.6),
    ("</bbox>", 0.9),
    (".", 0.5),
    ("<|im_end|>", 1.0),
]


@dataclass
class FakeServer:
    """Answers ANSWER_TOKENS with the image's red value as phrase, after ``failures`` 503s."""

    failures: int = 0
    delay: float = 0.0
    bodies: list[dict] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.bodies.append(body)
            if self.failures > 0:
                self.failures -= 1
                return 503, {"error": "overloaded"}
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        phrase = str(_sent_image(body).getpixel((0, 0))[0])
        tokens = [(phrase if t == "cat" else t, p) for t, p in ANSWER_TOKENS]
        content = [
            {"token": t, "logprob": math.log(p), "bytes": list(t.encode()), "top_logprobs": []}
            for t, p in tokens
        ]
        text = "".join(t for t, _ in tokens)
        return 200, {
            "choices": [{"message": {"content": text}, "logprobs": {"content": content}}],
            "usage": {"prompt_tokens": 800, "completion_tokens": len(ANSWER_TOKENS)},
        }


def _sent_image(body: dict) -> Image.Image:
    url = body["messages"][-1]["content"][0]["image_url"]["url"]
    header, encoded = url.split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


@pytest.fixture
def server() -> Iterator[tuple[FakeServer, str]]:
    fake = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            assert self.path == "/v1/chat/completions"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, reply = fake.answer(body)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError):  # the client timed out and left
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True  # do not wait for a deliberately slow answer at shutdown
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{http.server_address[1]}/v1"
    http.shutdown()
    http.server_close()


def _request(colour=(200, 10, 10), task=Task.GROUNDING) -> Request:
    return Request(Image.new("RGB", (40, 30), colour), prompt_for(task), task)


def test_request_carries_the_image_the_prompt_and_the_vllm_settings(server):
    fake, url = server
    engine = OpenAIEngine(url, "NCSOFT/VARCO-VISION-14B-HF")
    engine.generate([_request()])
    [body] = fake.bodies
    assert body["model"] == "NCSOFT/VARCO-VISION-14B-HF"
    assert body["skip_special_tokens"] is False
    assert body["logprobs"] is True
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == engine.profile.max_new_tokens_for(Task.GROUNDING)
    [message] = body["messages"]  # 14B-HF: the template's own system prompt
    image_part, text_part = message["content"]
    assert text_part == {"type": "text", "text": "<gro>\nDescribe the image in detail."}
    assert image_part["type"] == "image_url"
    image = _sent_image(body)
    assert image.size == (40, 30)
    assert image.getpixel((5, 5)) == (200, 10, 10)


def test_ocr_profile_upscales_before_sending(server):
    fake, url = server
    OpenAIEngine(url, "NCSOFT/VARCO-VISION-2.0-1.7B-OCR").generate([_request(task=Task.OCR)])
    assert _sent_image(fake.bodies[0]).size == (2304, 1728)


def test_answer_is_parsed_and_scored_from_logprobs(server):
    _, url = server
    [result] = OpenAIEngine(url, "served-varco").generate([_request()])
    assert result.raw == "A <obj>200</obj><bbox>0.1, 0.2, 0.5, 0.9</bbox>."
    assert [item.text for item in result.parsed.grounded] == ["200"]
    expected = math.exp(sum(math.log(p) for _, p in ANSWER_TOKENS[1:7]) / 6)
    assert result.region_scores == [pytest.approx(expected)]
    assert (result.prompt_tokens, result.completion_tokens) == (800, len(ANSWER_TOKENS))


def test_concurrency_is_bounded_and_order_kept(server):
    fake, url = server
    fake.delay = 0.05
    engine = OpenAIEngine(url, "served-varco", max_concurrency=3)
    results = engine.generate([_request((red, 0, 0)) for red in range(9)])
    assert [r.parsed.grounded[0].text for r in results] == [str(red) for red in range(9)]
    assert 1 < fake.most_in_flight <= 3


def test_transient_errors_are_retried(server):
    fake, url = server
    fake.failures = 2
    [result] = OpenAIEngine(url, "served-varco", retries=2, backoff=0.01).generate([_request()])
    assert result.parsed.grounded
    assert len(fake.bodies) == 3


def test_retries_give_up_with_the_servers_status(server):
    fake, url = server
    fake.failures = 5
    engine = OpenAIEngine(url, "served-varco", retries=1, backoff=0.01)
    with pytest.raises(httpx.HTTPStatusError, match="503"):
        engine.generate([_request()])
    assert len(fake.bodies) == 2


def test_timeouts_surface_as_httpx_errors(server):
    fake, url = server
    fake.delay = 1.0
    engine = OpenAIEngine(url, "served-varco", timeout=0.1, retries=0)
    with pytest.raises(httpx.TimeoutException):
        engine.generate([_request()])
