"""A registered version is a servable MLflow Model: pyfunc in-process and `mlflow models serve` over HTTP.

Real services only: `mlflow server` with its artifacts on moto S3 (conftest), the model served by
`mlflow models serve --env-manager local` in a subprocess, requests over HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from PIL import Image

from unlearn_lib.models import build_model
from unlearn_lib.settings import Settings
from unlearn_lib.tracking import (
    PRODUCTION,
    configure,
    download_version,
    register_base_model,
    register_version,
)
from unlearn_lib.tracking.pyfunc import log_model_folder, resolve_prompt

NAME = "pyfunc-digits"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_timings():
    yield
    # The figures the change was measured with; `pytest -s` shows them.
    print("\n" + "\n".join(f"  {k}: {v:.2f}s" for k, v in TIMINGS.items()))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def _uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(1, 8, 8) for im in images])


def _files(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


@pytest.fixture(scope="module")
def registered(mlflow_server, base_model_dir, tmp_path_factory) -> dict:
    """The trained base model registered as production through the project's own path."""
    ws = tmp_path_factory.mktemp("pyfunc-ws")
    settings = Settings(
        workspace=str(ws), mlflow_tracking_uri=mlflow_server, model_name=NAME, mlflow_experiment="pyfunc"
    )
    configure(settings)
    t = time.perf_counter()
    mv = register_base_model(settings, base_model_dir, "0" * 40, "d" * 64, 1797, str(ws))
    TIMINGS["register_base_model (log_model_folder + register)"] = time.perf_counter() - t
    return {"settings": settings, "version": str(mv.version), "tracking_uri": mlflow_server}


def test_prompts_name_one_class():
    names = [str(i) for i in range(10)]
    assert resolve_prompt("7", names) == 7
    assert resolve_prompt(" Seven ", names) == 7
    assert resolve_prompt("a handwritten digit three with a corner mark", names) == 3
    assert resolve_prompt("cat", ["airplane", "cat", "dog"]) == 1
    assert resolve_prompt("a photo of a dog", ["airplane", "cat", "dog"]) == 2
    assert resolve_prompt("2", ["airplane", "cat", "dog"]) == 2  # a class index
    with pytest.raises(mlflow.MlflowException, match="names none of the model's classes"):
        resolve_prompt("a horse", ["airplane", "cat", "dog"])
    with pytest.raises(mlflow.MlflowException, match=r"names more than one class \(3, 4\)"):
        resolve_prompt("three or four", names)


def test_the_production_version_generates_the_requested_class(registered, evaluator):
    configure(registered["settings"])
    t = time.perf_counter()
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{PRODUCTION}")
    TIMINGS["pyfunc.load_model"] = time.perf_counter() - t
    assert model.metadata.get_input_schema().input_names() == ["prompt", "label", "num_images", "steps", "seed"]
    request = pd.DataFrame([{"prompt": "a handwritten digit seven", "num_images": 16, "steps": 10, "seed": 3}])
    t = time.perf_counter()
    out = model.predict(request)
    TIMINGS["predict (16 images, 10 steps)"] = time.perf_counter() - t
    assert len(out) == 16 and set(out["label"]) == {7} and set(out["class_name"]) == {"7"}
    assert list(out["index"]) == list(range(16)) and set(out["row"]) == {0} and set(out["seed"]) == {3}
    images = [_decode(b) for b in out["image"]]
    assert {(im.size, im.mode) for im in images} == {((8, 8), "L")}
    # The label is honoured: the audit's digit classifier reads the generated digits as sevens. The
    # base model draws some 7s the judge reads as 2s (0.81-1.0 of 16 over seeds 3-8; 8 images at
    # 0.75 sat on the edge), so 16 images and a margin.
    predicted = evaluator.predict_proba(_uint8(images)).argmax(-1)
    assert torch.bincount(predicted, minlength=10).argmax() == 7
    assert evaluator.accuracy(_uint8(images), torch.full((16,), 7)) >= 0.7
    again = model.predict(request)
    assert list(again["image"]) == list(out["image"])  # a seed reproduces its images

    two = model.predict(
        pd.DataFrame([{"label": 1, "num_images": 2, "steps": 2}, {"label": 4, "num_images": 1, "steps": 2}])
    )
    assert list(zip(two["row"], two["label"], strict=True)) == [(0, 1), (0, 1), (1, 4)]
    with pytest.raises(mlflow.MlflowException, match="label 3 and prompt 'four'"):
        model.predict(pd.DataFrame([{"prompt": "four", "label": 3, "num_images": 1, "steps": 1}]))


