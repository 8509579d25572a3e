//! The memory plan: every tensor that owns memory gets an offset in one arena per element
//! type, sized once from the graph, so a run allocates nothing. Tensors whose lifetimes
//! (first write to last read, in step order) do not overlap share memory.
//!
//! Offsets are per sample: a tensor of `len` elements per sample at offset `off` occupies
//! `[off · batch, (off + len) · batch)` for a batch, which keeps disjoint tensors disjoint
//! at every batch size.

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
