//! Element-wise maps from u8 codes to u8 codes, merged into lookup tables after lowering.
//!
//! A QDQ graph keeps a batch normalization after a dense layer as DequantizeLinear → Mul by
//! constants → QuantizeLinear → DequantizeLinear → Add of constants → QuantizeLinear
//! (onnxruntime's quantizer gives each its own parameters). Lowered, each half is a
//! [`Op::Dequantize`] and an [`Op::StandardizeQuantize`] along the last axis: a division
//! per value, and an f32 tensor between them. Each output code depends only on its input
//! code and its position on the last axis, so the pair is one table of 256 codes per
//! position, built by the same scalar operations the two steps run ([`int8::dequantize`],
//! [`int8::standardize_quantize`]): the same bits. Consecutive tables (and the per-tensor
//! [`Op::Lookup`]) compose into one.

use super::exec::Op;
use super::kernels::int8;
use super::lower::{Step, TensorInfo};

/// Widest last axis given a table per position (256 bytes each): 64 KiB of tables at most.
const MAX_WIDTH: usize = 256;

/// Replaces each Dequantize → StandardizeQuantize pair, and then each chain of lookups,
/// whose intermediate tensors nothing else reads, by one [`Op::LookupLast`] step. Steps
/// left without a reader stay out of the arena (the memory plan places only tensors that
/// steps or graph outputs touch).
pub(super) fn merge(tensors: &[TensorInfo], steps: &mut Vec<Step>, outputs: &[usize]) {
    let mut s = 0;
    while s < steps.len() {
        if let Some(p) = sole_producer(tensors, steps, outputs, s)
            && let Some(op) = merged(&steps[p].op, &steps[s].op)
        {
            steps[s].op = op;
            steps[s].inputs = steps[p].inputs.clone();
            steps.remove(p);
            // `s` moved down by one; look at the same step again (a longer chain).
            s -= 1;
            continue;
        }
        s += 1;
    }
}

/// The step producing step `s`'s single input when that input is read by `s` alone, is
/// not a graph output and shares its memory with no view.
fn sole_producer(
    tensors: &[TensorInfo],
    steps: &[Step],
    outputs: &[usize],
    s: usize,
) -> Option<usize> {
    let [t] = steps[s].inputs[..] else {
        return None;
    };
    let private = tensors[t].root == t
        && !tensors
            .iter()
            .enumerate()
            .any(|(i, info)| i != t && info.root == t)
        && !outputs.iter().any(|&o| tensors[o].root == t)
        && steps
            .iter()
            .enumerate()
            .all(|(i, st)| i == s || !st.inputs.iter().any(|&x| tensors[x].root == t));
    if !private {
        return None;
    }
    steps[..s].iter().rposition(|st| st.output == t)
}

/// One table step doing `first` then `then`, when both are code maps of one kind.
fn merged(first: &Op, then: &Op) -> Option<Op> {
    match (first, then) {
        (
            Op::Dequantize(p),
            Op::StandardizeQuantize {
                offset,
                scale,
                params,
            },
        ) => {
            let width = offset.len();
            if width == 0 || width > MAX_WIDTH || scale.len() != width {
                return None;
            }
            let mut tables = vec![0u8; width * 256];
            let codes: Vec<u8> = (0..=255).collect();
            let mut real = vec![0f32; 256];
            int8::dequantize(&codes, p.scale, p.zero_point, &mut real);
            for (i, table) in tables.chunks_exact_mut(256).enumerate() {
                int8::standardize_quantize(
                    &real,
                    &[offset[i]],
                    &[scale[i]],
                    params.scale,
                    params.zero_point,
                    table,
                );
            }
            Some(Op::LookupLast { width, tables })
        }
        _ => {
            let (w1, t1) = tables_of(first)?;
            let (w2, t2) = tables_of(then)?;
            let width = if w1 == 1 || w1 == w2 {
                w2
            } else if w2 == 1 {
                w1
            } else {
                return None;
            };
            let table = |t: &[u8], w: usize, i: usize| {
                let i = if w == 1 { 0 } else { i };
                t[i * 256..(i + 1) * 256].to_vec()
            };
            let mut tables = Vec::with_capacity(width * 256);
            for i in 0..width {
                let (a, b) = (table(t1, w1, i), table(t2, w2, i));
                tables.extend(a.iter().map(|&q| b[q as usize]));
            }
            Some(Op::LookupLast { width, tables })
        }
    }
}

/// A lookup step's tables and how many positions of the last axis they cover (1: one
/// table for every value).
fn tables_of(op: &Op) -> Option<(usize, &[u8])> {
    match op {
        Op::Lookup(t) => Some((1, &t[..])),
        Op::LookupLast { width, tables } => Some((*width, tables)),
        _ => None,
    }
}

/// `y[i] = tables[(i mod width) · 256 + x[i]]`.
pub(super) fn lookup_last(x: &[u8], width: usize, tables: &[u8], y: &mut [u8]) {
    for (xr, yr) in x.chunks(width.max(1)).zip(y.chunks_mut(width.max(1))) {
        for ((y, &x), t) in yr.iter_mut().zip(xr).zip(tables.chunks_exact(256)) {
            *y = t[x as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::QuantParams;

    #[test]
    fn a_dequantize_standardize_pair_is_the_same_codes_as_the_two_steps() {
        let p = QuantParams {
            scale: 0.037,
            zero_point: 119,
        };
        let q = QuantParams {
            scale: 0.021,
            zero_point: 7,
        };
        let (offset, scale) = (vec![0.5f32, -1.25, 3.0], vec![1.7f32, -0.3, 0.0]);
        let op = merged(
            &Op::Dequantize(p),
            &Op::StandardizeQuantize {
                offset: offset.clone(),
                scale: scale.clone(),
                params: q,
            },
        )
        .expect("merges");
        let Op::LookupLast { width, tables } = &op else {
            panic!("not a table step");
        };
        let x: Vec<u8> = (0..=255u8)
            .flat_map(|c| [c, c.wrapping_mul(7), 255 - c])
            .collect();
        let mut real = vec![0f32; x.len()];
        int8::dequantize(&x, p.scale, p.zero_point, &mut real);
        let mut want = vec![0u8; x.len()];
        int8::standardize_quantize(&real, &offset, &scale, q.scale, q.zero_point, &mut want);
        let mut got = vec![0u8; x.len()];
        lookup_last(&x, *width, tables, &mut got);
        assert_eq!(got, want);
        // and composed with a per-tensor table after it
        let flip: Box<[u8; 256]> = Box::new(std::array::from_fn(|c| 255 - c as u8));
        let Some(Op::LookupLast { width, tables }) = merged(&op, &Op::Lookup(flip)) else {
            panic!("does not compose");
        };
        lookup_last(&x, width, &tables, &mut got);
        let flipped: Vec<u8> = want.iter().map(|&c| 255 - c).collect();
        assert_eq!(got, flipped);
    }

    #[test]
    fn tables_of_different_widths_do_not_compose() {
        let a = Op::LookupLast {
            width: 2,
            tables: vec![0; 512],
        };
        let b = Op::LookupLast {
            width: 3,
            tables: vec![0; 768],
        };
        assert!(merged(&a, &b).is_none());
        assert!(merged(&Op::FlipSign, &a).is_none());
    }
}
