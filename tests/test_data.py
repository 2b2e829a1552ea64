"""Data: Fashion-MNIST splits and checksums, user image folders, and the errors for bad layouts."""

import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_image
from selftrain.data import DataError, fashion_mnist
from selftrain.data.splits import make_splits
from selftrain.params import DataParams, FolderSources


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
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x02" + b"\x01\x02"))
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
    with pytest.raises(DataError, match="cannot read image '.*val/dog/broken.png'"):
        make_splits(folder_params(image_tree), seed=0)
    # a real image cut short (an interrupted copy): the header reads, the pixels do not
    bad.unlink()
    good = image_tree / "val" / "dog" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=95)
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot read image '.*val/dog/cut.jpg': image file is truncated"):
        make_splits(folder_params(image_tree), seed=0)


def test_image_outside_class_folders_is_named(image_tree):
    write_image(image_tree / "labeled" / "stray.png", 5)
    with pytest.raises(DataError, match="stray.png' lies at its top level"):
        make_splits(folder_params(image_tree), seed=0)


def test_empty_class_folder_and_missing_folder(image_tree):
    (image_tree / "labeled" / "bird").mkdir()
    with pytest.raises(DataError, match="class folder '.*labeled/bird' has no images"):
        make_splits(folder_params(image_tree), seed=0)
    shutil.rmtree(image_tree / "labeled" / "bird")
    shutil.rmtree(image_tree / "test")
    with pytest.raises(DataError, match="folder '.*test' not found"):
        make_splits(folder_params(image_tree), seed=0)


def test_unknown_class_in_val_and_one_class_labeled_set(image_tree):
    write_image(image_tree / "val" / "fox" / "0.png", 9)
    with pytest.raises(DataError, match=r"class folder\(s\) \['fox'\] not among the labeled classes"):
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
    with pytest.raises(DataError, match="unlabeled folder .* holds no images"):
        make_splits(folder_params(image_tree), seed=0)
