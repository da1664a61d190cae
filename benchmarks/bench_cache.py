"""What the result cache saves, printed as ratios measured in one run.

    python benchmarks/bench_cache.py [--notebook 04] [--model toy]

1. A notebook (``fast=True``) run twice with papermill against an empty cache folder: the second run's
   wall time over the first's (kernel start and plotting included, so it cannot reach 0).
2. A widget moved back to a value already seen (``widgets.explorer_image``): load time over compute time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["NBHELPERS_HEADLESS"] = "1"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notebook", default="04")
    ap.add_argument("--model", default="toy")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NBHELPERS_CACHE_DIR"] = str(Path(tmp) / "cache")
        os.environ["NBHELPERS_CACHE"] = "1"
        from nbhelpers import cache, load_model, report, widgets

        (spec,) = report.select(report.notebook_specs(), [a.notebook])
        times = []
        for run in (1, 2):
            t0 = time.perf_counter()
            s = report.run_notebook(spec.path, Path(tmp) / f"run{run}", {"fast": True, "model": a.model}, progress=False)
            times.append(time.perf_counter() - t0)
            if s["status"] != "ok":
                raise SystemExit(f"{spec.name} failed: {s['error']}")
        info = cache.info()
        print(f"{spec.name} (fast): first run {times[0]:.1f} s, second run {times[1]:.1f} s, "
              f"ratio {times[1] / times[0]:.2f} ({info['entries']} cached results, {info['bytes'] / 2**20:.1f} MB)")

        m = load_model(a.model, device="cpu")
        t0 = time.perf_counter()
        widgets.explorer_image(m, "a big red circle on the left", 5, 25, 3.0)
        compute = time.perf_counter() - t0
        t0 = time.perf_counter()
        widgets.explorer_image(m, "a big red circle on the left", 5, 25, 3.0)
        load = time.perf_counter() - t0
        print(f"widget moved back to a seen seed: {load * 1e3:.1f} ms against {compute * 1e3:.0f} ms computing "
              f"(ratio {load / compute:.3f}, model fingerprint included)")


if __name__ == "__main__":
    main()
