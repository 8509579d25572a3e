use super::*;
use crate::graph::{Layer, Node, Output, QuantParams, Tensor, TensorSpec};
use crate::test_fixtures::dag;

fn graph(input: Vec<u32>, layers: Vec<Layer>) -> Graph {
    let n = layers.len() as u32;
    Graph {
        inputs: vec![TensorSpec {
            name: "x".into(),
            dtype: DType::F32,
            shape: input,
        }],
        nodes: layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| Node {
                name: format!("n{i}"),
                layer,
                inputs: vec![i as u32],
            })
            .collect(),
        outputs: vec![Output {
            name: "y".into(),
            value: n,
        }],
    }
}

#[test]
fn dense_relu_softmax_argmax() {
    let dense = Layer::Dense {
        weight: Tensor::f32(vec![3, 2], vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0]),
        bias: Some(Tensor::f32(vec![3], vec![0.0, 0.5, 0.0])),
    };
    let mut g = graph(
        vec![2],
        vec![
            dense,
            Layer::Relu,
            Layer::Softmax,
            Layer::ArgMax {
                labels: Some(vec![10, 20, 30]),
            },
        ],
    );
    g.outputs.insert(
        0,
        Output {
            name: "p".into(),
            value: 3,
        },
    );
    let mut e = Engine::new(&g, 2).expect("plans");
    e.run(&[&[1.0, 2.0, -3.0, -4.0]], 2).expect("runs");
    let p = e.output_f32(0).expect("probabilities");
    // Row 0: relu([1, 2.5, -3]) = [1, 2.5, 0]; row 1: relu([-3, -3.5, 7]) = [0, 0, 7].
    let z0 = [1.0f32.exp(), 2.5f32.exp(), 1.0];
    let s0: f32 = z0.iter().sum();
    for (got, want) in p[..3].iter().zip(z0.iter().map(|v| v / s0)) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert_eq!(e.output_i64(1), Some(&[20, 30][..]));
}

#[test]
fn conv_and_pools_match_hand_computed_values() {
    // 1×3×3 input, one 2×2 kernel of ones, stride 1, padding 0 → 2×2 sums.
    let conv = Layer::Conv2d {
        weight: Tensor::f32(vec![1, 1, 2, 2], vec![1.0; 4]),
        bias: Some(Tensor::f32(vec![1], vec![1.0])),
        stride: [1, 1],
        padding: [0; 4],
        dilation: [1, 1],
        groups: 1,
    };
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let mut e = Engine::new(&graph(vec![1, 3, 3], vec![conv.clone()]), 1).expect("plans");
    e.run(&[&x], 1).expect("runs");
    assert_eq!(e.output_f32(0), Some(&[13.0, 17.0, 25.0, 29.0][..]));

    let max = Layer::MaxPool2d {
        kernel: [2, 2],
        stride: [1, 1],
        padding: [1, 1, 0, 0],
    };
    let mut e = Engine::new(&graph(vec![1, 3, 3], vec![max]), 1).expect("plans");
    e.run(&[&x], 1).expect("runs");
    assert_eq!(
        e.output_f32(0),
        Some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0][..])
    );

    let avg = |count_include_pad| Layer::AvgPool2d {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0, 1, 1],
        count_include_pad,
    };
    let mut e = Engine::new(&graph(vec![1, 3, 3], vec![avg(false)]), 1).expect("plans");
    e.run(&[&x], 1).expect("runs");
    assert_eq!(e.output_f32(0), Some(&[3.0, 4.5, 7.5, 9.0][..]));
    let mut e = Engine::new(&graph(vec![1, 3, 3], vec![avg(true)]), 1).expect("plans");
    e.run(&[&x], 1).expect("runs");
    assert_eq!(e.output_f32(0), Some(&[3.0, 2.25, 3.75, 2.25][..]));

    let mut e = Engine::new(
        &graph(vec![1, 3, 3], vec![Layer::GlobalAvgPool, Layer::Flatten]),
        1,
    )
    .expect("plans");
    e.run(&[&x], 1).expect("runs");
    assert_eq!(e.output_f32(0), Some(&[5.0][..]));
}

