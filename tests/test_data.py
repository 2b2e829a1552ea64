"""Data: Fashion-MNIST splits and checksums, user image folders, and the errors for bad layouts."""

import functools
import gzip
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import BIN, ROOT, write_image
from selftrain import stages
from selftrain.data import DataError, fashion_mnist
from selftrain.data.folders import BadInput
from selftrain.data.splits import check_data, make_splits
from selftrain.params import DataParams, FolderSources, load_params


def fm_params(**kw) -> DataParams:
    return DataParams(**{"labeled_per_class": 5, "val_per_class": 3, "unlabeled": 100, "test": 50, **kw})


def test_fashion_mnist_splits_are_disjoint_stratified_and_seeded():
    a = make_splits(fm_params(holdout=200), seed=1)
    b = make_splits(fm_params(holdout=200), seed=1)
    c = make_splits(fm_params(holdout=200), seed=2)
    assert {k: len(v) for k, v in a.items()} == {"labeled": 50, "unlabeled": 100, "val": 30, "test": 50, "holdout": 200}
    assert np.bincount(a["labeled"].labels).tolist() == [5] * 10
    assert (a["unlabeled"].labels == -1).all()  # withheld
    train_ids = [set(a[s].ids.tolist()) for s in ("labeled", "unlabeled", "val", "holdout")]
    assert sum(map(len, train_ids)) == len(set().union(*train_ids)), "training-set splits overlap"
    assert (a["holdout"].labels >= 0).all()  # the -A pool keeps its labels
    np.testing.assert_array_equal(a["holdout"].ids, b["holdout"].ids)
    # the holdout draw has its own RNG: asking for none leaves every other split of the seed unchanged
    without = make_splits(fm_params(holdout=0), seed=1)
    assert "holdout" not in without
    for name in ("labeled", "unlabeled", "val", "test"):
        np.testing.assert_array_equal(without[name].ids, a[name].ids)
    np.testing.assert_array_equal(a["labeled"].ids, b["labeled"].ids)
    assert not np.array_equal(a["labeled"].ids, c["labeled"].ids)
    assert a["labeled"].images.shape[1:] == (28, 28, 1)


def test_fashion_mnist_asks_for_too_much():
    with pytest.raises(DataError, match="data.unlabeled = 60000 exceeds"):
        make_splits(fm_params(unlabeled=60000), seed=0)
    with pytest.raises(DataError, match="28x28 grayscale"):
        make_splits(fm_params(channels=3), seed=0)


def _copy_fm(dest: Path) -> Path:
    src = fashion_mnist.locate()
    dest.mkdir()
    for f in fashion_mnist.FILES:
        shutil.copy(src / f, dest / f)
    return dest


def test_checksum_mismatch_names_the_file(tmp_path):
    d = _copy_fm(tmp_path / "fm")
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x02" + b"\x01\x02")
    )
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz' has sha256 .* corrupt or not Fashion-MNIST"):
        fashion_mnist.load(str(d))
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a readable gzip"):
        fashion_mnist.load(str(d))


def test_missing_directory_lists_missing_files(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError, match="lacks train-labels-idx1-ubyte.gz, t10k-images"):
        fashion_mnist.load(str(tmp_path))


def test_download_fetches_from_a_server_and_verifies(tmp_path, monkeypatch):
    served = _copy_fm(tmp_path / "served")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(fashion_mnist, "KNOWN_DIRS", ())
    monkeypatch.setattr(fashion_mnist, "CACHE_DIR", tmp_path / "cache")
    try:
        train_x, train_y, test_x, test_y = fashion_mnist.load(url=f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
    assert train_x.shape == (60000, 28, 28, 1) and test_y.shape == (10000,)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(fashion_mnist.FILES)


def test_no_data_and_no_network_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "KNOWN_DIRS", ())
    monkeypatch.setattr(fashion_mnist, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load(url="http://127.0.0.1:9/")  # port 9 (discard): nothing listens


def folder_params(root: Path, **kw) -> DataParams:
    srcs = FolderSources(**{s: str(root / s) for s in ("labeled", "unlabeled", "val", "test")})
    return DataParams(**{"source": "folders", "folders": srcs, "image_size": 16, "channels": 1, **kw})


def test_folders_are_read_resized_and_labeled(image_tree):
    s = make_splits(folder_params(image_tree), seed=0)
    assert s["labeled"].classes == ("cat", "dog")
    assert s["labeled"].images.shape == (6, 16, 16, 1)
    assert s["labeled"].labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert sorted(s["unlabeled"].ids.tolist()) == ["sub/u1.jpg", "sub/u3.jpg", "u0.jpg", "u2.jpg"]
    assert (s["unlabeled"].labels == -1).all()
    rgb = make_splits(folder_params(image_tree, channels=3), seed=0)
    assert rgb["test"].images.shape == (4, 16, 16, 3)


def test_corrupt_image_is_named(image_tree):
    bad = image_tree / "val" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="val/dog/broken.png: truncated image"):
        make_splits(folder_params(image_tree), seed=0)
    # a real image cut short (an interrupted copy): the header reads, the pixels do not
    bad.unlink()
    good = image_tree / "val" / "dog" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=95)
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="val/dog/cut.jpg: truncated image .*image file is truncated"):
        make_splits(folder_params(image_tree), seed=0)


