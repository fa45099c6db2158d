//! Token usage read from responses as they stream past, without holding the
//! body: `JsonUsageTap` captures only the top-level `usage` member of a JSON
//! body, `SseTap` reads server-sent events (`super::sse`) and keeps the last
//! usage seen; [`UsageTap::for_response`] picks the one an answer needs.

use http::{HeaderMap, header};
use memchr::memmem;
use serde::Deserialize;

use super::sse::SseParser;
pub use crate::observe::Usage;

/// A usage object as sent: OpenAI's names, the Responses API's
/// (`input_tokens`, `output_tokens`), or both at once. A count that is not a
/// non-negative integer is ignored rather than spoiling the others.
#[derive(Deserialize)]
struct RawUsage {
    #[serde(default, deserialize_with = "count")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    total_tokens: Option<u64>,
}

fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_u64())
}

/// A provider's usage object as recorded, if it holds any count.
pub fn parse_usage(v: &[u8]) -> Option<Usage> {
    let r: RawUsage = serde_json::from_slice(v).ok()?;
    let mut u = Usage {
        prompt_tokens: r.prompt_tokens.or(r.input_tokens),
        completion_tokens: r.completion_tokens.or(r.output_tokens),
        total_tokens: r.total_tokens,
    };
    if u.total_tokens.is_none()
        && let (Some(p), Some(c)) = (u.prompt_tokens, u.completion_tokens)
    {
        u.total_tokens = Some(p.saturating_add(c));
    }
    (u != Usage::default()).then_some(u)
}

/// Usage objects are small; anything bigger is not one we can read.
const MAX_USAGE_BYTES: usize = 64 * 1024;
/// An SSE event's data is held until the event ends; past this it is dropped.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Finds `"usage": {...}` at the top level of a JSON object fed in pieces.
/// Bytes that cannot change its state are skipped in bulk: string contents
/// up to the next quote or backslash, and outside strings everything but
/// `"{}[],:`; the usage value is copied by slices.
#[derive(Debug, Default)]
pub struct JsonUsageTap {
    depth: u32,
    in_string: bool,
    escape: bool,
    /// At depth 1, the next string is a key.
    expect_key: bool,
    /// Reading a key (at depth 1); `key` holds its first bytes, `key_len`
    /// counts them all (a key longer than `usage` is not it).
    in_key: bool,
    key: [u8; 8],
    key_len: usize,
    key_is_usage: bool,
    /// Capturing the value of the `usage` member.
    capture: Option<Vec<u8>>,
    usage: Option<Usage>,
}

/// The bytes that matter outside strings.
const STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    let s = b"\"{}[],:";
    while i < s.len() {
        t[s[i] as usize] = true;
        i += 1;
    }
    t
};

impl JsonUsageTap {
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut i = 0;
        // Where the captured bytes of this chunk start.
        let mut cap_from = self.capture.is_some().then_some(0);
        while i < chunk.len() {
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    self.key_byte(chunk[i]);
                    i += 1;
                    continue;
                }
                if !self.in_key {
                    // Only a quote or a backslash matters in here.
                    match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                        Some(n) => i += n,
                        None => break,
                    }
                }
                let c = chunk[i];
                i += 1;
                match c {
                    b'\\' => {
                        self.escape = true;
                        self.key_byte(c);
                    }
                    b'"' => {
                        self.in_string = false;
                        if self.in_key {
                            self.in_key = false;
                            self.key_is_usage = self.key_len == 5 && &self.key[..5] == b"usage";
                        }
                    }
                    _ => self.key_byte(c),
                }
                continue;
            }
            while i < chunk.len() && !STRUCTURAL[chunk[i] as usize] {
                i += 1;
            }
            let Some(&c) = chunk.get(i) else { break };
            if let Some(from) = cap_from
                && self.depth == 1
                && (c == b',' || c == b'}')
            {
                cap_from = None;
                if self.append_capture(&chunk[from..i])
                    && let Some(buf) = self.capture.take()
                {
                    self.usage = parse_usage(&buf).or(self.usage);
                }
            }
            i += 1;
            match c {
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.expect_key {
                        self.expect_key = false;
                        self.in_key = true;
                        self.key_len = 0;
                        self.key_is_usage = false;
                    }
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth == 1 {
                        self.expect_key = c == b'{';
                    }
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b',' if self.depth == 1 => self.expect_key = true,
                b':' if self.depth == 1 && self.key_is_usage => {
                    self.key_is_usage = false;
                    self.capture = Some(Vec::with_capacity(128));
                    cap_from = Some(i);
                }
                _ => {}
            }
        }
        if let Some(from) = cap_from {
            self.append_capture(&chunk[from..]);
        }
    }

    fn key_byte(&mut self, c: u8) {
        if self.in_key {
            if let Some(k) = self.key.get_mut(self.key_len) {
                *k = c;
            }
            self.key_len += 1;
        }
    }

    /// Adds to the captured value; false (and the capture dropped) past
    /// `MAX_USAGE_BYTES`.
    fn append_capture(&mut self, b: &[u8]) -> bool {
        let Some(buf) = &mut self.capture else {
            return false;
        };
        if buf.len() + b.len() > MAX_USAGE_BYTES {
            self.capture = None;
            return false;
        }
        buf.extend_from_slice(b);
        true
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// What one `SseTap::feed` saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SseProgress {
    /// A data event other than `[DONE]` completed in this chunk for the first time.
    pub first_event: bool,
}