#[test]
fn grouped_strided_padded_conv_matches_a_direct_formula() {
    let (c, h, w, oc, groups) = (4usize, 5usize, 6usize, 6usize, 2usize);
    let (kh, kw, stride, pad) = (
        3usize,
        2usize,
        [2usize, 1usize],
        [1usize, 1usize, 1usize, 0usize],
    );
    let wt: Vec<f32> = (0..oc * (c / groups) * kh * kw)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
        .collect();
    let x: Vec<f32> = (0..c * h * w)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
        .collect();
    let layer = Layer::Conv2d {
        weight: Tensor::f32(
            vec![oc as u32, (c / groups) as u32, kh as u32, kw as u32],
            wt.clone(),
        ),
        bias: None,
        stride: [stride[0] as u32, stride[1] as u32],
        padding: [pad[0] as u32, pad[1] as u32, pad[2] as u32, pad[3] as u32],
        dilation: [1, 1],
        groups: groups as u32,
    };
    let mut e =
        Engine::new(&graph(vec![c as u32, h as u32, w as u32], vec![layer]), 1).expect("plans");
    e.run(&[&x], 1).expect("runs");
    let y = e.output_f32(0).expect("output");
    let oh = (h + pad[0] + pad[2] - kh) / stride[0] + 1;
    let ow = (w + pad[1] + pad[3] - kw) / stride[1] + 1;
    assert_eq!(y.len(), oc * oh * ow);
    for o in 0..oc {
        let g = o / (oc / groups);
        for yy in 0..oh {
            for xx in 0..ow {
                let mut s = 0.0f32;
                for ic in 0..c / groups {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (yy * stride[0] + ky) as isize - pad[0] as isize;
                            let ix = (xx * stride[1] + kx) as isize - pad[1] as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                s += wt[((o * (c / groups) + ic) * kh + ky) * kw + kx]
                                    * x[((g * (c / groups) + ic) * h + iy as usize) * w
                                        + ix as usize];
                            }
                        }
                    }
                }
                let got = y[(o * oh + yy) * ow + xx];
                assert!((got - s).abs() < 1e-5, "y[{o},{yy},{xx}] = {got}, want {s}");
            }
        }
    }
}

#[test]
fn bad_inputs_are_named_errors() {
    let g = graph(vec![2], vec![Layer::Relu]);
    let mut e = Engine::new(&g, 1).expect("plans");
    assert_eq!(
        e.run(&[&[1.0]], 1),
        Err(EngineError::InputLength {
            index: 0,
            name: "x".into(),
            batch: 1,
            sample_len: 2,
            expected: 2,
            got: 1
        })
    );
    assert!(matches!(
        e.run(&[&[1.0, f32::NAN, 0.0, 0.0]], 2),
        Err(EngineError::NonFinite {
            sample: 0,
            feature: 1,
            ..
        })
    ));
    assert_eq!(
        e.run(&[], 1),
        Err(EngineError::InputCount {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(e.run(&[&[]], 0), Err(EngineError::EmptyBatch));
}

#[test]
fn shape_errors_name_the_node() {
    let g = graph(
        vec![3],
        vec![Layer::Dense {
            weight: Tensor::f32(vec![2, 4], vec![0.0; 8]),
            bias: None,
        }],
    );
    let err = Engine::new(&g, 1).expect_err("mismatch");
    assert!(
        err.to_string().contains("n0") && err.to_string().contains("expects 4"),
        "{err}"
    );
    let g = graph(
        vec![3],
        vec![Layer::Dense {
            weight: Tensor::f32(vec![2, 3], vec![0.0; 5]),
            bias: None,
        }],
    );
    assert!(Engine::new(&g, 1).is_err());
}

fn i8_tensor(shape: Vec<u32>, values: Vec<i8>, scales: Vec<f32>) -> Tensor {
    Tensor {
        shape,
        data: crate::graph::TensorData::I8 { values, scales },
    }
}

#[test]
fn quantized_dense_chain_matches_hand_computed_codes() {
    use crate::graph::{QuantInput, QuantOutput};
    let p_in = QuantParams {
        scale: 0.5,
        zero_point: 10,
    };
    let p_mid = QuantParams {
        scale: 0.25,
        zero_point: 0,
    };
    let g = graph(
        vec![2],
        vec![
            Layer::Quantize(p_in),
            Layer::QDense {
                weight: i8_tensor(vec![2, 2], vec![2, -1, -4, 3], vec![0.5, 1.0]),
                bias: Some(Tensor::f32(vec![2], vec![0.25, 0.0])),
                input: QuantInput::Static(p_in),
                output: QuantOutput::U8(p_mid),
                relu: true,
            },
            Layer::Dequantize(p_mid),
        ],
    );
    let mut e = Engine::new(&g, 1).expect("plans");
    // x = [1, 2] → codes [12, 14]; y0 = 1·1 + 2·(-0.5) + 0.25 = 0.25, y1 = 1·(-4) + 2·3
    // = 2 → codes 1 and 8 → [0.25, 2].
    e.run(&[&[1.0, 2.0]], 1).expect("runs");
    assert_eq!(e.output_f32(0), Some(&[0.25, 2.0][..]));
    // ReLU clamps at the zero point: x = [-1, 0] gives y = [-0.75, 4].
    e.run(&[&[-1.0, 0.0]], 1).expect("runs");
    assert_eq!(e.output_f32(0), Some(&[0.0, 4.0][..]));
}

#[test]
fn quantized_conv_follows_the_float_conv() {
    use crate::graph::{QuantInput, QuantOutput};
    let wt: Vec<i8> = (0..2 * 2 * 3 * 3)
        .map(|i| ((i * 37 % 23) as i8) - 11)
        .collect();
    let scales = vec![0.02, 0.03];
    let wf: Vec<f32> = wt
        .iter()
        .enumerate()
        .map(|(i, &q)| q as f32 * scales[i / 18])
        .collect();
    let x: Vec<f32> = (0..2 * 5 * 5)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
        .collect();
    let geometry = |weight: Tensor, q: bool| {
        let (stride, padding, dilation, groups) = ([2, 1], [1, 1, 1, 0], [1, 1], 1);
        let bias = Some(Tensor::f32(vec![2], vec![0.1, -0.2]));
        if q {
            Layer::QConv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
                input: QuantInput::Dynamic,
                output: QuantOutput::F32,
                relu: false,
            }
        } else {
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                groups,
            }
        }
    };
    let run = |layer| {
        let mut e = Engine::new(&graph(vec![2, 5, 5], vec![layer]), 1).expect("plans");
        e.run(&[&x], 1).expect("runs");
        e.output_f32(0).expect("output").to_vec()
    };
    let want = run(geometry(Tensor::f32(vec![2, 2, 3, 3], wf), false));
    let got = run(geometry(i8_tensor(vec![2, 2, 3, 3], wt, scales), true));
    assert_eq!(got.len(), want.len());
    // Only the activations are rounded (step 3.2/255): |error| <= 18 · 0.5 · step · max|w|.
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 0.04, "{g} vs {w}");
    }
}

