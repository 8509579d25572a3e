//! The differential battery: every NHWC kernel on every implementation family this CPU
//! runs, against a naive reference (f64 sums for f32, the integer definition for int8),
//! over one list of geometries stamped onto each kernel by a macro. int8 must give the
//! reference's bits (hence every family's bits agree); f32 must lie within a bound that
//! grows with the depth of each sum (`(depth + 2) · ε · Σ|terms|`, the worst case of any
//! summation order).
#![cfg(test)]

use super::int8::FixedMultiplier;
use super::qconv::requant_one;
use super::*;

/// Deterministic values in `[-1, 1)`.
pub(super) fn floats(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                .rotate_left(13)
                .wrapping_mul(2246822519);
            (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Deterministic bytes.
pub(super) fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| {
            ((i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                .rotate_left(11)
                .wrapping_mul(2246822519)
                >> 24) as u8
        })
        .collect()
}

const ACTS: [Activation; 7] = [
    Activation::Identity,
    Activation::Relu,
    Activation::Clip { min: 0.0, max: 0.5 },
    Activation::LeakyRelu(0.1),
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::HardSwish,
];

/// `got` within the worst-case bound of a `depth`-term f32 sum whose terms' magnitudes add
/// to `mag`, after `act` (1.5-Lipschitz at most) and its own rounding.
fn close(got: f32, want: f64, depth: usize, mag: f64, act: Activation) -> bool {
    let want = act.apply(want as f32) as f64;
    let eps = f32::EPSILON as f64;
    let tol = 1.5 * (depth as f64 + 2.0) * eps * mag + 8.0 * eps * want.abs() + 1e-30;
    (got as f64 - want).abs() <= tol
}

/// The f64 convolution and the sum of its terms' magnitudes, per output value (before the
/// activation).
pub(super) fn ref_conv_f32(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    b: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let (icg, ocg) = (g.in_c / g.groups, g.out_c / g.groups);
    let mut y = vec![0.0; g.output_len()];
    let mut mag = vec![0.0; g.output_len()];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for oc in 0..g.out_c {
                let grp = oc / ocg;
                let (mut s, mut m) = (b[oc] as f64, (b[oc] as f64).abs());
                for ic in 0..icg {
                    for ky in 0..g.k_h {
                        for kx in 0..g.k_w {
                            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                - g.pad[0] as isize;
                            let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                - g.pad[1] as isize;
                            if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                continue;
                            }
                            let xv = x
                                [((iy as usize) * g.in_w + ix as usize) * g.in_c + grp * icg + ic]
                                as f64;
                            let wv = w[((oc * icg + ic) * g.k_h + ky) * g.k_w + kx] as f64;
                            s += xv * wv;
                            m += (xv * wv).abs();
                        }
                    }
                }
                let at = (oy * g.out_w + ox) * g.out_c + oc;
                y[at] = s;
                mag[at] = m;
            }
        }
    }
    (y, mag)
}

/// The exact i64 sums `Σ (x - zp) · w` (padding = zp) of an int8 convolution.
pub(super) fn ref_conv_centered(g: &ConvGeometry, x: &[u8], zp: u8, w: &[i8]) -> Vec<i64> {
    let (icg, ocg) = (g.in_c / g.groups, g.out_c / g.groups);
    let mut y = vec![0; g.output_len()];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            for oc in 0..g.out_c {
                let grp = oc / ocg;
                let mut s = 0i64;
                for ic in 0..icg {
                    for ky in 0..g.k_h {
                        for kx in 0..g.k_w {
                            let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                - g.pad[0] as isize;
                            let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                - g.pad[1] as isize;
                            if iy < 0 || ix < 0 || iy >= g.in_h as isize || ix >= g.in_w as isize {
                                continue;
                            }
                            let xv = x
                                [((iy as usize) * g.in_w + ix as usize) * g.in_c + grp * icg + ic]
                                as i64;
                            let wv = w[((oc * icg + ic) * g.k_h + ky) * g.k_w + kx] as i64;
                            s += (xv - zp as i64) * wv;
                        }
                    }
                }
                y[(oy * g.out_w + ox) * g.out_c + oc] = s;
            }
        }
    }
    y
}

/// A conv geometry from its parts (the output size follows).
pub(super) fn geom(
    input: [usize; 3],
    out_c: usize,
    k: [usize; 2],
    stride: usize,
    pad: [usize; 4],
    dilation: usize,
    groups: usize,
) -> ConvGeometry {
    ConvGeometry::new(input, out_c, k, [stride; 2], pad, [dilation; 2], groups)
        .expect("valid test geometry")
}

