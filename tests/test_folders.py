"""A user's folders read safely: no split leaks into another, hidden folders are not classes, symlinked folders are
read, images decode as a viewer shows them, and no file can crash or hang the reader."""

import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import BIN, ROOT, copy_project, run, write_image
from selftrain import stages
from selftrain.data.folders import BadInput
from selftrain.data.splits import check_data, make_splits
from selftrain.params import DataParams, FolderSources, ParamsError, load_params, parse_params


def folder_params(root: Path, **kw) -> DataParams:
    srcs = {s: str(root / s) for s in ("labeled", "unlabeled", "val", "test")}
    srcs.update(kw.pop("folders", {}))
    return DataParams(**{"source": "folders", "folders": FolderSources(**srcs), "image_size": 16, "channels": 1, **kw})


def reasons(problems) -> dict[str, str]:
    return {p.path: p.reason for p in problems}


def check_data_cli(tmp_path: Path, data: DataParams) -> subprocess.CompletedProcess:
    params = load_params(ROOT / "params.yaml", {"data": data.model_dump()})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    # a hung reader fails the test instead of hanging the suite
    return subprocess.run(
        [str(BIN / "selftrain"), "check-data", "--params", str(path)], capture_output=True, text=True, timeout=120
    )


def test_split_folders_that_overlap_are_refused_even_with_skip_bad(image_tree):
    """val = test = labeled and unlabeled = their parent: every val and test image would be trained on."""
    same = str(image_tree / "labeled")
    p = folder_params(image_tree, folders={"val": same, "test": same, "unlabeled": str(image_tree)})
    found = check_data(p, seed=0)
    overlaps = [q for q in found if "each split needs its own folder" in q.reason]
    assert {(q.path, q.reason.split(" (")[0]) for q in overlaps} == {
        (same, "the labeled folder lies inside the unlabeled folder"),
        (same, "the labeled folder is the same folder as the val folder"),
        (same, "the labeled folder is the same folder as the test folder"),
        (str(image_tree), "the unlabeled folder contains the val folder"),
        (str(image_tree), "the unlabeled folder contains the test folder"),
        (same, "the val folder is the same folder as the test folder"),
    }
    assert all(not q.skippable for q in overlaps)
    with pytest.raises(BadInput, match="cannot leave out"):
        make_splits(
            folder_params(image_tree, skip_bad=True, folders={"val": same, "test": same, "unlabeled": str(image_tree)}),
            seed=0,
        )
    # through a symlink it is still the same folder
    (image_tree / "alias").symlink_to(image_tree / "test")
    assert any(
        "same folder" in q.reason
        for q in check_data(folder_params(image_tree, folders={"val": str(image_tree / "alias")}), seed=0)
    )


def test_a_test_image_copied_into_the_unlabeled_pool_is_named_and_skip_bad_leaves_the_copy_out(image_tree, tmp_path):
    shutil.copy(image_tree / "test" / "dog" / "1.png", image_tree / "unlabeled" / "sub" / "copy.png")
    shutil.copy(image_tree / "val" / "cat" / "0.png", image_tree / "labeled" / "cat" / "again.png")
    found = reasons(check_data(folder_params(image_tree), seed=0))
    assert found == {
        str(
            image_tree / "unlabeled" / "sub" / "copy.png"
        ): f"byte-identical to {image_tree / 'test' / 'dog' / '1.png'}: an evaluation image would be trained on",
        str(
            image_tree / "labeled" / "cat" / "again.png"
        ): f"byte-identical to {image_tree / 'val' / 'cat' / '0.png'}: an evaluation image would be trained on",
    }
    s = make_splits(folder_params(image_tree, skip_bad=True), seed=0)
    assert "sub/copy.png" not in s["unlabeled"].ids.tolist() and len(s["unlabeled"]) == 4
    assert "cat/again.png" not in s["labeled"].ids.tolist() and len(s["labeled"]) == 6
    assert len(s["test"]) == 4 and len(s["val"]) == 4  # the evaluation copies stay