def test_download_version_returns_the_plain_folder_for_both_layouts(registered, base_model_dir, tmp_path):
    client = configure(registered["settings"])
    new = download_version(client, NAME, registered["version"], tmp_path / "new")
    with mlflow.start_run():
        # A version from before versions were MLflow Models: the folder as plain run artifacts.
        mlflow.log_artifacts(str(base_model_dir), artifact_path="model")
        old_mv = register_version(client, NAME, mlflow.active_run().info.run_id, {"request_ids": ""})
    old = download_version(client, NAME, old_mv.version, tmp_path / "old")
    assert _files(new) == _files(old) == _files(base_model_dir)
    assert client.get_model_version_by_alias(NAME, PRODUCTION).version == registered["version"]


def test_an_unconditional_model_ignores_the_prompt_and_refuses_a_label(tmp_path):
    model_dir = tmp_path / "uncond"
    model_dir.mkdir()
    build_model("digits", num_classes=0, seed=0).save(model_dir)
    configure(Settings(workspace=str(tmp_path / "ws")))
    with mlflow.start_run():
        info = log_model_folder(model_dir)
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(pd.DataFrame([{"prompt": "anything at all", "num_images": 3, "steps": 2, "seed": 1}]))
    assert len(out) == 3 and out["label"].isna().all() and out["class_name"].isna().all()
    assert {_decode(b).size for b in out["image"]} == {(8, 8)}
    with pytest.raises(mlflow.MlflowException, match="unconditional: it takes no label"):
        model.predict(pd.DataFrame([{"label": 1, "num_images": 1, "steps": 1}]))


# ---- `mlflow models serve` ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(registered, tmp_path_factory) -> str:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        **os.environ,
        # Both: configure() in this process exported its own URIs to the environment.
        "MLFLOW_TRACKING_URI": registered["tracking_uri"],
        "MLFLOW_REGISTRY_URI": registered["tracking_uri"],
        # --env-manager local execs `uvicorn` from PATH: the project's environment must be on it.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@{PRODUCTION}"]
    cmd += ["--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
    with open(log_path, "w") as log:
        t = time.perf_counter()
        # A session of its own: stopping the server stops uvicorn and its workers with it.
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"mlflow models serve did not answer in 240s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.3)
        TIMINGS["mlflow models serve: start to /ping"] = time.perf_counter() - t
        yield url
    finally:
        _stop_group(proc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (mlflow, then uvicorn), SIGKILL what is left after 20s."""
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 20
    while _group_alive(proc.pid) and time.time() < deadline:
        proc.poll()  # reap the leader so that only live members keep the group alive
        time.sleep(0.2)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not _group_alive(proc.pid), "the model server's processes outlived it"


def _post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url + "/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_served_model_answers_invocations_with_png_images(served):
    t = time.perf_counter()
    status, body = _post(served, {"dataframe_records": [{"prompt": "two", "num_images": 3, "steps": 4, "seed": 9}]})
    TIMINGS["POST /invocations (3 images, 4 steps)"] = time.perf_counter() - t
    assert status == 200, body
    preds = body["predictions"]
    assert len(preds) == 3 and {p["label"] for p in preds} == {2} and {p["seed"] for p in preds} == {9}
    img = _decode(preds[0]["image"])
    assert (img.size, img.mode, preds[0]["width"], preds[0]["height"]) == ((8, 8), "L", 8, 8)
    status, body = _post(
        served, {"dataframe_split": {"columns": ["label", "num_images", "steps"], "data": [[5, 2, 2]]}}
    )
    assert status == 200 and [p["label"] for p in body["predictions"]] == [5, 5]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"label": 1, "num_images": -1, "steps": 2}, "num_images must be >= 1, got -1"),
        ({"label": 10, "num_images": 1, "steps": 2}, "label 10 is out of range: the model has classes 0-9"),
        ({"prompt": "a horse", "num_images": 1, "steps": 2}, "names none of the model's classes"),
        ({"label": 1, "num_images": 1, "steps": 5000}, "steps must be between 1 and 1000"),
        ({"label": 1, "steps": 2}, "Model is missing inputs ['num_images']"),
    ],
)
def test_a_malformed_request_gets_a_400_with_one_clear_message(served, record, message):
    status, body = _post(served, {"dataframe_records": [record]})
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in body["message"] and "stack_trace" not in body and "Traceback" not in body["message"]