pub(super) fn check_conv_f32(g: &ConvGeometry) {
    for (case, act) in ACTS.iter().enumerate() {
        let seed = case as u32 * 7 + g.out_c as u32;
        let x = floats(g.input_len(), seed);
        let w = floats(g.weight_len(), seed + 1);
        let b: Vec<f32> = floats(g.out_c, seed + 2).iter().map(|v| v * 0.5).collect();
        let (want, mag) = ref_conv_f32(g, &x, &w, &b);
        let depth = g.k_h * g.k_w * g.in_c / g.groups;
        for path in F32Path::available() {
            let conv = ConvF32::with_path(*g, &w, &b, *act, path).expect("builds");
            let mut scratch = vec![f32::NAN; conv.scratch_len()];
            let mut y = vec![f32::NAN; g.output_len()];
            conv.run(&x, &mut y, &mut scratch);
            for (i, (&got, (&r, &m))) in y.iter().zip(want.iter().zip(&mag)).enumerate() {
                assert!(
                    close(got, r, depth, m, *act),
                    "{} {act:?} {g:?}: output {i} = {got}, reference {}",
                    path.name(),
                    act.apply(r as f32)
                );
            }
        }
    }
}

/// Input zero point, weights and codes of one int8 case: mixed, then the extremes.
fn int8_case(g: &ConvGeometry, case: usize) -> (u8, Vec<i8>, Vec<u8>) {
    let n_w = g.weight_len();
    let n_x = g.input_len();
    let seed = case as u32 * 13 + g.in_c as u32;
    let mixed_w: Vec<i8> = bytes(n_w, seed).into_iter().map(|b| b as i8).collect();
    let mixed_x = bytes(n_x, seed + 5);
    match case {
        0 => (bytes(1, seed)[0], mixed_w, mixed_x),
        1 => (0, vec![127; n_w], vec![255; n_x]),
        2 => (255, vec![-128; n_w], vec![0; n_x]),
        3 => (
            128,
            (0..n_w)
                .map(|i| if i % 3 == 0 { -128 } else { 127 })
                .collect(),
            (0..n_x).map(|i| if i % 2 == 0 { 255 } else { 0 }).collect(),
        ),
        _ => (7, mixed_w, vec![255; n_x]),
    }
}

/// int8 outputs of every family equal the integer definition; a u8 output also lies within
/// one step of the real-valued result (when not clamped).
pub(super) fn check_conv_u8(g: &ConvGeometry) {
    let depth = g.k_h * g.k_w * g.in_c / g.groups;
    for case in 0..5 {
        let (zp, w, x) = int8_case(g, case);
        let s_in = 0.02f32;
        let w_scales: Vec<f32> = (0..g.out_c)
            .map(|c| 0.003 + 0.0007 * (c % 5) as f32)
            .collect();
        let bias: Vec<i32> = (0..g.out_c)
            .map(|c| (c as i32 * 7919 % 4001 - 2000) * if case == 4 { 1000 } else { 1 })
            .collect();
        let centered = ref_conv_centered(g, &x, zp, &w);
        // An output scale that spreads typical sums over the codes.
        let s_out = s_in * 0.004 * (depth as f32).sqrt() * 40.0;
        let outputs = [
            OutputQuant::U8 {
                quant: U8Quant {
                    scale: s_out,
                    zero_point: 120,
                },
                min: 0,
                max: 255,
            },
            OutputQuant::u8_with(
                U8Quant {
                    scale: s_out * 0.5,
                    zero_point: 3,
                },
                Activation::Clip { min: 0.0, max: 6.0 },
            )
            .expect("clamp"),
            OutputQuant::F32(Activation::Identity),
            OutputQuant::F32(ACTS[case % ACTS.len()]),
            // Multipliers above 1/2: the requantized value can leave the i32 range.
            OutputQuant::U8 {
                quant: U8Quant {
                    scale: s_in * 0.001,
                    zero_point: 100,
                },
                min: 10,
                max: 250,
            },
        ];
        let input = U8Quant {
            scale: s_in,
            zero_point: zp,
        };
        for output in outputs {
            let mut want_u8 = vec![0u8; g.output_len()];
            let mut want_f32 = vec![0f32; g.output_len()];
            for (i, &c) in centered.iter().enumerate() {
                let oc = i % g.out_c;
                let a = c + bias[oc] as i64;
                match output {
                    OutputQuant::U8 { quant, min, max } => {
                        let real = s_in as f64 * w_scales[oc] as f64 / quant.scale as f64;
                        let m = FixedMultiplier::new(real).expect("in range");
                        want_u8[i] = requant_one(a, m, quant.zero_point, min, max);
                        let exact = quant.zero_point as f64 + a as f64 * real;
                        if exact > min as f64 + 1.0 && exact < max as f64 - 1.0 {
                            assert!(
                                (want_u8[i] as f64 - exact).abs() <= 0.5 + 1e-6,
                                "reference requantization {} vs {exact}",
                                want_u8[i]
                            );
                        }
                    }
                    OutputQuant::F32(act) => {
                        want_f32[i] = act.apply(a as f32 * (s_in * w_scales[oc]));
                    }
                }
            }
            for path in I8Path::available() {
                let conv = ConvU8::with_path(*g, &w, &w_scales, &bias, input, output, path)
                    .expect("builds");
                let mut scratch = vec![0xa5; conv.scratch_len()];
                match output {
                    OutputQuant::U8 { .. } => {
                        let mut y = vec![0xa5; g.output_len()];
                        conv.run_u8(&x, &mut y, &mut scratch);
                        assert!(
                            y == want_u8,
                            "{} case {case} {output:?} {g:?}: first difference at {:?}",
                            path.name(),
                            y.iter().zip(&want_u8).position(|(a, b)| a != b)
                        );
                    }
                    OutputQuant::F32(_) => {
                        let mut y = vec![f32::NAN; g.output_len()];
                        conv.run_f32(&x, &mut y, &mut scratch);
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert!(
                            bits(&y) == bits(&want_f32),
                            "{} case {case} {output:?} {g:?}: first difference at {:?}",
                            path.name(),
                            y.iter()
                                .zip(&want_f32)
                                .position(|(a, b)| a.to_bits() != b.to_bits())
                        );
                    }
                }
            }
        }
    }
}

