"""Serve a registered Keras model over HTTP, bounded: MLflow's scoring protocol, Keras only.

    python -m pipeline.serving.server --model models:/ham10000-cnn-focal@champion [--host 127.0.0.1] [--port 5002]
                                      [--max-body-mb 16] [--max-batch 256]

``mlflow models serve`` loads whatever flavour the registry holds: an account that may register
models could point ``@champion`` at a cloudpickle ``python_function`` model and run its code
wherever the model is served, and it reads any request body whole. This server:

- loads a model only when its ``MLmodel`` has the ``keras`` flavour (its Keras file, not an
  exported SavedModel), with Keras' safe mode on (no Lambda bytecode, no unknown classes);
  every other flavour is refused in one line before anything of the model is loaded;
- answers a body over ``--max-body-mb`` with HTTP 413 from its ``Content-Length`` before reading
  it (a chunked body is cut off at the limit), and never echoes the request in an error;
- binds 127.0.0.1 unless told otherwise (``make serve SERVE_HOST=...``).

The protocol is MLflow's scoring server's: ``POST /invocations`` with ``Content-Type:
application/json`` and ``{"inputs": [...]}`` (or ``"instances"``), a batch of RGB images at the
model's input size, values 0-255; the answer is ``{"predictions": [[p_akiec, ...], ...]}``, an
error ``{"error_code": ..., "message": ...}``. ``GET /ping`` and ``/health`` answer 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError, run_cli

DEFAULT_MAX_BODY_MB = 16.0
DEFAULT_MAX_BATCH = 256
SERVED_FLAVOUR = "keras"


def check_flavours(model_dir: str | Path, reference: str | None = None) -> Path:
    """The Keras file of the MLflow model in ``model_dir``; a model without the ``keras`` flavour,
    an exported SavedModel or a data path that leaves the folder is refused in one line."""
    import yaml

    model_dir = Path(model_dir)
    name = reference or str(model_dir)
    try:
        config = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise PipelineError(f"{name}: not an MLflow model (no readable MLmodel: {type(error).__name__})") from None
    flavours = config.get("flavors") if isinstance(config, dict) else None
    if not isinstance(flavours, dict) or not isinstance(flavours.get(SERVED_FLAVOUR), dict):
        found = (", ".join(sorted(map(str, flavours))) if isinstance(flavours, dict) else "") or "none"
        raise PipelineError(
            f"{name}: only Keras models are served, this one's flavours are {found} "
            "(a python_function or cloudpickle model would run its own code when loaded)"
        )
    keras_flavour = flavours[SERVED_FLAVOUR]
    if keras_flavour.get("save_exported_model"):
        raise PipelineError(f"{name}: an exported SavedModel, not a Keras file that safe mode can check: not served")
    data = str(keras_flavour.get("data", "data"))
    base = model_dir.resolve()
    folder = (base / data).resolve()
    if Path(data).is_absolute() or not folder.is_relative_to(base):
        raise PipelineError(f"{name}: its Keras flavour names data outside the model folder ({data!r}): not served")
    keras_file = folder / "model.keras" if folder.is_dir() else folder.with_name(folder.name + ".keras")
    if not keras_file.is_file() or keras_file.is_symlink():
        raise PipelineError(f"{name}: no Keras file in the model ({keras_file.relative_to(base)})")
    return keras_file


def load_served_model(reference: str, download_dir: str | Path | None = None) -> Any:
    """The Keras model of ``reference`` (``models:/NAME@ALIAS``, ``runs:/...`` or a local MLflow
    model folder): downloaded, its flavours checked, then loaded by MLflow's Keras flavour with
    ``safe_mode=True``."""
    import mlflow

    if reference.startswith(("models:/", "runs:/")):
        from pipeline.tracking import mlflow_runs as tracking

        tracking.connect_for_loading()
        destination = Path(download_dir or tempfile.mkdtemp(prefix="served-model-"))
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(destination)))
        except Exception as error:
            raise PipelineError(
                f"cannot fetch {reference} from MLflow at {tracking.tracking_uri()} "
                f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
            ) from None
    else:
        local = Path(reference)
    check_flavours(local, reference)
    try:
        return mlflow.keras.load_model(str(local), load_model_kwargs={"safe_mode": True, "compile": False})
    except Exception as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise PipelineError(f"{reference}: the Keras model does not load in safe mode ({first})") from None


class ScoringApp:
    """An ASGI app answering MLflow's scoring requests with ``model`` (anything with Keras'
    ``input_shape`` and ``predict``), one prediction at a time."""

    def __init__(self, model: Any, max_body_bytes: int, max_batch: int = DEFAULT_MAX_BATCH):
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.input_shape = tuple(model.input_shape[1:])
        self._lock = threading.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        status, body = await self._answer(scope, receive)
        if isinstance(body, bytes):
            await _send(send, status, body, b"text/plain")
        else:
            await _send(send, status, json.dumps(body).encode(), b"application/json")

    async def _answer(self, scope: dict, receive: Any) -> tuple[int, Any]:
        path, method = scope["path"], scope["method"]
        if path in ("/ping", "/health"):
            return (200, b"\n") if method in ("GET", "HEAD") else _error(405, "use GET")
        if path != "/invocations":
            return _error(404, "no such endpoint (POST /invocations, GET /ping)", "ENDPOINT_NOT_FOUND")
        if method != "POST":
            return _error(405, "use POST")
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return _error(400, "Content-Length is not a number")
            if int(declared) > self.max_body_bytes:
                return _too_large(int(declared), self.max_body_bytes)
        if headers.get(b"content-type", b"").split(b";")[0].strip().lower() != b"application/json":
            return _error(415, 'send Content-Type: application/json with {"inputs": [...]}')
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            return _too_large(None, self.max_body_bytes)
        try:
            images = self._images(json.loads(body))
        except ValueError as error:  # JSONDecodeError is one
            return _error(400, str(error).splitlines()[0][:300] if str(error) else "malformed request")
        except RecursionError:
            return _error(400, "the JSON is nested too deeply")
        predictions = await asyncio.get_running_loop().run_in_executor(None, self._predict, images)
        return 200, {"predictions": predictions.tolist()}

    def _images(self, payload: Any) -> np.ndarray:
        data = payload.get("inputs", payload.get("instances")) if isinstance(payload, dict) else None
        if data is None:
            raise ValueError('the body must be a JSON object with "inputs" (or "instances"): a batch of images')
        try:
            images = np.asarray(data, dtype=np.float32)
        except (ValueError, TypeError):
            raise ValueError("inputs must be a rectangular array of numbers") from None
        expected = ("N", *self.input_shape)
        if images.ndim != len(expected) or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"inputs have shape {list(images.shape)}, the model takes {list(expected)}")
        if not 1 <= len(images) <= self.max_batch:
            raise ValueError(f"a batch holds 1 to {self.max_batch} images, not {len(images)}")
        if not np.isfinite(images).all():
            raise ValueError("inputs hold NaN or infinite values")
        return images

    def _predict(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self.model.predict(images, verbose=0))


def _error(status: int, message: str, code: str = "BAD_REQUEST") -> tuple[int, dict]:
    return status, {"error_code": code, "message": message}


def _too_large(size: int | None, limit: int) -> tuple[int, dict]:
    what = f"{size} bytes" if size is not None else "larger"
    return _error(413, f"request body {what}, over the limit of {limit} bytes", "REQUEST_LIMIT_EXCEEDED")


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The request body, or None as soon as it passes ``limit`` bytes (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serving.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, runs:/..., or a local MLflow model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument(
        "--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB, help="larger requests get HTTP 413 unread"
    )
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most images per request")
    args = parser.parse_args(argv)
    if args.max_body_mb <= 0 or args.max_batch < 1:
        raise PipelineError("--max-body-mb must be > 0 and --max-batch >= 1")
    import uvicorn

    model = load_served_model(args.model)
    app = ScoringApp(model, int(args.max_body_mb * 1024 * 1024), args.max_batch)
    print(
        f"serving {args.model} (Keras, safe mode) on http://{args.host}:{args.port}/invocations; "
        f"requests up to {args.max_body_mb:g} MiB",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", limit_concurrency=32, timeout_keep_alive=5)


if __name__ == "__main__":
    sys.exit(run_cli(main))
