//! Request paths as policies and routing see them: RFC 3986 normalisation
//! as Envoy's `normalize_path` does it.

/// RFC 3986 path normalisation as Envoy's `normalize_path` (Istio's default
/// `BASE`): percent-decode unreserved characters, remove `.` and `..`
/// segments; the query is dropped. Policies and routing see this form.
pub fn normalize_path(path_and_query: &str) -> String {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    // Envoy's canonicaliser (Chromium's): a backslash is a slash.
    let decoded = decode_unreserved(path).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(decoded.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || (trailing && !s.ends_with('/')) {
        s.push('/');
    }
    s
}

fn decode_unreserved(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    // Copied exactly: the server may care about the case.
                    out.push_str(&p[i..i + 3]);
                }
                i += 3;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_normalisation() {
        for (raw, want) in [
            ("/v1/chat/completions?x=1", "/v1/chat/completions"),
            ("/v1/./chat/../models", "/v1/models"),
            ("/%76%31/models", "/v1/models"),
            // Escapes that are not decoded are copied exactly, case and all.
            ("/a%2fb", "/a%2fb"),
            ("/a/%2F%2f/c", "/a/%2F%2f/c"),
            ("/%5c%25", "/%5c%25"),
            ("/a/b/%2E%2E/c", "/a/c"),
            // A backslash is a slash (Envoy's canonicaliser).
            ("/x\\..\\admin", "/admin"),
            ("/a\\b", "/a/b"),
            ("/../..", "/"),
            ("/a/b/", "/a/b/"),
            ("/a/..", "/"),
            ("", "/"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
    }
}
