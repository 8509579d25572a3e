//! Where a value's elements live in memory. The IR's shapes are logical (ONNX semantics);
//! the engine stores feature maps channels-innermost (NHWC) and lets transposes and
//! reshapes that only reinterpret memory cost nothing.
//!
//! A [`Layout`] says: the value is the row-major reshape of a `base` tensor whose axes are
//! stored in the order `perm` (outermost first). A plain value has `base` = its shape and
//! the identity `perm`; a C×H×W feature map stored NHWC has `perm = [1, 2, 0]`; a
//! `Transpose` changes `base` and `perm` without moving data; a `Reshape` keeps both.

/// A value's memory layout (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Layout {
    /// Logical shape of the tensor the value reshapes.
    pub base: Vec<usize>,
    /// Axes of `base` in memory order, outermost first.
    pub perm: Vec<usize>,
}

impl Layout {
    /// Row-major: memory order is the logical axis order.
    pub fn plain(shape: &[usize]) -> Layout {
        Layout {
            base: shape.to_vec(),
            perm: (0..shape.len()).collect(),
        }
    }

    /// A C×H×W map stored H, W, C.
    pub fn nhwc(chw: &[usize]) -> Layout {
        Layout {
            base: chw.to_vec(),
            perm: vec![1, 2, 0],
        }
    }

    /// The layout with unit axes dropped and axes that stay neighbours in both orders
    /// merged: `(size, logical rank)` per merged axis, in memory order. Two layouts store
    /// their elements identically exactly when their canonical forms are equal.
    fn canonical(&self) -> Vec<(usize, usize)> {
        let kept: Vec<usize> = self
            .perm
            .iter()
            .copied()
            .filter(|&a| self.base.get(a).copied().unwrap_or(1) != 1)
            .collect();
        // Groups of logical axes a, a+1, … (among the kept ones) adjacent in memory.
        let mut groups: Vec<(usize, usize, usize)> = Vec::new(); // (first axis, last axis, size)
        let next_kept = |a: usize| ((a + 1)..self.base.len()).find(|&b| self.base[b] != 1);
        for &a in &kept {
            if let Some(g) = groups.last_mut()
                && next_kept(g.1) == Some(a)
            {
                g.1 = a;
                g.2 *= self.base[a];
                continue;
            }
            groups.push((a, a, self.base[a]));
        }
        let mut firsts: Vec<usize> = groups.iter().map(|g| g.0).collect();
        firsts.sort_unstable();
        groups
            .iter()
            .map(|g| (g.2, firsts.iter().position(|&f| f == g.0).unwrap_or(0)))
            .collect()
    }

    /// Whether both layouts put every element at the same place.
    pub fn same_as(&self, other: &Layout) -> bool {
        self.canonical() == other.canonical()
    }

    /// Whether memory order is the row-major logical order.
    pub fn is_plain(&self) -> bool {
        self.canonical().windows(2).all(|w| w[0].1 < w[1].1)
    }

    /// Whether the value is `base` itself (not a reshape of it).
    pub fn is_direct(&self, shape: &[usize]) -> bool {
        self.base == shape
    }

    /// The layout of `Transpose(perm)` of a value stored as `self` whose shape is `base`:
    /// output axis `i` is input axis `p[i]`.
    pub fn transposed(&self, p: &[usize]) -> Layout {
        let mut inv = vec![0usize; p.len()];
        for (i, &a) in p.iter().enumerate() {
            inv[a] = i;
        }
        Layout {
            base: p.iter().map(|&a| self.base[a]).collect(),
            perm: self.perm.iter().map(|&a| inv[a]).collect(),
        }
    }

    /// Sizes of `base` in memory order.
    pub fn physical_dims(&self) -> Vec<usize> {
        self.perm.iter().map(|&a| self.base[a]).collect()
    }

    /// For each memory position, the logical (row-major) index of the element there.
    pub fn memory_to_logical(&self) -> Vec<u32> {
        let rank = self.base.len();
        let n: usize = self.base.iter().product();
        let mut stride = vec![1usize; rank];
        for a in (0..rank.saturating_sub(1)).rev() {
            stride[a] = stride[a + 1] * self.base[a + 1];
        }
        let dims = self.physical_dims();
        let strides: Vec<usize> = self.perm.iter().map(|&a| stride[a]).collect();
        let mut idx = vec![0usize; rank];
        let mut out = Vec::with_capacity(n);
        let mut logical = 0usize;
        for _ in 0..n {
            out.push(logical as u32);
            for d in (0..rank).rev() {
                idx[d] += 1;
                logical += strides[d];
                if idx[d] < dims[d] {
                    break;
                }
                logical -= strides[d] * dims[d];
                idx[d] = 0;
            }
        }
        out
    }

    /// `map[i]` = the position in `from` of the element `self` keeps at position `i`.
    pub fn gather_from(&self, from: &Layout) -> Vec<u32> {
        let to = self.memory_to_logical();
        let src = from.memory_to_logical();
        let mut logical_to_src = vec![0u32; src.len()];
        for (pos, &l) in src.iter().enumerate() {
            logical_to_src[l as usize] = pos as u32;
        }
        to.iter().map(|&l| logical_to_src[l as usize]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_axes_and_merged_axes_do_not_matter() {
        // [C,1,1] stored NHWC is plain.
        assert!(Layout::nhwc(&[8, 1, 1]).is_plain());
        assert!(Layout::nhwc(&[1, 4, 5]).is_plain());
        assert!(!Layout::nhwc(&[2, 4, 5]).is_plain());
        // Transposing NCHW→NHWC a map stored NHWC gives a plain H×W×C value.
        let t = Layout::nhwc(&[3, 4, 5]).transposed(&[1, 2, 0]);
        assert_eq!(t.base, vec![4, 5, 3]);
        assert!(t.is_plain());
        // …and a plain H×W×C input transposed to C×H×W is stored NHWC.
        let t = Layout::plain(&[4, 5, 3]).transposed(&[2, 0, 1]);
        assert!(t.same_as(&Layout::nhwc(&[3, 4, 5])));
    }

    #[test]
    fn memory_order_and_gathers() {
        let l = Layout::nhwc(&[2, 2, 3]);
        // Memory (h, w, c): logical c·6 + h·3 + w.
        assert_eq!(
            l.memory_to_logical(),
            vec![0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
        );
        let map = Layout::plain(&[2, 2, 3]).gather_from(&l);
        let stored: Vec<u32> = l.memory_to_logical();
        let plain: Vec<u32> = map.iter().map(|&i| stored[i as usize]).collect();
        assert_eq!(plain, (0..12).collect::<Vec<u32>>());
    }
}
