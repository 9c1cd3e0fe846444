#!/usr/bin/env python3
"""NAB scores with the threshold chosen out of fold, from a finished NAB run's outputs.

    python benchmarks/nab_out_of_fold.py DIR [--folds 5] [--subset dev] [--nab ../shared/nab]

``DIR`` is the ``--out`` folder of ``run_nab.py``. NAB's own figure (in-fold) picks
each profile's threshold on the very files it scores. Here the files are split into
folds (sorted by name, file ``i`` in fold ``i mod folds``); each fold is scored at the
threshold that is best on the other folds, and the folds' raw scores are summed and
normalised as NAB does. The gap between the two is what choosing the threshold on the
scored data is worth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scores_dir", help="run_nab.py --out folder")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--subset", default="dev")
    ap.add_argument("--nab", default=str(ROOT.parent / "shared" / "nab"), help="folder with nab_scorer.py")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    sys.path.insert(0, a.nab)
    import nab_scorer as ns  # the benchmark's own scorer, not a copy of its rules

    corpus = ns.Corpus(a.nab)
    files = sorted(corpus.files(a.subset))
    scores, errors = ns.load_dir(corpus, a.scores_dir, files)
    if errors:
        for f, e in sorted(errors.items()):
            print(f"ERROR {f}: {e}", file=sys.stderr)
        return 1
    folds = [[f for i, f in enumerate(files) if i % a.folds == k] for k in range(a.folds)]
    results = {}
    for profile in ns.PROFILES:
        in_fold = ns.Scorer(corpus, scores).score(profile)
        raw = null = perfect = 0.0
        for test in folds:
            train = ns.Scorer(corpus, {f: scores[f] for f in files if f not in test})
            threshold = train.score(profile)["threshold"]
            r = ns.Scorer(corpus, {f: scores[f] for f in test}).score(profile, threshold)
            raw, null, perfect = raw + r["raw"], null + r["null"], perfect + r["perfect"]
        results[profile] = {"in_fold": in_fold["normalized"], "out_of_fold": 100.0 * (raw - null) / (perfect - null)}
        print(f"{profile:20s} in-fold {in_fold['normalized']:6.2f}  out-of-fold ({a.folds} folds) "
              f"{results[profile]['out_of_fold']:6.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"folds": a.folds, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
