//! The engine's own small loops: data movement between layouts (gather, concat, pad) and
//! the element-wise steps the compute kernels do not cover. Each works on one sample or on
//! a whole batch as its caller says; none allocates.

/// `y[i] = x[map[i]]`: one sample moved to another layout.
pub(super) fn gather<T: Copy>(x: &[T], map: &[u32], y: &mut [T]) {
    for (y, &i) in y.iter_mut().zip(map) {
        *y = x[i as usize];
    }
}

/// The row counts [`transpose`] has a kernel of its own for (NCHW inputs of 2-4 channels,
/// such as RGB images): with the count a constant, each output pixel is a few loads from
/// `rows` streams, 3.2 µs for 3 × 9216 values where [`gather`] took 17-18 µs. A general
/// count is no faster than the gather, which such layouts keep.
pub(super) const FAST_TRANSPOSE_ROWS: std::ops::RangeInclusive<usize> = 2..=4;

/// `y` (`cols × rows`) = the transpose of `x` (`rows × cols`, row-major).
pub(super) fn transpose<T: Copy>(x: &[T], rows: usize, cols: usize, y: &mut [T]) {
    match rows {
        2 => transpose_rows::<T, 2>(x, cols, y),
        3 => transpose_rows::<T, 3>(x, cols, y),
        4 => transpose_rows::<T, 4>(x, cols, y),
        _ => {
            let (x, y) = (&x[..rows * cols], &mut y[..rows * cols]);
            for (j, yr) in y.chunks_exact_mut(rows).enumerate() {
                for (v, xs) in yr.iter_mut().zip(x[j..].iter().step_by(cols)) {
                    *v = *xs;
                }
            }
        }
    }
}

/// [`transpose`] of `R` rows.
fn transpose_rows<T: Copy, const R: usize>(x: &[T], cols: usize, y: &mut [T]) {
    let (x, y) = (&x[..R * cols], &mut y[..R * cols]);
    let xs: [&[T]; R] = std::array::from_fn(|r| &x[r * cols..(r + 1) * cols]);
    for (j, yr) in y.chunks_exact_mut(R).enumerate() {
        for (v, xr) in yr.iter_mut().zip(&xs) {
            *v = xr[j];
        }
    }
}

/// The `(rows, cols)` of the 2-D transpose `map` performs as a [`gather`] (`y[i] =
/// x[(i % rows) · cols + i / rows]`), if it is one with both sides above 1.
pub(super) fn as_transpose(map: &[u32]) -> Option<(usize, usize)> {
    let n = map.len();
    let cols = *map.get(1)? as usize;
    if cols < 2 || !n.is_multiple_of(cols) || n / cols < 2 {
        return None;
    }
    let rows = n / cols;
    map.iter()
        .enumerate()
        .all(|(i, &m)| m as usize == (i % rows) * cols + i / rows)
        .then_some((rows, cols))
}

/// Copies one input of a concatenation into its place in one output sample: the input
/// holds `outer` chunks of `chunk` values, the output `outer` rows of `row` values, and
/// this input's chunk starts at `at` in each row.
pub(super) fn concat_part<T: Copy>(
    x: &[T],
    outer: usize,
    chunk: usize,
    row: usize,
    at: usize,
    y: &mut [T],
) {
    for o in 0..outer {
        y[o * row + at..o * row + at + chunk].copy_from_slice(&x[o * chunk..(o + 1) * chunk]);
    }
}

/// Constant padding of one sample whose memory dims are `dims` (outermost first):
/// `begin[d]` / `end[d]` values before / after memory axis `d`.
pub(super) fn pad<T: Copy>(
    x: &[T],
    dims: &[usize],
    begin: &[usize],
    end: &[usize],
    value: T,
    y: &mut [T],
) {
    let rank = dims.len();
    if rank == 0 {
        y.copy_from_slice(x);
        return;
    }
    let out: Vec<usize> = (0..rank).map(|d| dims[d] + begin[d] + end[d]).collect();
    pad_rec(x, dims, &out, begin, value, y, 0);
}

fn pad_rec<T: Copy>(
    x: &[T],
    dims: &[usize],
    out: &[usize],
    begin: &[usize],
    value: T,
    y: &mut [T],
    d: usize,
) {
    let inner_out: usize = out[d + 1..].iter().product();
    let inner_in: usize = dims[d + 1..].iter().product();
    let (b, n) = (begin[d], dims[d]);
    y[..b * inner_out].fill(value);
    y[(b + n) * inner_out..].fill(value);
    for i in 0..n {
        let ys = &mut y[(b + i) * inner_out..(b + i + 1) * inner_out];
        let xs = &x[i * inner_in..(i + 1) * inner_in];
        if d + 1 == dims.len() {
            ys.copy_from_slice(xs);
        } else {
            pad_rec(xs, dims, out, begin, value, ys, d + 1);
        }
    }
}

