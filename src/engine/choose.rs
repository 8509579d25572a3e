//! Kernel choice for dense layers stored sparsely: the sparse (CSR) and the dense kernel
//! are timed on the layer's own shape when the engine is built, for single samples and for
//! batches, and the faster of each pair runs. The timings stay readable as
//! [`KernelChoice`]s ([`Engine::kernel_choices`](super::Engine::kernel_choices)).

use super::kernels;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Which kernel runs a dense layer whose weight the artifact stores sparsely, and the
/// timings that chose it (see [`Engine::kernel_choices`](super::Engine::kernel_choices)).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelChoice {
    /// The dense node's name in the graph.
    pub node: String,
    /// `[outputs, inputs]` of the weight.
    pub shape: [usize; 2],
    /// Nonzero weights the artifact stores (of `outputs × inputs`).
    pub nonzeros: usize,
    /// Whether the sparse kernel runs batches below the sparse tile (16 samples).
    pub sparse: bool,
    /// Whether the batched sparse kernel runs batches of the sparse tile (16 samples) or more.
    pub sparse_batched: bool,
    /// Measured time of a batch-1 run of the sparse kernel, nanoseconds.
    pub sparse_ns: f64,
    /// Measured time of a batch-1 run of the dense kernel, nanoseconds (0 when the dense
    /// copy would be too large to measure).
    pub dense_ns: f64,
    /// Measured time per sample of a 16-sample batch (the sparse tile), batched sparse
    /// kernel, nanoseconds.
    pub sparse_batched_ns: f64,
    /// The same for the dense kernel.
    pub dense_batched_ns: f64,
}

impl std::fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [o, i] = self.shape;
        let density = self.nonzeros as f64 / (o * i).max(1) as f64;
        let pick = |sparse| if sparse { "sparse" } else { "dense" };
        write!(
            f,
            "{}: {o}×{i} weight, {:.1}% nonzero: {} kernel for single samples (sparse {:.0} ns, \
             dense {:.0} ns), {} kernel for batches of {}+ (sparse {:.0} ns, dense {:.0} ns \
             per sample)",
            self.node,
            density * 100.0,
            pick(self.sparse),
            self.sparse_ns,
            self.dense_ns,
            pick(self.sparse_batched),
            kernels::CSR_TILE,
            self.sparse_batched_ns,
            self.dense_batched_ns,
        )
    }
}

/// A dense layer's weight in the layout its chosen kernel reads.
pub(super) enum DenseWeight {
    /// Row-major `[outputs, inputs]`.
    Dense(Vec<f32>),
    /// Compressed sparse rows, used for batches below [`kernels::CSR_TILE`] samples when
    /// `single`, for larger ones when `batched`; `dense` (empty unless one of them is
    /// false) serves the other batches.
    Csr {
        csr: kernels::CsrMatrix,
        dense: Vec<f32>,
        single: bool,
        batched: bool,
    },
}

/// Largest dense copy (elements) made of a sparse weight to time the dense kernel on it.
const DENSIFY_LIMIT: usize = 1 << 22;

/// Time budget for timing each kernel on one layer.
const CHOICE_BUDGET: Duration = Duration::from_micros(250);

/// Times the sparse and the dense kernel on one batch-1 sample of this layer's shape
/// (each for at most [`CHOICE_BUDGET`], after a warm-up) and keeps the faster.
pub(super) fn choose_dense_kernel(
    node: &str,
    csr: kernels::CsrMatrix,
    bias: &[f32],
) -> (DenseWeight, KernelChoice) {
    let (outputs, inputs) = (csr.rows(), csr.cols());
    let mut choice = KernelChoice {
        node: node.to_string(),
        shape: [outputs, inputs],
        nonzeros: csr.nonzeros(),
        sparse: true,
        sparse_batched: true,
        sparse_ns: 0.0,
        dense_ns: 0.0,
        sparse_batched_ns: 0.0,
        dense_batched_ns: 0.0,
    };
    if outputs.saturating_mul(inputs) > DENSIFY_LIMIT {
        let weight = DenseWeight::Csr {
            csr,
            dense: Vec::new(),
            single: true,
            batched: true,
        };
        return (weight, choice);
    }
    let tile = kernels::CSR_TILE;
    let x: Vec<f32> = (0..inputs * tile)
        .map(|i| (i % 7) as f32 * 0.25 - 0.75)
        .collect();
    let mut y = vec![0.0f32; outputs * tile];
    let mut scratch = vec![0.0f32; inputs * tile];
    let dense = csr.to_dense();
    let (x1, y1) = (&x[..inputs], outputs);
    choice.sparse_ns = time_per_run(|| {
        let y = &mut y[..y1];
        kernels::csr_dense(black_box(x1), black_box(&csr), bias, black_box(y));
    });
    choice.dense_ns = time_per_run(|| {
        let (w, y) = (black_box(&dense), &mut y[..y1]);
        kernels::dense(black_box(x1), w, bias, inputs, outputs, black_box(y));
    });
    let per_sample = tile as f64;
    choice.sparse_batched_ns = time_per_run(|| {
        let (w, y) = (black_box(&csr), black_box(&mut y));
        kernels::csr_dense_batched(black_box(&x), w, bias, y, &mut scratch);
    }) / per_sample;
    choice.dense_batched_ns = time_per_run(|| {
        let (w, y) = (black_box(&dense), black_box(&mut y));
        kernels::dense(black_box(&x), w, bias, inputs, outputs, y);
    }) / per_sample;
    choice.sparse = choice.sparse_ns < choice.dense_ns;
    choice.sparse_batched = choice.sparse_batched_ns < choice.dense_batched_ns;
    let weight = match (choice.sparse, choice.sparse_batched) {
        (false, false) => DenseWeight::Dense(dense),
        (single, batched) => DenseWeight::Csr {
            csr,
            dense: if single && batched { Vec::new() } else { dense },
            single,
            batched,
        },
    };
    (weight, choice)
}

/// Mean nanoseconds per call of `f`, by the best of a few timed batches within
/// [`CHOICE_BUDGET`].
fn time_per_run(mut f: impl FnMut()) -> f64 {
    for _ in 0..8 {
        f();
    }
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut batch = 1u32;
    while start.elapsed() < CHOICE_BUDGET {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        let per = t.elapsed().as_nanos() as f64 / f64::from(batch);
        best = best.min(per);
        if batch < 64 {
            batch *= 2;
        }
    }
    best
}