def test_image_outside_class_folders_is_named(image_tree):
    write_image(image_tree / "labeled" / "stray.png", 5)
    with pytest.raises(DataError, match="labeled/stray.png: image outside the class folders"):
        make_splits(folder_params(image_tree), seed=0)


def test_empty_class_folder_and_missing_folder(image_tree):
    (image_tree / "labeled" / "bird").mkdir()
    with pytest.raises(DataError, match="labeled/bird: empty class folder"):
        make_splits(folder_params(image_tree), seed=0)
    shutil.rmtree(image_tree / "labeled" / "bird")
    shutil.rmtree(image_tree / "test")
    with pytest.raises(DataError, match="test: folder not found"):
        make_splits(folder_params(image_tree), seed=0)


def test_unknown_class_in_val_and_one_class_labeled_set(image_tree):
    write_image(image_tree / "val" / "fox" / "0.png", 9)
    with pytest.raises(DataError, match=r"val/fox: class folder not among the labeled classes \['cat', 'dog'\]"):
        make_splits(folder_params(image_tree), seed=0)
    shutil.rmtree(image_tree / "val" / "fox")
    shutil.rmtree(image_tree / "labeled" / "dog")
    shutil.rmtree(image_tree / "val" / "dog")
    shutil.rmtree(image_tree / "test" / "dog")
    with pytest.raises(DataError, match="need at least 2"):
        make_splits(folder_params(image_tree), seed=0)


def test_empty_unlabeled_folder(image_tree):
    shutil.rmtree(image_tree / "unlabeled")
    (image_tree / "unlabeled").mkdir()
    with pytest.raises(DataError, match="unlabeled: unlabeled folder holds no images"):
        make_splits(folder_params(image_tree), seed=0)


def _seed_every_problem(tree: Path) -> dict[str, str]:
    """Every kind of bad file and folder a user tree can hold; path (relative) -> the reason's first words."""
    (tree / "labeled" / "cat" / "empty.png").write_bytes(b"")
    (tree / "labeled" / "dog" / "notes.jpg").write_bytes(b"these are my notes, not a photo")
    (tree / "val" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cut = tree / "test" / "cat" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    write_image(tree / "val" / "stray.png", 5)
    write_image(tree / "test" / "fox" / "0.png", 9)
    (tree / "val" / "cat" / "sub").mkdir()
    shutil.rmtree(tree / "val" / "cat")
    (tree / "val" / "cat").mkdir()
    write_image(tree / "unlabeled" / "sub" / "ok.png", 3)
    (tree / "unlabeled" / "sub" / "zero.gif").write_bytes(b"")
    return {
        "labeled/cat/empty.png": "empty file (zero bytes)",
        "labeled/dog/notes.jpg": "not an image",
        "val/dog/broken.png": "truncated image",
        "test/cat/cut.jpg": "truncated image",
        "val/stray.png": "image outside the class folders",
        "test/fox": "class folder not among the labeled classes",
        "val/cat": "empty class folder",
        "unlabeled/sub/zero.gif": "empty file (zero bytes)",
    }


def test_check_data_lists_every_problem_of_the_tree_in_one_run(image_tree, tmp_path):
    expected = _seed_every_problem(image_tree)
    params = load_params(ROOT / "params.yaml", {"data": folder_params(image_tree).model_dump()})
    problems = check_data(params.data, seed=0)
    found = {str(Path(p.path).relative_to(image_tree)): p.reason for p in problems}
    assert found.keys() == expected.keys()
    assert all(found[k].startswith(v) for k, v in expected.items()), found
    assert "BytesIO" not in "".join(found.values())  # words, not Pillow's object reprs
    # the CLI: every problem on its own line, exit status 2, nothing written
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    proc = subprocess.run([str(BIN / "selftrain"), "check-data", "--params", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stdout.splitlines()) == len(expected) and "8 problem(s)" in proc.stderr
    proc = subprocess.run(
        [str(BIN / "selftrain"), "prepare", "--params", str(path), "--out", str(tmp_path / "data")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and all(k in proc.stderr for k in expected) and not (tmp_path / "data").exists()


def test_skip_bad_leaves_the_bad_files_out_and_records_them(image_tree, tmp_path):
    expected = _seed_every_problem(image_tree)
    params = load_params(ROOT / "params.yaml", {"data": {**folder_params(image_tree).model_dump(), "skip_bad": True}})
    summary = stages.prepare.run(params, out=str(tmp_path / "data"))
    assert {str(Path(s["path"]).relative_to(image_tree)) for s in summary["skipped"]} == expected.keys()
    assert summary["sizes"] == {"labeled": 6, "unlabeled": 5, "val": 2, "test": 4}  # the good images only
    assert json.loads((tmp_path / "data" / "summary.json").read_text())["skipped"] == summary["skipped"]
    # what skipping cannot mend still stops it: a labeled class with no readable image
    for f in (image_tree / "labeled" / "dog").iterdir():
        f.write_bytes(b"")
    with pytest.raises(
        BadInput, match=r"labeled/dog: no readable image in this labeled class(?s:.*)data.skip_bad cannot leave out"
    ):
        stages.prepare.run(params, out=str(tmp_path / "again"))
