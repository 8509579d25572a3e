//! NumPy's `.npy` format.

use super::{InputArray, InputError};

/// Parses NumPy's `.npy` format (versions 1-3): little-endian `f4`, `f8`, `i1`-`i8`,
/// `u1`-`u8`, C order.
pub(super) fn parse_npy(bytes: &[u8], file: &str) -> Result<InputArray, InputError> {
    let bad = |reason: String| InputError::Malformed {
        file: file.into(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (missing \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (header_len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad(format!(".npy version {major} is not supported"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or_else(|| bad("header is truncated".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        Some(rest.trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad("header has no 'descr'".into()))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad(
            "Fortran-order arrays are not supported; save with C order".into(),
        ));
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("header has no 'shape'".into()))?;
    let mut shape = Vec::new();
    for part in shape_text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        shape.push(
            part.parse::<usize>()
                .map_err(|_| bad(format!("bad shape entry {part:?}")))?,
        );
    }
    let body = &bytes[start + header_len..];
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape overflows".into()))?;
    let (size, conv): (usize, fn(&[u8]) -> f64) = match descr {
        "<f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        "<f8" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }),
        "|i1" => (1, |b| b[0] as i8 as f64),
        "|u1" => (1, |b| b[0] as f64),
        "<i2" => (2, |b| i16::from_le_bytes([b[0], b[1]]) as f64),
        "<u2" => (2, |b| u16::from_le_bytes([b[0], b[1]]) as f64),
        "<i4" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        "<u4" => (4, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64),
        "<i8" => (8, |b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
        }),
        "<u8" => (8, |b| {
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
        }),
        other => {
            return Err(bad(format!(
                "element type {other:?} is not supported (use float32)"
            )));
        }
    };
    let needed = count
        .checked_mul(size)
        .ok_or_else(|| bad("shape overflows".into()))?;
    if body.len() < needed {
        return Err(bad(format!(
            "data is truncated: shape {shape:?} needs {needed} bytes, file has {}",
            body.len()
        )));
    }
    if count == 0 {
        return Err(InputError::Empty { file: file.into() });
    }
    let width = if shape.len() > 1 {
        shape[1..].iter().product::<usize>()
    } else {
        count
    };
    let mut data = Vec::with_capacity(count);
    for (i, chunk) in body[..needed].chunks_exact(size).enumerate() {
        let v = conv(chunk) as f32;
        if !v.is_finite() {
            return Err(InputError::NonFinite {
                file: file.into(),
                row: i / width + 1,
                column: i % width + 1,
                value: conv(chunk).to_string(),
            });
        }
        data.push(v);
    }
    if shape.len() <= 1 {
        shape = vec![1, count];
    }
    Ok(InputArray::new(shape, data))
}
