"""svm against scikit-learn's LinearSVC on the same standardised features, at several shapes.

For each shape (training rows x columns, classes) it draws CNN-like features
(ReLU of a low-rank class signal plus noise, the classes overlapping), fits
``LinearSVC(C=1)`` and the estimator featx's svm fits for that shape (the
registry's choice: liblinear with fewer rows than columns, else the minibatch
squared hinge finished by L-BFGS), and, with more rows than columns, the
minibatch fit without its L-BFGS finish (with fewer, the minibatch fit a
streamed run would make); prints test accuracy, the objective
(LinearSVC's, over C n) and seconds.

    python benchmarks/svm_parity.py                 # the small shapes (a minute on a busy 2-core machine)
    python benchmarks/svm_parity.py --large         # + 1,347 x 4,608 (10 classes), 20,000 x 512 (20 classes)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featx.classification import FAMILIES, ClassifyConfig  # noqa: E402

SMALL = [(400, 800, 4, 0.5), (400, 800, 4, 0.4), (4_000, 128, 5, 0.4), (8_000, 256, 10, 0.5)]
LARGE = [(1_347, 4_608, 10, 0.5), (20_000, 512, 20, 0.5)]


def cnn_like(n: int, d: int, classes: int, seed: int, sep: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 32)) * sep
    mixing = rng.normal(size=(32, d)) / np.sqrt(32)
    y = rng.permutation(np.arange(n) % classes)
    X = np.maximum((centres[y] + rng.normal(size=(n, 32))) @ mixing + 0.5 * rng.normal(size=(n, d)), 0)
    return X.astype(np.float32), y


def objective(model, X, y) -> float:
    scores = X.astype(np.float64) @ np.asarray(model.coef_, dtype=np.float64).T + model.intercept_
    target = -np.ones_like(scores)
    target[np.arange(len(y)), y] = 1
    coef = np.asarray(model.coef_, dtype=np.float64)
    penalty = (coef**2).sum() + (np.asarray(model.intercept_, dtype=np.float64) ** 2).sum()  # liblinear's bias
    return float(((np.maximum(0, 1 - target * scores) ** 2).sum() + 0.5 * penalty) / len(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also the large shapes (minutes)")
    args = parser.parse_args()
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    warnings.filterwarnings("ignore")
    params = ClassifyConfig(features="x.h5", models="svm").model_params["svm"]
    print(f"{'shape':>24}  {'solver':<34} {'accuracy':>8} {'diff':>6} {'objective':>10} {'s':>6}")
    for n, d, k, sep in SMALL + (LARGE if args.large else []):
        X, y = cnn_like(2 * n, d, k, seed=0, sep=sep)
        scaler = StandardScaler().fit(X[:n])
        train, test = scaler.transform(X[:n]).astype(np.float32), scaler.transform(X[n:]).astype(np.float32)
        fits = [("LinearSVC", LinearSVC(C=1.0, max_iter=10_000))]
        ours = FAMILIES["svm"].build(params, 0, rows=n, features=d)
        fits.append((f"featx ({type(ours).__name__})", ours))
        if n >= d:
            fits.append(("minibatch alone", FAMILIES["svm"].build(params, 0, rows=n, features=d).set_params(polish=0)))
        else:  # what a wide fit gets when it streams or exceeds liblinear's bound
            fits.append(("minibatch + L-BFGS (streamed)",
                         FAMILIES["svm"].build(params, 0, rows=n, features=d, streaming=True)))
        reference = None
        for name, model in fits:
            started = time.perf_counter()
            model.fit(train.copy(), y[:n])
            seconds = time.perf_counter() - started
            accuracy = float(model.score(test, y[n:]))
            reference = accuracy if reference is None else reference
            shape = f"{n:,} x {d:,}, {k} classes"
            print(f"{shape:>24}  {name:<34} {accuracy:8.4f} {100 * (accuracy - reference):+6.2f} "
                  f"{objective(model, train, y[:n]):10.5g} {seconds:6.1f}", flush=True)


if __name__ == "__main__":
    main()
