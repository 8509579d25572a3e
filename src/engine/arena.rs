//! The memory plan: every tensor that owns memory gets an offset in one arena per element
//! type, sized once from the graph, so a run allocates nothing. Tensors whose lifetimes
//! (first write to last read, in step order) do not overlap share memory.
//!
//! Offsets are per sample: a tensor of `len` elements per sample at offset `off` occupies
//! `[off · batch, (off + len) · batch)` for a batch, which keeps disjoint tensors disjoint
//! at every batch size.

use super::lower::{Step, TensorInfo};
use crate::graph::DType;

/// Elements offsets are rounded up to (64 bytes of f32).
const ALIGN: usize = 16;

/// A tensor to place: its size per sample and the steps it lives over (inclusive; graph
/// inputs start at 0 as written before step 0, outputs end at the last step).
#[derive(Debug, Clone, Copy)]
pub(super) struct Interval {
    pub len: usize,
    pub first: usize,
    pub last: usize,
}

/// The memory plan of a lowered program: per tensor root, its offset in its element
/// type's arena (per sample), and the three arenas' lengths per sample (f32, bytes, i64).
/// A root lives from the step that writes it (step 0 for graph inputs) to the last step
/// that reads it (past the last step for graph outputs); views share their root's memory.
pub(super) fn place(
    tensors: &[TensorInfo],
    steps: &[Step],
    inputs: &[usize],
    outputs: &[usize],
) -> (Vec<usize>, [usize; 3]) {
    let n = tensors.len();
    let last_step = steps.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    for &t in inputs {
        first[tensors[t].root] = 0;
    }
    for (s, step) in steps.iter().enumerate() {
        let r = tensors[step.output].root;
        first[r] = first[r].min(s);
        last[r] = last[r].max(s);
        for &i in &step.inputs {
            let r = tensors[i].root;
            last[r] = last[r].max(s);
        }
    }
    for &t in outputs {
        let r = tensors[t].root;
        last[r] = last_step;
        first[r] = first[r].min(last_step);
    }
    let mut offsets = vec![0usize; n];
    let mut arena_len = [0usize; 3];
    for (class, arena) in arena_len.iter_mut().enumerate() {
        let roots: Vec<usize> = (0..n)
            .filter(|&t| tensors[t].root == t && first[t] != usize::MAX)
            .filter(|&t| dtype_class(tensors[t].dtype) == class)
            .collect();
        let intervals: Vec<Interval> = roots
            .iter()
            .map(|&t| Interval {
                len: tensors[t].len,
                first: first[t],
                last: last[t].max(first[t]),
            })
            .collect();
        let (offs, total) = plan(&intervals);
        for (&t, off) in roots.iter().zip(offs) {
            offsets[t] = off;
        }
        *arena = total;
    }
    (offsets, arena_len)
}

/// Offsets for `tensors` (same order) and the arena length per sample, by first-fit of
/// the largest tensors first.
pub(super) fn plan(tensors: &[Interval]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(tensors[i].len), tensors[i].first));
    let mut offsets = vec![0usize; tensors.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(tensors.len());
    let mut total = 0usize;
    for &i in &order {
        let t = tensors[i];
        let size = t.len.div_ceil(ALIGN) * ALIGN;
        // Busy ranges of tensors alive at the same time, by start.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| {
                let u = tensors[j];
                u.first <= t.last && t.first <= u.last
            })
            .map(|&j| {
                (
                    offsets[j],
                    offsets[j] + tensors[j].len.div_ceil(ALIGN) * ALIGN,
                )
            })
            .collect();
        busy.sort_unstable();
        let mut at = 0usize;
        for (lo, hi) in busy {
            if at + size <= lo {
                break;
            }
            at = at.max(hi);
        }
        offsets[i] = at;
        total = total.max(at + size);
        placed.push(i);
    }
    (offsets, total)
}

/// Arena of a dtype: 0 f32, 1 bytes (u8 and int8 codes), 2 i64.
pub(super) fn dtype_class(d: DType) -> usize {
    match d {
        DType::F32 => 0,
        DType::U8 | DType::I8 => 1,
        DType::I64 => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_alive_together_never_overlap_and_others_share() {
        let t = |len, first, last| Interval { len, first, last };
        let tensors = [t(100, 0, 1), t(50, 1, 2), t(100, 2, 3), t(10, 0, 3)];
        let (off, total) = plan(&tensors);
        for i in 0..tensors.len() {
            for j in 0..i {
                let (a, b) = (tensors[i], tensors[j]);
                let live = a.first <= b.last && b.first <= a.last;
                let disjoint = off[i] + a.len <= off[j] || off[j] + b.len <= off[i];
                assert!(!live || disjoint, "{i} and {j} overlap");
            }
        }
        // The two 100-element tensors do not live together: they share.
        assert_eq!(off[0], off[2]);
        assert!(total < 260, "{total}");
    }
}
