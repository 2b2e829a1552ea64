"""Atomic artifact directories, manifests and content hashes; the logit store's checks; checkpoints without pickle."""

import json
import os
import socket
import subprocess
import tracemalloc

import numpy as np
import pytest
import torch

from selftrain import artifacts, logits, models


def test_atomic_dir_failure_leaves_previous_artifact_intact(tmp_path):
    out = str(tmp_path / "art")
    with artifacts.atomic_dir(out) as d:
        artifacts.write_bytes(f"{d}/a.txt", b"first")
    before = artifacts.content_hash(out)
    with pytest.raises(RuntimeError, match="boom"):
        with artifacts.atomic_dir(out) as d:
            artifacts.write_bytes(f"{d}/a.txt", b"second, half written")
            raise RuntimeError("boom")
    assert (tmp_path / "art" / "a.txt").read_bytes() == b"first"
    assert artifacts.content_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging leftovers


def test_a_killed_writers_leftovers_are_cleared_and_a_replaced_output_put_back(tmp_path):
    out = str(tmp_path / "art")
    with artifacts.atomic_dir(out) as d:
        artifacts.write_bytes(f"{d}/a.txt", b"first")
    before = artifacts.content_hash(out)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that was a writer and is gone
    host = socket.gethostname()
    # killed between its two renames: the previous output moved aside, the new one not yet in place
    (tmp_path / "art").rename(tmp_path / f".art.old-{host}-{dead.pid}-aaaaaaaaaaaa")
    (tmp_path / f".art.tmp-{host}-{dead.pid}-bbbbbbbbbbbb").mkdir()
    (tmp_path / f".art.tmp-{host}-{os.getpid()}-cccccccccccc").mkdir()  # a live writer's
    (tmp_path / f".art.tmp-elsewhere-{dead.pid}-dddddddddddd").mkdir()  # another host's: its pids mean nothing here
    with pytest.raises(RuntimeError, match="boom"):
        with artifacts.atomic_dir(out):
            raise RuntimeError("boom")
    assert artifacts.content_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["art", f".art.tmp-{host}-{os.getpid()}-cccccccccccc", f".art.tmp-elsewhere-{dead.pid}-dddddddddddd"]
    )


def test_manifest_hash_follows_content(tmp_path):
    def build(name, text):
        with artifacts.atomic_dir(str(tmp_path / name)) as d:
            artifacts.write_bytes(f"{d}/x/a.txt", text)
        return artifacts.content_hash(str(tmp_path / name))

    assert build("one", b"same") == build("two", b"same")
    assert build("three", b"other") != build("one", b"same")
    manifest = json.loads((tmp_path / "one" / "MANIFEST.json").read_text())
    assert list(manifest["files"]) == ["x/a.txt"]


def test_incomplete_artifact_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "shard-00000.npz").write_bytes(b"")
    with pytest.raises(artifacts.ArtifactError, match="incomplete .*rerun it"):
        artifacts.require_complete(str(tmp_path / "half"))
    with pytest.raises(artifacts.ArtifactError, match="not found: run the stage"):
        artifacts.require_complete(str(tmp_path / "nothing"))


def write_store(uri, values, topk=None, shard_size=3, teacher="t" * 64):
    with artifacts.atomic_dir(uri) as d:
        w = logits.LogitWriter(d, values.shape[1], topk, shard_size, teacher_sha256=teacher, unlabeled_sha256="u" * 64)
        w.add(np.array([f"img{i}" for i in range(len(values))]), torch.tensor(values))
        w.close()


def test_logit_store_round_trip_dense_and_topk(tmp_path):
    raw = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32) * 3
    expected = torch.log_softmax(torch.tensor(raw), 1).numpy()
    write_store(str(tmp_path / "dense"), raw)
    dense = logits.read_store(str(tmp_path / "dense"))
    assert len(dense.header["shards"]) == 3 and dense.values.dtype == np.float16
    np.testing.assert_allclose(dense.dense_log_probs(), expected, atol=2e-3)
    assert dense.ids.tolist() == [f"img{i}" for i in range(7)]

    write_store(str(tmp_path / "top2"), raw, topk=2)
    top = logits.read_store(str(tmp_path / "top2"))
    lp = top.dense_log_probs()
    assert np.isinf(lp).sum(axis=1).tolist() == [3] * 7
    assert (np.diff(top.values.astype(np.float32), axis=1) <= 0).all()  # each row's top-k in descending order
    np.testing.assert_allclose(lp.max(1), expected.max(1), atol=2e-3)  # the top probability is exact
    np.testing.assert_array_equal(lp.argmax(1), expected.argmax(1))


