//! Models the unit tests build, written once (test builds only): [`tiny_dense`], the
//! smallest useful model, [`chain`], any sequence of layers over one float input, and
//! [`dag`], a graph of explicitly wired nodes.

use crate::graph::{DType, Graph, Layer, Metadata, Model, Node, Output, Tensor, TensorSpec};

/// The smallest useful model: one dense node "d" computing `y = [1 2]·x + bias` over a
/// 2-float input "x" (no bias term when `bias` is `None`), with one output "y".
/// docs/artifact.md quotes its bytes with a bias of 0.5.
pub(crate) fn tiny_dense(bias: Option<f32>) -> Model {
    let dense = Layer::Dense {
        weight: Tensor::f32(vec![1, 2], vec![1.0, 2.0]),
        bias: bias.map(|b| Tensor::f32(vec![1], vec![b])),
    };
    chain(2, [("d", dense)], &[("y", 1)])
}

/// A model applying `layers` one after another to one f32 input "x" of `width` values:
/// node `i` (named as given) reads value `i`, value 0 being the input and value `i + 1` node
/// `i`'s output. `outputs` names the values the graph returns. Empty metadata.
pub(crate) fn chain<S: Into<String>>(
    width: u32,
    layers: impl IntoIterator<Item = (S, Layer)>,
    outputs: &[(&str, u32)],
) -> Model {
    let nodes = layers
        .into_iter()
        .zip(0u32..)
        .map(|((name, layer), i)| Node {
            name: name.into(),
            layer,
            inputs: vec![i],
        })
        .collect();
    Model {
        metadata: Metadata::default(),
        graph: Graph {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DType::F32,
                shape: vec![width],
            }],
            nodes,
            outputs: outputs
                .iter()
                .map(|&(name, value)| Output {
                    name: name.into(),
                    value,
                })
                .collect(),
        },
    }
}

/// A graph of explicitly wired nodes over one input "x" of the given type and shape: node `i`
/// ("n{i}") is `(layer, inputs)` with value 0 the input and value `i + 1` node `i`'s output;
/// the last node's value is the one output "y".
pub(crate) fn dag(input: (DType, Vec<u32>), nodes: Vec<(Layer, Vec<u32>)>) -> Graph {
    let n = nodes.len() as u32;
    Graph {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: input.0,
            shape: input.1,
        }],
        nodes: nodes
            .into_iter()
            .enumerate()
            .map(|(i, (layer, inputs))| Node {
                name: format!("n{i}"),
                layer,
                inputs,
            })
            .collect(),
        outputs: vec![Output {
            name: "y".into(),
            value: n,
        }],
    }
}
