"""Write splatkit's synthetic demo scene (PNGs + COLMAP text model) to a folder.

    python datasets/make_demo_scene.py OUT_DIR [--seed N] [--cameras 60] [--width 200] [--height 150]
        [--layout orbit|walk]

`splatkit train demo` generates the same scene into its cache by itself; this is for inspecting it or making
variants (other seeds or sizes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing
from splatkit.data.demo_scene import generate_demo_scene  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cameras", type=int, default=60)
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--height", type=int, default=150)
    parser.add_argument("--layout", choices=("orbit", "walk"), default="orbit")
    args = parser.parse_args()
    start = time.perf_counter()
    out = generate_demo_scene(args.out_dir, seed=args.seed, n_cameras=args.cameras, width=args.width,
                              height=args.height, layout=args.layout)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