#[test]
fn damaged_quantized_layers_are_graph_errors() {
    use crate::graph::{QuantInput, QuantOutput};
    let p = QuantParams {
        scale: 0.1,
        zero_point: 0,
    };
    let qdense = |weight, input, output| Layer::QDense {
        weight,
        bias: None,
        input,
        output,
        relu: false,
    };
    let ok_w = || i8_tensor(vec![2, 2], vec![1; 4], vec![1.0, 1.0]);
    let bad = [
        // scales: wrong count, zero, NaN, infinite
        qdense(
            i8_tensor(vec![2, 2], vec![1; 4], vec![1.0]),
            QuantInput::Dynamic,
            QuantOutput::F32,
        ),
        qdense(
            i8_tensor(vec![2, 2], vec![1; 4], vec![1.0, 0.0]),
            QuantInput::Dynamic,
            QuantOutput::F32,
        ),
        qdense(
            i8_tensor(vec![2, 2], vec![1; 4], vec![f32::NAN, 1.0]),
            QuantInput::Dynamic,
            QuantOutput::F32,
        ),
        qdense(
            i8_tensor(vec![2, 2], vec![1; 3], vec![1.0, 1.0]),
            QuantInput::Dynamic,
            QuantOutput::F32,
        ),
        // a float weight, a u8 output from a dynamic input, a static input fed float32
        qdense(
            Tensor::f32(vec![2, 2], vec![0.0; 4]),
            QuantInput::Dynamic,
            QuantOutput::F32,
        ),
        qdense(ok_w(), QuantInput::Dynamic, QuantOutput::U8(p)),
        qdense(ok_w(), QuantInput::Static(p), QuantOutput::F32),
        qdense(
            ok_w(),
            QuantInput::Dynamic,
            QuantOutput::U8(QuantParams {
                scale: f32::INFINITY,
                zero_point: 0,
            }),
        ),
        Layer::Quantize(QuantParams {
            scale: -1.0,
            zero_point: 0,
        }),
        Layer::Dense {
            weight: ok_w(),
            bias: None,
        },
    ];
    for layer in bad {
        let g = graph(vec![2], vec![layer.clone()]);
        assert!(
            matches!(Engine::new(&g, 1), Err(EngineError::Graph(_))),
            "{layer:?}"
        );
    }
    // A u8 graph output gives the codes themselves (revision 1.3).
    let g = graph(vec![2], vec![Layer::Quantize(p)]);
    let mut e = Engine::new(&g, 1).expect("plans");
    e.run(&[&[0.25, -1.0]], 1).expect("runs");
    assert_eq!(e.output_u8(0), Some(&[2u8, 0][..]));
    assert_eq!(e.output_f32(0), None);
    // A requantization multiplier out of range is refused when the engine is built.
    let tiny = QuantParams {
        scale: 1e-30,
        zero_point: 0,
    };
    let g = graph(
        vec![2],
        vec![
            Layer::Quantize(tiny),
            qdense(ok_w(), QuantInput::Static(tiny), QuantOutput::U8(p)),
            Layer::Dequantize(p),
        ],
    );
    assert!(matches!(Engine::new(&g, 1), Err(EngineError::Graph(_))));
}

