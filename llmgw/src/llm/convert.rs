//! When the provider's configured `stream` overrides what the client asked
//! for, the answer is turned back into the shape the client expects: a
//! `chat.completion` into the chunks of a stream (then `[DONE]`), or a
//! stream gathered into one `chat.completion`. OpenAI clients read either
//! shape only where they asked for it.

use http::{HeaderMap, header};
use serde_json::{Map, Value, json};

/// What to turn the provider's answer into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convert {
    /// The client asked for a stream, the provider answered JSON. `usage`:
    /// the client asked for a usage chunk (`stream_options.include_usage`).
    ToStream { usage: bool },
    /// The client asked for JSON, the provider streamed.
    ToCompletion,
}

impl Convert {
    /// Whether the provider's answer has the shape this converts from
    /// (uncompressed JSON for `ToStream`, an event stream for `ToCompletion`).
    pub fn applies_to(self, headers: &HeaderMap) -> bool {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        !headers.contains_key(header::CONTENT_ENCODING)
            && match self {
                Convert::ToStream { .. } => ct.starts_with("application/json"),
                Convert::ToCompletion => ct.starts_with("text/event-stream"),
            }
    }

    /// The conversion a request needs: `client_stream` is what the client
    /// asked for (`None`: it said nothing), `stream` what goes to the
    /// provider; `accept` the client's `Accept`. A client that said nothing
    /// of streaming gets the provider's stream, unless it only accepts JSON
    /// (as OpenAI's SDKs say for a plain completion).
    pub fn choose(
        client_stream: Option<bool>,
        stream: bool,
        client_usage: bool,
        accept: Option<&str>,
    ) -> Option<Convert> {
        let json_only = accept
            .is_some_and(|a| a.contains("application/json") && !a.contains("text/event-stream"));
        match (client_stream, stream) {
            (Some(true), false) => Some(Convert::ToStream {
                usage: client_usage,
            }),
            (Some(false), true) => Some(Convert::ToCompletion),
            (None, true) if json_only => Some(Convert::ToCompletion),
            _ => None,
        }
    }
}

/// The members a completion and its chunks share.
const HEAD: [&str; 5] = [
    "id",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
];

/// The most an answer to convert may hold (it is gathered whole first).
pub const MAX_CONVERTED_BYTES: usize = 64 << 20;

