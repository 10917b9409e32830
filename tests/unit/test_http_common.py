"""The shared HTTP conventions, on a small real FastAPI app run in process."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI, Request

import job_orchestrator
from job_orchestrator.http_common import install_conventions, path_id


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/typed")
    async def typed(count: int, ratio: float = 0.0) -> dict[str, float]:
        return {"count": count, "ratio": ratio}

    @app.get("/item/{id}")
    async def item(request: Request) -> dict[str, int]:
        return {"id": path_id(request)}

    install_conventions(app)
    return app


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(make_app()), base_url="http://test")


async def test_a_validation_error_names_the_input_but_not_our_source() -> None:
    """FastAPI's own text of a validation error names the endpoint's file and line."""
    async with client() as http:
        response = await http.get("/typed?ratio=abc")
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "Invalid request: query.count, query.ratio"
    assert str(Path(__file__).parent) not in response.text
    assert str(Path(job_orchestrator.__file__).parent) not in response.text


async def test_path_ids_parse_like_rust_u32() -> None:
    async with client() as http:
        assert (await http.get("/item/+42")).json() == {"id": 42}
        assert (await http.get("/item/4294967295")).json() == {"id": 4294967295}
        for raw, shown in [("4294967296",) * 2, ("-1",) * 2, ("abc",) * 2, ("%20", " ")]:
            response = await http.get(f"/item/{raw}")
            assert response.status_code == 400, raw
            # axum percent-decodes the segment before parsing it, and shows it decoded.
            assert response.text == f"Invalid URL: Cannot parse `{shown}` to a `u32`"
