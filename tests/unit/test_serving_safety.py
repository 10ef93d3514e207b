"""The model server (`make serve`): only the Keras flavour is loaded, in safe mode, and a request
over the size limit is answered 413 before its body is read; errors never echo the request."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.serving.server import ScoringApp, check_flavours, load_served_model
from tests.conftest import free_port


class StubModel:
    """Keras' two attributes the server uses: a 4x4 RGB input, 7 equal probabilities out."""

    input_shape = (None, 4, 4, 3)

    def __init__(self):
        self.calls = 0

    def predict(self, images, verbose=0):
        self.calls += 1
        return np.full((len(images), 7), 1 / 7, dtype=np.float32)


def call(app, method, path, body=b"", headers=None, chunks=None):
    """One request through the ASGI app; returns (status, parsed body, how many times the body was read)."""
    sent, reads = [], []
    pieces = list(chunks) if chunks is not None else [body]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }

    async def receive():
        reads.append(1)
        if len(reads) > len(pieces):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": pieces[len(reads) - 1], "more_body": len(reads) < len(pieces)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    payload = sent[1]["body"]
    return status, (json.loads(payload) if payload.strip() else payload), len(reads)


def test_a_body_over_the_limit_gets_413_before_it_is_read():
    app = ScoringApp(StubModel(), max_body_bytes=1000)
    status, body, reads = call(
        app,
        "POST",
        "/invocations",
        headers={"Content-Type": "application/json", "Content-Length": str(300 * 1024 * 1024)},
    )
    assert (status, reads) == (413, 0)
    assert body == {
        "error_code": "REQUEST_LIMIT_EXCEEDED",
        "message": "request body 314572800 bytes, over the limit of 1000 bytes",
    }


def test_a_chunked_body_is_cut_off_at_the_limit():
    app = ScoringApp(StubModel(), max_body_bytes=1000)
    status, _, reads = call(
        app, "POST", "/invocations", headers={"Content-Type": "application/json"}, chunks=[b"x" * 400] * 50
    )
    assert status == 413 and reads == 3


def test_a_good_request_is_answered_like_mlflows_scoring_server():
    model = StubModel()
    app = ScoringApp(model, max_body_bytes=100_000)
    request = json.dumps({"inputs": np.full((2, 4, 4, 3), 120.0).tolist()}).encode()
    status, body, _ = call(
        app, "POST", "/invocations", request, {"Content-Type": "application/json", "Content-Length": str(len(request))}
    )
    assert status == 200 and np.allclose(body["predictions"], np.full((2, 7), 1 / 7)) and model.calls == 1
    assert call(app, "GET", "/ping")[:2] == (200, b"\n")


@pytest.mark.parametrize(
    "body, content_type, status, message",
    [
        (b'{"inputs": [[[[1, 2, 3]]]]}', "text/csv", 415, "send Content-Type: application/json"),
        (b'{"inputs": SECRET-PAYLOAD-' + b"A" * 5000 + b"}", "application/json", 400, "Expecting value"),
        (
            b'{"inputs": [[[[1, 2, 3]]]]}',
            "application/json",
            400,
            "inputs have shape [1, 1, 1, 3], the model takes ['N', 4, 4, 3]",
        ),
        (b'{"dataframe_split": {}}', "application/json", 400, 'a JSON object with "inputs"'),
        (b'{"inputs": [[["a"]]]}', "application/json", 400, "rectangular array of numbers"),
        (json.dumps({"inputs": np.full((1, 4, 4, 3), float("nan")).tolist()}).encode(), "application/json", 400, "NaN"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, ""),
    ],
    ids=["not_json_type", "not_json_no_echo", "wrong_shape", "no_inputs", "strings", "nan", "deep_nesting"],
)
def test_a_bad_request_is_one_short_error_that_never_echoes_it(body, content_type, status, message):
    model = StubModel()
    app = ScoringApp(model, max_body_bytes=1_000_000)
    answer, payload, _ = call(app, "POST", "/invocations", body, {"Content-Type": content_type})
    assert answer == status and message in payload["message"] and model.calls == 0
    assert "SECRET-PAYLOAD" not in payload["message"] and len(payload["message"]) < 400


def _write_mlmodel(folder, flavours):
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": flavours}))
    return folder


class _RunsWhenUnpickled:
    """What a hostile python_function model holds: code that runs when the pickle is loaded."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_cloudpickle_python_function_model_is_refused_before_anything_is_loaded(tmp_path):
    import mlflow.pyfunc

    class Hostile(mlflow.pyfunc.PythonModel):
        def __init__(self, payload):
            self.payload = payload

        def predict(self, context, model_input: list[str]) -> list[str]:
            return model_input

    payload = _RunsWhenUnpickled()
    payload.marker = tmp_path / "code-ran"
    mlflow.pyfunc.save_model(str(tmp_path / "model"), python_model=Hostile(payload), pip_requirements=[])
    with pytest.raises(PipelineError, match="only Keras models are served, this one's flavours are python_function"):
        load_served_model(str(tmp_path / "model"))
    assert not payload.marker.exists()


@pytest.mark.parametrize(
    "flavours, message",
    [
        ({"keras": {"save_exported_model": True, "data": "data"}}, "an exported SavedModel"),
        ({"keras": {"data": "../../elsewhere"}}, "data outside the model folder"),
        ({"keras": {"data": "data"}}, "no Keras file in the model"),
        ({}, "flavours are none"),
    ],
    ids=["exported_savedmodel", "data_outside", "no_keras_file", "no_flavour"],
)
def test_only_a_keras_file_inside_the_model_folder_is_served(tmp_path, flavours, message):
    with pytest.raises(PipelineError, match=message):
        check_flavours(_write_mlmodel(tmp_path / "model", flavours))


@pytest.mark.slow
def test_a_real_keras_model_is_served_and_a_lambda_layer_is_refused_by_safe_mode(tmp_path):
    import keras
    import mlflow.keras
    import uvicorn

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs)))
    mlflow.keras.save_model(model, str(tmp_path / "good"), pip_requirements=[])
    lambda_model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Lambda(lambda x: x * 2.0)])
    mlflow.keras.save_model(lambda_model, str(tmp_path / "lambda"), pip_requirements=[])
    with pytest.raises(PipelineError, match="does not load in safe mode"):
        load_served_model(str(tmp_path / "lambda"))

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            ScoringApp(load_served_model(str(tmp_path / "good")), 64 * 1024),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            method="POST",
            data=json.dumps({"inputs": np.zeros((1, 4, 4, 3)).tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            predictions = json.loads(response.read())["predictions"]
        assert np.asarray(predictions).shape == (1, 7) and abs(sum(predictions[0]) - 1) < 1e-4
        with socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as raw:  # headers only: 300 MiB announced, none sent
            raw.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 314572800\r\n\r\n"
            )
            started = time.monotonic()
            answer = raw.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 5
    finally:
        server.should_exit = True
        thread.join(timeout=10)
