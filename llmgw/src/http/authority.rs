//! Authorities as clients send them (`Host`, `:authority`, SNI): the host
//! without port or trailing dot, as routing and policies compare it.

/// Lower-cases `authority` and strips its port (`[v6]:port` too) and a
/// trailing dot.
pub fn normalize_host(authority: &str) -> String {
    host_of(authority).to_ascii_lowercase()
}

/// `authority` with the trailing dot of its host removed, port kept
/// (`a.test.:80` → `a.test:80`).
pub fn without_trailing_dot(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = host_of(authority);
    let a = authority.trim();
    match a.strip_prefix(host) {
        Some(rest) if rest.starts_with('.') => {
            let port = rest.trim_start_matches('.');
            if port.is_empty() || port.starts_with(':') {
                format!("{host}{port}").into()
            } else {
                a.into()
            }
        }
        _ => a.into(),
    }
}

/// `authority` without its port (`[v6]:port` too) and trailing dot, case
/// kept: the host routing sees.
pub fn host_of(authority: &str) -> &str {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => &a[..end + 2],
            None => a,
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => a,
        }
    };
    host.trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_dots_go_ports_stay() {
        assert_eq!(without_trailing_dot("a.test.:80"), "a.test:80");
        assert_eq!(without_trailing_dot("a.test.."), "a.test");
        assert_eq!(without_trailing_dot("a.test:80"), "a.test:80");
        assert_eq!(without_trailing_dot("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("Test.COM:80"), "test.com");
        assert_eq!(normalize_host("test.com."), "test.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host("a.b"), "a.b");
    }
}
