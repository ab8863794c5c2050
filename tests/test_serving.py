"""A served export: batched answers equal unbatched ones; bad input gets 4xx; overload 503."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app as cli_app
from client.data import load_sklearn, save_csv
from client.trainer import TabularTrainer
from explain.served import feature_groups, for_predictor
from models.batching import DynamicBatcher, QueueFull, RequestTimeout
from models.export import Provenance, export_model
from models.predictor import load_predictor
from models.profiling import BatchTiming, choose_batch_size, serving_defaults
from models.serving_http import ServeConfig, ServerThread, create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
runner = CliRunner()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A breast-cancer export (fresh weights: serving needs no trained model) and its rows."""
    data = load_sklearn("breast_cancer")
    trainer = TabularTrainer(data, seed=3, device=torch.device("cpu"))
    root = tmp_path_factory.mktemp("serve")
    export_model(
        trainer.get_parameters({}),
        trainer.model,
        model_name=trainer.model_name,
        model_config=trainer.model_config,
        schema=trainer.export_schema(),
        provenance=Provenance(
            run_id="run-42",
            site="hospital-a",
            secure=True,
            final_model_sha256="ab" * 32,
            key_fingerprint="fp:1234",
        ),
        out_dir=root / "model",
    )
    return {
        "dir": root / "model",
        "x": data.x.astype(np.float32),
        "features": list(data.feature_names),
        "csv": save_csv(data, root / "rows.csv"),
        "root": root,
    }


@pytest.fixture(scope="module")
def predictor(site: dict):
    return load_predictor(site["dir"])


@pytest.fixture(scope="module")
def server(site: dict, predictor):
    config = ServeConfig(
        max_batch_size=32,
        max_wait_ms=20.0,
        token=TOKEN,
        report="reports/run-42.html",
        max_body_bytes=200_000,
        max_rows=100,
        explainer=for_predictor(predictor, {"x": site["x"][:40]}, max_evals=200),
    )
    application = create_app(predictor, config)
    with ServerThread(application) as running:
        running.app = application
        yield running


def direct(predictor, rows: np.ndarray) -> np.ndarray:
    return predictor({"x": np.asarray(rows, dtype=np.float32)})


def row_json(site: dict, i: int, reverse: bool = False) -> dict:
    names = site["features"][::-1] if reverse else site["features"]
    index = {n: j for j, n in enumerate(site["features"])}
    return {n: float(site["x"][i, index[n]]) for n in names}


def test_concurrent_clients_get_unbatched_answers_in_batches(site, predictor, server):
    async def one(client: httpx.AsyncClient, i: int) -> list[float]:
        reply = await client.post("/predict", json={"rows": [row_json(site, i)]}, headers=AUTH)
        assert reply.status_code == 200, reply.text
        return reply.json()["probabilities"][0]

    async def many() -> list[list[float]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(96)))

    got = np.array(asyncio.run(many()))
    expected = np.concatenate([direct(predictor, site["x"][i : i + 1]) for i in range(96)])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    batcher = server.app.state.batcher
    assert batcher.stats.max_batch_seen > 1, batcher.stats
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    single = float(re.search(r'cohort_serve_batch_rows_bucket\{le="1.0"\} (\S+)', metrics)[1])
    total = float(re.search(r"cohort_serve_batch_rows_count (\S+)", metrics)[1])
    assert total > single, "every model call held one row: nothing was batched"
    assert re.search(r'cohort_serve_requests_total\{endpoint="/predict",status="200"\}', metrics)
    assert "cohort_serve_queue_depth" in metrics


