"""A reverse proxy in front of Label Studio that makes every prediction import slower.

    python -m bench.slowproxy --target http://127.0.0.1:8080 --port 8081 --delay 0.5

Requests pass through unchanged (image downloads, task lists, everything); a
``POST /api/projects/{id}/import/predictions`` is answered ``--delay`` seconds later than Label
Studio answers it: a busy or distant Label Studio, for checking that pushes do not stall the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

IMPORT = re.compile(r"^/api/projects/\d+/import/predictions/?$")
# Hop-by-hop, length and encoding headers are the proxy's own business on each side (httpx
# hands over the body decompressed).
DROPPED = frozenset(
    {"host", "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)


def create_app(target: str, delay: float) -> Starlette:
    client = httpx.AsyncClient(base_url=target, timeout=600)

    async def forward(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        upstream = await client.request(
            request.method,
            request.url.path,
            params=request.url.query.encode() or None,
            headers=headers,
            content=await request.body(),
        )
        if request.method == "POST" and IMPORT.match(request.url.path):
            await asyncio.sleep(delay)
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in DROPPED}
            | {"content-length": str(len(upstream.content))},
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slowproxy", description=__doc__)
    parser.add_argument("--target", required=True, help="Label Studio's URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds added per import")
    args = parser.parse_args(argv)
    app = create_app(args.target.rstrip("/"), args.delay)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
