//! Small pieces every area needs: lower-case hex.

/// Lower-case hex of `bytes`, two digits a byte.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses exactly `N` bytes of hex (either case), ignoring surrounding whitespace.
///
/// # Errors
/// A message naming what is wrong (length, a non-hex character).
pub fn from_hex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let text = text.trim();
    if text.len() != 2 * N {
        return Err(format!(
            "expected {} hex digits, found {}",
            2 * N,
            text.len()
        ));
    }
    let mut out = [0u8; N];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| format!("{s:?} is not a hex byte"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let k: [u8; 4] = from_hex("00ff10a0").unwrap();
        assert_eq!(to_hex(&k), "00ff10a0");
        assert_eq!(from_hex::<2>(" AB0c\n"), Ok([0xab, 0x0c]));
        assert_eq!(to_hex(&[]), "");
        assert_eq!(
            from_hex::<4>("00ff10"),
            Err("expected 8 hex digits, found 6".into())
        );
        assert_eq!(
            from_hex::<2>("zz00"),
            Err("\"zz\" is not a hex byte".into())
        );
        assert_eq!(from_hex::<2>("0é0"), Err("not hex".into()));
    }
}
