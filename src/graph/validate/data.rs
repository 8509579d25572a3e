//! The data layers carry, checked against the shapes they claim: dense, sparse and int8
//! tensors, quantization parameters, decision trees.

use super::{
    GraphError, MAX_VALUE_ELEMENTS, QuantInput, QuantOutput, QuantParams, Tensor, TensorData, Tree,
};

/// Checks that `t`'s data agrees with its shape and returns the element count. Dense f32
/// is accepted everywhere; CSR only where `allow_csr` (dense-layer weights).
pub(super) fn check_tensor(
    t: &Tensor,
    node: &str,
    layer: &'static str,
    what: &str,
    allow_csr: bool,
) -> Result<usize, GraphError> {
    let shape_err = |reason: String| GraphError::Shape {
        node: node.to_string(),
        layer,
        reason,
    };
    let expected: u128 = crate::util::element_count(t.shape.iter().map(|&d| d as u64));
    match &t.data {
        TensorData::F32(data) => {
            if expected != data.len() as u128 {
                return Err(shape_err(format!(
                    "{what} has shape {:?} ({expected} elements) but holds {}",
                    t.shape,
                    data.len()
                )));
            }
            Ok(data.len())
        }
        TensorData::I8 { .. } => Err(shape_err(format!(
            "{what} must be float32, found int8 (quantized layers are qdense and qconv2d)"
        ))),
        TensorData::Csr {
            row_ptr,
            col_idx,
            values,
        } => {
            if !allow_csr {
                return Err(shape_err(format!(
                    "{what} is stored as CSR; only dense-layer weights may be sparse"
                )));
            }
            if expected > MAX_VALUE_ELEMENTS as u128 {
                return Err(shape_err(format!(
                    "sparse {what} has shape {:?} ({expected} elements, limit {MAX_VALUE_ELEMENTS})",
                    t.shape
                )));
            }
            check_csr(&t.shape, row_ptr, col_idx, values)
                .map_err(|reason| shape_err(format!("sparse {what}: {reason}")))?;
            Ok(expected as usize)
        }
    }
}

/// Every CSR invariant the sparse kernel relies on: a 2-D shape, `rows + 1` offsets from 0
/// to the nonzero count that never decrease, as many columns as values, and columns below
/// `cols`, strictly increasing within each row.
fn check_csr(
    shape: &[u32],
    row_ptr: &[u32],
    col_idx: &[u32],
    values: &[f32],
) -> Result<(), String> {
    let [rows, cols] = match *shape {
        [r, c] => [r as usize, c as usize],
        _ => return Err(format!("CSR needs a 2-D [rows, cols] shape, got {shape:?}")),
    };
    if row_ptr.len() as u128 != rows as u128 + 1 {
        return Err(format!(
            "row_ptr has {} entries for {rows} rows (need rows + 1)",
            row_ptr.len()
        ));
    }
    if col_idx.len() != values.len() {
        return Err(format!(
            "{} column indices for {} values",
            col_idx.len(),
            values.len()
        ));
    }
    if row_ptr.first() != Some(&0) {
        return Err(format!("row_ptr starts at {:?}, not 0", row_ptr.first()));
    }
    let nnz = values.len();
    if row_ptr.last().map(|&v| v as usize) != Some(nnz) {
        return Err(format!(
            "row_ptr ends at {:?}, the nonzero count is {nnz}",
            row_ptr.last()
        ));
    }
    for (r, w) in row_ptr.windows(2).enumerate() {
        let (lo, hi) = (w[0] as usize, w[1] as usize);
        if hi < lo {
            return Err(format!("row_ptr decreases at row {r} ({lo} then {hi})"));
        }
        // In range: lo <= hi <= row_ptr.last() = nnz, as row_ptr never decreases up to here.
        let row = col_idx
            .get(lo..hi)
            .ok_or_else(|| format!("row {r} spans {lo}..{hi}, beyond the {nnz} stored values"))?;
        let mut prev: Option<u32> = None;
        for &c in row {
            if c as usize >= cols {
                return Err(format!("row {r} has column {c}, the matrix has {cols}"));
            }
            if prev.is_some_and(|p| c <= p) {
                return Err(format!(
                    "row {r}: columns must strictly increase, found {c} after {}",
                    prev.unwrap_or_default()
                ));
            }
            prev = Some(c);
        }
    }
    Ok(())
}

