//! `x-request-id`: every request gets one, sent to the provider and written
//! to the access log, so a line of ours and one of the provider's can be
//! matched. As Envoy at the edge: a client's own id is kept only when it
//! comes through a trusted proxy (`--num-trusted-proxies`), else replaced.

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};
use ring::rand::{SecureRandom, SystemRandom};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id kept.
const MAX_LEN: usize = 128;

/// The id for a request: the client's when a trusted proxy set it (visible
/// ASCII, at most 128 bytes), otherwise a new UUID v4.
pub fn choose(headers: &HeaderMap, trusted_proxies: usize) -> HeaderValue {
    if trusted_proxies > 0
        && let Some(v) = headers.get(X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_LEN
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    generate()
}

thread_local! {
    /// wyrand state, seeded once per thread from the OS.
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        // No OS randomness: ids stay unique per process, only guessable.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

/// wyrand: 64 random bits per call (not for secrets: ids only).
fn next_u64() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A random UUID v4 in its 36-character text form.
pub fn generate() -> HeaderValue {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&next_u64().to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(b >> 4)];
        out[o + 1] = HEX[usize::from(b & 0x0f)];
        o += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuid_v4_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let v = generate();
            let s = v.to_str().unwrap();
            assert_eq!(s.len(), 36, "{s}");
            let parts: Vec<&str> = s.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{s}"
            );
            assert!(s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
            assert!(parts[2].starts_with('4'), "version 4: {s}");
            assert!(
                matches!(&parts[3][..1], "8" | "9" | "a" | "b"),
                "variant: {s}"
            );
            assert!(seen.insert(s.to_string()), "repeated {s}");
        }
    }

    #[test]
    fn a_clients_id_is_kept_only_behind_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(choose(&h, 1), "abc-123");
        assert_ne!(choose(&h, 0), "abc-123");
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1)] {
            h.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            assert_eq!(choose(&h, 1).len(), 36, "{bad:?} replaced");
        }
        assert_eq!(choose(&HeaderMap::new(), 1).len(), 36);
    }
}