def test_rows_in_any_key_order_and_csv_columns_by_name(site, predictor, server):
    expected = direct(predictor, site["x"][:3])
    rows = [row_json(site, i, reverse=True) for i in range(3)]
    reply = httpx.post(f"{server.url}/predict", json={"rows": rows}, headers=AUTH)
    assert reply.status_code == 200
    body = reply.json()
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-6)
    assert body["predicted"] == [body["classes"][k] for k in expected.argmax(axis=1)]
    # CSV: shuffled columns plus an extra label column, which is ignored.
    names = site["features"][::-1]
    lines = [",".join(["label", *names])]
    for i in range(3):
        lines.append(",".join(["1", *(repr(row_json(site, i)[n]) for n in names)]))
    reply = httpx.post(
        f"{server.url}/predict",
        content="\n".join(lines) + "\n",
        headers={**AUTH, "Content-Type": "text/csv"},
    )
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["probabilities"], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (
            lambda r: {"rows": [{k: v for k, v in r.items() if k != "mean radius"}]},
            422,
            "mean radius",
        ),
        (lambda r: {"rows": [{**r, "favourite colour": 1.0}]}, 422, "favourite colour"),
        (lambda r: {"rows": [{**r, "mean texture": "high"}]}, 422, "mean texture"),
        (lambda r: {"rows": [{**r, "mean texture": True}]}, 422, "mean texture"),
        (lambda r: {"rows": r}, 422, "rows"),
        (lambda r: {"rows": []}, 422, "no rows"),
        (lambda r: {"inputs": {"x": [[1.0]]}}, 422, "inputs"),
        (lambda r: [r], 422, "body"),
        (lambda r: {"rows": [r] * 101}, 413, "limit is 100"),
        (lambda r: {"rows": [r] * 3000}, 413, "limit"),
    ],
)
def test_bad_json_gets_4xx_naming_the_field_and_the_server_stays_up(
    site, server, make, status, words
):
    reply = httpx.post(f"{server.url}/predict", json=make(row_json(site, 0)), headers=AUTH)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["detail"]
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    good = httpx.post(f"{server.url}/predict", json={"rows": [row_json(site, 0)]}, headers=AUTH)
    assert good.status_code == 200


@pytest.mark.parametrize(
    ("body", "kind", "status", "words"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"rows": [{"mean radius": NaN}]}', "application/json", 422, ""),
        (b"\xff\xfe", "application/json", 400, "JSON"),
        (b"a,b\n1,2\n", "text/csv", 422, "lacks column"),
        (b"", "text/csv", 400, "empty"),
        (b"<xml/>", "application/xml", 415, "application/json"),
    ],
)
def test_malformed_bodies_get_4xx(server, site, body, kind, status, words):
    reply = httpx.post(
        f"{server.url}/predict", content=body, headers={**AUTH, "Content-Type": kind}
    )
    assert reply.status_code == status, reply.text
    assert words in reply.json()["detail"]


def test_a_non_numeric_csv_cell_is_named(site, server):
    names = site["features"]
    values = [str(v) for v in site["x"][0]]
    values[4] = "n/a"
    reply = httpx.post(
        f"{server.url}/predict",
        content=",".join(names) + "\n" + ",".join(values) + "\n",
        headers={**AUTH, "Content-Type": "text/csv"},
    )
    assert reply.status_code == 422
    assert names[4] in reply.json()["detail"] and "n/a" in reply.json()["detail"]


