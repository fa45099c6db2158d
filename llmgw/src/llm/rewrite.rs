//! The provider rewrite of an OpenAI-style JSON request body: `model` and
//! `stream` set by the provider win, `stream_options.include_usage` is added
//! to streams. The edits are spliced into the original bytes at the members
//! `super::json` found; the body is never re-serialised.

pub use super::json::JsonError;
use std::ops::Range;

use super::json::{object_members, scan_object};

/// What the provider imposes on a request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyRewrite<'a> {
    pub model: Option<&'a str>,
    pub stream: Option<bool>,
}

/// The rewritten body and what the request turned out to ask for.
#[derive(Debug)]
pub struct Rewritten {
    pub body: Vec<u8>,
    /// The model the provider will see (the provider's, else the client's).
    pub model: Option<String>,
    /// Whether the response will be a stream.
    pub stream: bool,
    /// What the client said of streaming (`"stream": true|false`, or
    /// nothing) ...
    pub client_stream: Option<bool>,
    /// ... with a usage chunk (`stream_options.include_usage: true`).
    pub client_usage: bool,
}

/// Applies `rw` to the JSON object in `body`. Every occurrence of a
/// duplicated key gets the new value, so any reading of duplicates agrees.
pub fn rewrite(body: &[u8], rw: &BodyRewrite<'_>) -> Result<Rewritten, JsonError> {
    let members = scan_object(body)?;
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    let mut inserts: Vec<Vec<u8>> = Vec::new();

    let last = |name: &str| members.iter().rev().find(|m| m.key_is(body, name));

    let client_model = last("model").and_then(|m| {
        let v = &body[m.value.clone()];
        serde_json::from_slice::<String>(v).ok()
    });
    let client_said = last("stream").and_then(|m| match &body[m.value.clone()] {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    });
    let client_stream = client_said == Some(true);
    let client_usage = last("stream_options").is_some_and(|m| {
        serde_json::from_slice::<serde_json::Value>(&body[m.value.clone()])
            .is_ok_and(|v| v.get("include_usage") == Some(&serde_json::Value::Bool(true)))
    });

    let mut set = |name: &str, value: Vec<u8>, edits: &mut Vec<(Range<usize>, Vec<u8>)>| {
        let mut found = false;
        for m in members.iter().filter(|m| m.key_is(body, name)) {
            edits.push((m.value.clone(), value.clone()));
            found = true;
        }
        if !found {
            let mut member = Vec::with_capacity(name.len() + value.len() + 3);
            member.push(b'"');
            member.extend_from_slice(name.as_bytes());
            member.extend_from_slice(b"\":");
            member.extend_from_slice(&value);
            inserts.push(member);
        }
    };

    if let Some(model) = rw.model {
        // A &str always serialises.
        let v = serde_json::to_vec(model).unwrap_or_default();
        set("model", v, &mut edits);
    }
    if let Some(stream) = rw.stream {
        let v = if stream {
            b"true".to_vec()
        } else {
            b"false".to_vec()
        };
        set("stream", v, &mut edits);
    }
    let stream = rw.stream.unwrap_or(client_stream);
    if stream {
        let mut seen = false;
        for m in members.iter().filter(|m| m.key_is(body, "stream_options")) {
            seen = true;
            match body[m.value.start] {
                b'{' => {
                    let (inner, _close) = object_members(body, m.value.start)?;
                    if !inner.iter().any(|x| x.key_is(body, "include_usage")) {
                        let at = m.value.start + 1;
                        let mut v = b"\"include_usage\":true".to_vec();
                        if !inner.is_empty() {
                            v.push(b',');
                        }
                        edits.push((at..at, v));
                    }
                }
                b'n' => edits.push((m.value.clone(), b"{\"include_usage\":true}".to_vec())),
                // A string or number: the client's mistake; the provider will say so.
                _ => {}
            }
        }
        if !seen {
            inserts.push(b"\"stream_options\":{\"include_usage\":true}".to_vec());
        }
    } else if rw.stream == Some(false) {
        // The provider turned streaming off: options for a stream the client
        // asked for would make OpenAI-compatible APIs refuse the request.
        for m in members.iter().filter(|m| m.key_is(body, "stream_options")) {
            edits.push((m.value.clone(), b"null".to_vec()));
        }
    }

    if !inserts.is_empty() {
        // Right after the top-level `{` (the first non-blank byte).
        let open = body
            .iter()
            .position(|&c| c == b'{')
            .ok_or(JsonError::NotObject)?;
        let mut v = inserts.join(&b","[..]);
        if !members.is_empty() {
            v.push(b',');
        }
        edits.push((open + 1..open + 1, v));
    }
    edits.sort_by_key(|(r, _)| (r.start, r.end));

    let grow: usize = edits.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grow);
    let mut at = 0;
    for (range, v) in &edits {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(v);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    Ok(Rewritten {
        body: out,
        model: rw.model.map(str::to_string).or(client_model),
        stream,
        client_stream: client_said,
        client_usage,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;

    fn apply(body: &str, model: Option<&str>, stream: Option<bool>) -> Value {
        let out = rewrite(body.as_bytes(), &BodyRewrite { model, stream }).expect("rewrites");
        serde_json::from_slice(&out.body)
            .unwrap_or_else(|e| panic!("not JSON: {e}: {}", String::from_utf8_lossy(&out.body)))
    }

    #[test]
    fn seed_request_gets_model_and_stream() {
        let v = apply(
            r#"{
    "messages": [
      {"role": "user", "content": "Please introduce yourself"}
    ]
  }"#,
            Some("qwen1.5-72b-chat"),
            Some(false),
        );
        assert_eq!(
            v,
            json!({"model": "qwen1.5-72b-chat", "stream": false,
                   "messages": [{"role": "user", "content": "Please introduce yourself"}]})
        );
    }

    #[test]
    fn provider_wins_and_untouched_bytes_stay() {
        let body = r#"{"model" : "gpt-4o",  "x":"a\"b\\", "stream":true}"#;
        let out = rewrite(
            body.as_bytes(),
            &BodyRewrite {
                model: Some("m"),
                stream: Some(false),
            },
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out.body).unwrap(),
            r#"{"model" : "m",  "x":"a\"b\\", "stream":false}"#
        );
        assert!(!out.stream);
        assert_eq!(out.model.as_deref(), Some("m"));
    }

    #[test]
    fn streams_get_include_usage_unless_the_client_set_it() {
        let v = apply(r#"{"stream":true}"#, None, None);
        assert_eq!(
            v,
            json!({"stream": true, "stream_options": {"include_usage": true}})
        );
        let v = apply(r#"{"stream_options":{"x":1}}"#, None, Some(true));
        assert_eq!(
            v,
            json!({"stream": true, "stream_options": {"include_usage": true, "x": 1}})
        );
        let v = apply(
            r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            None,
            None,
        );
        assert_eq!(
            v,
            json!({"stream": true, "stream_options": {"include_usage": false}})
        );
        let v = apply(r#"{"stream":true,"stream_options":null}"#, None, None);
        assert_eq!(
            v,
            json!({"stream": true, "stream_options": {"include_usage": true}})
        );
        let v = apply(r#"{"stream":true,"stream_options":{}}"#, None, None);
        assert_eq!(
            v,
            json!({"stream": true, "stream_options": {"include_usage": true}})
        );
        // Not a stream: nothing added.
        let v = apply(r#"{"stream":true}"#, None, Some(false));
        assert_eq!(v, json!({"stream": false}));
        // The provider turns streaming off: the client's stream options go
        // (OpenAI refuses them without a stream).
        let v = apply(
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            None,
            Some(false),
        );
        assert_eq!(v, json!({"stream": false, "stream_options": null}));
        // The client's own non-stream request is left as it is.
        let v = apply(r#"{"stream":false,"stream_options":{"x":1}}"#, None, None);
        assert_eq!(v, json!({"stream": false, "stream_options": {"x": 1}}));
    }

    #[test]
    fn empty_object_and_escaped_keys() {
        assert_eq!(
            apply("{}", Some("m"), Some(true)),
            json!({"model":"m","stream":true,"stream_options":{"include_usage":true}})
        );
        // "mod\u0065l" is "model".
        let v = apply(r#"{"mod\u0065l":"client"}"#, Some("m"), None);
        assert_eq!(v, json!({"model": "m"}));
    }

    #[test]
    fn duplicates_all_get_the_value() {
        let body = r#"{"model":"a","model":"b"}"#;
        let out = rewrite(
            body.as_bytes(),
            &BodyRewrite {
                model: Some("m"),
                stream: None,
            },
        )
        .unwrap();
        assert_eq!(out.body, br#"{"model":"m","model":"m"}"#);
        // Without a provider model, the client's is the last (as serde_json reads it).
        let out = rewrite(body.as_bytes(), &BodyRewrite::default()).unwrap();
        assert_eq!(out.model.as_deref(), Some("b"));
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        for bad in [
            "",
            "  ",
            "[1]",
            "\"s\"",
            "1",
            "null",
            "{",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{'a':1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\u{1}\"}",
            "{} x",
            "{}{}",
        ] {
            assert!(
                rewrite(bad.as_bytes(), &BodyRewrite::default()).is_err(),
                "{bad:?} accepted"
            );
            assert!(
                serde_json::from_str::<Map<String, Value>>(bad).is_err(),
                "{bad:?} is valid for serde_json"
            );
        }
        assert_eq!(
            scan_object(b"[1]").unwrap_err(),
            JsonError::NotObject,
            "an array is valid JSON but not an object"
        );
        assert_eq!(scan_object(&[b'{', 0xff, b'}']), Err(JsonError::NotUtf8));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(scan_object(deep.as_bytes()), Err(JsonError::TooDeep));
    }

    // ------------------------------------------------------------ property tests

    /// Random JSON text with random blanks, escapes and duplicate keys.
    struct Gen {
        rng: fastrand::Rng,
    }

    const KEYS: &[&str] = &[
        "model",
        "stream",
        "stream_options",
        "include_usage",
        "messages",
        "a",
        "b",
        "temperature",
    ];

    impl Gen {
        fn ws(&mut self, out: &mut String) {
            for _ in 0..self.rng.usize(0..3) {
                out.push([' ', '\n', '\t', '\r'][self.rng.usize(0..4)]);
            }
        }

        fn string(&mut self, s: &str, out: &mut String) {
            out.push('"');
            for c in s.chars() {
                match (c, self.rng.u8(0..4)) {
                    ('"', _) => out.push_str("\\\""),
                    ('\\', _) => out.push_str("\\\\"),
                    (c, 0) if c.is_ascii() => out.push_str(&format!("\\u{:04x}", c as u32)),
                    (c, _) if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
                    (c, _) => out.push(c),
                }
            }
            out.push('"');
        }

        fn text(&mut self) -> String {
            let pool = [
                "hi", "", "\"", "\\", "é✓", "😀", "a\nb", "}", "{", ",", ":", "model",
            ];
            (0..self.rng.usize(0..3))
                .map(|_| pool[self.rng.usize(0..pool.len())])
                .collect()
        }

        fn value(&mut self, depth: usize, out: &mut String) {
            let pick = if depth > 3 {
                self.rng.u8(0..5)
            } else {
                self.rng.u8(0..7)
            };
            match pick {
                0 => out.push_str(["true", "false", "null"][self.rng.usize(0..3)]),
                1 => out.push_str(
                    ["0", "-1", "3.25", "1e3", "-0.5E-2", "123456789"][self.rng.usize(0..6)],
                ),
                2..=4 => {
                    let t = self.text();
                    self.string(&t, out)
                }
                5 => {
                    out.push('[');
                    let n = self.rng.usize(0..3);
                    for i in 0..n {
                        self.ws(out);
                        self.value(depth + 1, out);
                        self.ws(out);
                        if i + 1 < n {
                            out.push(',');
                        }
                    }
                    out.push(']');
                }
                _ => self.object(depth + 1, out),
            }
        }

        fn object(&mut self, depth: usize, out: &mut String) {
            out.push('{');
            let n = self.rng.usize(0..5);
            for i in 0..n {
                self.ws(out);
                let k = KEYS[self.rng.usize(0..KEYS.len())];
                self.string(k, out);
                self.ws(out);
                out.push(':');
                self.ws(out);
                // Values the rewrite cares about, often.
                match (k, self.rng.u8(0..3)) {
                    ("stream" | "include_usage", 0) => {
                        out.push_str(if self.rng.bool() { "true" } else { "false" })
                    }
                    ("stream_options", 0) => out.push_str("null"),
                    _ => self.value(depth, out),
                }
                self.ws(out);
                if i + 1 < n {
                    out.push(',');
                }
            }
            self.ws(out);
            out.push('}');
        }
    }

    /// The rule, stated on serde_json's reading of the body.
    fn expected(input: &str, model: Option<&str>, stream: Option<bool>) -> Value {
        let mut v: Map<String, Value> = serde_json::from_str(input).unwrap();
        if let Some(m) = model {
            v.insert("model".into(), json!(m));
        }
        if let Some(s) = stream {
            v.insert("stream".into(), json!(s));
        }
        if v.get("stream") == Some(&json!(true)) {
            match v.get_mut("stream_options") {
                None | Some(Value::Null) => {
                    v.insert("stream_options".into(), json!({"include_usage": true}));
                }
                Some(Value::Object(o)) => {
                    o.entry("include_usage").or_insert(json!(true));
                }
                Some(_) => {}
            }
        } else if stream == Some(false) && v.contains_key("stream_options") {
            v.insert("stream_options".into(), Value::Null);
        }
        Value::Object(v)
    }

    #[test]
    fn property_rewrite_matches_serde_json() {
        let mut g = Gen {
            rng: fastrand::Rng::with_seed(0x11_6d_67_77),
        };
        for case in 0..20_000 {
            let mut input = String::new();
            g.ws(&mut input);
            g.object(0, &mut input);
            g.ws(&mut input);
            let model = [None, Some("qwen"), Some("a\"b\\c\u{1}é")][g.rng.usize(0..3)];
            let stream = [None, Some(true), Some(false)][g.rng.usize(0..3)];
            let out = rewrite(input.as_bytes(), &BodyRewrite { model, stream })
                .unwrap_or_else(|e| panic!("case {case}: {e}: {input}"));
            let got: Value = serde_json::from_slice(&out.body).unwrap_or_else(|e| {
                panic!(
                    "case {case}: output not JSON: {e}\n in: {input}\nout: {}",
                    String::from_utf8_lossy(&out.body)
                )
            });
            let want = expected(&input, model, stream);
            assert_eq!(got, want, "case {case}\n in: {input}");
            assert_eq!(out.stream, want["stream"] == json!(true), "case {case}");
        }
    }

    #[test]
    fn property_accepts_exactly_what_serde_json_accepts() {
        let mut g = Gen {
            rng: fastrand::Rng::with_seed(7),
        };
        let alphabet = b"{}[]\",:\\ 0123456789-+.eEtrufalsn\x7f";
        for case in 0..30_000 {
            let mut s = String::new();
            g.object(0, &mut s);
            let mut bytes = s.into_bytes();
            // Mutate: flip, insert or delete a few bytes.
            for _ in 0..g.rng.usize(1..4) {
                if bytes.is_empty() {
                    break;
                }
                let at = g.rng.usize(0..bytes.len());
                match g.rng.u8(0..3) {
                    0 => bytes[at] = alphabet[g.rng.usize(0..alphabet.len())],
                    1 => bytes.insert(at, alphabet[g.rng.usize(0..alphabet.len())]),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            let ours = scan_object(&bytes).is_ok();
            let theirs = serde_json::from_slice::<Map<String, Value>>(&bytes).is_ok();
            assert_eq!(
                ours,
                theirs,
                "case {case}: {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
