//! Server-sent events (the WHATWG event stream) parsed incrementally: reads
//! split anywhere, LF, CR or CRLF line ends, comments, `data:` with or
//! without a space, multi-line data joined with `\n`. The one parser both
//! the usage tap and the stream-to-completion conversion use.

/// Yields the data of each event as it completes.
#[derive(Debug)]
pub struct SseParser {
    /// The current (incomplete) line.
    line: Vec<u8>,
    line_overflow: bool,
    /// The previous chunk ended with CR: a following LF belongs to it.
    after_cr: bool,
    /// The data of the current event (lines joined with `\n`).
    data: Vec<u8>,
    has_data: bool,
    /// An event's data is held until the event ends; past this many bytes
    /// the rest of it is dropped (a line past it is skipped).
    max_event: usize,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            line_overflow: false,
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            max_event: max_event_bytes,
        }
    }

    /// Parses `chunk`, calling `on_event` with the data of each event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], on_event: &mut impl FnMut(&[u8])) {
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while !chunk.is_empty() {
            match memchr::memchr2(b'\n', b'\r', chunk) {
                Some(i) => {
                    self.push_line_bytes(&chunk[..i]);
                    self.end_line(on_event);
                    let crlf = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                    if crlf {
                        match chunk.first() {
                            Some(b'\n') => chunk = &chunk[1..],
                            None => self.after_cr = true,
                            _ => {}
                        }
                    }
                }
                None => {
                    self.push_line_bytes(chunk);
                    break;
                }
            }
        }
    }

    /// The stream ended: an event without its closing blank line still counts.
    pub fn finish(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if !self.line.is_empty() {
            self.end_line(on_event);
        }
        self.dispatch(on_event);
    }

    fn push_line_bytes(&mut self, b: &[u8]) {
        if self.line.len() + b.len() <= self.max_event {
            self.line.extend_from_slice(b);
        } else {
            self.line_overflow = true;
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(&[u8])) {
        let line = std::mem::take(&mut self.line);
        let overflow = std::mem::replace(&mut self.line_overflow, false);
        if line.is_empty() {
            self.dispatch(on_event);
        } else if line[0] == b':' || overflow {
            // A comment (keep-alive), or a line too long to hold.
        } else {
            let (field, value) = match memchr::memchr(b':', &line) {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &b""[..]),
            };
            if field == b"data" {
                if self.has_data {
                    self.data.push(b'\n');
                }
                if self.data.len() + value.len() <= self.max_event {
                    self.data.extend_from_slice(value);
                }
                self.has_data = true;
            }
        }
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if !self.has_data {
            return;
        }
        self.has_data = false;
        on_event(&self.data);
        self.data.clear();
    }
}

/// The data of every event of a whole body.
pub fn events(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut p = SseParser::new(usize::MAX);
    let mut push = |d: &[u8]| out.push(d.to_vec());
    p.feed(body, &mut push);
    p.finish(&mut push);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Vec<String> {
        events(body.as_bytes())
            .into_iter()
            .map(|d| String::from_utf8(d).unwrap())
            .collect()
    }

    #[test]
    fn line_ends_comments_and_multi_line_data() {
        assert_eq!(texts("data: a\n\ndata:b\r\n\r\n"), ["a", "b"]);
        assert_eq!(texts(": ping\ndata: x\rdata: y\r\r"), ["x\ny"]);
        // CRLF between two data lines keeps them in one event.
        assert_eq!(texts("data: a\r\ndata: b\r\n\r\n"), ["a\nb"]);
        assert_eq!(texts("event: e\nid: 1\ndata: z"), ["z"]);
        assert!(texts("\n\n: only comments\n\n").is_empty());
    }

    #[test]
    fn split_anywhere_gives_the_same_events() {
        let body =
            b"data: {\"a\":1}\r\n\r\n: c\r\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]\r\n\r\n";
        let whole = events(body);
        for cut in 0..body.len() {
            let mut p = SseParser::new(usize::MAX);
            let mut got = Vec::new();
            let mut push = |d: &[u8]| got.push(d.to_vec());
            p.feed(&body[..cut], &mut push);
            p.feed(&body[cut..], &mut push);
            p.finish(&mut push);
            assert_eq!(got, whole, "cut at {cut}");
        }
    }
}
