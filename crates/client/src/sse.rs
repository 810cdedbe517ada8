//! A small server-sent-events parser (the coordinator's
//! `GET /jobs/{id}/stream`): `event:` and `data:` lines, blank line ends an
//! event, comments and keep-alives ignored. One event may not exceed
//! [`MAX_EVENT_BYTES`], so a hostile server cannot make us buffer forever.

use futures_util::{Stream, StreamExt};

/// Largest single event accepted (a sealed 1 MiB chunk in base64url plus
/// JSON framing fits with room to spare).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `message` when the server named none.
    pub event: String,
    pub data: String,
}

/// Incremental parser.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line =
                String::from_utf8(line).map_err(|_| "event stream is not UTF-8".to_string())?;
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    out.push(SseEvent {
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.event = Some(value.to_string()),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
            let pending: usize = self.data.iter().map(|d| d.len()).sum();
            if pending > MAX_EVENT_BYTES {
                return Err(format!("an event is larger than {MAX_EVENT_BYTES} bytes"));
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(format!(
                "an event line is longer than {MAX_EVENT_BYTES} bytes"
            ));
        }
        Ok(out)
    }

    /// Adapts a byte stream into an event stream.
    pub fn stream<S, B, E, F, X>(
        bytes: S,
        on_err: F,
    ) -> impl Stream<Item = Result<SseEvent, X>> + Send + 'static
    where
        S: Stream<Item = Result<B, E>> + Send + 'static,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
        F: Fn(String) -> X + Send + 'static,
        X: Send + 'static,
    {
        let state = (
            Box::pin(bytes),
            SseParser::default(),
            std::collections::VecDeque::new(),
            false,
            on_err,
        );
        futures_util::stream::unfold(
            state,
            |(mut s, mut p, mut q, mut done, on_err)| async move {
                loop {
                    if let Some(ev) = q.pop_front() {
                        return Some((Ok(ev), (s, p, q, done, on_err)));
                    }
                    if done {
                        return None;
                    }
                    match s.next().await {
                        Some(Ok(b)) => match p.feed(b.as_ref()) {
                            Ok(evs) => q.extend(evs),
                            Err(e) => {
                                done = true;
                                return Some((Err(on_err(e)), (s, p, q, done, on_err)));
                            }
                        },
                        Some(Err(e)) => {
                            done = true;
                            return Some((Err(on_err(e.to_string())), (s, p, q, done, on_err)));
                        }
                        None => return None,
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_events() {
        let mut p = SseParser::default();
        assert!(p
            .feed(b"event: chunk\r\ndata: {\"seq\"")
            .unwrap()
            .is_empty());
        let evs = p
            .feed(b":0}\n\n: keep-alive\n\ndata: a\ndata: b\n\n")
            .unwrap();
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: "chunk".into(),
                    data: "{\"seq\":0}".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "a\nb".into()
                },
            ]
        );
    }

    #[test]
    fn refuses_unbounded_lines() {
        let mut p = SseParser::default();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert!(p.feed(&big).is_err());
        let mut p = SseParser::default();
        assert!(p.feed(&[0xff, b'\n']).is_err());
    }
}