#[test]
fn sparse_weights_give_the_dense_results_at_every_batch_size() {
    let (o, n) = (24usize, 40usize);
    let w: Vec<f32> = (0..o * n)
        .map(|i| {
            if i % 4 == 1 {
                (i % 9) as f32 / 9.0 - 0.4
            } else {
                0.0
            }
        })
        .collect();
    let layers = |weight: Tensor| {
        vec![
            Layer::Dense {
                weight,
                bias: Some(Tensor::f32(vec![o as u32], vec![0.25; o])),
            },
            Layer::Tanh,
        ]
    };
    let dense = graph(
        vec![n as u32],
        layers(Tensor::f32(vec![o as u32, n as u32], w.clone())),
    );
    let sparse = graph(
        vec![n as u32],
        layers(Tensor::csr_from_dense(o, n, &w).unwrap()),
    );
    let mut de = Engine::new(&dense, 1).expect("plans");
    let mut se = Engine::new(&sparse, 1).expect("plans");
    let choices = se.kernel_choices().to_vec();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0].nonzeros, w.iter().filter(|v| **v != 0.0).count());
    assert!(choices[0].to_string().contains("24×40"), "{}", choices[0]);
    for batch in [1usize, 3, 16, 37] {
        let x: Vec<f32> = (0..batch * n)
            .map(|i| (i % 11) as f32 / 5.0 - 1.0)
            .collect();
        de.run(&[&x], batch).expect("runs");
        se.run(&[&x], batch).expect("runs");
        let (a, b) = (de.output_f32(0).expect("y"), se.output_f32(0).expect("y"));
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < 1e-5, "batch {batch}: {p} vs {q}");
        }
    }
}

fn ramp(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * k % 17) as f32 - 8.0) / 9.0).collect()
}

