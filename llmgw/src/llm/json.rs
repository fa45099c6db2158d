//! A small validating JSON scanner: it checks a body is one JSON object
//! (agreeing with serde_json on what is valid) and records where each
//! top-level member's key and value lie, so edits can be spliced into the
//! original bytes without re-serialising them.

use std::ops::Range;

use thiserror::Error;

/// serde_json's default recursion limit; deeper documents are refused alike.
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonError {
    #[error("the request body is not UTF-8")]
    NotUtf8,
    #[error("the request body is not valid JSON: {what} at byte {at}")]
    Syntax { what: &'static str, at: usize },
    #[error("the request body must be a JSON object")]
    NotObject,
    #[error("the request body nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// One member of an object: where its key (between the quotes) and its
/// value lie in the scanned buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: Range<usize>,
    /// The key contains a backslash escape: compare it decoded.
    pub key_escaped: bool,
    pub value: Range<usize>,
}

impl Member {
    /// Whether this member's key is `name` (escapes decoded).
    pub fn key_is(&self, buf: &[u8], name: &str) -> bool {
        let raw = &buf[self.key.clone()];
        if !self.key_escaped {
            return raw == name.as_bytes();
        }
        // Rare: decode with serde_json, quotes included.
        let quoted = &buf[self.key.start - 1..self.key.end + 1];
        serde_json::from_slice::<String>(quoted).is_ok_and(|k| k == name)
    }
}

/// The members of the object whose `{` is at `buf[open]`, and where its
/// closing `}` is. `buf` must already be validated JSON.
pub fn object_members(buf: &[u8], open: usize) -> Result<(Vec<Member>, usize), JsonError> {
    let mut p = Scanner {
        b: buf,
        i: open,
        depth: 0,
    };
    let mut members = Vec::new();
    p.object(Some(&mut members))?;
    Ok((members, p.i - 1))
}

/// Validates `buf` as one JSON document (RFC 8259, as serde_json reads it)
/// and returns the members of its top-level object.
pub fn scan_object(buf: &[u8]) -> Result<Vec<Member>, JsonError> {
    std::str::from_utf8(buf).map_err(|_| JsonError::NotUtf8)?;
    let mut p = Scanner {
        b: buf,
        i: 0,
        depth: 0,
    };
    p.ws();
    if p.peek().is_none() {
        return Err(JsonError::Syntax {
            what: "empty document",
            at: 0,
        });
    }
    let is_object = p.peek() == Some(b'{');
    let mut members = Vec::new();
    if is_object {
        p.object(Some(&mut members))?;
    } else {
        p.value()?;
    }
    p.ws();
    if p.i != buf.len() {
        return Err(p.err("trailing characters"));
    }
    if !is_object {
        return Err(JsonError::NotObject);
    }
    Ok(members)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

impl Scanner<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError::Syntax { what, at: self.i }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn value(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'{') => self.object(None),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end")),
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        Ok(())
    }

    /// At `{`. Records members when `out` is given.
    fn object(&mut self, mut out: Option<&mut Vec<Member>>) -> Result<(), JsonError> {
        self.enter()?;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a key"));
            }
            let key_start = self.i + 1;
            let escaped = self.string()?;
            let key = key_start..self.i - 1;
            self.ws();
            self.expect(b':', "expected ':'")?;
            self.ws();
            let vstart = self.i;
            self.value()?;
            if let Some(out) = out.as_deref_mut() {
                out.push(Member {
                    key,
                    key_escaped: escaped,
                    value: vstart..self.i,
                });
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self) -> Result<(), JsonError> {
        self.enter()?;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value()?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn literal(&mut self, lit: &'static [u8]) -> Result<(), JsonError> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        self.number_syntax()?;
        // serde_json refuses numbers beyond f64's range; so do we. Only an
        // exponent or a very long mantissa can get there.
        let text = &self.b[start..self.i];
        if (text.len() > 300 || text.iter().any(|&c| c == b'e' || c == b'E'))
            && std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_none_or(|f| !f.is_finite())
        {
            return Err(JsonError::Syntax {
                what: "number out of range",
                at: start,
            });
        }
        Ok(())
    }

    fn number_syntax(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let Some(h) = self.b.get(self.i..self.i + 4) else {
            return Err(self.err("truncated \\u escape"));
        };
        let mut v = 0u16;
        for &c in h {
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + d as u16;
        }
        self.i += 4;
        Ok(v)
    }

    /// At `"`; leaves `i` after the closing quote. Returns whether it held escapes.
    fn string(&mut self) -> Result<bool, JsonError> {
        self.i += 1;
        let mut escaped = false;
        loop {
            // Skip plain bytes quickly; stop at a quote, a backslash or a control byte.
            let rest = &self.b[self.i..];
            let stop = rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            let Some(n) = stop else {
                self.i = self.b.len();
                return Err(self.err("unterminated string"));
            };
            self.i += n;
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let u = self.hex4()?;
                            if (0xD800..0xDC00).contains(&u) {
                                // A high surrogate must be followed by a low one.
                                if self.b[self.i..].starts_with(b"\\u") {
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    if !(0xDC00..0xE000).contains(&lo) {
                                        return Err(self.err("unpaired surrogate"));
                                    }
                                } else {
                                    return Err(self.err("unpaired surrogate"));
                                }
                            } else if (0xDC00..0xE000).contains(&u) {
                                return Err(self.err("unpaired surrogate"));
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                _ => return Err(self.err("control character in string")),
            }
        }
    }
}
