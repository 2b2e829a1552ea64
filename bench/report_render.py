"""The report's picture grids drawn as one image (rendering.tile_sheet, what the stages do) against one matplotlib axes
per tile (how they were drawn before), on the same tiles; wall seconds each, and the ratio.

    python -m bench.report_render            # a 12 x 10 gallery and a 15 x 6 corruption grid of 28 x 28 images
"""

from __future__ import annotations

import time

import numpy as np

from selftrain import gallery, rendering


def per_axes(images: np.ndarray, rows: int, cols: int, captions: bool) -> bytes:
    """The baseline: one axes per tile, an image, a frame and a caption each; tight layout."""
    plt = rendering.pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.05, rows * 1.25), squeeze=False)
    for k, ax in enumerate(axes.flat):
        img = images[k % len(images)]
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255)
        ax.add_patch(
            plt.Rectangle((-0.5, -0.5), img.shape[1], img.shape[0], fill=False, edgecolor=gallery.KEPT, linewidth=3)
        )
        if captions:
            ax.set_title(f"{k / (rows * cols):.2f} kept", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.2)
    data = rendering.png_bytes(fig)
    plt.close(fig)
    return data


def best_of(fn, *args, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    images = rng.integers(0, 255, (n, 28, 28, 1), dtype=np.uint8)
    teacher = gallery.Teacher(label=rng.integers(0, 10, n), confidence=rng.random(n))
    previous = gallery.Teacher(label=rng.integers(0, 10, n), confidence=rng.random(n))
    copies, truth = rng.integers(0, 3, n), rng.integers(0, 10, n)
    classes = tuple(f"class {c}" for c in range(10))
    corrupted = {f"corruption {c}": rng.integers(0, 255, (5, 10, 28, 28, 1), dtype=np.uint8) for c in range(15)}
    rendering.corruption_grid(images[:10], corrupted)  # matplotlib's first figure pays for its fonts: not timed
    rows = [
        (
            "gallery, 12 x 10 tiles",
            best_of(per_axes, images, 12, 10, True),
            best_of(gallery.render, images, classes, teacher, copies, "t", previous, truth),
        ),
        (
            "corruption grid, 15 x 6 tiles",
            best_of(per_axes, images, 15, 6, False),
            best_of(rendering.corruption_grid, images[:10], corrupted),
        ),
    ]
    print("| picture | one axes per tile (s) | one image (s) | speed-up |\n|---|---:|---:|---:|")
    for name, base, sheet in rows:
        print(f"| {name} | {base:.2f} | {sheet:.2f} | {base / sheet:.1f}x |")


if __name__ == "__main__":
    main()