/// The usage tap of a server-sent event stream: keeps the last `usage` any
/// event carried, counts events, notes `[DONE]`.
#[derive(Debug)]
pub struct SseTap {
    parser: SseParser,
    events: u64,
    done: bool,
    usage: Option<Usage>,
}

impl Default for SseTap {
    fn default() -> Self {
        SseTap {
            parser: SseParser::new(MAX_EVENT_BYTES),
            events: 0,
            done: false,
            usage: None,
        }
    }
}

impl SseTap {
    pub fn feed(&mut self, chunk: &[u8]) -> SseProgress {
        let before = self.events;
        let SseTap {
            parser,
            events,
            done,
            usage,
        } = self;
        parser.feed(chunk, &mut |data| on_event(data, events, done, usage));
        SseProgress {
            first_event: before == 0 && self.events > 0,
        }
    }

    /// The stream ended: an event without its closing blank line still counts.
    pub fn finish(&mut self) -> SseProgress {
        let before = self.events;
        let SseTap {
            parser,
            events,
            done,
            usage,
        } = self;
        parser.finish(&mut |data| on_event(data, events, done, usage));
        SseProgress {
            first_event: before == 0 && self.events > 0,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Data events seen, `[DONE]` excluded.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn saw_done(&self) -> bool {
        self.done
    }
}

fn on_event(data: &[u8], events: &mut u64, done: &mut bool, usage: &mut Option<Usage>) {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        *done = true;
        return;
    }
    *events += 1;
    // Parse only the events that can carry usage.
    if memmem::find(trimmed, b"\"usage\"").is_some()
        && let Ok(ev) = serde_json::from_slice::<UsageEvent>(trimmed)
        && let Some(u) = ev.usage.and_then(|u| parse_usage(u.get().as_bytes()))
    {
        *usage = Some(u);
    }
}

/// How usage is read from one response.
#[derive(Debug)]
pub enum UsageTap {
    None,
    Json(JsonUsageTap),
    Sse(SseTap),
}

impl UsageTap {
    /// The tap that fits an answer with `headers`; `stream`: the request
    /// asked for a stream (a provider may omit the content type).
    pub fn for_response(headers: &HeaderMap, stream: bool) -> UsageTap {
        if headers.contains_key(header::CONTENT_ENCODING) {
            return UsageTap::None;
        }
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ct.starts_with("text/event-stream") || (stream && ct.is_empty()) {
            UsageTap::Sse(SseTap::default())
        } else if ct.contains("json") || ct.is_empty() {
            UsageTap::Json(JsonUsageTap::default())
        } else {
            UsageTap::None
        }
    }

    /// Feeds a chunk of the body; true when it completed the first event of
    /// a stream (the first token).
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        match self {
            UsageTap::None => false,
            UsageTap::Json(t) => {
                t.feed(chunk);
                false
            }
            UsageTap::Sse(t) => t.feed(chunk).first_event,
        }
    }

