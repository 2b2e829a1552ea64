"""The report's pictures: tiles laid out by hand into one image, each where its frame and caption say."""

import io
import re

import numpy as np

from selftrain import gallery, rendering


def test_tile_sheet_places_frames_and_tiles_by_hand_worked_coordinates():
    gray_a, gray_b = np.full((2, 2, 1), 10, np.uint8), np.full((2, 2, 1), 20, np.uint8)
    colour = np.broadcast_to(np.array([1, 2, 3], np.uint8), (2, 2, 3))
    sheet = rendering.tile_sheet([[gray_a, gray_b], [colour]], [["red", None], ["#0000ff"]], border=1, gap=(1, 1))
    assert sheet.shape == (10, 10, 3)  # 2 rows x 2 columns of 1 gap + 1 border + 2 pixels + 1 border
    assert (sheet[0] == 255).all() and (sheet[:, 0] == 255).all()  # the gaps
    frame = sheet[1:5, 1:5]
    assert (frame[0] == [255, 0, 0]).all() and (frame[:, 3] == [255, 0, 0]).all()
    assert (sheet[2:4, 2:4] == 10).all()  # gray broadcast to all three channels
    assert (sheet[1:5, 6:10][0] == 255).all() and (sheet[2:4, 7:9] == 20).all()  # no colour: a white frame
    assert (sheet[6:10, 1:5][0] == [0, 0, 255]).all() and (sheet[7:9, 2:4] == [1, 2, 3]).all()
    assert (sheet[5:, 5:] == 255).all()  # the missing cell stays white


def test_gallery_frames_show_what_balancing_did():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 50, (40, 8, 8, 1), dtype=np.uint8)
    teacher = gallery.Teacher(label=np.repeat([0, 1], 20), confidence=rng.random(40))
    copies = np.array([0] * 20 + [1] * 10 + [2] * 10)  # class 0 all dropped; class 1 half kept, half duplicated
    png = gallery.render(images, ("a", "b"), teacher, copies, "t", per_class=4)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)

    def share(hex_colour: str) -> float:
        return float((pixels == np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])).all(axis=1).mean())

    # one row of four red frames, and one of green and blue frames, the same size each
    assert share(gallery.DROPPED) > 0.01
    assert share(gallery.KEPT) > 0.001 and share(gallery.DUPLICATED) > 0.001
    assert abs(share(gallery.DROPPED) - share(gallery.KEPT) - share(gallery.DUPLICATED)) < 0.3 * share(gallery.DROPPED)


def test_class_names_users_choose_render_literally_in_the_gallery_and_the_tables():
    """`x_{$` twice in one caption is mathtext to matplotlib (it failed to render); `|` splits a markdown row."""
    rng = np.random.default_rng(0)
    classes = ("x_{$", "y_{$|z")  # the changed row's caption "y_{$>x_{$" holds two
    teacher = gallery.Teacher(label=np.repeat([0, 1], 10), confidence=rng.random(20))
    previous = gallery.Teacher(label=np.repeat([1, 0], 10), confidence=rng.random(20))
    truth = np.repeat([1, 0], 10)  # every kept label wrong: the mistakes row names both classes in one caption
    png = gallery.render(
        rng.integers(0, 50, (20, 8, 8, 1), dtype=np.uint8),
        classes,
        teacher,
        np.ones(20, int),
        "a $title$ {",
        previous,
        truth,
    )
    assert png.startswith(b"\x89PNG")
    per_class = {
        name: {"predicted": 1, "above_threshold": 1, "class_threshold": 0.5, "selected": 1, "after_balance": 1}
        for name in classes
    }
    counts = {"kind": "soft", "threshold": 0.5, "per_class_target": None, "per_class": per_class}
    counts["total"] = {"above_threshold": 2, "unlabeled": 2, "after_balance": 2, "unique_after_balance": 2}
    rows = rendering.balance_table(counts).splitlines()[2:]
    cells = [[c for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    assert all(len(c) == 6 for c in cells), (
        cells
    )  # a `|` inside a name is escaped, so every row has the header's six cells
    assert cells[-1][0].strip() == r"y_{$\|z"
