"""ingest: every validation case on tiny folders made here; outputs are all-or-nothing."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.config import IngestParams
from pipeline.errors import DataValidationError, PipelineError
from pipeline.data.ingest import IMAGES_FILE, INDEX_FILE, METADATA_FILE, ingest, load_ingested

PARAMS = IngestParams(data_dir="unused", workers=2, jpeg_draft=True)


def _image_path(folder, image_id):
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        path = folder / part / f"{image_id}.jpg"
        if path.exists():
            return path
    raise AssertionError(image_id)


def _first_id(folder):
    return pd.read_csv(folder / METADATA_FILE)["image_id"].iloc[0]


def test_ingest_writes_one_square_array_and_an_index(tiny_ham, tmp_path, base_params):
    report = ingest(tiny_ham, tmp_path / "out", base_params, PARAMS)
    images, index = load_ingested(tmp_path / "out")
    metadata = pd.read_csv(tiny_ham / METADATA_FILE, dtype=str, keep_default_na=False)
    assert images.shape == (len(metadata), 32, 32, 3) and images.dtype == np.uint8
    assert index["image_id"].tolist() == metadata["image_id"].tolist()
    assert report.images == len(metadata) and report.images_per_second > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [IMAGES_FILE, INDEX_FILE]


def test_images_directly_in_the_folder_or_in_images_are_found(tiny_ham, tmp_path, base_params):
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    shutil.copy(tiny_ham / METADATA_FILE, flat / METADATA_FILE)
    for number, path in enumerate(sorted(tiny_ham.glob("HAM10000_images_part_*/*.jpg"))):
        shutil.copy(path, (flat / "images" if number % 2 else flat) / path.name)
    ingest(flat, tmp_path / "out", base_params, PARAMS)
    images, _ = load_ingested(tmp_path / "out")
    assert len(images) == len(pd.read_csv(flat / METADATA_FILE))


def _expect_failure(folder, tmp_path, base_params, message):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "previous.txt").write_text("earlier output")
    with pytest.raises(PipelineError, match=message):
        ingest(folder, out, base_params, PARAMS)
    assert (out / "previous.txt").read_text() == "earlier output", "a failed ingest must not touch earlier outputs"


def test_corrupt_jpeg(tiny_ham, tmp_path, base_params):
    image_id = _first_id(tiny_ham)
    _image_path(tiny_ham, image_id).write_bytes(b"\xff\xd8\xff\xe0garbage" * 50)
    _expect_failure(tiny_ham, tmp_path, base_params, f"{image_id}.jpg: (cannot decode|not an image)")


def test_truncated_jpeg(tiny_ham, tmp_path, base_params):
    image_id = _first_id(tiny_ham)
    path = _image_path(tiny_ham, image_id)
    path.write_bytes(path.read_bytes()[:300])
    _expect_failure(tiny_ham, tmp_path, base_params, f"{image_id}.jpg: cannot decode")


def test_missing_image_file(tiny_ham, tmp_path, base_params):
    image_id = _first_id(tiny_ham)
    _image_path(tiny_ham, image_id).unlink()
    _expect_failure(tiny_ham, tmp_path, base_params, f"image file for '{image_id}' not found")


def test_non_image_file_named_like_an_image(tiny_ham, tmp_path, base_params):
    image_id = _first_id(tiny_ham)
    _image_path(tiny_ham, image_id).write_text("lesion notes, not pixels")
    _expect_failure(tiny_ham, tmp_path, base_params, f"{image_id}.jpg: not an image file")


def test_stray_non_image_files_are_ignored(tiny_ham, tmp_path, base_params):
    (tiny_ham / "HAM10000_images_part_1" / "README.txt").write_text("notes")
    (tiny_ham / "HAM10000_images_part_1" / ".DS_Store").write_bytes(b"\x00\x01")
    report = ingest(tiny_ham, tmp_path / "out", base_params, PARAMS)
    assert report.images == len(pd.read_csv(tiny_ham / METADATA_FILE))


def _edit_metadata(folder, edit):
    path = folder / METADATA_FILE
    metadata = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(metadata).to_csv(path, index=False)


def test_unknown_dx(tiny_ham, tmp_path, base_params):
    def edit(metadata):
        metadata.loc[3, "dx"] = "melanoma"
        return metadata

    _edit_metadata(tiny_ham, edit)
    _expect_failure(tiny_ham, tmp_path, base_params, "line 5: unknown dx 'melanoma'")


def test_empty_dx_names_the_line_and_the_image(tiny_ham, tmp_path, base_params):
    image_id = pd.read_csv(tiny_ham / METADATA_FILE, dtype=str).loc[3, "image_id"]

    def edit(metadata):
        metadata.loc[3, "dx"] = ""
        return metadata

    _edit_metadata(tiny_ham, edit)
    _expect_failure(tiny_ham, tmp_path, base_params, re.escape(f"line 5: empty dx (image_id '{image_id}')"))


def test_duplicate_image_id(tiny_ham, tmp_path, base_params):
    _edit_metadata(tiny_ham, lambda metadata: pd.concat([metadata, metadata.iloc[[0]]], ignore_index=True))
    _expect_failure(tiny_ham, tmp_path, base_params, "duplicate image_id")


def test_missing_column(tiny_ham, tmp_path, base_params):
    _edit_metadata(tiny_ham, lambda metadata: metadata.drop(columns=["lesion_id"]))
    _expect_failure(tiny_ham, tmp_path, base_params, "missing column 'lesion_id'")


def test_empty_folder(tmp_path, base_params):
    (tmp_path / "empty").mkdir()
    _expect_failure(tmp_path / "empty", tmp_path, base_params, "metadata file not found")


def test_missing_folder(tmp_path, base_params):
    _expect_failure(tmp_path / "nowhere", tmp_path, base_params, "data folder not found")


def test_every_problem_is_listed_with_its_file(tiny_ham, tmp_path, base_params):
    metadata = pd.read_csv(tiny_ham / METADATA_FILE)
    broken = metadata["image_id"].iloc[:3].tolist()
    for image_id in broken:
        _image_path(tiny_ham, image_id).write_text("x")
    with pytest.raises(DataValidationError) as failure:
        ingest(tiny_ham, tmp_path / "out", base_params, PARAMS)
    assert len(failure.value.problems) == 3
    assert all(any(image_id in problem for problem in failure.value.problems) for image_id in broken)


def test_grayscale_cmyk_and_odd_aspect_images_are_ingested(tiny_ham, tmp_path, base_params):
    ids = pd.read_csv(tiny_ham / METADATA_FILE)["image_id"].iloc[:3].tolist()
    Image.new("L", (90, 30), 100).save(_image_path(tiny_ham, ids[0]), "JPEG")
    Image.new("CMYK", (30, 90), (0, 255, 255, 0)).save(_image_path(tiny_ham, ids[1]), "JPEG")
    Image.new("RGB", (601, 449), (10, 200, 10)).save(_image_path(tiny_ham, ids[2]), "JPEG")
    ingest(tiny_ham, tmp_path / "out", base_params, PARAMS)
    images, _ = load_ingested(tmp_path / "out")
    assert np.abs(images[0].astype(int) - 100).max() <= 3
    assert np.abs(images[1].astype(int) - [255, 0, 0]).max() <= 8
    assert np.abs(images[2].astype(int) - [10, 200, 10]).max() <= 8


def test_ingest_stage_fails_with_one_line_and_keeps_outputs(tiny_ham, tmp_path, repo_root):
    image_id = _first_id(tiny_ham)
    _image_path(tiny_ham, image_id).write_bytes(b"broken")
    params = tmp_path / "params.yaml"
    params.write_text(
        "base: {seed: 1, image_size: 32, experiment_name: t}\n"
        f"ingest: {{data_dir: '{tiny_ham}', workers: 1}}\n"
    )
    out = tmp_path / "ingested"
    out.mkdir()
    (out / "images.npy").write_text("earlier")
    result = subprocess.run(
        [sys.executable, str(repo_root / "stages" / "ingest.py"), "--params", str(params), "--out", str(out), "--metrics", str(tmp_path / "m.json")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and image_id in error_lines[0]
    assert "Traceback" not in result.stderr
    assert (out / "images.npy").read_text() == "earlier"