def test_logit_store_refuses_other_teacher_and_nonfinite(tmp_path):
    raw = np.zeros((4, 3), dtype=np.float32)
    write_store(str(tmp_path / "s"), raw)
    with pytest.raises(
        logits.LogitStoreError, match="teacher_sha256 tttttttttttt…, expected aaaaaaaaaaaa…: rerun infer"
    ):
        logits.read_store(str(tmp_path / "s"), teacher_sha256="a" * 64)
    bad = raw.copy()
    bad[2, 1] = np.nan
    with pytest.raises(logits.LogitStoreError, match="non-finite logits for 1 image.*img2"):
        write_store(str(tmp_path / "nan"), bad)
    assert not (tmp_path / "nan").exists()
    with pytest.raises(logits.LogitStoreError, match="exceeds the 3 classes"):
        write_store(str(tmp_path / "k"), raw, topk=4)
    # a store damaged after it was written: NaN in a shard, or a shard of the wrong shape, is named on reading
    values = str(tmp_path / "s" / "shard-00001.values.npy")
    good = np.array(artifacts.load_array(values))
    artifacts.save_array(values, np.full_like(good, np.nan))
    with pytest.raises(
        logits.LogitStoreError, match=r"shard-00001.values.npy' holds NaN/inf logits for 1 image\(s\), first 'img3'"
    ):
        logits.read_store(str(tmp_path / "s"))
    with pytest.raises(
        logits.LogitStoreError, match=r"NaN/inf logits for 1 image\(s\), first 'img3'"
    ):  # as filter-balance reads it
        list(logits.iter_shards(str(tmp_path / "s"), logits.open_store(str(tmp_path / "s")), with_ids=False))
    # a file of another size than its manifest says (replaced, cut short) is refused before it is read
    artifacts.save_array(values, good[:, :2])
    with pytest.raises(
        artifacts.ArtifactError,
        match=r"does not match its MANIFEST.json \(shard-00001.values.npy: missing, extra or changed",
    ):
        logits.read_store(str(tmp_path / "s"))
    (tmp_path / "s" / "shard-00001.values.npy").write_bytes(b"\x93NUMPY cut short")
    with pytest.raises(artifacts.ArtifactError, match=r"does not match its MANIFEST.json \(shard-00001.values.npy"):
        logits.read_store(str(tmp_path / "s"))


def test_checkpoint_round_trip_and_pickle_refused(tmp_path):
    spec = models.ModelSpec("resnet10t", 3, 1, 16, ("a", "b", "c"))
    net = models.create(spec).eval()
    models.save_checkpoint(str(tmp_path / "m.safetensors"), net, spec)
    loaded, spec2 = models.load_checkpoint(str(tmp_path / "m.safetensors"))
    assert spec2 == spec
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded.eval()(x), net(x))
    torch.save(net.state_dict(), tmp_path / "pickled.pt")
    with pytest.raises(artifacts.ArtifactError, match="not a safetensors checkpoint"):
        models.load_checkpoint(str(tmp_path / "pickled.pt"))


def test_small_image_variants_keep_twice_the_resolution_and_round_trip(tmp_path):
    """resnet10t_small is timm's resnet10t without the stem max-pool: same weights, a 2x finer feature map; its
    checkpoint rebuilds it (the name is registered with timm), and the parameter-count rule sees it like any timm
    model."""
    spec = models.ModelSpec("resnet10t_small", 10, 1, 28, ())
    small, plain = models.create(spec).eval(), models.create(models.ModelSpec("resnet10t", 10, 1, 28, ())).eval()
    x = torch.randn(2, 1, 28, 28)
    assert small.forward_features(x).shape[-2:] == (2, 2) and plain.forward_features(x).shape[-2:] == (1, 1)
    assert small.state_dict().keys() == plain.state_dict().keys()
    models.save_checkpoint(str(tmp_path / "m.safetensors"), small, spec)
    loaded, spec2 = models.load_checkpoint(str(tmp_path / "m.safetensors"))
    assert spec2 == spec
    torch.testing.assert_close(loaded.eval()(x), small(x))
    plain.load_state_dict(small.state_dict())  # the same weights, another forward
    assert not torch.allclose(plain(x), small(x))
    assert (
        models._param_count("resnet18_small")
        > models._param_count("resnet10t_small")
        == models._param_count("resnet10t")
    )


