//! Small pieces every area needs: lower-case hex, the Unix clock and (feature `host`) the
//! mapping of SQLite errors to an area's error type.

/// The number of elements of a shape, saturating at `u128::MAX`: a hostile file's
/// dimensions can overflow even a `u128` product (three of 2^64 each), and the callers only
/// compare the count against a limit.
pub fn element_count(dims: impl IntoIterator<Item = u64>) -> u128 {
    dims.into_iter()
        .fold(1u128, |n, d| n.saturating_mul(d as u128))
}

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

fn since_epoch() -> Option<std::time::Duration> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_s() -> i64 {
    since_epoch().map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it, `u64::MAX` past 584
/// million years).
pub fn now_unix_ms() -> u64 {
    since_epoch().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The low 64 bits of the nanoseconds since the Unix epoch (0 if the clock is before it):
/// a seed when the OS has no randomness, not a time.
pub(crate) fn now_unix_ns() -> u64 {
    since_epoch().map_or(0, |d| d.as_nanos() as u64)
}

/// An error type with a variant for a failure of the SQLite database at a path.
#[cfg(feature = "host")]
pub(crate) trait SqliteError {
    /// The error for `error` from the database file `path`.
    fn sqlite(path: std::path::PathBuf, error: rusqlite::Error) -> Self;
}

/// Maps SQLite errors of the database at `path` to `E`, for `map_err`.
///
/// It borrows only `path`, so a method can map the errors of a transaction that holds its
/// connection mutably: `let sql = sqlite_error::<E>(&self.path);`.
#[cfg(feature = "host")]
pub(crate) fn sqlite_error<E: SqliteError>(
    path: &std::path::Path,
) -> impl Fn(rusqlite::Error) -> E + Copy + '_ {
    move |error| E::sqlite(path.to_path_buf(), error)
}

/// Runs `body` in one transaction on `conn` (the database file `path`) and commits it when
/// `body` returns `Ok`; on `Err` the transaction rolls back as it drops. The transaction is
/// deferred: it takes the write lock at its first write ([`write_transaction_with`] chooses).
///
/// # Errors
/// `body`'s error, or the SQLite error of beginning or committing mapped to `E`.
#[cfg(feature = "host")]
pub(crate) fn write_transaction<T, E: SqliteError>(
    conn: &mut rusqlite::Connection,
    path: &std::path::Path,
    body: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
) -> Result<T, E> {
    write_transaction_with(conn, path, rusqlite::TransactionBehavior::Deferred, body)
}

/// [`write_transaction`] with the `behavior` that says when the transaction takes the write
/// lock (`Immediate`: before it reads what it will write).
///
/// # Errors
/// As [`write_transaction`].
#[cfg(feature = "host")]
pub(crate) fn write_transaction_with<T, E: SqliteError>(
    conn: &mut rusqlite::Connection,
    path: &std::path::Path,
    behavior: rusqlite::TransactionBehavior,
    body: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
) -> Result<T, E> {
    let sql = sqlite_error::<E>(path);
    let tx = conn.transaction_with_behavior(behavior).map_err(sql)?;
    let out = body(&tx)?;
    tx.commit().map_err(sql)?;
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

    #[test]
    fn clock_is_after_2020() {
        assert!(now_unix_s() > 1_577_836_800);
        assert!(now_unix_ms() / 1000 >= 1_577_836_800);
        assert_ne!(now_unix_ns(), 0);
    }
}