/// Stamps each named geometry onto every convolution kernel (f32, and int8 with u8 and f32
/// outputs) as one test per kernel and geometry.
macro_rules! conv_battery {
    ($($name:ident: $geom:expr;)*) => {
        mod conv_f32 {
            use super::geom;
            $(#[test] fn $name() { super::check_conv_f32(&$geom) })*
        }
        mod conv_u8 {
            use super::geom;
            $(#[test] fn $name() { super::check_conv_u8(&$geom) })*
        }
    };
}

conv_battery! {
    pointwise: geom([5, 7, 16], 24, [1, 1], 1, [0; 4], 1, 1);
    pointwise_odd: geom([3, 5, 13], 19, [1, 1], 1, [0; 4], 1, 1);
    pointwise_c4: geom([4, 4, 4], 8, [1, 1], 1, [0; 4], 1, 1);
    pointwise_wide: geom([3, 3, 8], 200, [1, 1], 1, [0; 4], 1, 1);
    pointwise_one_pixel: geom([1, 1, 7], 5, [1, 1], 1, [0; 4], 1, 1);
    pointwise_128: geom([6, 6, 128], 128, [1, 1], 1, [0; 4], 1, 1);
    pointwise_stride2: geom([7, 7, 8], 8, [1, 1], 2, [0; 4], 1, 1);
    pointwise_groups: geom([5, 5, 16], 16, [1, 1], 1, [0; 4], 1, 2);
    conv3x3_same: geom([9, 11, 8], 16, [3, 3], 1, [1; 4], 1, 1);
    conv3x3_stride2: geom([10, 9, 16], 32, [3, 3], 2, [0, 0, 1, 1], 1, 1);
    conv3x3_odd_channels: geom([7, 7, 5], 7, [3, 3], 1, [1; 4], 1, 1);
    conv3x3_deep: geom([4, 4, 64], 16, [3, 3], 1, [1; 4], 1, 1);
    conv_rgb_stride2: geom([12, 12, 3], 8, [3, 3], 2, [0, 0, 1, 1], 1, 1);
    conv_mono_10x4: geom([13, 10, 1], 12, [10, 4], 2, [4, 1, 5, 2], 1, 1);
    conv_dilated: geom([11, 11, 6], 10, [3, 3], 1, [2; 4], 2, 1);
    conv_grouped: geom([6, 6, 8], 12, [3, 3], 1, [1; 4], 1, 4);
    conv_asymmetric_pad: geom([8, 6, 4], 5, [3, 2], 1, [2, 0, 0, 1], 1, 1);
    conv_pad_beyond_kernel: geom([4, 4, 4], 6, [3, 3], 1, [3; 4], 1, 1);
    conv_row_of_pixels: geom([1, 13, 4], 9, [1, 3], 1, [0, 1, 0, 1], 1, 1);
    conv3x3_long_rows: geom([5, 30, 16], 64, [3, 3], 1, [1; 4], 1, 1);
    conv3x3_many_panels: geom([6, 9, 8], 136, [3, 3], 1, [1; 4], 1, 1);
    conv5x5_stride2_interior: geom([15, 17, 12], 20, [5, 5], 2, [2; 4], 1, 1);
    conv_dilated_c8: geom([11, 12, 8], 12, [3, 3], 1, [2; 4], 2, 1);
    conv_rgb_same: geom([10, 11, 3], 16, [3, 3], 1, [1; 4], 1, 1);
    conv_rgb_no_pad: geom([6, 7, 3], 8, [3, 3], 1, [0; 4], 1, 1);
    // A large map, its border a small share: x86's float kernel reads the interior in
    // place and im2cols the border (the maps above, mostly border, go through a padded copy).
    conv3x3_large_map: geom([40, 41, 4], 8, [3, 3], 1, [1; 4], 1, 1);
    conv5x5_large_stride2: geom([48, 50, 4], 8, [5, 5], 2, [1, 2, 2, 2], 1, 1);
    // Kernel rows of whole quads (x86 int8 reads them in place): tiny_conv's 10x8 kernel
    // on a one-channel spectrogram, 2 channels by 2 columns, RGB by 4 columns, a large
    // map (interior in place, border through im2col), and a dilated one (im2col only).
    conv_mono_tinyconv: geom([49, 40, 1], 8, [10, 8], 2, [4, 3, 5, 4], 1, 1);
    conv_two_channels_kw2: geom([9, 10, 2], 6, [3, 2], 1, [1, 1, 1, 0], 1, 1);
    conv_rgb_kw4: geom([11, 12, 3], 8, [4, 4], 2, [1, 1, 2, 2], 1, 1);
    conv_mono_large_map: geom([40, 41, 1], 8, [5, 4], 1, [2, 1, 2, 2], 1, 1);
    conv_mono_dilated_kw4: geom([13, 14, 1], 5, [3, 4], 1, [2; 4], 2, 1);
    depthwise3x3: geom([7, 9, 16], 16, [3, 3], 1, [1; 4], 1, 16);
    depthwise3x3_stride2: geom([9, 8, 24], 24, [3, 3], 2, [0, 0, 1, 1], 1, 24);
    depthwise3x3_stride2_pad_all: geom([9, 9, 8], 8, [3, 3], 2, [1; 4], 1, 8);
    depthwise_odd_channels: geom([5, 6, 13], 13, [3, 3], 1, [1; 4], 1, 13);
    depthwise_40_channels: geom([5, 5, 40], 40, [3, 3], 1, [1; 4], 1, 40);
    depthwise5x5_dilated: geom([9, 9, 8], 8, [5, 5], 1, [4; 4], 2, 8);
    depthwise_wide: geom([4, 4, 80], 80, [3, 3], 1, [1; 4], 1, 80);
    depthwise_one_channel: geom([6, 5, 1], 1, [3, 3], 1, [1; 4], 1, 1);
    depthwise_multiplier2: geom([5, 5, 4], 8, [3, 3], 1, [1; 4], 1, 4);
    depthwise_no_pad: geom([6, 7, 32], 32, [3, 3], 1, [0; 4], 1, 32);
    // Eight channels: x86 int8 runs two pixels side by side in one block (an odd row
    // leaves one pixel alone).
    depthwise_c8: geom([10, 11, 8], 8, [3, 3], 1, [1; 4], 1, 8);
    depthwise_c8_no_pad_odd: geom([7, 9, 8], 8, [3, 3], 1, [0; 4], 1, 8);
    depthwise_c8_stride2: geom([12, 13, 8], 8, [3, 3], 2, [0, 0, 1, 1], 1, 8);
    // Padding past the kernel (kernel rows wholly in the padding, columns with no
    // interior pixel) and a map two pixels wide (every pixel a border one).
    depthwise_pad_beyond_kernel: geom([4, 4, 8], 8, [3, 3], 1, [3, 2, 3, 4], 1, 8);
    depthwise_two_columns: geom([5, 2, 16], 16, [3, 3], 1, [1; 4], 1, 16);
    // Maps mostly interior (the ones above are mostly border).
    depthwise_large_map: geom([20, 21, 16], 16, [3, 3], 1, [1; 4], 1, 16);
    depthwise_large_stride2: geom([24, 25, 24], 24, [3, 3], 2, [0, 0, 1, 1], 1, 24);
    depthwise_large_dilated: geom([32, 32, 8], 8, [3, 3], 1, [2; 4], 2, 8);
    depthwise_large_odd_channels: geom([20, 20, 13], 13, [3, 3], 1, [1; 4], 1, 13);
    // Whole blocks of 16 channels (x86 int8 with AVX-512 VBMI gathers a kernel row's taps
    // with one `vpermb`): stride 2 with uneven padding, dilation, several blocks and a
    // row of 4n + 3 pixels.
    depthwise_c32_stride2: geom([13, 14, 32], 32, [3, 3], 2, [0, 0, 1, 1], 1, 32);
    depthwise_c16_dilated: geom([12, 11, 16], 16, [3, 3], 1, [2; 4], 2, 16);
    depthwise_c48_odd_row: geom([6, 7, 48], 48, [3, 3], 1, [1; 4], 1, 48);
    depthwise_c64_tiny_map_stride2: geom([3, 3, 64], 64, [3, 3], 2, [1; 4], 1, 64);
    depthwise_c8_one_column: geom([5, 1, 8], 8, [3, 3], 1, [1; 4], 1, 8);
}

/// Dense layers: f32 within the depth bound, int8 bit for bit, for every family.
/// The interior rows and columns ([`ConvGeometry::row_is_interior`],
/// [`ConvGeometry::interior_cols`]) are exactly the outputs whose every tap has a source.
#[test]
fn interior_pixels_are_those_without_padding() {
    for (input, k, stride, pad, dilation) in [
        ([9, 11, 4], [3, 3], 1, [1; 4], 1),
        ([10, 9, 4], [3, 3], 2, [0, 0, 1, 1], 1),
        ([13, 10, 4], [10, 4], 2, [4, 1, 5, 2], 1),
        ([11, 11, 4], [3, 3], 1, [2; 4], 2),
        ([4, 4, 4], [3, 3], 1, [3; 4], 1),
        ([8, 6, 4], [3, 2], 1, [2, 0, 0, 1], 1),
        ([15, 17, 4], [5, 5], 2, [2; 4], 1),
        ([3, 3, 4], [3, 3], 1, [0; 4], 1),
    ] {
        let g = geom(input, 4, k, stride, pad, dilation, 1);
        let cols = g.interior_cols();
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let inside =
                    (0..g.k_h).all(|ky| (0..g.k_w).all(|kx| g.source(oy, ox, ky, kx).is_some()));
                assert_eq!(
                    inside,
                    g.row_is_interior(oy) && cols.contains(&ox),
                    "{g:?} pixel ({oy}, {ox})"
                );
            }
        }
    }
}

