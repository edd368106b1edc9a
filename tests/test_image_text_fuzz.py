"""Fault and fuzz probes of the image and text tasks' inputs, and of batch scoring's inputs.

The contract (as tests/test_train_data_fuzz.py for the tabular task): training on any image
folder or text file ends either with exit 0 and a loadable artifact, or with the failure exit
and a message that starts `data error:` (or `configuration error:`) naming the file or the
column; never the catch-all `training failed: SomeException`. The image and text predictors'
`prepare_records` / `prepare_rows` (what serving and batch scoring call) on any instances
return a model input or raise `InputError` naming the instance. Batch scoring of a bad input
exits 2 with a message naming the file, and leaves no output file behind.

Explicit tables of odd files and instances, then bounded, derandomized Hypothesis fuzzing of
instances (`fuzz_support.fuzz_settings`, `conftest.fixed_constant_pool`). Every training run
is one epoch of a tiny network on a few images or texts, in process.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.fuzz_support import fuzz_settings, train_in
from tests.test_train import one_thread  # noqa: F401  (the fixture)
from tests.vision_nlp_support import hp_args
from workloads.serving.batch import main as batch_main
from workloads.training.artifact import load_model
from workloads.training.tasks.base import InputError
from workloads.training.tasks.image.decode import decode_image

pytestmark = pytest.mark.usefixtures("fixed_constant_pool", "one_thread")  # conftest, test_train

TEXTS = [f"word{i % 3} thing{i % 5} stuff" for i in range(12)]
CATEGORIES = ["x" if i % 2 else "y" for i in range(12)]


def train(root: Path, task: str, data: Path) -> tuple[int, str]:
    """`harness.main` on `data`: the exit code and the failure file's text ("" if none)."""
    args = ["--train", str(data), *hp_args(task, "epochs=1")]
    return train_in(root, args + (["--hp", "min_frequency=1"] if task == "text" else []))


def assert_contract(root: Path, rc: int, failure: str, names: str | None = None) -> None:
    """Exit 0 with a loadable artifact, or a data/configuration error (not the catch-all)
    that names `names` (a file or a column) when given."""
    if rc == 0:
        assert load_model(root / "model").classes
        return
    assert failure.startswith(("data error:", "configuration error:")), failure
    if names is not None:
        assert names in failure, failure
    assert not (root / "model").exists()


# --- images --------------------------------------------------------------------------------


def png(mode: str = "RGB", size: tuple[int, int] = (16, 16), color: Any = 0) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


def noisy_png(size: int = 32) -> bytes:
    """A PNG whose pixel data is large enough to cut in the middle of its IDAT chunk."""
    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), bytes(range(256)) * (size * size * 3 // 256)).save(
        out, "PNG", compress_level=0
    )
    return out.getvalue()


def gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "GIF")
    return out.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` (a decompression bomb's header), cheap to make."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def image_folder(root: Path, extra: dict[str, bytes], classes: tuple[str, ...] = ("a", "b")):
    """A channel of 4 plain 16 px PNGs per class plus `extra` (relative path -> bytes)."""
    folder = root / "channel"
    for c, cls in enumerate(classes):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            (folder / cls / f"{i}.png").write_bytes(png(color=(i * 40, c * 200, 0)))
    for name, data in extra.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


IMAGE_CHANNELS: dict[str, tuple[dict[str, bytes], str | None]] = {
    # name: (extra files, what a refusal must name; None: must train)
    "zero-byte": ({"a/zero.png": b""}, "zero.png"),
    "truncated header": ({"a/cut.png": png()[:40]}, "cut.png"),
    "truncated pixels": ({"a/cut.png": noisy_png()[:1500]}, "cut.png"),
    "not an image": ({"a/notes.png": b"hello, world"}, "notes.png"),
    "gif named png": ({"a/anim.png": gif()}, "anim.png"),
    "bomb header": ({"a/bomb.png": header_only_png(20_000, 10_000)}, "bomb.png"),
    "grayscale": ({"a/g.png": png("L")}, None),
    "rgba": ({"a/r.png": png("RGBA")}, None),
    "16-bit": ({"a/i.png": png("I;16", color=300)}, None),
    "palette": ({"a/p.png": png("P")}, None),
    "1-bit": ({"a/1.png": png("1")}, None),
    "1x1": ({"a/dot.png": png(size=(1, 1))}, None),
    "1x400": ({"a/line.png": png(size=(1, 400))}, None),
    "unicode, spaces": ({"ä b/ü x.png": png(), "ä b/2 y.png": png()}, None),
    "empty class folder": ({"c/.keep": b""}, None),
}


@pytest.mark.parametrize("name", list(IMAGE_CHANNELS))
def test_odd_image_channels_train_or_name_the_file(tmp_path: Path, name: str) -> None:
    extra, names = IMAGE_CHANNELS[name]
    rc, failure = train(tmp_path, "image", image_folder(tmp_path, extra))
    assert_contract(tmp_path, rc, failure, names)
    if names is None:
        assert rc == 0, failure
    else:
        assert rc != 0


def test_a_single_image_class_is_a_data_error(tmp_path: Path) -> None:
    rc, failure = train(tmp_path, "image", image_folder(tmp_path, {}, classes=("only",)))
    assert rc != 0
    assert_contract(tmp_path, rc, failure, "single class")


def test_a_long_thin_image_is_not_resampled_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1x50000 PNG (a few hundred bytes) used to be resized whole to 16x800000 before its
    centre was cropped: 1x1000000 took 2 GB and seconds, 1x36000000 (under the pixel guard)
    would take ~50 GB. Only the centre square may be resampled."""
    sizes: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        sizes.append(tuple(size))
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    for shape in [(1, 50_000), (50_000, 1), (3, 7)]:
        out = decode_image(png("L", shape, 200), "RGB", 16)
        assert out.shape == (3, 16, 16)
        assert (out == 200).all()
    assert sizes and all(s == (16, 16) for s in sizes), sizes


def test_decoding_matches_resize_then_centre_crop() -> None:
    """The centre square resized equals the old resize-then-crop on a square-ish image whose
    crop is a whole number of pixels (what models trained before the change saw)."""
    img = Image.frombytes("RGB", (48, 32), bytes(range(256)) * (48 * 32 * 3 // 256))
    body = io.BytesIO()
    img.save(body, "PNG")
    whole = img.resize((24, 16), Image.Resampling.BILINEAR).crop((4, 0, 20, 16))
    want = torch.from_numpy(decode_image(body.getvalue(), "RGB", 16).transpose(1, 2, 0).copy())
    got = torch.from_numpy(np.asarray(whole, dtype=np.int16))
    assert (want.to(torch.int16) - got).abs().max() <= 12


# --- texts ---------------------------------------------------------------------------------


def text_frame(**columns: list) -> pd.DataFrame:
    return pd.DataFrame({"text": TEXTS, "category": CATEGORIES} | columns)


def jsonl(rows: list[dict]) -> Callable[[Path], Path]:
    def write(root: Path) -> Path:
        path = root / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write


def csv(frame: pd.DataFrame | bytes) -> Callable[[Path], Path]:
    def write(root: Path) -> Path:
        path = root / "train.csv"
        if isinstance(frame, bytes):
            path.write_bytes(frame)
        else:
            frame.to_csv(path, index=False)
        return path

    return write


def parquet(frame: pd.DataFrame) -> Callable[[Path], Path]:
    def write(root: Path) -> Path:
        frame.to_parquet(root / "train.parquet")
        return root / "train.parquet"

    return write


def texts_jsonl(texts: list) -> Callable[[Path], Path]:
    return jsonl([{"text": t, "category": c} for t, c in zip(texts, CATEGORIES, strict=True)])


def with_labels(first_two: Any) -> Callable[[Path], Path]:
    labels = [first_two, first_two, *CATEGORIES[2:]]
    return jsonl([{"text": t, "category": c} for t, c in zip(TEXTS, labels, strict=True)])


DATES = [date(2026, 1, 1 + i % 2) for i in range(12)]
LATIN1 = "text,category\n" + "".join(f"caf\xe9 {i},{'xy'[i % 2]}\n" for i in range(12))
TEXT_FILES: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    # name: (writer, what a refusal must name; None: must train)
    "empty strings": (csv(text_frame(text=["", "", "", *TEXTS[3:]])), "'text'"),
    "blank texts only": (csv(text_frame(text=[" "] * 12)), "'category'"),
    "None texts": (texts_jsonl([None] * 12), "'text'"),
    "numbers as text": (csv(text_frame(text=list(range(12)))), "'text'"),
    "lists as text": (texts_jsonl([[t] for t in TEXTS]), "'text'"),
    "very long texts": (csv(text_frame(text=["long " * 20_000 + t for t in TEXTS])), None),
    "control characters": (csv(text_frame(text=["\x00\x01\x1f" + t for t in TEXTS])), None),
    "emoji, CJK": (csv(text_frame(text=["日本語 😀 " + t for t in TEXTS])), None),
    "lone surrogates": (texts_jsonl(["a\ud800b " + t for t in TEXTS]), None),
    "single class": (csv(text_frame(category=["x"] * 12)), "single class"),
    "no text column": (csv(text_frame().drop(columns="text")), "['text']"),
    "no label column": (csv(text_frame().drop(columns="category")), "['category']"),
    "not UTF-8": (csv(LATIN1.encode("latin-1")), "train.csv"),
    "numeric labels": (csv(text_frame(category=[i % 2 for i in range(12)])), None),
    "mixed labels": (csv(text_frame(category=[1 if i % 2 else "a" for i in range(12)])), None),
    "object labels": (with_labels({"a": 1}), "'category' row 0"),
    "list labels": (with_labels([1, 2]), "'category' row 0"),
    "bytes labels": (parquet(text_frame(category=[b"x", b"y"] * 6)), "'category' row 0"),
    "date labels": (parquet(text_frame(category=DATES)), "'category' row 0"),
    # JSON (text.json keeps the classes) has no inf: it was saved as the token Infinity
    "an infinite label": (csv(text_frame(category=[1.0, 2.0, float("inf")] * 4)), "inf"),
    "bytes texts": (parquet(text_frame(text=[t.encode() for t in TEXTS])), "'text' row 0"),
}


@pytest.mark.parametrize("name", list(TEXT_FILES))
def test_odd_text_files_train_or_name_the_column(tmp_path: Path, name: str) -> None:
    write, names = TEXT_FILES[name]
    rc, failure = train(tmp_path, "text", write(tmp_path))
    assert_contract(tmp_path, rc, failure, names)
    if names is None:
        assert rc == 0, failure
    else:
        assert rc != 0


# --- the predictors ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image-model")
    assert train(root, "image", image_folder(root, {})) == (0, "")
    return root / "model"


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text-model")
    assert train(root, "text", csv(text_frame())(root)) == (0, "")
    return root / "model"


def predict(predictor: Any, records: list) -> list:
    """Predictions, or the `InputError` (any other exception fails the test)."""
    try:
        return predictor.predict_matrix(predictor.prepare_records(records))
    except InputError as exc:
        assert "instance" in str(exc), exc
        return []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_IMAGES = [
    {"image": "not base64!"},
    {"image": b64(b"garbage")},
    {"image": b64(png()[:40])},
    {"image": b64(gif())},
    {"image": b64(header_only_png(20_000, 10_000))},
    {"image": ""},
    {"image": None},
    {"image": 5},
    {"image": ["a"]},
    {"image": "\ud800"},
    {"image": "data:image/png;base64," + b64(png())},
    {"picture": b64(png())},
    {},
    None,
    "abc",
]
GOOD_IMAGES = [png("LA", (3, 50)), png("P"), png("I;16"), png(size=(1, 1)), png(size=(1, 5000))]


@pytest.mark.parametrize("record", BAD_IMAGES, ids=repr)
def test_bad_image_instances_raise_input_error(image_model: Path, record: Any) -> None:
    predictor = load_model(image_model)
    with pytest.raises(InputError, match="instance 0"):
        predictor.prepare_records([record])


BAD_BATCHES = [
    ("prepare_records", [], "expected at least one record, got an empty list"),
    ("prepare_records", {"instances": []}, "expected a list of records, got dict"),
    ("prepare_records", "abc", "expected a list of records, got str"),
    ("prepare_rows", [], "expected at least one row, got an empty list"),
    ("prepare_rows", None, "expected a list of rows, got NoneType"),
    ("prepare_rows", ["abc"], "row 0: expected a list of one value"),
    ("prepare_rows", [5], "row 0: expected a list of one value"),
    ("prepare_rows", [[]], "row 0: expected one value"),
]


@pytest.mark.parametrize("model", ["image_model", "text_model"])
@pytest.mark.parametrize(("method", "batch", "message"), BAD_BATCHES, ids=repr)
def test_bad_batch_shapes_raise_input_error(request, model, method, batch, message) -> None:
    """What the tabular predictor refuses by name (an empty list was a ValueError from
    numpy or the tokenizer, a string's characters were taken as instances)."""
    predictor = load_model(request.getfixturevalue(model))
    with pytest.raises(InputError, match=re.escape(message)):
        getattr(predictor, method)(batch)


def test_images_of_any_mode_and_shape_are_predicted(image_model: Path) -> None:
    predictor = load_model(image_model)
    out = predict(predictor, [{"image": b64(body)} for body in GOOD_IMAGES])
    assert len(out) == len(GOOD_IMAGES)


BAD_TEXTS = [
    {"text": ""},
    {"text": "  \n"},
    {"text": None},
    {"text": 3},
    {"text": float("nan")},
    {"text": ["a"]},
    {"text": "a\ud800b"},
    {"text": "\udcff"},
    {"words": "hello"},
    {},
    None,
    "hello",
]


@pytest.mark.parametrize("record", BAD_TEXTS, ids=repr)
def test_bad_text_instances_raise_input_error(text_model: Path, record: Any) -> None:
    predictor = load_model(text_model)
    with pytest.raises(InputError, match="instance 0"):
        predictor.prepare_records([record])
    if isinstance(record, dict) and "text" in record:  # the same value as a CSV/batch row
        with pytest.raises(InputError, match="row 0"):
            predictor.prepare_rows([[record["text"]]])


def test_huge_and_odd_texts_are_predicted(text_model: Path) -> None:
    predictor = load_model(text_model)
    texts = ["x" * 1_000_000, "word0 " * 50_000, "\x00", "日本語 😀", "a" + "\u0301" * 500]
    assert len(predict(predictor, [{"text": t} for t in texts])) == len(texts)


KEYS = st.sampled_from(["text", "image", "x"])
instances = st.one_of(
    st.none(),
    st.integers(),
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.binary(max_size=40),
    st.sampled_from([b64(body) for body in GOOD_IMAGES]),
    st.lists(st.text(max_size=5), max_size=2),
)


@fuzz_settings(60)
@given(records=st.lists(st.dictionaries(KEYS, instances), min_size=1, max_size=4))
def test_fuzzed_instances_get_predictions_or_input_error(
    image_model: Path, text_model: Path, records: list
) -> None:
    for predictor in (load_model(image_model), load_model(text_model)):
        predict(predictor, records)


# --- batch scoring -------------------------------------------------------------------------


def run_batch(model: Path, source: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    out = source.parent / "scored" / "out.csv"
    rc = batch_main([str(source), str(out), "--model-dir", str(model)])
    assert not out.parent.exists() or not list(out.parent.iterdir()), "half an output"
    return rc, capsys.readouterr().err


BAD_TEXT_INPUTS: dict[str, tuple[str, bytes, str]] = {
    # name: (file name, bytes, what the message must name)
    "empty csv": ("in.csv", b"", "in.csv"),
    "header only": ("in.csv", b"text\n", "in.csv"),
    "wrong columns": ("in.csv", b"a,b\n1,2\n", "missing feature column(s) text"),
    "latin-1 csv": ("in.csv", "text\ncaf\xe9\n".encode("latin-1"), "in.csv"),
    "latin-1 txt": ("in.txt", "ok\ncaf\xe9\n".encode("latin-1"), "in.txt: line 2 is not UTF-8"),
    "blank txt": ("in.txt", b"\n \n", "no rows"),
    "numbers": ("in.csv", b"text\n1\n2\n", "row 0: the text must be a string"),
    "bad jsonl line": ("in.jsonl", b'{"text": "ok"}\nnot json\n', "in.jsonl"),
}


@pytest.mark.parametrize("name", list(BAD_TEXT_INPUTS))
def test_bad_text_batch_inputs_exit_2_naming_the_file(tmp_path, text_model, capsys, name):
    file_name, data, message = BAD_TEXT_INPUTS[name]
    (tmp_path / file_name).write_bytes(data)
    rc, err = run_batch(text_model, tmp_path / file_name, capsys)
    assert rc == 2
    assert err.startswith("batch: ") and message in err, err


def test_a_bad_image_among_good_ones_is_named(tmp_path, image_model, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / f"{i}.png").write_bytes(png())
    (folder / "sub" / "broken photo.png").write_bytes(png()[:40])
    rc, err = run_batch(image_model, folder, capsys)
    assert rc == 2
    assert "(file sub/broken photo.png)" in err, err


def test_a_bad_file_after_good_chunks_leaves_no_output(tmp_path, text_model, capsys):
    """Chunks of the first file are scored (and written to the temporary file) before the
    second file is found unreadable: the output must not appear at all."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("text\n" + "word0 thing1\n" * 5)
    (folder / "b.csv").write_bytes(b"text\n\xff\xfe\n")
    out = tmp_path / "scored" / "out.jsonl"
    args = [str(folder), str(out), "--model-dir", str(text_model), "--chunk-size", "2"]
    assert batch_main(args) == 2
    assert "b.csv" in capsys.readouterr().err
    assert not out.parent.exists() or not list(out.parent.iterdir())