/// `y = x · scale[c] + offset[c]` over one sample of `scale.len()` channels, each channel
/// `inner` contiguous values (channels outermost) or, with `inner == 0`, channels
/// innermost.
pub(super) fn channel_affine(
    x: &[f32],
    scale: &[f32],
    offset: &[f32],
    inner: usize,
    y: &mut [f32],
) {
    let c = scale.len();
    if inner == 0 {
        for (xs, ys) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
            for (((y, &x), &s), &o) in ys.iter_mut().zip(xs).zip(scale).zip(offset) {
                *y = x * s + o;
            }
        }
    } else {
        for (ch, (xs, ys)) in x
            .chunks_exact(inner)
            .zip(y.chunks_exact_mut(inner))
            .enumerate()
        {
            let (s, o) = (scale[ch % c], offset[ch % c]);
            for (y, &x) in ys.iter_mut().zip(xs) {
                *y = x * s + o;
            }
        }
    }
}

/// `max(0, min(1, alpha · x + beta))`.
pub(super) fn hard_sigmoid(x: &[f32], alpha: f32, beta: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (alpha * x + beta).clamp(0.0, 1.0);
    }
}

/// Codes clamped to `[min, max]`.
pub(super) fn clamp_codes(x: &[u8], min: u8, max: u8, y: &mut [u8]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x.clamp(min, max);
    }
}

/// `y = table[x]`.
pub(super) fn lookup(x: &[u8], table: &[u8; 256], y: &mut [u8]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = table[x as usize];
    }
}

/// int8 ↔ uint8 codes (`± 128`, the same bits with the top one flipped).
pub(super) fn flip_sign(x: &[u8], y: &mut [u8]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x ^ 0x80;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_and_concat_place_every_value() {
        let x: Vec<u8> = (1..=6).collect(); // 2×3
        let mut y = vec![0u8; 4 * 4];
        pad(&x, &[2, 3], &[1, 0], &[1, 1], 9, &mut y);
        assert_eq!(y, vec![9, 9, 9, 9, 1, 2, 3, 9, 4, 5, 6, 9, 9, 9, 9, 9]);
        let mut y = vec![0u8; 2 * 5];
        concat_part(&x, 2, 3, 5, 0, &mut y);
        concat_part(&[7, 8, 9, 10], 2, 2, 5, 3, &mut y);
        assert_eq!(y, vec![1, 2, 3, 7, 8, 4, 5, 6, 9, 10]);
    }

    #[test]
    fn a_transposing_gather_map_runs_as_a_transpose_with_the_same_result() {
        // NCHW (3 channels × 5×4 pixels) to NHWC, as the layout planner's map.
        let (c, hw) = (3, 20);
        let map: Vec<u32> = (0..c * hw).map(|i| ((i % c) * hw + i / c) as u32).collect();
        assert_eq!(as_transpose(&map), Some((c, hw)));
        let x: Vec<f32> = (0..c * hw).map(|v| v as f32).collect();
        let (mut want, mut got) = (vec![0.0; c * hw], vec![0.0; c * hw]);
        gather(&x, &map, &mut want);
        transpose(&x, c, hw, &mut got);
        assert_eq!(got, want);
        // Every row count, the constant ones and the general loop.
        for rows in 2..=6 {
            let cols = 7;
            let map: Vec<u32> = (0..rows * cols)
                .map(|i| ((i % rows) * cols + i / rows) as u32)
                .collect();
            assert_eq!(as_transpose(&map), Some((rows, cols)));
            let x: Vec<u8> = (0..rows * cols).map(|v| v as u8).collect();
            let (mut want, mut got) = (vec![0; rows * cols], vec![0; rows * cols]);
            gather(&x, &map, &mut want);
            transpose(&x, rows, cols, &mut got);
            assert_eq!(got, want, "{rows} rows");
        }
        // Not transposes: the identity, a one-row map, a 3-D permutation, a broken one.
        let identity: Vec<u32> = (0..12).collect();
        assert_eq!(as_transpose(&identity), None);
        assert_eq!(as_transpose(&[0, 1]), None);
        // [2, 3, 2] → [2, 2, 3] (axes 0, 2, 1): two transposes side by side, not one.
        let perm3: Vec<u32> = (0..12u32)
            .map(|i| {
                let (a, k, b) = (i / 6, (i / 3) % 2, i % 3);
                a * 6 + b * 2 + k
            })
            .collect();
        assert_eq!(as_transpose(&perm3), None);
        let mut broken = map.clone();
        broken.swap(5, 6);
        assert_eq!(as_transpose(&broken), None);
        assert_eq!(as_transpose(&[]), None);
    }

    #[test]
    fn channel_affine_in_both_orders() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut y = [0.0f32; 4];
        channel_affine(&x, &[2.0, 10.0], &[1.0, 0.0], 2, &mut y);
        assert_eq!(y, [3.0, 5.0, 30.0, 40.0]);
        channel_affine(&x, &[2.0, 10.0], &[1.0, 0.0], 0, &mut y);
        assert_eq!(y, [3.0, 20.0, 7.0, 40.0]);
    }
}
