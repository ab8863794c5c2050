"""The HTTP face of a served model: FastAPI routes over a :class:`DynamicBatcher`.

Why FastAPI on uvicorn: a well-kept ASGI stack whose pydantic validation answers a bad
body with 422 naming the field, and whose async handlers let many requests wait on the
batcher at once while one worker thread runs the model. Routes: ``POST /predict`` (JSON
rows by feature name, a CSV body with a header row, or named inputs), ``POST /explain``
(SHAP for one row against the site's own background rows, for every kind of model:
:mod:`explain.served`), ``GET /model`` (provenance),
``GET /healthz`` and ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError

from models.batching import DynamicBatcher, QueueFull, RequestTimeout
from models.predictor import Inputs, Predictor, rows_of
from models.serving_inputs import (
    NamedBody,
    RowsBody,
    bad_request,
    parse_csv,
    parse_named,
    parse_rows,
    read_body,
)


@dataclass
class ServeConfig:
    """How the service behaves; the batch settings come from a profile unless given."""

    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    timeout_s: float = 10.0
    max_body_bytes: int = 1 << 20
    max_rows: int = 1024
    token: str = ""
    report: str = ""
    # SHAP of one request against the site's own rows (explain.served.RequestExplainer,
    # wired by cli/serve.py: models may not import explain); None: /explain answers 400.
    explainer: Callable[[Inputs], dict[str, Any]] | None = None


class Metrics:
    """Prometheus series for one app (its own registry, so two apps never collide)."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge(
            "cohort_serve_queue_depth", "Requests waiting for the model", registry=self.registry
        )
        self.queue_depth.set_function(lambda: batcher.queue_depth)
        self.batch_rows = Histogram(
            "cohort_serve_batch_rows",
            "Rows per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "cohort_serve_model_seconds", "Seconds per model call", registry=self.registry
        )
        self.latency = Histogram(
            "cohort_serve_request_seconds",
            "Request latency, arrival to answer",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.requests = Counter(
            "cohort_serve_requests",
            "Requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )

    def on_batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.model_seconds.observe(seconds)


def create_app(predictor: Predictor, config: ServeConfig) -> FastAPI:
    """The service: one batcher over ``predictor``, the routes, metrics and the token check."""
    batcher = DynamicBatcher(
        predictor,
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
        timeout_s=config.timeout_s,
    )
    metrics = Metrics(batcher)
    batcher.on_batch = metrics.on_batch

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        if config.explainer is not None:
            # shap takes seconds to import: pay it at start, not in the first /explain.
            threading.Thread(target=__import__, args=("shap",), daemon=True).start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="Cohort model", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.metrics = metrics

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        endpoint = request.url.path if request.url.path in _ROUTES else "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def authorised(request: Request) -> None:
        if not config.token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), config.token.encode()
        ):
            raise HTTPException(
                401,
                "a bearer token is required: Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def inputs_of(request: Request) -> Inputs:
        body = await read_body(request, config.max_body_bytes)
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind == "text/csv":
            if predictor.kind != "tabular":
                raise bad_request(415, 'CSV bodies are for tabular models; send JSON {"inputs": …}')
            try:
                x = parse_csv(body.decode("utf-8"), predictor.feature_names)
            except UnicodeDecodeError:
                raise bad_request(400, "the CSV body is not UTF-8") from None
            inputs = {"x": x}
        elif kind in ("application/json", ""):
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise bad_request(400, f"the body is not valid JSON: {exc}") from None
            inputs = _validated(payload)
        else:
            raise bad_request(415, f"content type {kind!r}: send application/json or text/csv")
        rows = len(next(iter(inputs.values())))
        if rows == 0:
            raise bad_request(422, "no rows to score")
        if rows > config.max_rows:
            raise bad_request(413, f"{rows} rows in one request; the limit is {config.max_rows}")
        return inputs

    def _validated(payload: Any) -> Inputs:
        shape = RowsBody if predictor.kind == "tabular" else NamedBody
        try:
            body = shape.model_validate(payload)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:3]
            ]
            raise bad_request(422, "; ".join(problems)) from None
        if isinstance(body, RowsBody):
            return {"x": parse_rows(body.rows, predictor.feature_names)}
        return parse_named(body.inputs, predictor.input_names, predictor.required_inputs)

    def answer(probabilities: np.ndarray) -> dict[str, Any]:
        classes = list(predictor.class_names)
        return {
            "classes": classes,
            "probabilities": probabilities.astype(float).tolist(),
            "predicted": [classes[i] for i in probabilities.argmax(axis=1)],
        }

    @app.post("/predict", dependencies=[Depends(authorised)])
    async def predict(request: Request) -> dict[str, Any]:
        inputs = await inputs_of(request)
        try:
            out = await batcher.predict_async(inputs)
        except QueueFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        except RequestTimeout as exc:
            raise bad_request(504, str(exc)) from None
        except (RuntimeError, ValueError, TypeError) as exc:
            # The model refused these inputs (shape, dtype): the caller's error, stated.
            raise bad_request(
                400, f"the model cannot score these inputs: {str(exc).splitlines()[0]}"
            ) from None
        return answer(out)

    # One explanation at a time: each costs thousands of model rows and runs beside the
    # batcher, not through it, so a second caller gets 503 rather than starving /predict.
    # A thread lock the worker itself releases: a caller that hangs up does not free the
    # slot while its explanation still runs.
    explaining = threading.Lock()

    @app.post("/explain", dependencies=[Depends(authorised)])
    async def explain(request: Request) -> dict[str, Any]:
        explainer = config.explainer
        if explainer is None:
            raise bad_request(
                400, "no background rows: start the service with --background (the site's rows)"
            )
        inputs = await inputs_of(request)
        if rows_of(inputs) != 1:
            raise bad_request(422, "explain takes exactly one row")
        if not explaining.acquire(blocking=False):
            raise HTTPException(
                503, "an explanation is already running: retry", headers={"Retry-After": "1"}
            )

        def explain_then_release() -> dict[str, Any]:
            try:
                return explainer(inputs)
            finally:
                explaining.release()

        try:
            return await asyncio.to_thread(explain_then_release)
        except ValueError as exc:
            raise bad_request(422, str(exc).splitlines()[0]) from None

    @app.get("/model", dependencies=[Depends(authorised)])
    async def model() -> dict[str, Any]:
        return model_card(predictor, config, batcher)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        alive = batcher._thread is not None and batcher._thread.is_alive()
        if not alive:
            return JSONResponse({"status": "down"}, status_code=503)  # type: ignore[return-value]
        return {"status": "ok", "queue_depth": batcher.queue_depth}

    @app.get("/metrics", dependencies=[Depends(authorised)])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


