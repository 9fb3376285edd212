"""Peak memory of `python -m eval` on one long high-resolution clip (default 1080p, 60 s, 30 fps).

    python -m benchmarks.eval_memory [--height 1080] [--width 1920] [--seconds 60] [--fps 30]
        [--domain footage] [--keep DIR]

Writes the clip frame by frame (a camera panning over an upscaled scikit-image photograph, or a
moving gradient without scikit-image; libx264 ultrafast), then scores it with
`python -m eval <dir>` in a child process and prints the child's peak resident memory
(`ru_maxrss`) and wall time. The claim it checks: peak memory stays under 4 GB whatever the clip's
length or resolution (README "Evaluation").
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _base(height: int, width: int) -> np.ndarray:
    """An RGB image 1.5x the frame size to pan over."""
    size = (int(width * 1.5), int(height * 1.5))
    try:
        import skimage.data

        return cv2.resize(skimage.data.coffee(), size, interpolation=cv2.INTER_CUBIC)
    except ModuleNotFoundError:
        ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
        return np.stack([xs % 256, ys % 256, (xs + ys) % 256], -1).astype(np.uint8)


def write_clip(path: Path, height: int, width: int, seconds: float, fps: int) -> int:
    """Encode the panning clip to `path` one frame at a time; return its frame count."""
    base = _base(height, width)
    count = int(seconds * fps)
    span_x, span_y = base.shape[1] - width, base.shape[0] - height
    container = av.open(str(path), mode="w")
    try:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "ultrafast"}
        for t in range(count):
            phase = t / max(1, count - 1)
            x = int(span_x * (0.5 + 0.5 * np.sin(2 * np.pi * phase)))
            y = int(span_y * phase)
            frame = np.ascontiguousarray(base[y : y + height, x : x + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    finally:
        container.close()
    return count


def main(argv: list[str] | None = None) -> int:
    """Write the clip, score it in a child process, print peak memory and time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--domain", default="footage", choices=("footage", "renders"))
    parser.add_argument("--keep", type=Path, default=None, help="write the clip here and keep it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        frames = write_clip(folder / "clip.mp4", args.height, args.width, args.seconds, args.fps)
        written = time.perf_counter() - start
        start = time.perf_counter()
        command = [sys.executable, "-m", "eval", str(folder), "--domain", args.domain]
        command += ["--csv", str(Path(tmp) / "scores.csv")]
        subprocess.run(command, cwd=ROOT, check=True)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB
    print(
        f"{args.width}x{args.height}, {frames} frames at {args.fps} fps ({args.domain} defaults): "
        f"peak RSS {peak:.2f} GiB, scoring {seconds:.0f} s (writing the clip {written:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