/// Checks an int8 weight: data length against the shape, one scale per index of the first
/// axis, every scale finite and > 0.
pub(super) fn tensor_i8(t: &Tensor, node: &str, layer: &'static str) -> Result<(), GraphError> {
    let shape_err = |reason: String| GraphError::Shape {
        node: node.to_string(),
        layer,
        reason,
    };
    let TensorData::I8 { values, scales } = &t.data else {
        return Err(shape_err("weight must be int8".into()));
    };
    let expected: u128 = crate::util::element_count(t.shape.iter().map(|&d| d as u64));
    if expected != values.len() as u128 {
        return Err(shape_err(format!(
            "weight has shape {:?} ({expected} elements) but holds {}",
            t.shape,
            values.len()
        )));
    }
    let channels = t.shape.first().copied().unwrap_or(0) as usize;
    if scales.len() != channels {
        return Err(shape_err(format!(
            "weight has {} scales for {channels} output channels",
            scales.len()
        )));
    }
    if let Some((c, s)) = scales
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_normal() && **s > 0.0))
    {
        return Err(shape_err(format!(
            "weight scale {c} is {s}; scales must be finite, normal and > 0"
        )));
    }
    Ok(())
}

pub(super) fn check_params(p: &QuantParams, what: &str) -> Result<(), String> {
    if p.scale.is_normal() && p.scale > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "{what} scale is {}; it must be finite, normal and > 0",
            p.scale
        ))
    }
}

/// Largest number of products one output of a quantized layer sums: 255 × 127 × this
/// stays below 2³¹, so the i32 accumulator never overflows.
pub const MAX_QUANT_DEPTH: usize = 65536;

pub(super) fn check_quant(
    input: &QuantInput,
    output: &QuantOutput,
    depth: usize,
) -> Result<(), String> {
    if let QuantInput::Static(p) = input {
        check_params(p, "input")?;
    }
    if let QuantOutput::U8(p) = output {
        check_params(p, "output")?;
        if *input == QuantInput::Dynamic {
            return Err("a dynamic input needs a float32 output".into());
        }
    }
    if depth > MAX_QUANT_DEPTH {
        return Err(format!(
            "each output sums {depth} products; quantized layers allow at most {MAX_QUANT_DEPTH}"
        ));
    }
    Ok(())
}

/// Checks one tree so that walking it can neither index out of bounds nor loop: every
/// array has one entry per node, branches read an existing feature and point to existing
/// nodes with larger ids, leaves have their `n_outputs` values.
pub(super) fn check_tree(tree: &Tree, width: usize, n_outputs: usize) -> Result<(), String> {
    let n = tree.left.len();
    if n == 0 {
        return Err("has no node".into());
    }
    for (what, len) in [
        ("feature", tree.feature.len()),
        ("threshold", tree.threshold.len()),
        ("right", tree.right.len()),
    ] {
        if len != n {
            return Err(format!("{what} has {len} entries for {n} nodes"));
        }
    }
    let mut leaves = 0usize;
    for i in 0..n {
        let (l, r) = (tree.left[i] as usize, tree.right[i] as usize);
        if l == 0 {
            if r != 0 || tree.feature[i] != 0 {
                return Err(format!(
                    "leaf {i} has right child {r} and feature {} (both must be 0)",
                    tree.feature[i]
                ));
            }
            leaves += 1;
            continue;
        }
        if l <= i || r <= i || l >= n || r >= n {
            return Err(format!(
                "node {i} has children {l} and {r}; children must have larger ids than their parent, below {n}"
            ));
        }
        let f = tree.feature[i] as usize;
        if f >= width {
            return Err(format!("node {i} tests feature {f}, the input has {width}"));
        }
        if tree.threshold[i].is_nan() {
            return Err(format!("node {i} has a NaN threshold"));
        }
    }
    let expected = leaves as u128 * n_outputs as u128;
    if tree.leaf_values.len() as u128 != expected {
        return Err(format!(
            "{} leaf values for {leaves} leaves × {n_outputs} outputs",
            tree.leaf_values.len()
        ));
    }
    Ok(())
}