    /// The body ended; true when that completed the first event.
    pub fn finish(&mut self) -> bool {
        match self {
            UsageTap::Sse(t) => t.finish().first_event,
            _ => false,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        match self {
            UsageTap::None => None,
            UsageTap::Json(t) => t.usage(),
            UsageTap::Sse(t) => t.usage(),
        }
    }
}

#[derive(Deserialize)]
struct UsageEvent<'a> {
    #[serde(borrow, default)]
    usage: Option<&'a serde_json::value::RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time tap this one replaced: the reference for its behaviour.
    #[derive(Debug, Default)]
    pub struct ReferenceTap {
        depth: u32,
        in_string: bool,
        escape: bool,
        /// At depth 1, the next string is a key.
        expect_key: bool,
        /// Bytes of the key being read (at depth 1), `None` when not reading one
        /// or when it is too long to be `usage`.
        key: Option<Vec<u8>>,
        key_is_usage: bool,
        /// Capturing the value of the `usage` member.
        capture: Option<Vec<u8>>,
        usage: Option<Usage>,
    }

    impl ReferenceTap {
        pub fn feed(&mut self, chunk: &[u8]) {
            let mut i = 0;
            while i < chunk.len() {
                // Inside a string that is neither a key nor captured, only a quote
                // or a backslash matters: skip to the next one.
                if self.in_string && !self.escape && self.capture.is_none() && self.key.is_none() {
                    match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                        Some(n) => i += n,
                        None => return,
                    }
                }
                let c = chunk[i];
                i += 1;
                if let Some(buf) = &mut self.capture {
                    let ends = !self.in_string && self.depth == 1 && (c == b',' || c == b'}');
                    if ends {
                        self.usage = parse_usage(buf).or(self.usage);
                        self.capture = None;
                    } else if buf.len() < MAX_USAGE_BYTES {
                        buf.push(c);
                    } else {
                        self.capture = None;
                    }
                }
                if self.in_string {
                    if self.escape {
                        self.escape = false;
                    } else if c == b'\\' {
                        self.escape = true;
                    } else if c == b'"' {
                        self.in_string = false;
                        if let Some(k) = self.key.take() {
                            self.key_is_usage = k == b"usage";
                        }
                        continue;
                    }
                    if let Some(k) = &mut self.key {
                        if k.len() < 8 {
                            k.push(c);
                        } else {
                            self.key = None;
                        }
                    }
                    continue;
                }
                match c {
                    b'"' => {
                        self.in_string = true;
                        if self.depth == 1 && self.expect_key {
                            self.expect_key = false;
                            self.key = Some(Vec::new());
                            self.key_is_usage = false;
                        }
                    }
                    b'{' | b'[' => {
                        self.depth += 1;
                        if self.depth == 1 {
                            self.expect_key = c == b'{';
                        }
                    }
                    b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                    b',' if self.depth == 1 => self.expect_key = true,
                    b':' if self.depth == 1 && self.key_is_usage => {
                        self.key_is_usage = false;
                        self.capture = Some(Vec::new());
                    }
                    _ => {}
                }
            }
        }

