"""scikit-learn's side of benches/fit_time.sh.

    python3 benches/sklearn_fit.py data MANIFEST OUTDIR
        Regenerates the synthetic set from its manifest's make_classification call, checks the
        manifest's array and file SHA-256s, and writes OUTDIR/synthetic_{train,test}.csv (kept
        between runs: a second call only re-checks the files' hashes).

    python3 benches/sklearn_fit.py fit CASE TRAIN.csv TEST.csv [BLAS_THREADS]
        Fits one case's scikit-learn model and prints one JSON object: fit_seconds (fit()
        wall clock), accuracy on TEST, n_iter, converged, threads. BLAS_THREADS limits
        OpenBLAS (through threadpoolctl) for the fit; by default it uses every core.

CASE is mlp, forest, logistic or mlp-epochs-N (an MLP capped at N epochs). The settings
mirror what fit_time.sh passes to perch-host; see the comments there.
"""

import ast
import hashlib
import json
import os
import sys
import time

import numpy as np


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_csv(path, header, x, y):
    # repr() of a float64 is the shortest round-tripping form, which is how the corpus CSVs
    # were written (checked against the manifest's file hashes below).
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(",".join(header) + "\n")
        for row, label in zip(x.tolist(), y.tolist()):
            f.write(",".join(map(repr, row)) + "," + str(label) + "\n")
    os.replace(tmp, path)


def data(manifest_path, outdir):
    with open(manifest_path) as f:
        manifest = json.load(f)
    files = manifest["files"]
    want = {
        "train": files["datasets/synthetic/full/synthetic_train.csv"]["sha256"],
        "test": files["datasets/synthetic/full/synthetic_test.csv"]["sha256"],
    }
    paths = {k: os.path.join(outdir, f"synthetic_{k}.csv") for k in want}
    stamp = os.path.join(outdir, "synthetic.verified")
    if all(os.path.exists(p) for p in paths.values()) and os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == want:
                print(f"synthetic set: cached in {outdir}", file=sys.stderr)
                return

    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    call = manifest["call"]
    prefix = "sklearn.datasets.make_classification("
    if not call.startswith(prefix) or not call.endswith(")"):
        sys.exit(f"unexpected manifest call {call!r}")
    kwargs = {}
    for item in call[len(prefix) : -1].split(","):
        key, value = item.strip().split("=")
        kwargs[key] = ast.literal_eval(value)
    x, y = make_classification(**kwargs)
    got = {
        "X_float64_le_c_order": hashlib.sha256(
            np.ascontiguousarray(x, dtype="<f8").tobytes()
        ).hexdigest(),
        "y_int64_le": hashlib.sha256(
            np.ascontiguousarray(y, dtype="<i8").tobytes()
        ).hexdigest(),
    }
    if got != manifest["array_sha256"]:
        sys.exit(
            f"regenerated arrays differ from the manifest (scikit-learn "
            f"{__import__('sklearn').__version__}, manifest made with "
            f"{manifest['versions']}): {got}"
        )
    split = manifest["split"]
    x_train, x_test, y_train, y_test = train_test_split(
        x,
        y,
        test_size=split["test_size"],
        random_state=split["random_state"],
        stratify=y if split["stratify"] == "y" else None,
    )
    header = [f"f{i:02d}" for i in range(x.shape[1])] + ["target"]
    os.makedirs(outdir, exist_ok=True)
    write_csv(paths["train"], header, x_train, y_train)
    write_csv(paths["test"], header, x_test, y_test)
    got = {k: sha256_file(p) for k, p in paths.items()}
    if got != want:
        sys.exit(f"written CSVs differ from the manifest's hashes: {got} vs {want}")
    with open(stamp, "w") as f:
        json.dump(want, f)
    print(f"synthetic set: regenerated and verified in {outdir}", file=sys.stderr)


def load(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    target = header.index("target")
    y = table[:, target].astype(np.int64)
    x = np.delete(table, target, axis=1)
    return x, y


def fit(case, train_path, test_path, blas_limit=None):
    from threadpoolctl import threadpool_info, threadpool_limits

    x_train, y_train = load(train_path)
    x_test, y_test = load(test_path)
    blas_threads = max(
        (p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"),
        default=1,
    )
    if blas_limit is not None:
        blas_threads = int(blas_limit)
    if case == "mlp" or case.startswith("mlp-epochs-"):
        from sklearn.neural_network import MLPClassifier

        max_iter = 200 if case == "mlp" else int(case.rsplit("-", 1)[1])
        model = MLPClassifier(
            hidden_layer_sizes=(100,), max_iter=max_iter, random_state=0
        )
        threads = f"BLAS {blas_threads}"
    elif case == "forest":
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0)
        threads = f"n_jobs -1 ({os.cpu_count()})"
    elif case == "logistic":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression()
        threads = f"BLAS {blas_threads}"
    else:
        sys.exit(f"unknown case {case!r}")

    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with (
        warnings.catch_warnings(record=True) as caught,
        threadpool_limits(limits=blas_threads, user_api="blas"),
    ):
        warnings.simplefilter("always", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(x_train, y_train)
        seconds = time.perf_counter() - start
    accuracy = float((model.predict(x_test) == y_test).mean())
    n_iter = getattr(model, "n_iter_", None)
    if n_iter is not None:
        n_iter = int(np.max(n_iter))
    print(
        json.dumps(
            {
                "fit_seconds": seconds,
                "accuracy": accuracy,
                "n_iter": n_iter,
                "converged": not any(
                    issubclass(w.category, ConvergenceWarning) for w in caught
                ),
                "threads": threads,
            }
        )
    )


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "data":
        data(sys.argv[2], sys.argv[3])
    elif len(sys.argv) in (5, 6) and sys.argv[1] == "fit":
        fit(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
