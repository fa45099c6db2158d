//! Durations and sizes as users write them. One grammar for durations,
//! Go's as Istio and Kubernetes use it (`5s`, `1.5s`, `100ms`, `1m30s`,
//! `2h`); command-line flags also take a bare number as seconds.

use std::time::Duration;

/// A duration as Istio and Kubernetes write them: `5s`, `1.5s`, `100ms`,
/// `1m30s`, `2h` (units `h`, `m`, `s`, `ms`, `us`, `ns`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 5s, 100ms, 1m30s)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let secs = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        let part = value * secs;
        if !part.is_finite() || part > 1e12 {
            return Err(bad());
        }
        total = total
            .checked_add(Duration::from_secs_f64(part))
            .ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

/// A duration flag: [`parse_duration`]'s grammar, or a bare number of seconds.
pub fn parse_flag_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_duration(&format!("{t}s"));
    }
    parse_duration(s)
}

/// `10MiB`, `512KiB`, `1MB`, `1000`; bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 10MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        u => return Err(format!("{s:?}: unknown unit {u:?} (KiB, MiB, GiB, KB, MB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "5", "s", "5x", "-1s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_and_sizes() {
        assert_eq!(parse_flag_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_flag_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_flag_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_flag_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_flag_duration("5x").is_err());
        assert!(parse_flag_duration("s").is_err());
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1kb"), Ok(1000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("-1").is_err());
    }
}
