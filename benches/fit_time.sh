#!/usr/bin/env bash
# Times perch-host's training against scikit-learn's on the same data in one run and prints
# the ratios (issue target: perch's fit time at most 2x scikit-learn's, at equal accuracy).
# Cases: digits MLP, digits random forest, and on the 200,000-row synthetic set (regenerated
# from its manifest's make_classification call and checked against the manifest's SHA-256s)
# logistic regression, random forest and an MLP capped at the same number of epochs on
# both sides. The machine is shared and noisy: compare the ratios, not the absolute figures.
#
#   bash benches/fit_time.sh [CASE...]
#
# CASE is any of digits-mlp digits-forest synth-logistic synth-forest synth-mlp (default:
# all). SYNTH_MLP_EPOCHS (default 200, scikit-learn's max_iter) caps the synthetic MLP's
# epochs on both sides.
#
# Needs: a Rust toolchain, python3 with `pip install scikit-learn numpy` (installed here if
# missing), and the corpus copy in tests/data/corpus (or PERCH_CORPUS). The synthetic CSVs
# (124 MB) are written once to $CARGO_TARGET_DIR/bench-data (default target/bench-data).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${PERCH_CORPUS:-tests/data/corpus}
target_dir=${CARGO_TARGET_DIR:-target}
data_dir=$target_dir/bench-data
synth_epochs=${SYNTH_MLP_EPOCHS:-200}
cases=("$@")
if [[ ${#cases[@]} -eq 0 ]]; then
  cases=(digits-mlp digits-forest synth-logistic synth-forest synth-mlp)
fi

python3 -c "import sklearn, numpy, threadpoolctl" 2>/dev/null || python3 -m pip install -q scikit-learn numpy
cargo build --release --quiet --bin perch-host
host=$target_dir/release/perch-host
registry=$(mktemp -d)
trap 'rm -rf "$registry"' EXIT
cores=$(nproc)

digits=$corpus/datasets/digits
if [[ " ${cases[*]} " == *" synth-"* ]]; then
  python3 benches/sklearn_fit.py data "$corpus/datasets/synthetic/manifest.json" "$data_dir"
fi

# case -> train csv, test csv, scikit-learn case, perch-host flags, perch threads.
# perch-host's defaults are scikit-learn's: mlp = 100 relu units, Adam lr 1e-3, batch 200,
# alpha 1e-4, up to 200 epochs, stop after 10 epochs without a 1e-4 loss improvement;
# forest = 100 trees, gini, sqrt(features) per split, bootstrap, unlimited depth, trees
# grown on every core (so scikit-learn gets n_jobs=-1); logistic = multinomial, L2 C=1,
# L-BFGS to a 1e-4 gradient (perch allows 1000 iterations, scikit-learn 100). No scaling
# on either side. The MLP and logistic fits use one thread in perch; scikit-learn's go
# through OpenBLAS, which uses every core.
case_args() {
  case $1 in
    digits-mlp) echo "$digits/digits_train.csv $digits/digits_test.csv mlp 1 --model mlp --hidden 100" ;;
    digits-forest) echo "$digits/digits_train.csv $digits/digits_test.csv forest $cores --model forest" ;;
    synth-logistic) echo "$data_dir/synthetic_train.csv $data_dir/synthetic_test.csv logistic 1 --model logistic" ;;
    synth-forest) echo "$data_dir/synthetic_train.csv $data_dir/synthetic_test.csv forest $cores --model forest" ;;
    synth-mlp) echo "$data_dir/synthetic_train.csv $data_dir/synthetic_test.csv mlp-epochs-$synth_epochs 1 --model mlp --hidden 100 --epochs $synth_epochs" ;;
    *) echo "unknown case $1" >&2; return 1 ;;
  esac
}

printf '%-15s %9s %9s %8s %6s %8s %6s %8s %8s %6s %6s  %s\n' \
  case perch_fit perch_wall sk_fit ratio sk_fit_1t ratio1 perch_acc sk_acc p_iter sk_iter threads
for c in "${cases[@]}"; do
  read -r train test sk_case perch_threads flags < <(case_args "$c")
  start=$(date +%s.%N)
  # shellcheck disable=SC2086 # flags is a word list
  perch=$("$host" --registry "$registry/perch.db" train "$train" --target target \
    --test "$test" --name "bench-$c" --seed 0 --json $flags)
  end=$(date +%s.%N)
  sk=$(python3 benches/sklearn_fit.py fit "$sk_case" "$train" "$test")
  sk1=null
  if [[ $sk_case != forest ]]; then
    sk1=$(python3 benches/sklearn_fit.py fit "$sk_case" "$train" "$test" 1)
  fi
  python3 - "$c" "$perch" "$sk" "$sk1" "$start" "$end" "$perch_threads" <<'PY'
import json, sys
c, p, s, s1 = sys.argv[1], *(json.loads(a) for a in sys.argv[2:5])
wall = float(sys.argv[6]) - float(sys.argv[5])
pf, sf = p["fit_seconds"], s["fit_seconds"]
one = f"{s1['fit_seconds']:8.3f} {pf / s1['fit_seconds']:6.2f}" if s1 else f"{'-':>8} {'-':>6}"
if s["n_iter"] is None:
    iters = f"{'-':>6} {'-':>6}"
else:
    iters = f"{p['epochs']:6d} {str(s['n_iter']) + ('' if s['converged'] else '*'):>6}"
print(f"{c:15s} {pf:9.3f} {wall:9.3f} {sf:8.3f} {pf / sf:6.2f} {one} "
      f"{p['metrics']['accuracy']:8.4f} {s['accuracy']:8.4f} {iters}  "
      f"perch {sys.argv[7]}, sklearn {s['threads']}")
PY
done
echo "ratio = perch fit_seconds / scikit-learn fit() seconds (scikit-learn as configured in"
echo "'threads'); sk_fit_1t / ratio1: scikit-learn with OpenBLAS limited to one thread."
echo "perch_wall: the whole perch-host process (CSV parsing, fit, scoring train and test,"
echo "registry write). *_iter: epochs (MLP) or L-BFGS iterations; * = hit max_iter."
