//! The handshake's proof: HMAC-SHA256, keyed with the device's secret, over a fixed label,
//! the device id and both nonces. The host's fresh nonce makes a recorded `Auth` useless on
//! any later connection.

use super::NONCE_LEN;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Length of a device key.
pub const KEY_LEN: usize = 32;

const LABEL: &[u8] = b"perch-sync-auth-v1";

fn mac(
    key: &[u8; KEY_LEN],
    device: &str,
    device_nonce: &[u8; NONCE_LEN],
    host_nonce: &[u8; NONCE_LEN],
) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; a 32-byte key cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(LABEL);
    m.update(&(device.len() as u64).to_le_bytes());
    m.update(device.as_bytes());
    m.update(device_nonce);
    m.update(host_nonce);
    m
}

/// The MAC a device sends in `Auth`.
pub fn sign(
    key: &[u8; KEY_LEN],
    device: &str,
    device_nonce: &[u8; NONCE_LEN],
    host_nonce: &[u8; NONCE_LEN],
) -> [u8; 32] {
    mac(key, device, device_nonce, host_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `tag` is the right MAC (compared in constant time).
pub fn verify(
    key: &[u8; KEY_LEN],
    device: &str,
    device_nonce: &[u8; NONCE_LEN],
    host_nonce: &[u8; NONCE_LEN],
    tag: &[u8; 32],
) -> bool {
    mac(key, device, device_nonce, host_nonce)
        .verify_slice(tag)
        .is_ok()
}

/// Fresh random bytes from the operating system.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn random<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)?;
    Ok(out)
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    crate::artifact::hex(bytes)
}

/// Parses exactly `N` bytes of hex.
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
    fn mac_binds_key_device_and_both_nonces() {
        let key = [7u8; 32];
        let (dn, hn) = ([1u8; 16], [2u8; 16]);
        let tag = sign(&key, "pi-1", &dn, &hn);
        assert!(verify(&key, "pi-1", &dn, &hn, &tag));
        assert!(!verify(&[8u8; 32], "pi-1", &dn, &hn, &tag));
        assert!(!verify(&key, "pi-2", &dn, &hn, &tag));
        assert!(
            !verify(&key, "pi-1", &dn, &[3u8; 16], &tag),
            "a replay against a new challenge"
        );
        assert!(!verify(&key, "pi-1", &[3u8; 16], &hn, &tag));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let k: [u8; 4] = from_hex("00ff10a0").unwrap();
        assert_eq!(to_hex(&k), "00ff10a0");
        assert!(from_hex::<4>("00ff10").is_err());
        assert!(from_hex::<2>("zz00").is_err());
    }
}