def test_hidden_folders_are_not_classes_and_symlinked_folders_are_read(image_tree, tmp_path):
    write_image(image_tree / "labeled" / ".ipynb_checkpoints" / "0-checkpoint.png", 77)
    write_image(image_tree / "unlabeled" / ".cache" / "thumb.png", 78)
    write_image(image_tree / "unlabeled" / "sub" / "._u1.png", 79)  # a macOS resource fork
    elsewhere = tmp_path / "birds"
    for i in range(2):
        write_image(elsewhere / f"{i}.png", 120 + i)
    (image_tree / "labeled" / "bird").symlink_to(elsewhere)  # a class folder kept on another disk
    (image_tree / "unlabeled" / "more").symlink_to(tmp_path / "more")
    write_image(tmp_path / "more" / "m.png", 140)
    (tmp_path / "more" / "up").symlink_to(image_tree / "unlabeled")  # a loop back into the tree
    p = folder_params(image_tree, skip_bad=True)
    found = check_data(folder_params(image_tree), seed=0)
    assert {q.path: (q.ignored, q.reason) for q in found} == {
        str(image_tree / "labeled" / ".ipynb_checkpoints"): (
            True,
            "hidden (its name starts with '.'): left out, not a class",
        ),
        str(image_tree / "unlabeled" / ".cache"): (True, "hidden (its name starts with '.'): left out"),
        str(image_tree / "unlabeled" / "sub" / "._u1.png"): (True, "hidden (its name starts with '.'): left out"),
        str(image_tree / "unlabeled" / "more" / "up"): (
            False,
            "a symlink to a folder that contains it (a loop): left out",
        ),
    }
    s = make_splits(p, seed=0)
    assert s["labeled"].classes == ("bird", "cat", "dog") and s["labeled"].labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(s["unlabeled"].ids.tolist()) == ["more/m.png", "sub/u1.jpg", "sub/u3.jpg", "u0.jpg", "u2.jpg"]
    # hidden folders alone are no problem: check-data lists them and exits 0
    (tmp_path / "more" / "up").unlink()
    proc = check_data_cli(tmp_path, folder_params(image_tree))
    assert proc.returncode == 0 and "no problems" in proc.stderr and proc.stdout.count(": hidden (its name") == 3
    summary = stages.prepare.run(
        load_params(ROOT / "params.yaml", {"data": folder_params(image_tree).model_dump()}), out=str(tmp_path / "data")
    )
    assert sorted(Path(s["path"]).name for s in summary["skipped"]) == sorted(
        [".cache", ".ipynb_checkpoints", "._u1.png"]
    )