def _save_shards(uri: str, rows: int, **arrays: np.ndarray) -> None:
    for i, start in enumerate(range(0, max(len(next(iter(arrays.values()))), 1), rows)):
        artifacts.save_arrays(
            artifacts.join(uri, f"pseudo-{i:05d}.npz"), **{k: a[start : start + rows] for k, a in arrays.items()}
        )


def test_row_shards_load_in_order(tmp_path):
    ids = np.array([f"img{i}" for i in range(25)])
    _save_shards(str(tmp_path), 2, ids=ids, labels=np.arange(25))  # 13 shards: 00010 must come after 00009
    back = artifacts.load_shards(str(tmp_path), "pseudo")
    assert back["ids"].tolist() == ids.tolist() and back["labels"].tolist() == list(range(25))
    _save_shards(str(tmp_path / "empty"), 4, ids=ids[:0], labels=np.arange(0))
    assert len(artifacts.load_shards(str(tmp_path / "empty"), "pseudo")["ids"]) == 0
    with pytest.raises(artifacts.ArtifactError, match="no nope-"):
        artifacts.load_shards(str(tmp_path), "nope")


def test_artifacts_on_s3_are_atomic_sharded_and_hash_like_local_ones(s3_server, tmp_path):
    """The same artifact written to a local dir and to s3:// on a real S3 endpoint: same manifest hash; a failed
    rewrite on S3 leaves the previous artifact complete."""
    arrays = {"ids": np.array([f"u{i}" for i in range(7)]), "probs": np.random.default_rng(0).random((7, 3))}
    local, remote = str(tmp_path / "pseudo"), "s3://selftrain/test-artifacts/pseudo"
    for uri in (local, remote):
        with artifacts.atomic_dir(uri) as staging:
            _save_shards(staging, 3, **arrays)
            artifacts.write_json(artifacts.join(staging, "counts.json"), {"n": 7})
    assert artifacts.content_hash(remote) == artifacts.content_hash(local)
    assert np.array_equal(artifacts.load_shards(remote, "pseudo")["probs"], arrays["probs"])
    before = artifacts.content_hash(remote)
    with pytest.raises(RuntimeError, match="boom"):
        with artifacts.atomic_dir(remote) as staging:
            artifacts.write_json(artifacts.join(staging, "counts.json"), {"n": 0})
            raise RuntimeError("boom")
    assert artifacts.content_hash(remote) == before
    import s3fs

    assert not [
        p for p in s3fs.S3FileSystem().find("selftrain/test-artifacts") if ".tmp-" in p
    ]  # no staging left behind


def test_an_npz_column_is_read_in_row_batches_without_loading_the_array(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (20_000, 28, 28, 1), dtype=np.uint8)  # 15.7 MB
    ids = np.array([f"img{i}" for i in range(len(images))])
    uri = str(tmp_path / "unlabeled.npz")
    artifacts.save_arrays(uri, images=images, ids=ids)
    column = artifacts.npz_column(uri, "images")
    assert column.shape == images.shape and column.dtype == np.uint8
    for rows in (slice(None), slice(7_001, 13_333), slice(19_990, None)):
        got = list(column.batches(rows, 512))
        assert all(len(b) <= 512 for b in got)
        assert np.array_equal(np.concatenate(got), images[rows])
    assert np.array_equal(np.concatenate(list(artifacts.npz_column(uri, "ids").batches(slice(5, 9), 3))), ids[5:9])
    tracemalloc.start()
    for _ in column.batches(slice(None), 256):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000, peak  # a few batches of 200 kB, not the 15.7 MB array
    with pytest.raises(artifacts.ArtifactError, match="has no array named labels"):
        artifacts.npz_column(uri, "labels")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "unlabeled.npz").read_bytes()[:5_000_000])
    with pytest.raises(artifacts.ArtifactError, match=r"cut.npz' is not a readable .npz"):
        artifacts.npz_column(str(tmp_path / "cut.npz"), "images")
