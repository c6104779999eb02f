"""Shared by the serving tests: a Server on its own event loop, a real KServe v2 client (tritonclient), plain
HTTP requests, the expected outputs from ONNX Runtime, model repositories."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from compiler.references import onnxruntime_session
from runtime.serve import ServeOptions, Server
from tests.models import ROOT


@contextmanager
def running(sources, **options):
    """A Server on a free localhost port, run on its own event loop in a thread; yields it."""
    started, stop, box = threading.Event(), threading.Event(), {}

    async def main():
        server = Server(sources, ServeOptions(port=0, **options))
        box["changes"] = await server.start()
        box["server"] = server
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await server.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(60), "the server did not start"
    try:
        yield box["server"]
    finally:
        stop.set()
        thread.join(60)


def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=8)


def request(server, path: str, body: bytes | dict | None = None, headers: dict | None = None, method=None):
    """(status, headers, body bytes) of one plain HTTP request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=data, headers=headers or {},
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def expected(onnx_path, x):
    session = onnxruntime_session(str(onnx_path), threads=1)
    return session.run(None, {"input": x})[0]


def infer(server, x, model="cnn", version="", binary=True):
    """One infer call through tritonclient; every output comes back (binary unless BINARY is False)."""
    c = client(server)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = None if binary else [triton.InferRequestedOutput(server_output(server, model), binary_data=False)]
    return c.infer(model, [inp], model_version=version, outputs=outputs)


def server_output(server, model) -> str:
    return server.repository.get(model).model.outputs[0].name


def first_output(result) -> np.ndarray:
    return result.as_numpy(result.get_response()["outputs"][0]["name"])


def repository(folder: Path, artifact: Path, versions) -> Path:
    for version in versions:
        (folder / "cnn" / str(version)).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact, folder / "cnn" / str(version) / "model.so")
    return folder


def concurrent_infer(server, arrays, model="cnn"):
    """Infer every array at once from a thread pool; returns each result or the exception it raised."""
    def one(x):
        try:
            return infer(server, x, model)
        except InferenceServerException as err:
            return err

    with concurrent.futures.ThreadPoolExecutor(len(arrays)) as pool:
        return list(pool.map(one, arrays))


class Address:
    """Where a server listens, for the helpers above (they read `.port`)."""

    def __init__(self, port: int):
        self.port = port


@contextmanager
def serving_process(sources, *flags: str):
    """`kiln serve SOURCES FLAGS --port 0` in a process of its own; yields (process, Address). The process is
    killed at the end if it still runs; callers check `process.poll()` to see whether it died."""
    process = subprocess.Popen([sys.executable, "-m", "compiler.cli", "serve", *map(str, sources), "--port", "0",
                                *flags], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = process.stderr.readline()
            assert line, "the server exited early"
        yield process, Address(int(line.split("http://127.0.0.1:")[1].split()[0]))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)

