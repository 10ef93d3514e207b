"""The pack for a remote training node holds train/val only: the test split never leaves."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import BaseParams, HAM10000_CLASSES, IngestParams, SplitParams
from pipeline.errors import PipelineError
from pipeline.data.ingest import ingest, load_ingested
from pipeline.data.pack import pack
from pipeline.data.split import split_dataset, write_splits


def test_pack_holds_train_and_val_and_ingests_to_the_same_images(tiny_ham, tmp_path):
    base = BaseParams(seed=7, classes=HAM10000_CLASSES, image_size=32, experiment_name="tests")
    ingest(tiny_ham, tmp_path / "ingested", base, IngestParams(data_dir=str(tiny_ham), workers=1))
    images, index = load_ingested(tmp_path / "ingested")
    splits = split_dataset(index, base.classes, SplitParams(test_fraction=0.2, val_fraction=0.2), base.seed)
    write_splits(splits, tmp_path / "split")
    counts = pack(tiny_ham, tmp_path / "split", tmp_path / "pack")
    test_ids = set(splits["test"]["image_id"])
    assert counts == {"images": len(splits["train"]) + len(splits["val"]), "left_out": len(test_ids)}
    packed = pd.read_csv(tmp_path / "pack" / tiny_ham.name / "HAM10000_metadata.csv")
    assert not test_ids & set(packed["image_id"])
    assert not any(path.stem in test_ids for path in (tmp_path / "pack").rglob("*.jpg"))
    assert sorted(p.name for p in (tmp_path / "pack" / "split").iterdir()) == ["train.csv", "val.csv"]
    # Ingested on the node, the packed images are the same pixels as at home.
    ingest(tmp_path / "pack" / tiny_ham.name, tmp_path / "node", base, IngestParams(data_dir="x", workers=1))
    node_images, node_index = load_ingested(tmp_path / "node")
    position = {image_id: i for i, image_id in enumerate(index["image_id"])}
    for i, image_id in enumerate(node_index["image_id"]):
        assert (node_images[i] == images[position[image_id]]).all()


def test_pack_refuses_a_split_from_another_folder(tiny_ham, tmp_path):
    (tmp_path / "split").mkdir()
    for name in ("train", "val"):
        pd.DataFrame({"image_id": ["ISIC_nowhere"], "dx": ["nv"]}).to_csv(tmp_path / "split" / f"{name}.csv", index=False)
    with pytest.raises(PipelineError, match="names 1 image\\(s\\) that .* lacks, e.g. ISIC_nowhere"):
        pack(tiny_ham, tmp_path / "split", tmp_path / "pack")
    assert not (tmp_path / "pack").exists()