_ROUTES = {"/predict", "/explain", "/model", "/healthz", "/metrics"}


def model_card(
    predictor: Predictor, config: ServeConfig, batcher: DynamicBatcher
) -> dict[str, Any]:
    """What is served and where it came from, so it can be traced to the run's audit log."""
    manifest = predictor.manifest
    provenance = manifest.get("provenance", {})
    return {
        "run_id": provenance.get("run_id", ""),
        "site": provenance.get("site", ""),
        "secure": provenance.get("secure", False),
        "final_model_sha256": provenance.get("final_model_sha256", ""),
        "key_fingerprint": provenance.get("key_fingerprint", ""),
        "weights_sha256": provenance.get("weights_sha256", ""),
        "report": config.report or provenance.get("extra", {}).get("report") or None,
        "model": manifest.get("model", {}).get("name", ""),
        "kind": predictor.kind,
        "int8": predictor.int8,
        "device": str(predictor.device),
        "classes": list(predictor.class_names),
        "features": list(predictor.feature_names),
        "inputs": list(predictor.input_names),
        "files": manifest.get("files", {}),
        "batching": {
            "max_batch_size": batcher.max_batch_size,
            "max_wait_ms": batcher.max_wait_s * 1e3,
            "timeout_s": batcher.timeout_s,
        },
    }


class ServerThread:
    """A uvicorn server on a background thread (tests, benchmarks); port 0 picks a free one."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, **options: Any):
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", **options)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
