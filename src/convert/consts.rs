//! Constants the converter evaluates itself: initializers, `Constant` nodes, and the small
//! integer subgraphs exporters emit to compute shapes (`Shape → Slice → Concat → Reshape`
//! for Keras' `Flatten` with a dynamic batch), where the batch size stays symbolic.

use super::{ConvertError, Converter, Entry, attr, attr_i, attr_ints};
use tract_onnx::pb::{self, NodeProto};

/// Largest constant the converter holds (elements); a model file cannot make it allocate
/// more for one tensor.
const MAX_CONST_ELEMENTS: usize = 1 << 26;

/// ONNX element types the converter tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ElemKind {
    Float,
    Int8,
    Uint8,
    /// int16/int32/int64/bool and the other integer types.
    Int,
}

impl ElemKind {
    fn from_onnx(t: i32) -> Option<ElemKind> {
        use pb::tensor_proto::DataType as D;
        Some(match D::try_from(t).ok()? {
            D::Float | D::Double | D::Float16 | D::Bfloat16 => ElemKind::Float,
            D::Int8 => ElemKind::Int8,
            D::Uint8 => ElemKind::Uint8,
            D::Int16 | D::Int32 | D::Int64 | D::Uint16 | D::Uint32 | D::Uint64 | D::Bool => {
                ElemKind::Int
            }
            _ => return None,
        })
    }
}