def _png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit PNG of width x height, all black, written in pieces (20000 x 20000 compresses to ~50 kB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_no_file_can_crash_or_hang_the_reader(image_tree, tmp_path):
    _png(image_tree / "unlabeled" / "bomb.png", 20000, 20000)
    os.mkfifo(image_tree / "unlabeled" / "pipe.png")
    (image_tree / "unlabeled" / "zero.png").symlink_to("/dev/zero")
    (image_tree / "unlabeled" / "gone.png").symlink_to(tmp_path / "nothing")
    with open(image_tree / "unlabeled" / "huge.png", "wb") as f:
        f.truncate(3 * 2**20)  # sparse: 3 MiB that take no disk
    proc = check_data_cli(tmp_path, folder_params(image_tree, max_file_mb=2))
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    u = str(image_tree / "unlabeled")
    assert proc.returncode == 2 and "5 problem(s)" in proc.stderr and "Traceback" not in proc.stderr
    assert lines[f"{u}/bomb.png"].startswith(
        "too many pixels to decode safely (Image size (400000000 pixels) exceeds limit"
    )
    assert (
        lines[f"{u}/pipe.png"]
        == lines[f"{u}/zero.png"]
        == "not a regular file (a FIFO, a device or a socket): not read"
    )
    assert lines[f"{u}/gone.png"] == "a symlink to nothing: left out"
    assert lines[f"{u}/huge.png"] == "3 MiB, over data.max_file_mb (2): not read"
    s = make_splits(folder_params(image_tree, max_file_mb=2, skip_bad=True), seed=0)
    assert len(s["unlabeled"]) == 4


def test_images_decode_as_a_viewer_shows_them(image_tree, tmp_path):
    # 16-bit grey at half scale (32896 = 128 * 257) reads as 128, not clipped to 255
    Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16)).save(image_tree / "unlabeled" / "deep.png")
    # a photo stored sideways: 16 wide, 8 high, left half black; EXIF orientation 6 says turn it 90 degrees clockwise,
    # so a viewer shows it 8 wide and 16 high with the black half on top
    sideways = np.zeros((8, 16), dtype=np.uint8)
    sideways[:, 8:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(sideways).save(image_tree / "unlabeled" / "turned.jpg", exif=exif, quality=100)
    s = make_splits(folder_params(image_tree), seed=0)
    u = dict(zip(s["unlabeled"].ids.tolist(), s["unlabeled"].images[..., 0]))
    assert np.all(u["deep.png"] == 128)
    turned = u["turned.jpg"].astype(int)
    assert turned[:6].mean() < 20 and turned[10:].mean() > 235  # black on top, white below
    # a LAB TIFF cannot be made grey: a listed problem naming the file, the other files still read
    Image.new("LAB", (8, 8)).save(image_tree / "val" / "cat" / "lab.tif")
    found = reasons(check_data(folder_params(image_tree), seed=0))
    assert list(found) == [str(image_tree / "val" / "cat" / "lab.tif")]
    assert found[str(image_tree / "val" / "cat" / "lab.tif")].startswith("corrupt or unconvertible image")


def test_every_problem_of_a_folder_is_listed_not_only_its_first(image_tree):
    """Several bad files in one folder: each is named (a reader that stopped at a folder's first would pass a
    one-bad-file-per-folder test)."""
    for name in ("a.png", "b.png", "c.jpg"):
        (image_tree / "labeled" / "cat" / name).write_bytes(b"not an image")
    (image_tree / "unlabeled" / "sub" / "d.png").write_bytes(b"")
    (image_tree / "unlabeled" / "sub" / "e.png").write_bytes(b"")
    found = reasons(check_data(folder_params(image_tree), seed=0))
    assert sorted(Path(p).name for p in found) == ["a.png", "b.png", "c.jpg", "d.png", "e.png"]
    summary = stages.prepare.run(
        load_params(ROOT / "params.yaml", {"data": folder_params(image_tree, skip_bad=True).model_dump()}),
        out=str(image_tree / "out"),
    )
    s, skipped = summary["sizes"], summary["skipped"]
    assert (
        sorted(Path(q["path"]).name for q in skipped) == ["a.png", "b.png", "c.jpg", "d.png", "e.png"]
        and s["labeled"] == 6
    )


def test_a_file_name_that_is_not_utf8_is_printed_escaped(image_tree, tmp_path):
    bad = os.fsencode(image_tree / "unlabeled") + b"/caf\xe9.png"  # Latin-1, as an old camera or zip tool writes it
    with open(bad, "wb") as f:
        f.write(b"broken")
    proc = check_data_cli(tmp_path, folder_params(image_tree))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stdout.strip()
        == f"{image_tree / 'unlabeled'}/caf\\udce9.png: not an image (Pillow recognises no image format in it)"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.image_size", 100000, "less than or equal to 2048"),
        ("seed", -1, "greater than or equal to 0"),
        ("seed", True, "a valid integer"),
        ("seed", 2**40, "less than or equal to 4294967295"),
    ],
)
def test_image_size_and_seed_are_bounded_at_load(key, value, message):
    section, _, leaf = key.rpartition(".")
    raw = {section: {leaf: value}} if section else {leaf: value}
    with pytest.raises(ParamsError, match=f"{key}: Input should be {message}"):
        parse_params(raw)


def test_dvc_repro_reruns_prepare_when_the_users_images_change(image_tree, tmp_path):
    """A real DVC repo on a user's folders: unchanged images, prepare is skipped; 8 more images and a class, prepare
    runs again and its splits hold them (before list-data, DVC said "Stage 'prepare' didn't change, skipping")."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_project(repo)
    params = load_params(ROOT / "params.yaml", {"data": folder_params(image_tree).model_dump()})
    (repo / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        run(cmd, repo)
    first = run(["dvc", "repro", "prepare"], repo).stdout
    assert "Running stage 'list-data'" in first and "Running stage 'prepare'" in first
    again = run(["dvc", "repro", "prepare"], repo).stdout
    assert "Running stage 'list-data'" in again and "Stage 'prepare' didn't change, skipping" in again
    for i in range(8):
        write_image(image_tree / "labeled" / ("bird" if i < 4 else "cat") / f"new{i}.png", 150 + i)
    changed = run(["dvc", "repro", "prepare"], repo).stdout
    assert "Running stage 'prepare'" in changed
    summary = json.loads((repo / "artifacts" / "data" / "summary.json").read_text())
    assert summary["classes"] == ["bird", "cat", "dog"] and summary["sizes"]["labeled"] == 14
    # a file rewritten in place (same name, same size) changes the fingerprint too
    target = image_tree / "unlabeled" / "u0.jpg"
    write_image(target, 1, size=20, mode="RGB")
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert "Running stage 'prepare'" in run(["dvc", "repro", "prepare"], repo).stdout