#[test]
fn dense_battery() {
    for (inputs, outputs, rows) in [
        (1, 1, 1),
        (7, 5, 1),
        (64, 12, 1),
        (640, 128, 1),
        (128, 8, 3),
        (13, 33, 5),
        (256, 2, 1),
        (3, 200, 2),
        (100, 64, 9),
    ] {
        let g = geom([rows, 1, inputs], outputs, [1, 1], 1, [0; 4], 1, 1);
        for (case, act) in ACTS.iter().enumerate() {
            let seed = case as u32 + inputs as u32;
            let x = floats(rows * inputs, seed);
            let w = floats(outputs * inputs, seed + 1);
            let b = floats(outputs, seed + 2);
            let (want, mag) = ref_conv_f32(&g, &x, &w, &b);
            for path in F32Path::available() {
                let d = DenseF32::with_path(inputs, outputs, &w, &b, *act, path).expect("builds");
                let mut y = vec![f32::NAN; rows * outputs];
                d.run(&x, &mut y);
                for (i, (&got, (&r, &m))) in y.iter().zip(want.iter().zip(&mag)).enumerate() {
                    assert!(
                        close(got, r, inputs, m, *act),
                        "{} dense {inputs}->{outputs}×{rows} {act:?}: {i}: {got} vs {r}",
                        path.name()
                    );
                }
            }
        }
        for case in 0..5 {
            let (zp, w, x) = int8_case(&g, case);
            let w_scales = [0.01f32];
            let bias: Vec<i32> = (0..outputs as i32).map(|o| o * 37 - 500).collect();
            let input = U8Quant {
                scale: 0.05,
                zero_point: zp,
            };
            let centered = ref_conv_centered(&g, &x, zp, &w);
            let s_out = 0.05 * 0.01 * (inputs as f32).sqrt() * 30.0;
            let out_u8 = OutputQuant::u8_with(
                U8Quant {
                    scale: s_out,
                    zero_point: 100,
                },
                Activation::Relu,
            )
            .expect("clamp");
            let m = FixedMultiplier::new(0.05f64 * 0.01f32 as f64 / s_out as f64).expect("m");
            let want: Vec<u8> = centered
                .iter()
                .enumerate()
                .map(|(i, &c)| requant_one(c + bias[i % outputs] as i64, m, 100, 100, 255))
                .collect();
            let want_f32: Vec<f32> = centered
                .iter()
                .enumerate()
                .map(|(i, &c)| (c + bias[i % outputs] as i64) as f32 * (0.05f32 * 0.01))
                .collect();
            for path in I8Path::available() {
                let d =
                    DenseU8::with_path(inputs, outputs, &w, &w_scales, &bias, input, out_u8, path)
                        .expect("builds");
                let mut scratch = vec![0; d.scratch_len()];
                let mut y = vec![0xa5; rows * outputs];
                d.run_u8(&x, &mut y, &mut scratch);
                assert_eq!(
                    y,
                    want,
                    "{} qdense {inputs}->{outputs}×{rows} case {case}",
                    path.name()
                );
                let d = DenseU8::with_path(
                    inputs,
                    outputs,
                    &w,
                    &w_scales,
                    &bias,
                    input,
                    OutputQuant::F32(Activation::Identity),
                    path,
                )
                .expect("builds");
                let mut y = vec![f32::NAN; rows * outputs];
                d.run_f32(&x, &mut y, &mut scratch);
                assert_eq!(
                    y,
                    want_f32,
                    "{} qdense f32 {inputs}->{outputs} case {case}",
                    path.name()
                );
            }
        }
    }
}