/// A constant tensor; every element type held as f64 (exact for f32 and for the integers
/// models use as weights, zero points, shapes and indices).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Const {
    pub kind: ElemKind,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Const {
    pub fn vector(kind: ElemKind, v: Vec<f64>) -> Const {
        Const {
            kind,
            shape: vec![v.len()],
            data: v,
        }
    }

    pub fn f32s(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    pub fn ints(&self) -> Option<Vec<i64>> {
        self.data
            .iter()
            .map(|&v| (v.fract() == 0.0 && v.abs() < 9.0e15).then_some(v as i64))
            .collect()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Reads an initializer or a `Constant` node's tensor.
pub(super) fn load(t: &pb::TensorProto) -> Result<Const, String> {
    let kind =
        ElemKind::from_onnx(t.data_type).ok_or_else(|| format!("element type {}", t.data_type))?;
    let n = crate::util::element_count(t.dims.iter().map(|&d| d.max(0) as u64));
    if t.dims.iter().any(|&d| d < 0) || n > MAX_CONST_ELEMENTS as u128 {
        return Err(format!(
            "shape {:?} is negative or holds more than {MAX_CONST_ELEMENTS} elements",
            t.dims
        ));
    }
    let resolver = tract_onnx::data_resolver::default();
    let tensor =
        tract_onnx::tensor::load_tensor(&*resolver, t, None).map_err(|e| format!("{e:#}"))?;
    let cast = tensor
        .cast_to::<f64>()
        .map_err(|e| format!("cannot read as numbers: {e}"))?;
    let data = cast
        .try_as_plain_ram()
        .and_then(|r| r.as_slice::<f64>().map(<[f64]>::to_vec))
        .map_err(|e| format!("{e}"))?;
    let shape = tensor.shape().to_vec();
    if data.len() != shape.iter().product::<usize>() {
        return Err(format!("{} values for shape {shape:?}", data.len()));
    }
    Ok(Const { kind, shape, data })
}

/// One element of a shape computed by the graph: a known size, or the batch size, which
/// the graph only learns when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dim {
    Batch,
    Known(i64),
}

impl Converter {
    /// The integer elements of input `ix` as symbolic dims (a constant or a shape entry).
    pub(super) fn dims(&self, node: &NodeProto, ix: usize) -> Result<Vec<Dim>, ConvertError> {
        let name = self.input_name(node, ix)?;
        match self.entries.get(name) {
            Some(Entry::Shape(d)) => Ok(d.clone()),
            Some(Entry::Const(c)) => c
                .ints()
                .map(|v| v.into_iter().map(Dim::Known).collect())
                .ok_or_else(|| Self::unsupported(node, format!("input {name:?} is not integer"))),
            _ => Err(Self::unsupported(
                node,
                format!("input {name:?} must be a constant or a shape computed from one"),
            )),
        }
    }

    fn is_static(&self, node: &NodeProto) -> bool {
        node.input
            .iter()
            .filter(|n| !n.is_empty())
            .all(|n| matches!(self.entries.get(n), Some(Entry::Const(_) | Entry::Shape(_))))
    }

    /// Evaluates `node` when its inputs are all known at conversion time: constants, and
    /// shapes whose only unknown is the batch size. `Ok(false)` when it is not such a node.
    pub(super) fn fold(&mut self, node: &NodeProto) -> Result<bool, ConvertError> {
        let op = node.op_type.as_str();
        if op == "Constant" {
            let t = attr(node, "value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| Self::unsupported(node, "only tensor-valued Constant nodes"))?;
            let c = load(t).map_err(|e| Self::unsupported(node, e))?;
            self.bind_entry(node, 0, Entry::Const(c));
            return Ok(true);
        }
        if op == "Shape" {
            let (x, _) = self.value(node, 0)?;
            let mut dims = vec![Dim::Batch];
            dims.extend(
                self.shapes[x as usize]
                    .1
                    .iter()
                    .map(|&d| Dim::Known(d as i64)),
            );
            let rank = dims.len() as i64;
            let norm = |v: i64| if v < 0 { v + rank } else { v }.clamp(0, rank) as usize;
            let start = norm(attr_i(node, "start", 0));
            let end = attr(node, "end").map_or(dims.len(), |a| norm(a.i));
            let dims = dims.get(start..end.max(start)).unwrap_or(&[]).to_vec();
            self.bind_entry(node, 0, Entry::Shape(dims));
            return Ok(true);
        }
        if node.input.is_empty() || !self.is_static(node) {
            return Ok(false);
        }
        let symbolic = node
            .input
            .iter()
            .any(|n| matches!(self.entries.get(n), Some(Entry::Shape(_))));
        if symbolic {
            return self.fold_shape(node);
        }
        let c = |ix: usize| -> Result<&Const, ConvertError> { self.konst(node, ix) };
        let out = match op {
            "Identity" | "Cast" => {
                let mut t = c(0)?.clone();
                if op == "Cast"
                    && let Some(k) = ElemKind::from_onnx(attr_i(node, "to", 1) as i32)
                {
                    if k != ElemKind::Float {
                        t.data.iter_mut().for_each(|v| *v = v.trunc());
                    }
                    t.kind = k;
                }
                t
            }
            "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
                let t = c(0)?;
                let shape = self.static_reshape(node, &t.shape)?;
                Const {
                    kind: t.kind,
                    shape,
                    data: t.data.clone(),
                }
            }
            "Transpose" => {
                let t = c(0)?;
                let rank = t.shape.len();
                let perm: Vec<usize> = attr_ints(node, "perm")
                    .map(|p| p.iter().map(|&v| v as usize).collect())
                    .unwrap_or_else(|| (0..rank).rev().collect());
                transpose_const(t, &perm).ok_or_else(|| {
                    Self::unsupported(node, format!("perm {perm:?} for shape {:?}", t.shape))
                })?
            }
            "DequantizeLinear" => {
                let (q, scale, zp, axis) = self.qconst_parts(node)?;
                let (q, scale, zp) = (q.clone(), scale, zp);
                if let Some(name) = node.output.first() {
                    self.record_qweight(name, &q, &scale, &zp, axis);
                }
                let mut t = q.clone();
                let per = |i: usize| channel_of(&q.shape, axis, i);
                for (i, v) in t.data.iter_mut().enumerate() {
                    let ch = per(i);
                    *v = ((*v - zp[ch.min(zp.len() - 1)]) as f32
                        * scale[ch.min(scale.len() - 1)] as f32) as f64;
                }
                t.kind = ElemKind::Float;
                t
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (c(0)?, c(1)?);
                broadcast2(a, b, |x, y| match op {
                    "Add" => x + y,
                    "Sub" => x - y,
                    "Mul" => x * y,
                    _ => x / y,
                })
                .ok_or_else(|| {
                    Self::unsupported(
                        node,
                        format!("shapes {:?} and {:?} do not broadcast", a.shape, b.shape),
                    )
                })?
            }
            "Sqrt" | "Neg" | "Reciprocal" | "Relu" => {
                let mut t = c(0)?.clone();
                t.data.iter_mut().for_each(|v| {
                    *v = match op {
                        "Sqrt" => v.sqrt(),
                        "Neg" => -*v,
                        "Reciprocal" => 1.0 / *v,
                        _ => v.max(0.0),
                    }
                });
                t
            }
            "Concat" => {
                let parts: Vec<&Const> = (0..node.input.len()).map(c).collect::<Result<_, _>>()?;
                concat_1d(&parts).ok_or_else(|| {
                    Self::unsupported(node, "only 1-D constants are concatenated at conversion")
                })?
            }
            "Gather" | "Slice" => {
                let dims = self.dims(node, 0)?;
                let kind = c(0)?.kind;
                return self.fold_dims(node, dims, kind);
            }
            _ => return Ok(false),
        };
        self.bind_entry(node, 0, Entry::Const(out));
        Ok(true)
    }

    /// Shape arithmetic with a symbolic batch size.
    fn fold_shape(&mut self, node: &NodeProto) -> Result<bool, ConvertError> {
        let op = node.op_type.as_str();
        match op {
            "Identity" | "Cast" | "Squeeze" | "Unsqueeze" | "Reshape" | "Gather" | "Slice" => {
                let dims = self.dims(node, 0)?;
                if matches!(
                    op,
                    "Identity" | "Cast" | "Squeeze" | "Unsqueeze" | "Reshape"
                ) {
                    // A 0-D or 1-D integer tensor stays a list of dims under these.
                    self.bind_entry(node, 0, Entry::Shape(dims));
                    return Ok(true);
                }
                self.fold_dims(node, dims, ElemKind::Int)
            }
            "Concat" => {
                let mut all = Vec::new();
                for ix in 0..node.input.len() {
                    all.extend(self.dims(node, ix)?);
                }
                self.bind_entry(node, 0, Entry::Shape(all));
                Ok(true)
            }
            "Mul" | "Div" | "Add" | "Sub" => {
                let (a, b) = (self.dims(node, 0)?, self.dims(node, 1)?);
                let n = a.len().max(b.len());
                let get = |v: &Vec<Dim>, i: usize| if v.len() == 1 { v[0] } else { v[i] };
                if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
                    return Err(Self::unsupported(node, "shapes do not broadcast"));
                }
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(match (get(&a, i), get(&b, i), op) {
                        (Dim::Known(x), Dim::Known(y), _) => Dim::Known(match op {
                            "Mul" => x.saturating_mul(y),
                            "Add" => x.saturating_add(y),
                            "Sub" => x.saturating_sub(y),
                            _ if y != 0 => x / y,
                            _ => return Err(Self::unsupported(node, "division by zero")),
                        }),
                        (Dim::Batch, Dim::Known(1), "Mul" | "Div")
                        | (Dim::Known(1), Dim::Batch, "Mul")
                        | (Dim::Batch, Dim::Known(0), "Add" | "Sub")
                        | (Dim::Known(0), Dim::Batch, "Add") => Dim::Batch,
                        _ => {
                            return Err(Self::unsupported(
                                node,
                                "arithmetic on the batch size is not native",
                            ));
                        }
                    });
                }
                self.bind_entry(node, 0, Entry::Shape(out));
                Ok(true)
            }
            _ => Err(Self::unsupported(
                node,
                "this op on a shape that depends on the batch size is not native",
            )),
        }
    }

    /// `Gather` (axis 0) and `Slice` (one axis) of a 1-D list of dims.
    fn fold_dims(
        &mut self,
        node: &NodeProto,
        dims: Vec<Dim>,
        kind: ElemKind,
    ) -> Result<bool, ConvertError> {
        let n = dims.len() as i64;
        let norm = |v: i64| if v < 0 { v + n } else { v };
        let picked: Vec<Dim> = if node.op_type == "Gather" {
            if attr_i(node, "axis", 0) != 0 {
                return Err(Self::unsupported(node, "gather on an axis other than 0"));
            }
            let idx = self.konst(node, 1)?;
            let scalar = idx.shape.is_empty();
            let ix = idx
                .ints()
                .ok_or_else(|| Self::unsupported(node, "indices are not integers"))?;
            let mut out = Vec::with_capacity(ix.len());
            for i in ix {
                let i = norm(i);
                out.push(
                    *usize::try_from(i)
                        .ok()
                        .and_then(|i| dims.get(i))
                        .ok_or_else(|| {
                            Self::unsupported(node, format!("index {i} out of range"))
                        })?,
                );
            }
            if scalar && out.len() == 1 {
                // A scalar stays one dim; Unsqueeze later makes it a list again.
                out
            } else {
                out
            }
        } else {
            let starts = self.dims_known(node, 1, "starts")?;
            let ends = self.dims_known(node, 2, "ends")?;
            let axes = if node.input.get(3).is_some_and(|s| !s.is_empty()) {
                self.dims_known(node, 3, "axes")?
            } else {
                vec![0]
            };
            let steps = if node.input.get(4).is_some_and(|s| !s.is_empty()) {
                self.dims_known(node, 4, "steps")?
            } else {
                vec![1]
            };
            if starts.len() != 1 || ends.len() != 1 || axes != [0] || steps != [1] {
                return Err(Self::unsupported(
                    node,
                    "only a unit-step slice of a 1-D shape folds at conversion",
                ));
            }
            let s = norm(starts[0]).clamp(0, n) as usize;
            let e = norm(ends[0].min(n)).clamp(0, n) as usize;
            dims.get(s..e.max(s)).unwrap_or(&[]).to_vec()
        };
        if picked.iter().all(|d| matches!(d, Dim::Known(_))) {
            let v: Vec<f64> = picked
                .iter()
                .map(|d| match d {
                    Dim::Known(v) => *v as f64,
                    Dim::Batch => 0.0,
                })
                .collect();
            self.bind_entry(node, 0, Entry::Const(Const::vector(kind, v)));
        } else {
            self.bind_entry(node, 0, Entry::Shape(picked));
        }
        Ok(true)
    }

    fn dims_known(
        &self,
        node: &NodeProto,
        ix: usize,
        what: &str,
    ) -> Result<Vec<i64>, ConvertError> {
        self.dims(node, ix)?
            .into_iter()
            .map(|d| match d {
                Dim::Known(v) => Ok(v),
                Dim::Batch => Err(Self::unsupported(
                    node,
                    format!("{what} depends on the batch size"),
                )),
            })
            .collect()
    }

    /// The shape a Reshape / Flatten / Squeeze / Unsqueeze gives a constant of `shape`.
    fn static_reshape(
        &self,
        node: &NodeProto,
        shape: &[usize],
    ) -> Result<Vec<usize>, ConvertError> {
        let numel: usize = shape.iter().product();
        let bad = |why: String| Self::unsupported(node, why);
        match node.op_type.as_str() {
            "Flatten" => {
                let axis = attr_i(node, "axis", 1);
                let axis = if axis < 0 {
                    axis + shape.len() as i64
                } else {
                    axis
                } as usize;
                let lead: usize = shape.iter().take(axis).product();
                Ok(vec![lead, numel / lead.max(1)])
            }
            "Squeeze" | "Unsqueeze" => {
                let axes = match attr_ints(node, "axes") {
                    Some(a) => a,
                    None if node.input.len() > 1 => self.konst(node, 1)?.ints().unwrap_or_default(),
                    None => vec![],
                };
                if node.op_type == "Squeeze" {
                    let r = shape.len() as i64;
                    let axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| if a < 0 { a + r } else { a } as usize)
                        .collect();
                    Ok(shape
                        .iter()
                        .enumerate()
                        .filter(|(i, d)| !(**d == 1 && (axes.is_empty() || axes.contains(i))))
                        .map(|(_, &d)| d)
                        .collect())
                } else {
                    let r = (shape.len() + axes.len()) as i64;
                    let mut axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| if a < 0 { a + r } else { a } as usize)
                        .collect();
                    axes.sort_unstable();
                    let mut out = shape.to_vec();
                    for a in axes {
                        if a > out.len() {
                            return Err(bad(format!("axis {a} out of range")));
                        }
                        out.insert(a, 1);
                    }
                    Ok(out)
                }
            }
            _ => {
                let target = self
                    .konst(node, 1)?
                    .ints()
                    .ok_or_else(|| bad("shape".into()))?;
                let mut out = Vec::with_capacity(target.len());
                let mut infer = None;
                for (i, &d) in target.iter().enumerate() {
                    match d {
                        -1 => infer = Some(i),
                        0 => out.push(shape.get(i).copied().unwrap_or(1)),
                        d if d > 0 => out.push(d as usize),
                        _ => return Err(bad(format!("dimension {d}"))),
                    }
                }
                if let Some(i) = infer {
                    let known: usize = out.iter().product();
                    if known == 0 || !numel.is_multiple_of(known) {
                        return Err(bad(format!("cannot reshape {shape:?} into {target:?}")));
                    }
                    out.insert(i, numel / known);
                }
                if out.iter().product::<usize>() != numel {
                    return Err(bad(format!("cannot reshape {shape:?} into {target:?}")));
                }
                Ok(out)
            }
        }
    }

    /// A constant DequantizeLinear's quantized values, scales, zero points and axis.
    pub(super) fn qconst_parts(&self, node: &NodeProto) -> Result<QConstParts<'_>, ConvertError> {
        let q = self.konst(node, 0)?;
        let scale = self.konst(node, 1)?.data.clone();
        let zp = if node.input.get(2).is_some_and(|n| !n.is_empty()) {
            self.konst(node, 2)?.data.clone()
        } else {
            vec![0.0]
        };
        if scale.is_empty() || zp.is_empty() {
            return Err(Self::unsupported(node, "empty scale or zero point"));
        }
        let axis = if scale.len() > 1 {
            let r = q.shape.len() as i64;
            let a = attr_i(node, "axis", 1);
            let a = if a < 0 { a + r } else { a };
            let a = usize::try_from(a)
                .ok()
                .filter(|&a| q.shape.get(a) == Some(&scale.len()))
                .ok_or_else(|| {
                    Self::unsupported(
                        node,
                        format!(
                            "{} scales do not fit axis {a} of shape {:?}",
                            scale.len(),
                            q.shape
                        ),
                    )
                })?;
            Some(a)
        } else {
            None
        };
        if zp.len() != 1 && zp.len() != scale.len() {
            return Err(Self::unsupported(
                node,
                format!("{} zero points for {} scales", zp.len(), scale.len()),
            ));
        }
        Ok((q, scale, zp, axis))
    }
}

