#!/usr/bin/env python3
"""Give each demo site its own share of scikit-learn's breast-cancer data, as a CSV.

    split_demo_data.py OUT_DIR SITE [SITE...]

Writes OUT_DIR/SITE/train.csv for each site: the same non-IID (Dirichlet, seeded) split of
the same training rows as `cohort demo` (25 % held out as the common test set, alpha 1.0,
seed 0), so the compose demo trains on what the one-command demo trains on. Each site's
directory is that site's own volume in docker-compose.yml; the site mounts it read-only.
An existing train.csv is kept, so the data a site trained on does not change under it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.data import dirichlet_split, load_sklearn, save_csv, train_holdout_split


def split(
    out_dir: Path, sites: list[str], seed: int = 0, alpha: float = 1.0, holdout: float = 0.25
) -> dict[str, Path]:
    data = load_sklearn("breast_cancer")
    train, _test = train_holdout_split(data, holdout=holdout, seed=seed)
    parts = dirichlet_split(train.y, len(sites), alpha, seed, min_rows=40)
    written = {}
    for site, index in zip(sites, parts, strict=True):
        path = out_dir / site / "train.csv"
        if path.exists():
            print(f"{site}: keeping {path}", file=sys.stderr)
        else:
            tmp = save_csv(train.subset(index), path.with_suffix(".csv.tmp"))
            tmp.chmod(0o644)  # the site reads it as another user
            tmp.replace(path)
            print(f"{site}: {len(index)} rows -> {path}", file=sys.stderr)
        written[site] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("sites", nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args(argv)
    if len(set(args.sites)) != len(args.sites):
        parser.error("site names must differ")
    split(args.out_dir, args.sites, args.seed, args.alpha)
    return 0


if __name__ == "__main__":
    sys.exit(main())
