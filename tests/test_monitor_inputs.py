"""Image and text models are monitored on features derived from their inputs: the task's
baseline and the monitor measure images (size, brightness, contrast, mode, format) and texts
(length, unknown and out-of-vocabulary shares, truncation) with the same functions, and drift
and data quality are reported for them as for table columns."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workloads.local.defects import generate_defects
from workloads.local.tickets import generate_tickets
from workloads.monitoring.baseline import BaselineError
from workloads.monitoring.inputs import (
    IMAGE_FEATURES,
    TEXT_FEATURES,
    InputSpecError,
    TextFeatures,
    derive_images,
    extractor,
    features_baseline,
    image_features,
    input_spec,
    model_files,
)
from workloads.monitoring.monitor import Options, run_monitor
from workloads.serving.capture import Capturer
from workloads.training.tasks.text.tokens import train_tokenizer


def png_bytes(image: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(image)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def brighter(images: np.ndarray, by: int) -> np.ndarray:
    return np.clip(images.astype(int) + by, 0, 255).astype(np.uint8)


# --- the features ---------------------------------------------------------------------------


def test_image_features_measure_size_brightness_contrast_mode_and_format():
    flat = np.full((12, 30), 200, dtype=np.uint8)
    got = image_features(png_bytes(flat))
    assert got == {
        "image_width": 30,
        "image_height": 12,
        "image_brightness": 200.0,
        "image_contrast": 0.0,
        "image_mode": "L",
        "image_format": "PNG",
    }
    halves = np.zeros((10, 10), dtype=np.uint8)
    halves[:, 5:] = 100
    rgb = image_features(png_bytes(halves, "JPEG", "RGB"))
    assert (rgb["image_mode"], rgb["image_format"]) == ("RGB", "JPEG")
    assert abs(rgb["image_brightness"] - 50) < 3 and abs(rgb["image_contrast"] - 50) < 3
    # a large image is measured on a reduced copy: the same figures
    big = np.kron(halves, np.ones((200, 200), dtype=np.uint8))  # 2000 x 2000
    large = image_features(png_bytes(big))
    assert large["image_width"] == 2000 and abs(large["image_brightness"] - 50) < 1
    # what cannot be read gives missing values, never an error
    assert image_features(b"not an image") == dict.fromkeys(IMAGE_FEATURES)
    noise = np.random.default_rng(0).integers(0, 255, (12, 30), dtype=np.uint8)
    truncated = image_features(png_bytes(noise)[:80])  # the header is there, the pixels not
    assert truncated["image_width"] == 30 and truncated["image_brightness"] is None


def test_captured_image_inputs_in_every_shape_give_the_same_features():
    body = png_bytes(np.full((8, 8), 90, dtype=np.uint8))
    text = base64.b64encode(body).decode()
    rows = derive_images([body, {"image": text}, [text], {"image": "%%%"}, 7])
    assert rows[0] == rows[1] == rows[2] and rows[0]["image_brightness"] == 90.0
    assert rows[3] == rows[4] == dict.fromkeys(IMAGE_FEATURES)


def test_text_features_against_the_trained_tokenizer():
    tok = train_tokenizer(["the parcel arrived late", "the refund is late"] * 20, 60, 1, True)
    features = TextFeatures(tok, max_length=6)
    known, unknown, long, bad = features.features(
        ["The parcel is late", "the parcel ☃ zebra", "the " * 10, None]
    )
    assert known["text_chars"] == 18 and known["text_oov_share"] == 0.0
    assert known["text_unknown_share"] == 0.0 and known["text_truncated"] == 0
    # "☃" was never seen: an unknown token; "zebra" is no vocabulary entry: out of vocabulary
    assert unknown["text_unknown_share"] > 0 and unknown["text_oov_share"] == 0.5
    assert long["text_tokens"] == 10 and long["text_truncated"] == 1
    assert bad == dict.fromkeys(TEXT_FEATURES)


def test_the_baselines_inputs_spec_is_checked(tmp_path):
    assert extractor({"features": {}}, tmp_path) is None  # tabular: the request's own columns
    with pytest.raises(InputSpecError, match="inputs.kind 'audio'"):
        extractor({"inputs": {"kind": "audio"}}, tmp_path)
    spec = input_spec("text", text_column="text", max_length=8, tokenizer="tokenizer.json")
    with pytest.raises(BaselineError, match="tokenizer.json: the text model's tokenizer"):
        extractor({"inputs": spec}, tmp_path)
    assert model_files({"inputs": spec}) == ["tokenizer.json"]
    with pytest.raises(InputSpecError, match="inputs.files"):
        model_files({"inputs": {"kind": "text", "files": ["../secrets"]}})


# --- drift on derived features, through the capture writer --------------------------------


def capture(root: Path, bodies: list[tuple[str, bytes]], endpoint: str) -> str:
    """Write requests through the server's capture writer; the endpoint's capture folder."""
    cap = Capturer(root, endpoint).start()
    answer = json.dumps({"predictions": [{"label": "ok"}]}).encode()
    for content_type, body in bodies:
        n = len(json.loads(body)["instances"]) if content_type == "application/json" else 1
        reply = answer if n == 1 else json.dumps({"predictions": [{"label": "ok"}] * n}).encode()
        assert cap.offer(content_type, body, reply)
    cap.stop()
    return str(root / endpoint)


def image_model_dir(tmp: Path, images: np.ndarray) -> Path:
    out = tmp / "image-model"
    out.mkdir(parents=True)
    rows = [image_features(png_bytes(i)) for i in images]
    doc = features_baseline("image", rows, [{"label": "ok"}] * len(rows), input_spec("image"))
    (out / "baseline.json").write_text(json.dumps(doc))
    return out


def test_image_drift_found_on_shifted_brightness_and_not_on_unshifted_images(tmp_path):
    reference, _ = generate_defects(300, size=16, seed=1)
    model = image_model_dir(tmp_path, reference)
    same, _ = generate_defects(200, size=16, seed=3)
    shifted = brighter(same, 70)

    def report(images: np.ndarray, name: str) -> dict:
        bodies = [("image/png", png_bytes(i)) for i in images]
        return run_monitor(model, capture(tmp_path / name, bodies, "defects"), Options())[0]

    calm = report(same, "same")
    assert calm["rows"] == 200 and set(calm["features"]) == set(IMAGE_FEATURES)
    assert not any(f["drifted"] for f in calm["features"].values()), calm["features"]
    assert not calm["violations"]
    moved = report(shifted, "shifted")
    assert moved["features"]["image_brightness"]["drifted"]
    assert not moved["features"]["image_width"]["drifted"]
    ranges = {v["feature_name"] for v in moved["violations"] if "range" in v["description"]}
    assert "image_brightness" in ranges  # brighter than any training image


def test_text_drift_found_on_longer_texts_and_not_on_unshifted_texts(tmp_path):
    train = generate_tickets(300, seed=1)["text"].tolist()
    tok = train_tokenizer(train, 300, 2, True)
    tok.save(str(tmp_path / "tokenizer.json"))
    spec = input_spec("text", text_column="text", max_length=64, tokenizer="tokenizer.json")
    rows = TextFeatures(tok, 64).features(train)
    doc = features_baseline("text", rows, [{"label": "billing"}] * len(rows), spec)
    (tmp_path / "baseline.json").write_text(json.dumps(doc))

    def report(texts: list[str], name: str) -> dict:
        bodies = [
            ("application/json", json.dumps({"instances": [{"text": t} for t in texts[i::40]]}))
            for i in range(40)
        ]
        bodies = [(c, b.encode()) for c, b in bodies]
        return run_monitor(tmp_path, capture(tmp_path / name, bodies, "tickets"), Options())[0]

    same = generate_tickets(200, seed=2)["text"].tolist()
    calm = report(same, "same")
    assert calm["rows"] == 200 and set(calm["features"]) == set(TEXT_FEATURES)
    assert not calm["dataset_drift"]
    assert not calm["features"]["text_chars"]["drifted"]
    assert not calm["features"]["text_tokens"]["drifted"]
    longer = [" ".join(same[i : i + 3]) for i in range(200)]
    moved = report(longer, "longer")
    assert moved["features"]["text_chars"]["drifted"]
    assert moved["features"]["text_tokens"]["drifted"]


# --- end to end: a trained model, the server's capture, the monitor -------------------------


def serve_and_capture(model: Path, root: Path, endpoint: str, calm: list, shifted: list):
    """Serve `model` with capture on, send the calm then the shifted requests (content type,
    body); the capture folder and the moment between the two windows."""
    from datetime import UTC, datetime

    from tests.serve_support import Server

    srv = Server(
        model, "--capture-dir", str(root), "--capture-percent", "100", "--endpoint-name", endpoint
    ).wait_ready()
    try:
        for content_type, body in calm:
            answer = srv.client.post(
                "/invocations", content=body, headers={"Content-Type": content_type}
            )
            assert answer.status_code == 200, answer.text
        middle = datetime.now(UTC)
        for content_type, body in shifted:
            answer = srv.client.post(
                "/invocations", content=body, headers={"Content-Type": content_type}
            )
            assert answer.status_code == 200, answer.text
    finally:
        srv.stop()  # drains: the writer flushes what is queued
    return str(root / endpoint), middle


def windows(model: Path, uri: str, middle) -> tuple[dict, dict]:
    calm = run_monitor(model, uri, Options(until=middle))[0]
    moved = run_monitor(model, uri, Options(since=middle))[0]
    return calm, moved


def test_an_image_model_is_monitored_end_to_end(tmp_path):
    from tests.test_image_text_serving import train_tiny

    model = train_tiny("image", tmp_path)
    baseline = json.loads((model / "baseline.json").read_text())
    assert set(baseline["features"]) == set(IMAGE_FEATURES) and baseline["inputs"]["kind"]
    assert baseline["features"]["image_width"]["min"] == 16  # the validation images
    labels = set(baseline["prediction"]["frequencies"])  # labels, as serving answers
    assert labels and labels <= {"ok", "scratch", "pit", "crack"}
    images, _ = generate_defects(40, size=16, seed=5)
    raw = [("image/png", png_bytes(i)) for i in images[:20]]
    encoded = [base64.b64encode(png_bytes(i)).decode() for i in images[20:]]
    records = {"instances": [{"image": e} for e in encoded]}
    calm = [*raw, ("application/json", json.dumps(records).encode())]
    shifted = [("image/png", png_bytes(i)) for i in brighter(images, 90)]
    uri, middle = serve_and_capture(model, tmp_path / "capture", "defects", calm, shifted)
    before, after = windows(model, uri, middle)
    assert before["rows"] == after["rows"] == 40
    assert not before["features"]["image_brightness"]["drifted"], before["features"]
    assert before["data_quality"]["unreadable_lines"] == 0
    assert after["features"]["image_brightness"]["drifted"]
    assert not after["features"]["image_width"]["drifted"]


def test_a_text_model_is_monitored_end_to_end(tmp_path):
    from tests.test_image_text_serving import train_tiny

    model = train_tiny("text", tmp_path)
    baseline = json.loads((model / "baseline.json").read_text())
    assert set(baseline["features"]) == set(TEXT_FEATURES)
    assert baseline["inputs"]["files"] == ["tokenizer.json"]
    texts = generate_tickets(40, seed=5)["text"].tolist()
    csv_rows = "\n".join('"' + t.replace('"', '""') + '"' for t in texts[:20]).encode()
    records = {"instances": [{"text": t} for t in texts[20:]]}
    calm = [("text/csv", csv_rows), ("application/json", json.dumps(records).encode())]
    longer = [" ".join([t] * 4) for t in texts]
    shifted = [
        ("application/json", json.dumps({"instances": [{"text": t}]}).encode()) for t in longer
    ]
    uri, middle = serve_and_capture(model, tmp_path / "capture", "tickets", calm, shifted)
    before, after = windows(model, uri, middle)
    assert before["rows"] == after["rows"] == 40
    assert not before["features"]["text_chars"]["drifted"], before["features"]
    assert not before["features"]["text_tokens"]["drifted"]
    assert after["features"]["text_chars"]["drifted"]
    assert after["features"]["text_tokens"]["drifted"]
    assert after["data_quality"]["features"]["text_chars"]["out_of_range_share"] > 0.5


def test_the_scheduled_monitor_fetches_the_tokenizer_the_baseline_names(tmp_path, aws_env):
    import boto3
    from moto import mock_aws

    from workloads.monitoring.scheduled import fetch_model_files

    tok = train_tokenizer(["the parcel arrived late"] * 5, 60, 1, True)
    src = tmp_path / "src"
    src.mkdir()
    tok.save(str(src / "tokenizer.json"))
    spec = input_spec("text", text_column="text", max_length=8, tokenizer="tokenizer.json")
    doc = features_baseline("text", TextFeatures(tok, 8).features(["late"]), ["a"], spec)
    (src / "baseline.json").write_text(json.dumps(doc))
    (src / "meta.json").write_text("{}")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        for path in src.iterdir():
            s3.upload_file(str(path), "artifacts", f"models/grp/2/{path.name}")
        got = fetch_model_files("s3://artifacts/models/grp/2", tmp_path / "got", s3)
    assert sorted(p.name for p in got.iterdir()) == ["baseline.json", "meta.json", "tokenizer.json"]
    derive = extractor(json.loads((got / "baseline.json").read_text()), got)
    assert derive is not None and derive([{"text": "late"}])[0]["text_tokens"] == 1