#[test]
fn layouts_change_no_result() {
    // The same network written NCHW (PyTorch) and NHWC with transposes (tf2onnx): conv,
    // a residual add, a channel concat, padding, a per-channel affine, then a flatten in
    // each framework's order into a dense layer.
    let (c, h, w) = (3usize, 5usize, 4usize);
    let conv = |oc: u32, ic: u32, k: usize| Layer::Conv2d {
        weight: Tensor::f32(vec![oc, ic, 3, 3], ramp((oc * ic * 9) as usize, k)),
        bias: Some(Tensor::f32(vec![oc], ramp(oc as usize, k + 1))),
        stride: [1, 1],
        padding: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let body = |first: u32| -> Vec<(Layer, Vec<u32>)> {
        let f = first;
        vec![
            (conv(3, 3, 5), vec![f]),                    // f+1
            (Layer::Relu, vec![f + 1]),                  // f+2
            (Layer::Add, vec![f + 2, f]),                // f+3
            (Layer::Concat { axis: 0 }, vec![f + 3, f]), // f+4: 6×5×4
            (
                Layer::Pad {
                    begin: vec![0, 1, 0],
                    end: vec![0, 0, 2],
                    value: 0.5,
                },
                vec![f + 4],
            ), // f+5: 6×6×6
            (
                Layer::ChannelAffine {
                    scale: ramp(6, 3),
                    offset: ramp(6, 7),
                },
                vec![f + 5],
            ), // f+6
            (
                Layer::Clip {
                    min: -0.5,
                    max: 0.75,
                },
                vec![f + 6],
            ), // f+7
        ]
    };
    let dense = |perm_hwc: bool| {
        // Both graphs flatten differently; the same logical weight per framework order.
        let wl = ramp(4 * 216, 11);
        let mut w = vec![0.0f32; 4 * 216];
        for o in 0..4 {
            for ch in 0..6 {
                for y in 0..6 {
                    for x in 0..6 {
                        let chw = (ch * 6 + y) * 6 + x;
                        let hwc = (y * 6 + x) * 6 + ch;
                        let src = o * 216 + chw;
                        w[o * 216 + if perm_hwc { hwc } else { chw }] = wl[src];
                    }
                }
            }
        }
        Layer::Dense {
            weight: Tensor::f32(vec![4, 216], w),
            bias: None,
        }
    };
    let mut nchw = body(0);
    nchw.push((Layer::Flatten, vec![7]));
    nchw.push((dense(false), vec![8]));
    let mut nhwc = vec![(
        Layer::Transpose {
            perm: vec![2, 0, 1],
        },
        vec![0],
    )];
    nhwc.extend(body(1));
    nhwc.push((
        Layer::Transpose {
            perm: vec![1, 2, 0],
        },
        vec![8],
    ));
    nhwc.push((Layer::Flatten, vec![9]));
    nhwc.push((dense(true), vec![10]));
    let x_chw = ramp(2 * c * h * w, 13);
    let mut x_hwc = vec![0.0f32; x_chw.len()];
    for n in 0..2 {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    x_hwc[n * 60 + (y * w + xx) * c + ch] = x_chw[n * 60 + (ch * h + y) * w + xx];
                }
            }
        }
    }
    let mut a = Engine::new(&dag((DType::F32, vec![3, 5, 4]), nchw), 2).expect("plans");
    let mut b = Engine::new(&dag((DType::F32, vec![5, 4, 3]), nhwc), 2).expect("plans");
    a.run(&[&x_chw], 2).expect("runs");
    b.run(&[&x_hwc], 2).expect("runs");
    let (ya, yb) = (a.output_f32(0).expect("y"), b.output_f32(0).expect("y"));
    assert_eq!(ya.len(), 8);
    for (p, q) in ya.iter().zip(yb) {
        assert!((p - q).abs() < 1e-4, "{ya:?} vs {yb:?}");
    }
    // The NHWC graph's transposes are free: one gather for the NCHW input of `a` only.
    assert!(b.steps() < a.steps() + 1, "{} vs {}", b.steps(), a.steps());
    assert!(a.arena_bytes() > 0);
}

#[test]
fn int8_codes_flow_through_inputs_adds_and_outputs() {
    let p = QuantParams {
        scale: 0.5,
        zero_point: 128,
    };
    let g = dag(
        (DType::I8, vec![2, 2, 2]),
        vec![
            (Layer::ToU8, vec![0]),
            (
                Layer::QAdd {
                    a: p,
                    b: p,
                    output: p,
                },
                vec![1, 1],
            ),
            (Layer::QClamp { min: 120, max: 140 }, vec![2]),
            (
                Layer::QGlobalAvgPool {
                    input: p,
                    output: p,
                },
                vec![3],
            ),
            (Layer::ToI8, vec![4]),
        ],
    );
    let mut e = Engine::new(&g, 1).expect("plans");
    let x: [i8; 8] = [1, 2, 3, 4, -1, -2, -3, -20];
    e.run_inputs(&[InputData::I8(&x)], 1).expect("runs");
    // Channel 0: 2x clamped to [-8, 12] → 2, 4, 6, 8 → mean 5; channel 1: -2, -4, -6,
    // -8 (clamped) → mean -5.
    let y: Vec<i8> = e
        .output_i8_bits(0)
        .expect("int8 output")
        .iter()
        .map(|&b| b as i8)
        .collect();
    assert_eq!(y, vec![5, -5]);
    assert!(matches!(
        e.run(&[&[0.0; 8]], 1),
        Err(EngineError::InputType { .. })
    ));
}

#[test]
fn larger_batches_grow_the_buffers() {
    let g = graph(vec![1], vec![Layer::Sigmoid]);
    let mut e = Engine::new(&g, 1).expect("plans");
    e.run(&[&[0.0, 0.0, 0.0]], 3).expect("runs");
    assert_eq!(e.capacity(), 3);
    assert_eq!(e.output_f32(0), Some(&[0.5, 0.5, 0.5][..]));
}
