"""Data loading: our in-memory tensors vs neuralpredictors 0.3.0's FileTreeDataset + DataLoader.

Measured in one run, each measurement in its own subprocess (so peak RSS is per measurement):

* ours, first load: ``static_loaders`` with an empty temporary cache (reads every per-trial file,
  writes the consolidated cache entry, builds the loaders);
* ours, cached load: the same in a new process, now served from the cache;
* ours, one pass over the train tier (batch 128, normalised batches), fastest of a few passes;
* peer: ``FileTreeDataset`` with ``NeuroNormalizer`` + ``ToTensor`` and a torch ``DataLoader`` with a
  ``SubsetRandomSampler`` over the train tier (sensorium's ``static_loader`` pipeline); its first pass
  reads the files, its later passes are served from its in-memory item cache (fastest of two). The peer writes
  ``config.json`` into the dataset folder, so it runs on a temporary copy.

Goals printed as ratios: first load no slower than the peer's first pass; our epoch >= 20x faster
than the peer's cached pass; our peak RSS growth (over the imports) within 2x the raw data size on disk.

Usage: ``python benchmarks/bench_data.py [--path DATASET] [--batch-size 128] [--passes 3]``
(default path: the real Lurz 2020 subset in ../shared/data; a synthetic dataset when it is absent).
Both sides run with ``torch.set_num_threads(1)``; the OS page cache is warm for both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "lurz2020-static20457-5-9-trainval-1000" / "static20457-5-9-preproc0"


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure_ours(path: str, cache_dir: str, batch_size: int, passes: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from pipeline.data import static_loaders

    baseline = _peak_rss_mb()  # after imports: the interpreter + torch are not data
    start = time.perf_counter()
    loaders = static_loaders([path], batch_size=batch_size, seed=0, cache_dir=cache_dir)  # reads the data
    load_s = time.perf_counter() - start
    train = next(iter(loaders["train"].values()))
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        total = 0.0
        for batch in train:
            total += float(batch.images[0, 0, 0, 0])  # touch each batch, as a training step would
        times.append(time.perf_counter() - start)
    return {
        "load_s": load_s,
        "epoch_s": min(times),
        "epoch_mean_s": sum(times) / len(times),
        "rss_mb": _peak_rss_mb(),
        "data_rss_mb": _peak_rss_mb() - baseline,
    }


def _measure_peer(path: str, batch_size: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    from tests.peer import import_neuralpredictors

    import_neuralpredictors()
    from neuralpredictors.data.datasets import FileTreeDataset
    from neuralpredictors.data.transforms import NeuroNormalizer, ToTensor
    from torch.utils.data import DataLoader, SubsetRandomSampler

    baseline = _peak_rss_mb()
    start = time.perf_counter()
    dataset = FileTreeDataset(path, "images", "responses")
    dataset.transforms.extend([NeuroNormalizer(dataset), ToTensor()])
    train_idx = np.flatnonzero(dataset.trial_info.tiers == "train")
    loader = DataLoader(dataset, sampler=SubsetRandomSampler(train_idx), batch_size=batch_size)
    setup_s = time.perf_counter() - start
    times = []
    for _ in range(3):  # the first pass reads the files; later passes are served from the peer's item cache
        start = time.perf_counter()
        total = 0.0
        for images, _responses in loader:
            total += float(images[0, 0, 0, 0])
        times.append(time.perf_counter() - start)
    return {
        "setup_s": setup_s,
        "first_pass_s": times[0],
        "cached_pass_s": min(times[1:]),
        "rss_mb": _peak_rss_mb(),
        "data_rss_mb": _peak_rss_mb() - baseline,
    }


def _child(kind: str, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--args", json.dumps(kwargs)]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _raw_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path / "data").rglob("*.npy")) / 2**20


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print a table of times, memory and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--path", default=None, help="dataset folder (default: the real subset, else synthetic)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3, help="passes over the train tier for our epoch time")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kwargs = json.loads(args.args)
        result = _measure_ours(**kwargs) if args.child == "ours" else _measure_peer(**kwargs)
        print(json.dumps(result))
        return result

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        if args.path:
            source = Path(args.path)
        elif REAL.is_dir():
            source = REAL
        else:
            sys.path.insert(0, str(REPO))
            from pipeline.data.synthetic import make_synthetic_dataset

            source = make_synthetic_dataset(
                tmp / "static90001-1-1-bench", n_neurons=1000, n_train=4472, n_validation=522
            )
        peer_copy = tmp / "peer" / source.name
        shutil.copytree(source, peer_copy)  # the peer writes config.json into its dataset folder
        cache = str(tmp / "cache")
        common = dict(path=str(source), cache_dir=cache, batch_size=args.batch_size, passes=args.passes)
        cold = _child("ours", **common)
        warm = _child("ours", **common)
        peer = _child("peer", path=str(peer_copy), batch_size=args.batch_size)
        raw = _raw_size_mb(source)

    report = {
        "dataset": str(source),
        "raw_data_mb": raw,
        "ours_first_load_s": cold["load_s"],
        "ours_cached_load_s": warm["load_s"],
        "ours_epoch_s": warm["epoch_s"],
        "ours_peak_rss_mb_first": cold["rss_mb"],
        "ours_peak_rss_mb_cached": warm["rss_mb"],
        "ours_data_rss_mb_first": cold["data_rss_mb"],
        "ours_data_rss_mb_cached": warm["data_rss_mb"],
        "peer_data_rss_mb": peer["data_rss_mb"],
        "peer_setup_s": peer["setup_s"],
        "peer_first_pass_s": peer["first_pass_s"],
        "peer_cached_pass_s": peer["cached_pass_s"],
        "peer_peak_rss_mb": peer["rss_mb"],
    }
    report["ratio_first_load_vs_peer_first_pass"] = (peer["setup_s"] + peer["first_pass_s"]) / cold["load_s"]
    report["ratio_epoch_peer_cached_vs_ours"] = peer["cached_pass_s"] / warm["epoch_s"]
    report["ratio_peak_rss_vs_raw"] = max(cold["data_rss_mb"], warm["data_rss_mb"]) / raw
    print(f"dataset: {source}  (raw data files {raw:.1f} MB, batch size {args.batch_size}, 1 torch thread)")
    print(
        f"ours  first load (empty cache, + loaders)  {cold['load_s']:8.3f} s   peak RSS {cold['rss_mb']:7.1f} MB "
        f"(+{cold['data_rss_mb']:.1f} MB over the imports)"
    )
    print(
        f"ours  cached load (+ loaders)              {warm['load_s']:8.3f} s   peak RSS {warm['rss_mb']:7.1f} MB "
        f"(+{warm['data_rss_mb']:.1f} MB)"
    )
    print(f"ours  one train pass (fastest of --passes) {warm['epoch_s']:8.4f} s")
    print(f"peer  setup + first pass (reads files)     {peer['setup_s'] + peer['first_pass_s']:8.3f} s   "
          f"peak RSS {peer['rss_mb']:7.1f} MB (+{peer['data_rss_mb']:.1f} MB)")  # fmt: skip
    print(f"peer  cached pass (fastest of 2)           {peer['cached_pass_s']:8.3f} s")
    print(
        f"ratio peer first pass / our first load     {report['ratio_first_load_vs_peer_first_pass']:8.2f}x  (goal >= 1)"
    )
    print(
        f"ratio peer cached pass / our pass          {report['ratio_epoch_peer_cached_vs_ours']:8.1f}x  (goal >= 20)"
    )
    print(f"ratio our data RSS / raw data size         {report['ratio_peak_rss_vs_raw']:8.2f}x  (goal <= 2)")
    return report


if __name__ == "__main__":
    main()
