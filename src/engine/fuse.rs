//! Fusion, decided on the IR graph before lowering: an activation folds into the
//! convolution, dense layer or add that alone feeds it; a code clamp (Relu6 after an int8
//! layer) into the int8 layer's output range; a standardize's quantize into the
//! standardize. The folded node then runs no step of its own.

use super::kernels::Activation;
use crate::graph::{Graph, Layer, QuantInput, QuantOutput, QuantParams};

/// What an activation node folds into.
#[derive(Clone, Copy)]
pub(super) enum Fused {
    Act(Activation),
    Clamp(u8, u8),
    Quantize(QuantParams),
}

/// The fusion plan of a graph, per IR node.
pub(super) struct Fusion {
    /// What the next node folded into this one.
    pub fold: Vec<Option<Fused>>,
    /// Whether this node was folded into its producer.
    pub fused_away: Vec<bool>,
}

/// The activation kernels apply in place of `layer`, if it is one.
pub(super) fn act_of(layer: &Layer) -> Option<Activation> {
    Some(match *layer {
        Layer::Relu => Activation::Relu,
        Layer::LeakyRelu { alpha } => Activation::LeakyRelu(alpha),
        Layer::Sigmoid => Activation::Sigmoid,
        Layer::Tanh => Activation::Tanh,
        Layer::Clip { min, max } => Activation::Clip { min, max },
        Layer::HardSwish => Activation::HardSwish,
        _ => return None,
    })
}

/// Decides which nodes fold into their producer: a node folds when it has one input, that
/// input is a node's output read by nothing else (nor a graph output), and the pair is
/// one the kernels run as one step.
pub(super) fn plan(g: &Graph) -> Fusion {
    let mut fusion = Fusion {
        fold: vec![None; g.nodes.len()],
        fused_away: vec![false; g.nodes.len()],
    };
    let n_in = g.inputs.len();
    let n_values = n_in + g.nodes.len();
    let mut consumers = vec![0usize; n_values];
    for node in &g.nodes {
        for &i in &node.inputs {
            consumers[i as usize] += 1;
        }
    }
    for o in &g.outputs {
        consumers[o.value as usize] += 2;
    }
    for (k, node) in g.nodes.iter().enumerate() {
        let Some(&v) = node.inputs.first() else {
            continue;
        };
        let v = v as usize;
        if v < n_in || consumers[v] != 1 || node.inputs.len() != 1 {
            continue;
        }
        let j = v - n_in;
        if fusion.fold[j].is_some() || fusion.fused_away[j] {
            continue;
        }
        let producer = &g.nodes[j].layer;
        let fused = match (&node.layer, producer) {
            (
                l,
                Layer::Conv2d { .. }
                | Layer::Add
                | Layer::QConv2d {
                    input: QuantInput::Static(_),
                    output: QuantOutput::F32,
                    relu: false,
                    ..
                },
            ) => act_of(l).map(Fused::Act),
            (l, Layer::Dense { weight, .. }) if !weight.is_sparse() => act_of(l).map(Fused::Act),
            (
                Layer::QClamp { min, max },
                Layer::QConv2d {
                    input: QuantInput::Static(_),
                    output: QuantOutput::U8(_),
                    ..
                }
                | Layer::QAdd { .. }
                | Layer::QAvgPool2d { .. }
                | Layer::QGlobalAvgPool { .. },
            ) => Some(Fused::Clamp(*min, *max)),
            (Layer::Quantize(p), Layer::Standardize { .. }) => Some(Fused::Quantize(*p)),
            _ => None,
        };
        if let Some(f) = fused {
            fusion.fold[j] = Some(f);
            fusion.fused_away[k] = true;
        }
    }
    fusion
}