#[test]
fn add_battery() {
    for n in [1usize, 7, 16, 33, 100, 1000] {
        for act in ACTS {
            let a = floats(n, n as u32);
            let b = floats(n, n as u32 + 1);
            let mut y = vec![f32::NAN; n];
            add_f32(&a, &b, act, &mut y);
            for i in 0..n {
                assert_eq!(
                    y[i].to_bits(),
                    act.apply(a[i] + b[i]).to_bits(),
                    "add {act:?}"
                );
            }
        }
        for (sa, sb, sy) in [
            (0.1f32, 0.1f32, 0.2f32),
            (0.02, 0.5, 0.3),
            (1.0, 0.001, 0.05),
            // An output multiplier above 1/2: the AVX2 kernel's 64-bit path.
            (1.0, 0.3, 2e-6),
        ] {
            let qa = U8Quant {
                scale: sa,
                zero_point: 10,
            };
            let qb = U8Quant {
                scale: sb,
                zero_point: 200,
            };
            let qy = U8Quant {
                scale: sy,
                zero_point: 128,
            };
            let add = AddU8::new(
                qa,
                qb,
                OutputQuant::u8_with(qy, Activation::Identity).expect("u8"),
            )
            .expect("builds");
            for a in 0..=255u8 {
                for b in 0..=255u8 {
                    assert_eq!(add.one(a, b), add.one_direct(a, b), "qadd {a} + {b}");
                }
            }
            // Every pair through this CPU's kernel, with and without a clamp.
            let (xa, xb): (Vec<u8>, Vec<u8>) =
                (0..65536u32).map(|i| ((i >> 8) as u8, i as u8)).unzip();
            let clip = Activation::Clip { min: 0.0, max: 6.0 };
            for act in [Activation::Identity, Activation::Relu, clip] {
                let add =
                    AddU8::new(qa, qb, OutputQuant::u8_with(qy, act).expect("u8")).expect("builds");
                let mut y = vec![0; xa.len()];
                add.run(&xa, &xb, &mut y);
                for i in 0..y.len() {
                    assert_eq!(y[i], add.one_direct(xa[i], xb[i]), "qadd {act:?} {i}");
                }
                // Each x86 kernel this CPU runs, whichever `run` picked.
                #[cfg(target_arch = "x86_64")]
                {
                    type AddKernel = fn(&AddU8, &[u8], &[u8], &mut [u8]);
                    let mut kernels: Vec<(&str, AddKernel)> = Vec::new();
                    if super::x86::has_avx2() {
                        kernels.push(("avx2", super::x86::qadd::add_u8_avx2));
                    }
                    if super::x86::has_avx512_vnni() {
                        kernels.push(("avx512", super::x86::qadd::add_u8_avx512));
                    }
                    for (name, kernel) in kernels {
                        let mut z = vec![0; xa.len()];
                        kernel(&add, &xa, &xb, &mut z);
                        assert!(y == z, "qadd {name} {act:?} differs from run");
                    }
                }
            }
            for (xa, xb) in [
                (bytes(n, 1), bytes(n, 2)),
                (vec![0; n], vec![255; n]),
                (vec![255; n], vec![0; n]),
                (vec![255; n], vec![255; n]),
            ] {
                let mut y = vec![0xa5; n];
                add.run(&xa, &xb, &mut y);
                for i in 0..n {
                    assert_eq!(y[i], add.one(xa[i], xb[i]));
                    let real =
                        sa as f64 * (xa[i] as f64 - 10.0) + sb as f64 * (xb[i] as f64 - 200.0);
                    let exact = 128.0 + real / sy as f64;
                    if exact > 0.0 && exact < 255.0 {
                        assert!(
                            (y[i] as f64 - exact).abs() <= 0.5 + 1e-3,
                            "qadd {} + {} -> {} vs {exact}",
                            xa[i],
                            xb[i],
                            y[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn pool_battery() {
    for (input, k, stride, pad) in [
        ([5usize, 7, 3], [2usize, 2], 2usize, [0usize; 4]),
        ([6, 6, 64], [3, 3], 2, [1, 1, 1, 1]),
        ([7, 5, 80], [3, 3], 1, [0, 1, 2, 1]),
        ([25, 5, 13], [25, 5], 1, [0; 4]),
        ([1, 1, 8], [1, 1], 1, [0; 4]),
    ] {
        let g = PoolGeometry::new(input, k, [stride; 2], pad).expect("valid");
        let x = floats(g.input_len(), 3);
        let mut y = vec![f32::NAN; g.output_len()];
        max_pool_f32(&g, &x, &mut y);
        let xq = bytes(g.input_len(), 4);
        let mut yq = vec![0xa5; g.output_len()];
        max_pool_u8(&g, &xq, &mut yq);
        let c = g.c;
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                for ch in 0..c {
                    let mut cells = Vec::new();
                    for ky in 0..g.k_h {
                        for kx in 0..g.k_w {
                            let iy = (oy * g.stride[0] + ky) as isize - g.pad[0] as isize;
                            let ix = (ox * g.stride[1] + kx) as isize - g.pad[1] as isize;
                            if iy >= 0 && ix >= 0 && iy < g.in_h as isize && ix < g.in_w as isize {
                                cells.push((iy as usize * g.in_w + ix as usize) * c + ch);
                            }
                        }
                    }
                    let at = (oy * g.out_w + ox) * c + ch;
                    let max = cells
                        .iter()
                        .map(|&i| x[i])
                        .fold(f32::NEG_INFINITY, f32::max);
                    assert_eq!(y[at], max);
                    assert_eq!(yq[at], cells.iter().map(|&i| xq[i]).max().expect("cells"));
                    for include_pad in [false, true] {
                        let n = if include_pad {
                            g.k_h * g.k_w
                        } else {
                            cells.len()
                        };
                        let mut avg = vec![0.0; g.output_len()];
                        avg_pool_f32(&g, include_pad, &x, &mut avg);
                        let want: f64 = cells.iter().map(|&i| x[i] as f64).sum::<f64>() / n as f64;
                        assert!((avg[at] as f64 - want).abs() <= 1e-6 * n as f64);
                        let (qi, qo) = (
                            U8Quant {
                                scale: 0.1,
                                zero_point: 20,
                            },
                            U8Quant {
                                scale: 0.07,
                                zero_point: 30,
                            },
                        );
                        let p = AvgPoolU8::new(
                            g,
                            include_pad,
                            qi,
                            OutputQuant::u8_with(qo, Activation::Identity).expect("u8"),
                        )
                        .expect("builds");
                        let mut avg_q = vec![0xa5; g.output_len()];
                        p.run(&xq, &mut avg_q);
                        let sum: i64 = cells.iter().map(|&i| xq[i] as i64 - 20).sum();
                        let m = FixedMultiplier::new(0.1f32 as f64 / (n as f64 * 0.07f32 as f64))
                            .expect("m");
                        let want = (30 + m.apply(sum)).clamp(0, 255) as u8;
                        assert_eq!(avg_q[at], want, "avg u8 {g:?} pad {include_pad}");
                        let exact = 30.0 + sum as f64 * 0.1 / (n as f64 * 0.07);
                        if exact > 0.0 && exact < 255.0 {
                            assert!((want as f64 - exact).abs() <= 0.5 + 1e-6);
                        }
                    }
                }
            }
        }
    }
    // Global average over NHWC.
    for (pixels, c) in [(125usize, 64usize), (9, 256), (1, 3), (49, 70)] {
        let x = floats(pixels * c, 9);
        let mut y = vec![0.0; c];
        global_avg_pool_f32(&x, c, &mut y);
        let xq = bytes(pixels * c, 10);
        let qi = U8Quant {
            scale: 0.05,
            zero_point: 128,
        };
        let qo = U8Quant {
            scale: 0.01,
            zero_point: 128,
        };
        let p = GlobalAvgPoolU8::new(
            pixels,
            c,
            qi,
            OutputQuant::u8_with(qo, Activation::Identity).expect("u8"),
        )
        .expect("builds");
        let mut yq = vec![0; c];
        p.run(&xq, &mut yq);
        let m = FixedMultiplier::new(0.05f32 as f64 / (pixels as f64 * 0.01f32 as f64)).expect("m");
        for ch in 0..c {
            let want: f64 = (0..pixels).map(|p| x[p * c + ch] as f64).sum::<f64>() / pixels as f64;
            assert!((y[ch] as f64 - want).abs() <= 1e-6 * pixels as f64);
            let sum: i64 = (0..pixels).map(|p| xq[p * c + ch] as i64 - 128).sum();
            assert_eq!(yq[ch], (128 + m.apply(sum)).clamp(0, 255) as u8);
        }
    }
}

#[test]
fn pad_and_concat() {
    let x: Vec<u16> = (0..2 * 3 * 2).collect();
    let mut y = vec![0u16; 5 * 4 * 2];
    pad_nhwc(&x, [2, 3, 2], [1, 0, 2, 1], 99, &mut y);
    for oy in 0..5 {
        for ox in 0..4 {
            for c in 0..2 {
                let inside = (1..3).contains(&oy) && ox < 3;
                let want = if inside {
                    x[((oy - 1) * 3 + ox) * 2 + c]
                } else {
                    99
                };
                assert_eq!(y[(oy * 4 + ox) * 2 + c], want);
            }
        }
    }
    let a = [1, 2, 3, 4];
    let b = [5, 6, 7, 8, 9, 10];
    let mut y = [0; 10];
    concat_channels(&[(&a[..], 2), (&b[..], 3)], &mut y);
    assert_eq!(y, [1, 2, 5, 6, 7, 3, 4, 8, 9, 10]);
}

#[test]
fn bad_parameters_are_errors() {
    assert!(matches!(
        ConvGeometry::new([4, 4, 3], 8, [5, 5], [1, 1], [0; 4], [1, 1], 1),
        Err(KernelError::Geometry { .. })
    ));
    assert!(ConvGeometry::new([4, 4, 3], 8, [3, 3], [1, 1], [1; 4], [1, 1], 2).is_err());
    let g = geom([4, 4, 4], 8, [3, 3], 1, [1; 4], 1, 1);
    let mut bad = g;
    bad.out_h = 5;
    assert!(bad.validate().is_err());
    assert!(matches!(
        ConvF32::new(g, &[0.0; 10], &[0.0; 8], Activation::Relu),
        Err(KernelError::Length {
            what: "weights",
            ..
        })
    ));
    let input = U8Quant {
        scale: 0.1,
        zero_point: 0,
    };
    let out = OutputQuant::F32(Activation::Identity);
    let w = vec![1i8; g.weight_len()];
    assert!(ConvU8::new(g, &w, &[0.0], &[0; 8], input, out).is_err());
    assert!(ConvU8::new(g, &w, &[f32::NAN; 8], &[0; 8], input, out).is_err());
    assert!(ConvU8::new(g, &w, &[0.1; 3], &[0; 8], input, out).is_err());
    let huge = OutputQuant::U8 {
        quant: U8Quant {
            scale: 1e-30,
            zero_point: 0,
        },
        min: 0,
        max: 255,
    };
    assert!(matches!(
        ConvU8::new(g, &w, &[0.1; 8], &[0; 8], input, huge),
        Err(KernelError::Quant { .. })
    ));
    assert!(OutputQuant::u8_with(input, Activation::Sigmoid).is_err());
    assert!(DenseF32::new(0, 3, &[], &[0.0; 3], Activation::Identity).is_err());
    assert!(PoolGeometry::new([4, 4, 1], [2, 2], [2, 2], [2, 0, 0, 0]).is_err());
    assert!(
        GlobalAvgPoolU8::new(
            0,
            3,
            input,
            OutputQuant::u8_with(input, Activation::Identity).expect("u8")
        )
        .is_err()
    );
}

/// On aarch64 the NEON families are among those every test above runs, and the kernels
/// keep them rather than falling back to the portable one (which would make those tests
/// compare the portable kernel with itself).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_families_are_the_ones_tested() {
    let i8_paths = I8Path::available();
    eprintln!(
        "families here: f32 {:?}, int8 {:?}",
        F32Path::available(),
        i8_paths
    );
    assert!(F32Path::available().contains(&F32Path::Neon));
    assert!(i8_paths.contains(&I8Path::Neon));
    assert_eq!(
        i8_paths.contains(&I8Path::NeonDot),
        std::arch::is_aarch64_feature_detected!("dotprod")
    );
    let input = U8Quant {
        scale: 0.02,
        zero_point: 3,
    };
    let output = OutputQuant::u8_with(input, Activation::Relu).expect("u8 output");
    for g in [
        geom([6, 6, 8], 16, [3, 3], 1, [1; 4], 1, 1),
        geom([6, 6, 32], 32, [3, 3], 2, [1; 4], 1, 32),
        geom([6, 6, 8], 24, [1, 1], 1, [0; 4], 1, 1),
    ] {
        let w = vec![1i8; g.weight_len()];
        let scales = vec![0.01; g.out_c];
        let bias = vec![0; g.out_c];
        for &path in &i8_paths[1..] {
            let conv =
                ConvU8::with_path(g, &w, &scales, &bias, input, output, path).expect("builds");
            assert_eq!(conv.path(), path, "{g:?}");
        }
        let wf = vec![0.5f32; g.weight_len()];
        let bf = vec![0.0f32; g.out_c];
        let conv =
            ConvF32::with_path(g, &wf, &bf, Activation::Relu, F32Path::Neon).expect("builds");
        assert_eq!(conv.path(), F32Path::Neon, "{g:?}");
    }
    let dense = DenseU8::with_path(
        16,
        10,
        &[1; 160],
        &[0.01; 10],
        &[0; 10],
        input,
        output,
        I8Path::Neon,
    )
    .expect("builds");
    assert_eq!(dense.path(), I8Path::Neon);
}
