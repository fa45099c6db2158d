//! One access log line: the fields of a request as logged, and the JSON
//! text of it written by hand, byte for byte what serde_json would write,
//! without its formatting machinery (RFC 3339 times, milliseconds with
//! microseconds, escaped strings, IP addresses without allocating).

use std::{
    io::Write as _,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use super::Usage;

/// One request, as logged. Never holds a credential.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: Rfc3339,
    /// `x-request-id` as sent to the provider.
    pub request_id: &'a str,
    pub client: IpAddr,
    pub peer: IpAddr,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub route: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub stream: bool,
    pub status: u16,
    pub upstream_status: Option<u16>,
    #[serde(serialize_with = "ser_millis")]
    pub duration_ms: Duration,
    #[serde(serialize_with = "ser_opt_millis")]
    pub ttfb_ms: Option<Duration>,
    #[serde(serialize_with = "ser_opt_millis")]
    pub ttft_ms: Option<Duration>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub bytes_sent: u64,
    pub error: Option<&'a str>,
    /// The AuthorizationPolicy that denied the request (`namespace/name`).
    pub policy: Option<String>,
}

fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(millis(*d))
}

fn ser_opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(millis(*d)),
        None => s.serialize_none(),
    }
}

impl Entry<'_> {
    pub fn set_usage(&mut self, u: Option<Usage>) {
        if let Some(u) = u {
            self.prompt_tokens = u.prompt_tokens;
            self.completion_tokens = u.completion_tokens;
            self.total_tokens = u.total_tokens;
        }
    }

    /// The JSON line (without the newline), byte for byte what serde_json
    /// writes for this struct, without its formatting machinery.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        self.time.write_to(out);
        out.extend_from_slice(b"\",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"client\":\"");
        write_ip(out, self.client);
        out.extend_from_slice(b"\",\"peer\":\"");
        write_ip(out, self.peer);
        out.extend_from_slice(b"\",\"host\":");
        json_str(out, self.host);
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path);
        out.extend_from_slice(b",\"protocol\":");
        json_str(out, self.protocol);
        out.extend_from_slice(b",\"route\":");
        json_opt_str(out, self.route);
        out.extend_from_slice(b",\"rule\":");
        json_opt_str(out, self.rule);
        out.extend_from_slice(b",\"provider\":");
        json_opt_str(out, self.provider);
        out.extend_from_slice(b",\"model\":");
        json_opt_str(out, self.model);
        out.extend_from_slice(if self.stream {
            b",\"stream\":true,\"status\":"
        } else {
            b",\"stream\":false,\"status\":"
        });
        write_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"upstream_status\":");
        json_opt_u64(out, self.upstream_status.map(u64::from));
        out.extend_from_slice(b",\"duration_ms\":");
        write_millis(out, self.duration_ms);
        out.extend_from_slice(b",\"ttfb_ms\":");
        json_opt_millis(out, self.ttfb_ms);
        out.extend_from_slice(b",\"ttft_ms\":");
        json_opt_millis(out, self.ttft_ms);
        out.extend_from_slice(b",\"prompt_tokens\":");
        json_opt_u64(out, self.prompt_tokens);
        out.extend_from_slice(b",\"completion_tokens\":");
        json_opt_u64(out, self.completion_tokens);
        out.extend_from_slice(b",\"total_tokens\":");
        json_opt_u64(out, self.total_tokens);
        out.extend_from_slice(b",\"bytes_sent\":");
        write_u64(out, self.bytes_sent);
        out.extend_from_slice(b",\"error\":");
        json_opt_str(out, self.error);
        out.extend_from_slice(b",\"policy\":");
        json_opt_str(out, self.policy.as_deref());
        out.push(b'}');
    }
}

/// Milliseconds with microsecond precision, as logged.
pub fn millis(d: Duration) -> f64 {
    micros(d) as f64 / 1e3
}

/// `d` in whole microseconds, rounded half up.
fn micros(d: Duration) -> u64 {
    let n = d.as_nanos().saturating_add(500) / 1000;
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What serde_json writes for `micros / 1000` as an f64: the shortest
/// decimal that reads back as the same number (`12.0`, `0.5`, `1.234`).
fn write_millis(out: &mut Vec<u8>, d: Duration) {
    let us = micros(d);
    if us >= 1 << 50 {
        // Far beyond any request (35 years); let the float formatter decide.
        let _ = serde_json::to_writer(&mut *out, &millis(d));
        return;
    }
    write_u64(out, us / 1000);
    out.push(b'.');
    let frac = us % 1000;
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = if !frac.is_multiple_of(10) {
        3
    } else if !frac.is_multiple_of(100) {
        2
    } else {
        1
    };
    out.extend_from_slice(&digits[..len]);
}

fn json_opt_millis(out: &mut Vec<u8>, d: Option<Duration>) {
    match d {
        Some(d) => write_millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn json_opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => write_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// An address as `Display` prints it.
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(o));
            }
        }
        // Only hex digits, colons and dots: nothing to escape.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A JSON string, escaped as serde_json escapes (`\"`, `\\`, `\b`, `\f`,
/// `\n`, `\r`, `\t`, other control characters as `\u00XX`).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any byte is a control character, `"` or `\\`; eight at a time.
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Nonzero iff some byte of `w` is below `n` (n <= 128).
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        if below(w, 0x20) | below(w ^ (ONES * 0x22), 1) | below(w ^ (ONES * 0x5c), 1) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A wall-clock time printed as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub SystemTime);