def test_a_nan_value_is_refused_by_name(site, server):
    body = json.dumps({"rows": [{**row_json(site, 0), "mean area": float("nan")}]})
    reply = httpx.post(
        f"{server.url}/predict", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert reply.status_code == 422
    assert "mean area" in reply.json()["detail"]


def test_the_token_is_required_and_compared_exactly(site, server):
    row = {"rows": [row_json(site, 0)]}
    assert httpx.post(f"{server.url}/predict", json=row).status_code == 401
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    assert httpx.post(f"{server.url}/predict", json=row, headers=wrong).status_code == 401
    basic = {"Authorization": f"Basic {TOKEN}"}
    assert httpx.get(f"{server.url}/model", headers=basic).status_code == 401
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes need no secret


def test_model_returns_the_provenance(site, server):
    card = httpx.get(f"{server.url}/model", headers=AUTH).json()
    assert card["run_id"] == "run-42"
    assert card["final_model_sha256"] == "ab" * 32
    assert card["key_fingerprint"] == "fp:1234"
    assert card["report"] == "reports/run-42.html"
    assert card["features"] == site["features"]
    assert card["classes"] and card["kind"] == "tabular"
    assert card["files"]["model.ts"] and card["batching"]["max_batch_size"] == 32


def test_explain_attributes_one_row_against_site_rows(site, predictor, server):
    reply = httpx.post(
        f"{server.url}/explain", json={"rows": [row_json(site, 5)]}, headers=AUTH, timeout=60
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    for k, name in enumerate(body["classes"]):
        values = body["attributions"][name]
        assert set(values) == set(site["features"])
        # SHAP's efficiency: attributions add up to f(x) minus the background's mean.
        total = sum(values.values()) + body["base_values"][name]
        assert total == pytest.approx(body["probabilities"][k], abs=1e-4)
    two = {"rows": [row_json(site, 0), row_json(site, 1)]}
    assert httpx.post(f"{server.url}/explain", json=two, headers=AUTH).status_code == 422


class Gate:
    """A predictor that holds the worker until released: a deterministic full queue."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, inputs):
        self.entered.set()
        self.release.wait(10)
        return self.predictor(inputs)

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)  # kind, feature names, classes, manifest


def test_a_full_queue_gets_503_and_a_stuck_request_504(site, predictor):
    gate = Gate(predictor)
    config = ServeConfig(max_batch_size=1, max_wait_ms=0, max_queue=1, timeout_s=1.5)
    application = create_app(gate, config)  # type: ignore[arg-type]
    body = {"rows": [row_json(site, 0)]}
    with ServerThread(application) as running:
        results: dict[str, int] = {}

        def post(name: str) -> None:
            results[name] = httpx.post(f"{running.url}/predict", json=body, timeout=10).status_code

        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert gate.entered.wait(5)  # the worker holds the first request
        second = threading.Thread(target=post, args=("second",))
        second.start()
        deadline = time.monotonic() + 5
        while application.state.batcher.queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = httpx.post(f"{running.url}/predict", json=body, timeout=10)
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        first.join(10)
        second.join(10)
        # Both waited past their 1.5 s deadline: answered 504, never left hanging.
        assert results == {"first": 504, "second": 504}
        gate.release.set()
        ok = httpx.post(f"{running.url}/predict", json=body, timeout=10)
        assert ok.status_code == 200
        assert httpx.get(f"{running.url}/healthz").json()["status"] == "ok"


def test_a_bad_request_in_a_batch_fails_alone(predictor, site):
    batcher = DynamicBatcher(predictor, max_batch_size=8, max_wait_ms=200).start()
    try:
        good = batcher.submit({"x": site["x"][:2]})
        bad = batcher.submit({"x": site["x"][:1, :5]})  # wrong width: the model refuses it
        np.testing.assert_allclose(good.result(5), direct(predictor, site["x"][:2]), atol=1e-6)
        with pytest.raises(RuntimeError):
            bad.result(5)
        assert batcher.stats.requests == 2
    finally:
        batcher.stop()
    with pytest.raises(QueueFull):
        batcher.submit({"x": site["x"][:1]})


def test_the_batcher_times_out_rather_than_waiting_forever(predictor, site):
    gate = Gate(predictor)
    batcher = DynamicBatcher(gate, max_batch_size=1, timeout_s=0.3).start()
    try:
        with pytest.raises(RequestTimeout):
            batcher.predict_sync({"x": site["x"][:1]})
    finally:
        gate.release.set()
        batcher.stop()


def test_the_profile_picks_the_fastest_batch_within_the_budget():
    def timing(b: int, p99: float, rows_s: float) -> BatchTiming:
        return BatchTiming(b, p99 / 2, p99, p99, p99 / 2, rows_s, 1.0, 30)

    timings = [
        timing(1, 0.1, 1e4),
        timing(16, 1.0, 8e4),
        timing(64, 3.0, 9e4),
        timing(256, 20, 1e5),
    ]
    assert choose_batch_size(timings, 5.0) == (64, True)
    assert choose_batch_size(timings, 0.5) == (1, True)
    assert choose_batch_size(timings, 0.01) == (1, False)
    with pytest.raises(ValueError):
        choose_batch_size([], 1.0)


def test_profile_command_prints_json_table_and_plot(site, tmp_path):
    plot = tmp_path / "profile.png"
    args = [
        "model",
        "profile",
        str(site["dir"]),
        "--device",
        "cpu",
        "--int8",
        "--batch-sizes",
        "1,8,32",
        "--repeats",
        "5",
        "--warmup",
        "1",
        "--background",
        str(site["csv"]),
    ]
    result = runner.invoke(cli_app, [*args, "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    variants = [p["variant"] for p in report["profiles"]]
    assert variants == ["fp32", "int8"]
    for p in report["profiles"]:
        assert [t["batch_size"] for t in p["timings"]] == [1, 8, 32]
        assert p["chosen_batch_size"] in (1, 8, 32) and p["threads"] >= 1
        assert all(t["p50_ms"] <= t["p99_ms"] for t in p["timings"])
    assert plot.read_bytes()[:4] == b"\x89PNG"
    table = runner.invoke(cli_app, args)
    assert table.exit_code == 0 and "int8" in table.output and "chosen" in table.output
    bad = runner.invoke(cli_app, ["model", "profile", str(site["dir"]), "--batch-sizes", "0,x"])
    assert bad.exit_code == 2 and "--batch-sizes" in bad.output
    missing = runner.invoke(cli_app, ["model", "profile", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "model.json" in missing.output


def test_serving_defaults_come_from_the_profile():
    from models.profiling import Profile

    timings = (
        BatchTiming(1, 0.2, 0.3, 0.4, 0.2, 5e3, 1, 30),
        BatchTiming(32, 4, 5, 6, 4, 8e3, 1, 30),
    )
    profile = Profile("fp32", "cpu", 2, timings, 32, 50.0, True, "")
    assert serving_defaults(profile) == (32, 0.2)


def test_serve_refuses_half_a_tls_pair(site, tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    result = runner.invoke(cli_app, ["model", "serve", str(site["dir"]), "--tls-cert", str(cert)])
    assert result.exit_code == 2 and "--tls-key" in result.output


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small multimodal export (named inputs: token ids, mask, image, vitals)."""
    from models import build_model, get_weights
    from models.clinic import make_clinic_multimodal

    torch.manual_seed(0)
    data = make_clinic_multimodal(8, seed=1, with_vitals=True)
    config = {
        "vocab_size": data.tokenizer.vocab_size,
        "dim": 16,
        "heads": 2,
        "layers": 1,
        "image_widths": (4, 8),
        "tabular_features": int(data.inputs["tabular"].shape[1]),
    }
    model = build_model("multimodal", **config).eval()
    out = tmp_path_factory.mktemp("multimodal") / "model"
    export_model(
        get_weights(model),
        model,
        model_name="multimodal",
        model_config=config,
        schema=None,
        provenance=Provenance(run_id="run-mm"),
        out_dir=out,
    )
    return {"dir": out, "inputs": {k: v.numpy() for k, v in data.inputs.items()}}


def test_a_named_input_model_is_served_batched_and_refuses_csv(multimodal):
    predictor = load_predictor(multimodal["dir"])
    assert predictor.kind == "named" and "input_ids" in predictor.required_inputs
    inputs = multimodal["inputs"]
    config = ServeConfig(max_batch_size=8, max_wait_ms=50.0)
    with ServerThread(create_app(predictor, config)) as running:

        def body(i: int) -> dict:
            return {"inputs": {k: v[i : i + 1].tolist() for k, v in inputs.items()}}

        async def many() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
                return await asyncio.gather(
                    *(client.post("/predict", json=body(i)) for i in range(8))
                )

        replies = asyncio.run(many())
        assert all(r.status_code == 200 for r in replies), replies[0].text
        got = np.array([r.json()["probabilities"][0] for r in replies])
        expected = np.concatenate(
            [predictor({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(8)]
        )
        np.testing.assert_allclose(got, expected, atol=1e-5)
        # Text only: the optional modalities are skipped, as the model allows.
        text = {"inputs": {k: inputs[k][:2].tolist() for k in ("input_ids", "attention_mask")}}
        assert httpx.post(f"{running.url}/predict", json=text).status_code == 200
        bad = [
            ({"inputs": {"image": inputs["image"][:1].tolist()}}, 422, "input_ids"),
            ({"inputs": {**body(0)["inputs"], "genome": [[1]]}}, 422, "genome"),
            ({"inputs": {**body(0)["inputs"], "input_ids": [[0.5, 1]]}}, 422, "integers"),
            ({"inputs": {**body(0)["inputs"], "image": [[1.0, 2.0]]}}, 400, "cannot score"),
            ({"rows": [{"a": 1}]}, 422, "inputs"),
        ]
        for payload, status, words in bad:
            reply = httpx.post(f"{running.url}/predict", json=payload)
            assert reply.status_code == status, (payload.keys(), reply.text)
            assert words in reply.json()["detail"]
        csv_reply = httpx.post(
            f"{running.url}/predict", content="a\n1\n", headers={"Content-Type": "text/csv"}
        )
        assert csv_reply.status_code == 415
        explain = httpx.post(f"{running.url}/explain", json=body(0))
        assert explain.status_code == 400 and "--background" in explain.json()["detail"]
        card = httpx.get(f"{running.url}/model").json()
        assert card["run_id"] == "run-mm" and card["kind"] == "named"
        assert httpx.get(f"{running.url}/healthz").json()["status"] == "ok"


def test_the_serve_command_speaks_https_and_wants_the_token(site, tmp_path):
    import os
    import socket
    import ssl
    import subprocess
    import sys

    from coordinator.pki import create_federation

    pki = create_federation(tmp_path / "pki", ["127.0.0.1", "localhost"])
    trust = ssl.create_default_context(cafile=str(pki.ca_cert))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "model",
        "serve",
        str(site["dir"]),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-batch-size",
        "8",
        "--max-wait-ms",
        "1",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
    ]
    env = {**os.environ, "COHORT_SERVE_TOKEN": TOKEN, "PYTHONPATH": os.getcwd()}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(f"{url}/healthz", verify=trust).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.3)
        row = {"rows": [row_json(site, 0)]}
        assert httpx.post(f"{url}/predict", json=row, verify=trust).status_code == 401
        reply = httpx.post(f"{url}/predict", json=row, headers=AUTH, verify=trust)
        assert reply.status_code == 200
        assert (
            httpx.get(f"{url}/model", headers=AUTH, verify=trust).json()["batching"][
                "max_batch_size"
            ]
            == 8
        )
        with pytest.raises(httpx.TransportError):  # plain HTTP is not answered
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        server.terminate()
        server.wait(10)


def test_serving_beyond_this_machine_needs_a_token_and_tls(tmp_path):
    result = runner.invoke(
        cli_app, ["model", "serve", str(tmp_path), "--host", "0.0.0.0", "--token", "t"]
    )

    assert result.exit_code == 2
    assert "--tls-cert" in result.output


def test_masks_travel_with_the_inputs_they_mask():
    groups = feature_groups(["input_ids", "attention_mask", "image", "notes_mask", "notes_ids"])
    assert groups == {
        "input_ids": ("input_ids", "attention_mask"),
        "image": ("image",),
        "notes_ids": ("notes_ids", "notes_mask"),
    }
    assert feature_groups(["pixel_mask"]) == {"pixel_mask": ("pixel_mask",)}


def test_a_multimodal_request_is_explained_over_its_named_inputs(multimodal, tmp_path):
    """/explain on a real server: one feature per named input, adding up to f(x) - base."""
    predictor = load_predictor(multimodal["dir"])
    inputs = multimodal["inputs"]
    site_rows = {k: v[2:8] for k, v in inputs.items()}
    np.savez(tmp_path / "background.npz", label=np.zeros(6, dtype=np.int64), **site_rows)
    from cli.model_source import read_named_background

    background = read_named_background(tmp_path / "background.npz", predictor.input_names)
    assert "label" not in background and len(background["image"]) == 6
    config = ServeConfig(explainer=for_predictor(predictor, background))
    with ServerThread(create_app(predictor, config)) as running:
        row = {"inputs": {k: v[:1].tolist() for k, v in inputs.items()}}
        reply = httpx.post(f"{running.url}/explain", json=row, timeout=120)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["features"] == ["input_ids", "image", "tabular"]
        assert "named inputs" in body["explainer"] and "6 site rows" in body["explainer"]
        expected = predictor({k: v[:1] for k, v in inputs.items()})[0]
        for k, name in enumerate(body["classes"]):
            values = body["attributions"][name]
            assert set(values) == {"input_ids", "image", "tabular"}
            total = sum(values.values()) + body["base_values"][name]
            assert total == pytest.approx(float(expected[k]), abs=1e-4)
        # Text alone: the image and vitals are not features of this request.
        text = {"inputs": {k: inputs[k][:1].tolist() for k in ("input_ids", "attention_mask")}}
        only = httpx.post(f"{running.url}/explain", json=text, timeout=60).json()
        assert only["features"] == ["input_ids"]
        # A hostile caller: rows shaped unlike the site's, two rows, a wrong token dtype.
        short = {"inputs": {**row["inputs"], "image": [[[[0.0]]]]}}
        reply = httpx.post(f"{running.url}/explain", json=short, timeout=60)
        assert reply.status_code == 422 and "inputs.image" in reply.json()["detail"]
        two = {"inputs": {k: v[:2].tolist() for k, v in inputs.items()}}
        assert httpx.post(f"{running.url}/explain", json=two).status_code == 422
        assert httpx.get(f"{running.url}/healthz").json()["status"] == "ok"


def test_the_device_is_cuda_when_present_with_bf16_autocast(site):
    """The selection logic on whatever this machine has; nothing is faked."""
    import warnings

    from cli.model_source import resolve_device
    from models.device import autocast_context

    has_cuda = torch.cuda.is_available()
    assert resolve_device("auto") == ("cuda" if has_cuda else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="use cpu, cuda or auto"):
        resolve_device("tpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast warns that CUDA is absent, on a CPU box
        context = autocast_context(torch.device("cuda"))
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    assert not isinstance(autocast_context(torch.device("cpu")), torch.autocast)
    predictor = load_predictor(site["dir"], device=resolve_device("auto"))
    assert predictor.device.type == ("cuda" if has_cuda else "cpu")
    out = predictor({"x": site["x"][:3]})
    assert out.dtype == np.float32 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3)
    if not has_cuda:
        result = runner.invoke(cli_app, ["model", "profile", str(site["dir"]), "--device", "cuda"])
        assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_requests_awaited_together_on_a_loop_reach_the_model_as_one_batch(predictor, site):
    """The loop hands the worker one list per round of ready callbacks: no wait needed."""
    batcher = DynamicBatcher(predictor, max_batch_size=64, max_wait_ms=0).start()
    try:

        async def together() -> list[np.ndarray]:
            return await asyncio.gather(
                *(batcher.predict_async({"x": site["x"][i : i + 1]}) for i in range(10))
            )

        answers = asyncio.run(together())
        assert batcher.stats.batch_sizes == {10: 1}
        np.testing.assert_allclose(
            np.concatenate(answers), direct(predictor, site["x"][:10]), atol=1e-6
        )
    finally:
        batcher.stop()


def test_an_awaited_request_times_out_while_the_model_is_stuck(predictor, site):
    gate = Gate(predictor)
    batcher = DynamicBatcher(gate, max_batch_size=4, timeout_s=0.3, max_queue=2).start()
    try:

        async def stuck() -> None:
            began = time.monotonic()
            with pytest.raises(RequestTimeout):
                await batcher.predict_async({"x": site["x"][:1]})
            assert time.monotonic() - began < 1.0  # the sweeper, not a forgotten waiter

        asyncio.run(stuck())
        assert batcher.queue_depth == 0
    finally:
        gate.release.set()
        batcher.stop()


def test_a_second_explanation_waits_its_turn_with_503_and_predict_still_answers(site, predictor):
    """Each explanation costs thousands of model rows: one at a time (review: DoS)."""
    real = for_predictor(predictor, {"x": site["x"][:40]}, max_evals=200)
    entered, release = threading.Event(), threading.Event()

    def held(inputs):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(10)
        return real(inputs)

    application = create_app(predictor, ServeConfig(explainer=held))
    body = {"rows": [row_json(site, 3)]}
    with ServerThread(application) as running:
        first: dict[str, int] = {}
        worker = threading.Thread(
            target=lambda: first.update(
                status=httpx.post(f"{running.url}/explain", json=body, timeout=20).status_code
            )
        )
        worker.start()
        assert entered.wait(10)
        busy = httpx.post(f"{running.url}/explain", json=body, timeout=10)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert httpx.post(f"{running.url}/predict", json=body, timeout=10).status_code == 200
        release.set()
        worker.join(20)
        assert first == {"status": 200}
        assert httpx.post(f"{running.url}/explain", json=body, timeout=20).status_code == 200