/// A `chat.completion` as server-sent events: one `chat.completion.chunk`
/// with every choice's message as its delta, a usage chunk when asked for,
/// then `[DONE]`. `None` when `body` is not a completion (it then passes as
/// it is).
pub fn completion_to_stream(body: &[u8], usage: bool) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    if obj.get("error").is_some_and(|e| !e.is_null()) {
        // An error in a 200: as the event a streaming client raises on.
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(body);
        out.extend_from_slice(b"\n\n");
        return Some(out);
    }
    let choices = obj.get("choices")?.as_array()?;
    let mut head = Map::new();
    for key in HEAD {
        if let Some(x) = obj.get(key) {
            head.insert(key.into(), x.clone());
        }
    }
    head.insert("object".into(), json!("chat.completion.chunk"));
    let deltas: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut delta = c.get("message").cloned().unwrap_or_else(|| json!({}));
            // Tool calls in a chunk carry their position.
            if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for (n, call) in calls.iter_mut().enumerate() {
                    if let Some(o) = call.as_object_mut() {
                        o.entry("index").or_insert(json!(n));
                    }
                }
            }
            json!({
                "index": c.get("index").cloned().unwrap_or(json!(i)),
                "delta": delta,
                "logprobs": c.get("logprobs").cloned().unwrap_or(Value::Null),
                "finish_reason": c.get("finish_reason").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    let mut out = Vec::with_capacity(body.len() + 256);
    let mut event = |head: &Map<String, Value>, extra: &[(&str, Value)]| {
        let mut chunk = head.clone();
        for (k, v) in extra {
            chunk.insert((*k).into(), v.clone());
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    };
    event(&head, &[("choices", Value::Array(deltas))]);
    if usage && let Some(u) = obj.get("usage") {
        event(&head, &[("choices", json!([])), ("usage", u.clone())]);
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Some(out)
}

/// What a stream gathered into one answer came to.
#[derive(Debug, PartialEq)]
pub enum Gathered {
    /// The `chat.completion` the stream told.
    Completion(Vec<u8>),
    /// The stream carried an error event: its `error` object.
    Error(Value),
    /// No chunk at all: the body passes as it is.
    NotAStream,
}

/// A stream of `chat.completion.chunk` events gathered into the
/// `chat.completion` it tells: per choice, the role, the content and refusal
/// concatenated, tool calls assembled by index (their arguments
/// concatenated), the last finish reason; the last usage. An error event
/// anywhere makes it that error (a client that asked for JSON must not get
/// a half answer as a success).
pub fn stream_to_completion(body: &[u8]) -> Gathered {
    match gather(body) {
        Ok(Some(out)) => Gathered::Completion(out),
        Ok(None) => Gathered::NotAStream,
        Err(e) => Gathered::Error(e),
    }
}

fn gather(body: &[u8]) -> Result<Option<Vec<u8>>, Value> {
    if std::str::from_utf8(body).is_err() {
        return Ok(None);
    }
    let mut head = Map::new();
    let mut choices: Vec<(u64, Map<String, Value>, Value)> = Vec::new();
    let mut usage = Value::Null;
    let mut seen = false;
    for data in super::sse::events(body) {
        if data.trim_ascii() == b"[DONE]" {
            break;
        }
        let Ok(Value::Object(chunk)) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        if let Some(e) = chunk.get("error")
            && !e.is_null()
        {
            return Err(e.clone());
        }
        seen = true;
        for key in HEAD {
            if let Some(x) = chunk.get(key)
                && !x.is_null()
            {
                head.entry(key).or_insert_with(|| x.clone());
            }
        }
        if let Some(u) = chunk.get("usage")
            && !u.is_null()
        {
            usage = u.clone();
        }
        for c in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let slot = match choices.iter().position(|(i, _, _)| *i == index) {
                Some(p) => p,
                None => {
                    choices.push((index, Map::new(), Value::Null));
                    choices.len() - 1
                }
            };
            let (_, message, finish) = &mut choices[slot];
            if let Some(Value::Object(delta)) = c.get("delta") {
                merge_delta(message, delta);
            }
            if let Some(f) = c.get("finish_reason")
                && !f.is_null()
            {
                *finish = f.clone();
            }
        }
    }
    if !seen {
        return Ok(None);
    }
    let mut out = head;
    out.insert("object".into(), json!("chat.completion"));
    out.insert(
        "choices".into(),
        Value::Array(
            choices
                .into_iter()
                .map(|(index, mut message, finish)| {
                    message.entry("role").or_insert(json!("assistant"));
                    message.entry("content").or_insert(Value::Null);
                    json!({
                        "index": index,
                        "message": message,
                        "logprobs": null,
                        "finish_reason": finish,
                    })
                })
                .collect(),
        ),
    );
    if !usage.is_null() {
        out.insert("usage".into(), usage);
    }
    Ok(serde_json::to_vec(&Value::Object(out)).ok())
}

/// Adds one chunk's `delta` to the message gathered so far.
fn merge_delta(message: &mut Map<String, Value>, delta: &Map<String, Value>) {
    for (k, v) in delta {
        match (k.as_str(), v) {
            (_, Value::Null) => {}
            ("content" | "refusal", Value::String(s)) => match message.get_mut(k) {
                Some(Value::String(have)) => have.push_str(s),
                _ => {
                    message.insert(k.clone(), v.clone());
                }
            },
            ("tool_calls", Value::Array(calls)) => {
                let list = message
                    .entry("tool_calls")
                    .or_insert_with(|| json!([]))
                    .as_array_mut();
                let Some(list) = list else { continue };
                for call in calls {
                    let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let at = list
                        .iter()
                        .position(|c| c.get("index").and_then(Value::as_u64) == Some(index));
                    match at {
                        None => list.push(call.clone()),
                        Some(p) => {
                            let have = &mut list[p];
                            let add = call
                                .pointer("/function/arguments")
                                .and_then(Value::as_str)
                                .unwrap_or("");
                            if let Some(Value::String(args)) =
                                have.pointer_mut("/function/arguments")
                            {
                                args.push_str(add);
                            }
                        }
                    }
                }
            }
            // role, and anything else: the first value given.
            _ => {
                message.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
}

/// The `data` of each event of a server-sent-events text (lines split on
/// `\n`, `\r\n` or `\r`; `data:` with or without a space; several `data`
/// lines of one event joined by `\n`; comments and other fields skipped).
#[cfg(test)]
mod tests {
    use super::*;

    const COMPLETION: &str = r#"{"choices":[{"message":{"role":"assistant","content":"Hello! I am Qwen."},"finish_reason":"stop","index":0,"logprobs":null}],"object":"chat.completion","usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17},"created":1720682745,"system_fingerprint":null,"model":"qwen1.5-72b-chat","id":"chatcmpl-1"}"#;

    fn events(sse: &[u8]) -> Vec<Value> {
        crate::llm::sse::events(sse)
            .into_iter()
            .filter(|d| d.as_slice() != b"[DONE]")
            .map(|d| serde_json::from_slice(&d).unwrap())
            .collect()
    }

    #[test]
    fn a_completion_becomes_a_stream_and_back() {
        let sse = completion_to_stream(COMPLETION.as_bytes(), true).unwrap();
        assert!(sse.ends_with(b"data: [DONE]\n\n"));
        let ev = events(&sse);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0]["object"], "chat.completion.chunk");
        assert_eq!(ev[0]["id"], "chatcmpl-1");
        assert_eq!(ev[0]["choices"][0]["delta"]["content"], "Hello! I am Qwen.");
        assert_eq!(ev[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev[1]["choices"], json!([]));
        assert_eq!(ev[1]["usage"]["total_tokens"], 17);
        // Without include_usage, no usage chunk (its empty `choices` would
        // surprise a client that did not ask for it).
        assert_eq!(
            events(&completion_to_stream(COMPLETION.as_bytes(), false).unwrap()).len(),
            1
        );

        let Gathered::Completion(back) = stream_to_completion(&sse) else {
            panic!("not gathered")
        };
        let back: Value = serde_json::from_slice(&back).unwrap();
        assert_eq!(back["object"], "chat.completion");
        assert_eq!(
            back["choices"][0]["message"]["content"],
            "Hello! I am Qwen."
        );
        assert_eq!(back["choices"][0]["message"]["role"], "assistant");
        assert_eq!(back["usage"]["total_tokens"], 17);
        assert!(completion_to_stream(b"not json", true).is_none());
    }

    #[test]
    fn a_stream_of_deltas_is_gathered() {
        let sse = concat!(
            ": keep-alive\r\n\r\n",
            "data: {\"id\":\"c1\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n",
            "data:{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}},{\"index\":1,\"delta\":{\"content\":\"B\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\",\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        );
        let Gathered::Completion(v) = stream_to_completion(sse.as_bytes()) else {
            panic!("not gathered")
        };
        let v: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["model"], "m");
        let c0 = &v["choices"][0];
        assert_eq!(c0["message"]["content"], "Hello");
        assert_eq!(c0["message"]["role"], "assistant");
        assert_eq!(
            c0["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(c0["message"]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(c0["finish_reason"], "tool_calls");
        assert_eq!(v["choices"][1]["message"]["content"], "B");
        assert_eq!(v["usage"]["total_tokens"], 3);
        assert_eq!(
            stream_to_completion(b"data: [DONE]\n\n"),
            Gathered::NotAStream
        );
    }

    #[test]
    fn errors_stay_errors_in_either_shape() {
        // An error event, even after content, is the answer: never a 200
        // half completion.
        let sse = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"mid-stream failure\",\"type\":\"server_error\"}}\n\n",
        );
        match stream_to_completion(sse.as_bytes()) {
            Gathered::Error(e) => assert_eq!(e["message"], "mid-stream failure"),
            other => panic!("{other:?}"),
        }
        // A JSON error sent with 200 becomes the event a streaming client
        // raises on.
        let sse = completion_to_stream(b"{\"error\":{\"message\":\"no\"}}", true).unwrap();
        assert_eq!(events(&sse)[0]["error"]["message"], "no");
    }
}
