"""Serving and batch scoring of image and text models: content types, dynamic batching,
/ping under load, and every bad-input rule (4xx naming the problem, the next request served)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.serve_support import PREDICT_DELAY_ENV
from tests.test_serve import Server
from tests.vision_nlp_support import hp_args, tiny_data
from workloads.serving.batch import main as batch_main
from workloads.training.harness import main as train_main


def train_tiny(task: str, root: Path) -> Path:
    data = tiny_data(task, root / "data", rows=80)
    args = ["--train", str(data), "--model-dir", str(root / "model")]
    args += ["--output-data-dir", str(root / "out"), "--checkpoint-dir", str(root / "ckpt")]
    args += ["--failure-file", str(root / "failure"), *hp_args(task, "epochs=1")]
    assert train_main(args, env={}) == 0, (root / "failure").read_text()
    return root / "model"


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    return train_tiny("image", tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return train_tiny("text", tmp_path_factory.mktemp("text"))


def png(mode: str = "L", size: tuple[int, int] = (20, 24), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_server(image_model):
    server = Server(image_model).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def text_server(text_model):
    server = Server(text_model).wait_ready()
    yield server
    server.stop()


CLASSES = {"ok", "scratch", "pit", "crack"}


def post(server: Server, body: bytes, content_type: str) -> httpx.Response:
    return server.client.post("/invocations", content=body, headers={"Content-Type": content_type})


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "application/x-image"])
def test_one_raw_image_per_request(image_server, content_type):
    body = png("RGB", fmt="JPEG") if content_type == "image/jpeg" else png()
    answer = post(image_server, body, content_type)
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    assert prediction["label"] in CLASSES
    assert set(prediction["probabilities"]) == CLASSES
    assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-5


def test_json_base64_instances(image_server):
    images = [base64.b64encode(png(mode)).decode() for mode in ("L", "RGB", "RGBA", "P", "LA")]
    answer = image_server.client.post(
        "/invocations", json={"instances": [{"image": i} for i in images]}
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 5  # gray, RGBA and palette are converted


def huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (6100, 6100)).save(buf, format="PNG")  # 37 Mpx, a few kB compressed
    return buf.getvalue()


BAD_IMAGES = [
    (b"", "image/png", "zero bytes"),
    (b"this is not an image", "image/png", "cannot decode the image"),
    (png()[:60], "image/png", "truncated or corrupt"),
    (png(fmt="GIF"), "image/png", "unsupported image format GIF"),
    (None, "application/x-image", "over the limit of 36000000 pixels"),
    (b'{"instances": [{"img": "x"}]}', "application/json", 'instance 0: expected {"image"'),
    (b'{"instances": [{"image": "%%%"}]}', "application/json", "not valid base64"),
    (b'{"instances": [{"image": 7}]}', "application/json", "must be a base64 string, got int"),
    (b"<x/>", "application/xml", "use application/json, text/csv, application/x-image"),
]


@pytest.mark.parametrize(("body", "content_type", "message"), BAD_IMAGES)
def test_bad_images_get_a_4xx_naming_the_problem(image_server, body, content_type, message):
    answer = post(image_server, huge_png() if body is None else body, content_type)
    assert 400 <= answer.status_code < 500 and message in answer.json()["error"], answer.text
    assert post(image_server, png(), "image/png").status_code == 200  # and the next is served


def test_openapi_describes_each_tasks_input(image_server, text_server):
    image_doc = image_server.client.get("/openapi.json").json()
    content = image_doc["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "application/x-image", "application/json"} <= set(content)
    item = content["application/json"]["schema"]["properties"]["instances"]["items"]
    assert item["required"] == ["image"]
    text_doc = text_server.client.get("/openapi.json").json()
    content = text_doc["paths"]["/invocations"]["post"]["requestBody"]["content"]
    item = content["application/json"]["schema"]["properties"]["instances"]["items"]
    assert item["properties"]["text"] == {"type": "string", "minLength": 1}
    assert "image/png" not in content


def test_texts_are_classified_and_long_ones_truncated(text_server):
    texts = ["i was charged twice", "the app crashes " * 5000, "where is my parcel?"]
    doc = {"instances": [{"text": t} for t in texts]}
    answer = text_server.client.post("/invocations", json=doc)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 3 and all(p["label"] in p["probabilities"] for p in predictions)
    body = b'"refund please, the invoice is wrong"\nmy account is locked\n'
    rows = post(text_server, body, "text/csv")
    assert rows.status_code == 200 and len(rows.json()["predictions"]) == 2


BAD_TEXTS = [
    ({"instances": [{"text": ""}]}, "instance 0: the text is empty"),
    ({"instances": [{"text": "ok"}, {"text": "   "}]}, "instance 1: the text is empty"),
    ({"instances": [{"text": 5}]}, "must be a string, got int"),
    ({"instances": [{"text": None}]}, "must be a string, got null"),
    ({"instances": [{"body": "hi"}]}, 'instance 0: expected {"text": "..."}'),
]


@pytest.mark.parametrize(("doc", "message"), BAD_TEXTS)
def test_bad_texts_get_a_400_naming_the_problem(text_server, doc, message):
    answer = text_server.client.post("/invocations", json=doc)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    ok = text_server.client.post("/invocations", json={"instances": [{"text": "cancel it"}]})
    assert ok.status_code == 200


def test_an_image_sent_to_a_text_model_is_refused(text_server):
    answer = post(text_server, png(), "image/png")
    assert answer.status_code == 415
    assert "unsupported Content-Type image/png: use application/json, text/csv" in answer.text
    assert post(text_server, b"", "application/json").status_code == 400  # zero bytes


@pytest.mark.parametrize("task", ["image", "text"])
def test_concurrent_requests_are_batched_and_ping_answers(task, image_model, text_model):
    """A slow forward pass (1 s): requests that arrive meanwhile share the next one, of
    different text lengths / image sizes, and /ping answers while they wait."""
    model = image_model if task == "image" else text_model
    server = Server(
        model, "--loader", "tests.serve_support:slow_model", env={PREDICT_DELAY_ENV: "1.0"}
    ).wait_ready()
    try:
        if task == "image":
            bodies = [(png(size=(16 + i, 30 - i)), "image/png") for i in range(8)]
        else:
            docs = [{"instances": [{"text": "where is my order " * (i + 1)}]} for i in range(8)]
            bodies = [(json.dumps(d).encode(), "application/json") for d in docs]
        answers: list[httpx.Response] = []

        def send(body: bytes, content_type: str) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                headers = {"Content-Type": content_type}
                answers.append(client.post("/invocations", content=body, headers=headers))

        threads = [threading.Thread(target=send, args=b) for b in bodies]
        for t in threads:
            t.start()
        time.sleep(0.1)
        assert server.client.get("/ping").status_code == 200
        assert len(answers) < 8  # answered while requests wait for the batch
        for t in threads:
            t.join(30)
        assert [r.status_code for r in answers] == [200] * 8
        stats = server.client.get("/stats").json()
        assert stats["requests"] == 8 and stats["max_batch_requests"] > 1, stats
    finally:
        server.stop()


def test_batch_scoring_images_and_texts(tmp_path, image_model, text_model, capsys):
    images = tiny_data("image", tmp_path / "imgs", rows=12)
    out = tmp_path / "images.csv"
    assert batch_main([str(images), str(out), "--model-dir", str(image_model)]) == 0
    scored = pd.read_csv(out)
    assert len(scored) == 12 and "image" not in scored.columns
    assert set(scored["prediction"]) <= CLASSES and scored["file"].str.endswith(".png").all()
    assert {"probability_ok", "probability_crack"} <= set(scored.columns)

    txt = tmp_path / "tickets.txt"
    txt.write_text("my parcel is late\n\nplease cancel my plan\n")
    out = tmp_path / "texts.jsonl"
    assert batch_main([str(txt), str(out), "--model-dir", str(text_model)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["my parcel is late", "please cancel my plan"]
    table = tiny_data("text", tmp_path / "table", rows=10)
    out = tmp_path / "table.parquet"
    assert batch_main([str(table), str(out), "--model-dir", str(text_model)]) == 0
    assert len(pd.read_parquet(out)) == 10

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["ok", None]}).to_csv(bad, index=False)
    assert batch_main([str(bad), str(tmp_path / "o.csv"), "--model-dir", str(text_model)]) == 2
    assert "row 1: the text is empty" in capsys.readouterr().err