/// A constant DequantizeLinear's codes, scales, zero points and quantization axis.
pub(super) type QConstParts<'a> = (&'a Const, Vec<f64>, Vec<f64>, Option<usize>);

/// Index along `axis` of the row-major element `i` of a tensor of `shape` (0 without an
/// axis).
pub(super) fn channel_of(shape: &[usize], axis: Option<usize>, i: usize) -> usize {
    match axis {
        None => 0,
        Some(a) => {
            let inner: usize = shape[a + 1..].iter().product();
            (i / inner.max(1)) % shape[a].max(1)
        }
    }
}

pub(super) fn transpose_const(t: &Const, perm: &[usize]) -> Option<Const> {
    let rank = t.shape.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank
        || !perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true))
    {
        return None;
    }
    let shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * t.shape[i + 1];
    }
    let mut data = Vec::with_capacity(t.data.len());
    let mut idx = vec![0usize; rank];
    for _ in 0..t.data.len() {
        let src: usize = idx.iter().zip(perm).map(|(&i, &p)| i * in_strides[p]).sum();
        data.push(t.data[src]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(Const {
        kind: t.kind,
        shape,
        data,
    })
}

fn concat_1d(parts: &[&Const]) -> Option<Const> {
    let kind = parts.first()?.kind;
    let mut data = Vec::new();
    for p in parts {
        if p.shape.len() > 1 {
            return None;
        }
        data.extend_from_slice(&p.data);
    }
    Some(Const::vector(kind, data))
}

/// Element-wise `f` of two constants under ONNX (numpy) broadcasting.
fn broadcast2(a: &Const, b: &Const, f: impl Fn(f64, f64) -> f64) -> Option<Const> {
    let rank = a.shape.len().max(b.shape.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1usize; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (sa, sb) = (pad(&a.shape), pad(&b.shape));
    let mut shape = Vec::with_capacity(rank);
    for (&x, &y) in sa.iter().zip(&sb) {
        shape.push(match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        });
    }
    let n: usize = shape.iter().product();
    if n > MAX_CONST_ELEMENTS {
        return None;
    }
    let strides = |s: &[usize]| {
        let mut st = vec![0usize; rank];
        let mut acc = 1;
        for i in (0..rank).rev() {
            st[i] = if s[i] == 1 { 0 } else { acc };
            acc *= s[i];
        }
        st
    };
    let (ta, tb) = (strides(&sa), strides(&sb));
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        let ia: usize = idx.iter().zip(&ta).map(|(i, s)| i * s).sum();
        let ib: usize = idx.iter().zip(&tb).map(|(i, s)| i * s).sum();
        data.push(f(a.data[ia], b.data[ib]));
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let kind = if a.kind == ElemKind::Float || b.kind == ElemKind::Float {
        ElemKind::Float
    } else {
        a.kind
    };
    Some(Const { kind, shape, data })
}