/// A UTC civil time: year, month, day, seconds of the day, milliseconds.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    secs_of_day: u64,
    ms: u32,
}

impl Rfc3339 {
    fn civil(&self) -> Civil {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, secs_of_day) = ((secs / 86_400) as i64, secs % 86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            secs_of_day,
            ms: d.subsec_millis(),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn write_to(&self, out: &mut Vec<u8>) {
        let c = self.civil();
        if !(0..=9999).contains(&c.year) {
            let _ = write!(out, "{self}");
            return;
        }
        let two = |out: &mut Vec<u8>, n: u64| {
            out.push(b'0' + (n / 10) as u8);
            out.push(b'0' + (n % 10) as u8);
        };
        let (year, rem) = (c.year as u64, c.secs_of_day);
        two(out, year / 100);
        two(out, year % 100);
        out.push(b'-');
        two(out, c.month as u64);
        out.push(b'-');
        two(out, c.day as u64);
        out.push(b'T');
        two(out, rem / 3600);
        out.push(b':');
        two(out, rem / 60 % 60);
        out.push(b':');
        two(out, rem % 60);
        out.push(b'.');
        let ms = u64::from(c.ms);
        out.push(b'0' + (ms / 100) as u8);
        two(out, ms % 100);
        out.push(b'Z');
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Civil {
            year,
            month,
            day,
            secs_of_day: rem,
            ms,
        } = self.civil();
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
        )
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_720_682_745_123);
        assert_eq!(Rfc3339(t).to_string(), "2024-07-11T07:25:45.123Z");
        assert_eq!(Rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(Rfc3339(leap).to_string(), "2000-02-29T00:00:00.000Z");
        for t in [
            t,
            UNIX_EPOCH,
            leap,
            UNIX_EPOCH + Duration::from_millis(4_102_444_799_999),
        ] {
            let mut out = Vec::new();
            Rfc3339(t).write_to(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), Rfc3339(t).to_string());
        }
    }

    pub(crate) fn entry<'a>(strs: &'a [&'a str; 8], n: u64, ip: IpAddr) -> Entry<'a> {
        let d = |us: u64| Duration::from_nanos(us * 1000 + n % 1000);
        Entry {
            time: Rfc3339(UNIX_EPOCH + Duration::from_millis(1_720_682_745_000 + n)),
            request_id: if n.is_multiple_of(2) {
                strs[7]
            } else {
                "0b6c3d0e-1f2a-4b3c-8d4e-5f60718293a4"
            },
            client: ip,
            peer: IpAddr::from([127, 0, 0, 1]),
            host: strs[0],
            method: strs[1],
            path: strs[2],
            protocol: strs[3],
            route: Some(strs[4]).filter(|_| n.is_multiple_of(2)),
            rule: Some(strs[5]),
            provider: Some(strs[6]).filter(|_| n.is_multiple_of(3)),
            model: None,
            stream: n % 2 == 1,
            status: (100 + n % 500) as u16,
            upstream_status: Some(200).filter(|_| !n.is_multiple_of(5)),
            duration_ms: d(n * 7919 % 10_000_000),
            ttfb_ms: Some(d(n % 1000)).filter(|_| !n.is_multiple_of(4)),
            ttft_ms: Some(d(n * 13 % 100_000)),
            prompt_tokens: Some(n),
            completion_tokens: None,
            total_tokens: Some(n * 1_000_003),
            bytes_sent: n * 31,
            error: Some(strs[7]),
            policy: n
                .is_multiple_of(3)
                .then(|| strs[n as usize % strs.len()].to_string()),
        }
    }

    /// The hand-written line is exactly what serde_json writes.
    #[test]
    fn json_line_is_serde_json() {
        let strs = [
            "test.com",
            "POST",
            "/v1/chat/\"completions\"\\",
            "HTTP/1.1",
            "default/route",
            "rule-0",
            "ns/provider",
            "tab\there, newline\n, nul \u{0}, \u{1f} bell \u{7} \u{8}\u{c}\r é ✓ \u{7f}",
        ];
        let ips = [
            IpAddr::from([10, 0, 0, 255]),
            IpAddr::from([0, 0, 0, 0]),
            "2001:db8::1".parse().unwrap(),
            "::ffff:1.2.3.4".parse().unwrap(),
        ];
        for n in 0..2000u64 {
            let e = entry(&strs, n, ips[(n % 4) as usize]);
            let mut ours = Vec::new();
            e.write_json(&mut ours);
            let theirs = serde_json::to_vec(&e).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap()
            );
        }
        for us in [0u64, 1, 10, 100, 999, 1000, 1001, 1010, 1100, 123_456_789] {
            let mut ours = Vec::new();
            write_millis(&mut ours, Duration::from_micros(us));
            let theirs = serde_json::to_vec(&millis(Duration::from_micros(us))).unwrap();
            assert_eq!(ours, theirs, "{us} µs");
        }
    }

    #[test]
    fn escape_check_finds_every_byte_that_needs_it() {
        for len in 0..20 {
            for pos in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    let expect = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(needs_escape(&v), expect, "len {len} pos {pos} byte {b}");
                }
            }
        }
    }
}