        pub fn usage(&self) -> Option<Usage> {
            self.usage
        }
    }

    /// Random JSON-ish bodies (valid or not), random splits: both taps agree.
    #[test]
    fn json_tap_matches_the_byte_at_a_time_reference() {
        // Mostly well-formed members, some junk between them.
        let pieces: &[&str] = &[
            "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}",
            "\"usage\" : {\"total_tokens\":9} ",
            "\"usage\":null",
            "\"usage\":[1,{\"x\":\"}\"}]",
            "\"a\":{\"usage\":{\"prompt_tokens\":1}}",
            "\"s\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":2}\"",
            "\"usag\":1",
            "\"usages\":{\"prompt_tokens\":5}",
            "\"us\\\"age\":{\"prompt_tokens\":6}",
            "\"x\":[{\"usage\":{\"total_tokens\":7}}]",
            "\"c\":\"a,}b\\\\\"",
            ",",
            ",",
            ",",
            ":",
            " ",
            "{",
            "}",
            "[",
            "]",
            "\"",
            "\\",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut found = 0;
        for _ in 0..20_000 {
            let n = (next() % 24) as usize;
            let mut body = String::from("{");
            for _ in 0..n {
                body.push_str(pieces[(next() % pieces.len() as u64) as usize]);
                if next() % 3 > 0 {
                    body.push(',');
                }
            }
            if next() % 2 == 0 {
                body.push('}');
            }
            let bytes = body.as_bytes();
            let a = (next() % (bytes.len() as u64 + 1)) as usize;
            let b = a + (next() % (bytes.len() as u64 - a as u64 + 1)) as usize;
            let mut ours = JsonUsageTap::default();
            let mut reference = ReferenceTap::default();
            for part in [&bytes[..a], &bytes[a..b], &bytes[b..]] {
                ours.feed(part);
                reference.feed(part);
            }
            assert_eq!(ours.usage(), reference.usage(), "{body:?} split {a}/{b}");
            found += usize::from(ours.usage().is_some());
        }
        assert!(found > 200, "only {found} bodies with usage");
        // And on the seed answer, fed whole and byte by byte.
        let mut ours = JsonUsageTap::default();
        ours.feed(SEED.as_bytes());
        assert_eq!(ours.usage(), usage(12, 130, 142));
    }

    const SEED: &str = r#"{"choices":[{"message":{"role":"assistant","content":"Hello! I am Qwen, ..."},"finish_reason":"stop","index":0,"logprobs":null}],"object":"chat.completion","usage":{"prompt_tokens":12,"completion_tokens":130,"total_tokens":142},"created":1720682745,"system_fingerprint":null,"model":"qwen1.5-72b-chat","id":"chatcmpl-3608dcd5-e3ad-9ade-bc70-xxxxxxxxxxxxxx"}"#;

    fn usage(p: u64, c: u64, t: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: Some(p),
            completion_tokens: Some(c),
            total_tokens: Some(t),
        })
    }

    #[test]
    fn usage_objects_in_either_naming_or_both_with_odd_counts() {
        let u = |s: &str| parse_usage(s.as_bytes());
        let both = u(
            r#"{"prompt_tokens":3,"input_tokens":3,"completion_tokens":5,"output_tokens":5,"total_tokens":8}"#,
        );
        assert_eq!(
            both,
            Some(Usage {
                prompt_tokens: Some(3),
                completion_tokens: Some(5),
                total_tokens: Some(8)
            })
        );
        let responses = u(r#"{"input_tokens":2,"output_tokens":4}"#);
        assert_eq!(
            responses,
            Some(Usage {
                prompt_tokens: Some(2),
                completion_tokens: Some(4),
                total_tokens: Some(6)
            })
        );
        // The total of two huge counts saturates instead of overflowing.
        let huge = u(r#"{"prompt_tokens":18446744073709551615,"completion_tokens":5}"#);
        assert_eq!(huge.and_then(|u| u.total_tokens), Some(u64::MAX));
        // A count that is not a non-negative integer is dropped, the rest kept.
        let odd = u(r#"{"prompt_tokens":-1,"completion_tokens":2.5,"total_tokens":7}"#);
        assert_eq!(
            odd,
            Some(Usage {
                prompt_tokens: None,
                completion_tokens: None,
                total_tokens: Some(7)
            })
        );
        assert_eq!(u(r#"{"prompt_tokens":null}"#), None);
    }

    #[test]
    fn json_usage_in_the_middle_fed_byte_by_byte() {
        let mut tap = JsonUsageTap::default();
        for b in SEED.as_bytes() {
            tap.feed(std::slice::from_ref(b));
        }
        assert_eq!(tap.usage(), usage(12, 130, 142));
    }

    #[test]
    fn json_usage_ignores_nested_and_string_lookalikes() {
        let body = r#"{"a":{"usage":{"prompt_tokens":1}},"s":"\"usage\":{\"prompt_tokens\":2}","usage" : {"prompt_tokens":3,"completion_tokens":4}}"#;
        for split in 0..body.len() {
            let mut tap = JsonUsageTap::default();
            tap.feed(&body.as_bytes()[..split]);
            tap.feed(&body.as_bytes()[split..]);
            assert_eq!(tap.usage(), usage(3, 4, 7), "split at {split}");
        }
        let mut tap = JsonUsageTap::default();
        tap.feed(br#"{"usage":null,"x":[{"usage":{"total_tokens":9}}]}"#);
        assert_eq!(tap.usage(), None);
    }

    fn sse(body: &str) -> SseTap {
        let mut tap = SseTap::default();
        tap.feed(body.as_bytes());
        tap.finish();
        tap
    }

    const CHUNK: &str = r#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#;
    const LAST: &str =
        r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;

    #[test]
    fn sse_usage_in_the_final_chunk() {
        let body = format!("data: {CHUNK}\n\ndata: {CHUNK}\n\ndata: {LAST}\n\ndata: [DONE]\n\n");
        let tap = sse(&body);
        assert_eq!(tap.usage(), usage(5, 7, 12));
        assert_eq!(tap.events(), 3);
        assert!(tap.saw_done());
    }

    #[test]
    fn sse_events_split_across_every_read_boundary() {
        let body = format!("data: {CHUNK}\r\n\r\ndata:{LAST}\r\n\r\ndata: [DONE]\r\n\r\n");
        for split in 0..body.len() {
            let mut tap = SseTap::default();
            let a = tap.feed(&body.as_bytes()[..split]);
            let b = tap.feed(&body.as_bytes()[split..]);
            tap.finish();
            assert_eq!(tap.usage(), usage(5, 7, 12), "split at {split}");
            assert_eq!(tap.events(), 2, "split at {split}");
            assert!(a.first_event ^ b.first_event, "split at {split}");
            assert!(tap.saw_done());
        }
    }

    #[test]
    fn sse_data_without_space_comments_and_cr_only_lines() {
        let body = format!(": keep-alive\r\r:another\rdata:{LAST}\r\revent: x\rdata: [DONE]\r\r");
        let tap = sse(&body);
        assert_eq!(tap.usage(), usage(5, 7, 12));
        assert_eq!(tap.events(), 1);
        assert!(tap.saw_done());
    }

    #[test]
    fn sse_multi_line_data_is_joined() {
        let body = "data: {\"usage\":\ndata: {\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        assert_eq!(sse(body).usage(), usage(1, 2, 3));
    }

    #[test]
    fn sse_missing_usage_and_missing_final_blank_line() {
        let tap = sse(&format!("data: {CHUNK}\n\ndata: {CHUNK}"));
        assert_eq!(tap.usage(), None);
        assert_eq!(tap.events(), 2);
        assert!(!tap.saw_done());
        // The last event's closing blank line is missing, usage is still read.
        let tap = sse(&format!("data: {CHUNK}\n\ndata: {LAST}\n"));
        assert_eq!(tap.usage(), usage(5, 7, 12));
    }

    #[test]
    fn sse_first_event_is_reported_once() {
        let mut tap = SseTap::default();
        assert!(!tap.feed(b": comment\n\n").first_event);
        assert!(!tap.feed(b"data: {\"a\"").first_event);
        assert!(tap.feed(b":1}\n\n").first_event);
        assert!(
            !tap.feed(format!("data: {CHUNK}\n\n").as_bytes())
                .first_event
        );
    }

    #[test]
    fn sse_invalid_json_is_skipped() {
        let tap = sse(&format!(
            "data: {{\"usage\": nope}}\n\ndata: {LAST}\n\ndata: {{\"usage\":\n\n"
        ));
        assert_eq!(tap.usage(), usage(5, 7, 12));
    }

    #[test]
    fn taps() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            m
        };
        assert!(matches!(
            UsageTap::for_response(&h("text/event-stream; charset=utf-8"), false),
            UsageTap::Sse(_)
        ));
        assert!(matches!(
            UsageTap::for_response(&h("application/json"), true),
            UsageTap::Json(_)
        ));
        assert!(matches!(
            UsageTap::for_response(&h("text/html"), false),
            UsageTap::None
        ));
    }
}
