//! Command-line framing: finds CRLF-terminated lines in the client's input with a hard length
//! limit, so a client cannot make the proxy buffer more than one line, and only CRLF ever ends a
//! line (RFC 5321 §2.3.8; a bare LF is how SMTP smuggling starts).

use bytes::{Buf, BytesMut};

/// What the reader found at the front of the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its CRLF (already taken off the input).
    Complete(Vec<u8>),
    /// A line that was longer than the limit; its bytes were dropped up to and including CRLF.
    TooLong,
    /// A line that contained a bare CR, bare LF or NUL; dropped up to and including CRLF.
    Invalid,
}

/// Incremental line reader over a session's input buffer.
#[derive(Debug)]
pub struct LineReader {
    max_line: usize,
    /// Bytes of an over-long line are being dropped until its CRLF.
    discarding: bool,
}

impl LineReader {
    /// `max_line` counts the CRLF.
    pub fn new(max_line: usize) -> Self {
        Self { max_line, discarding: false }
    }

    /// Takes the next line off the front of `buf`, or returns `None` when more input is needed.
    /// An over-long line is dropped as it arrives, so `buf` never holds more than `max_line`
    /// bytes of one line.
    pub fn next_line(&mut self, buf: &mut BytesMut) -> Option<Line> {
        match find_crlf(buf) {
            Some(end) => {
                let line = buf.split_to(end + 2);
                let line = &line[..end];
                if std::mem::take(&mut self.discarding) || line.len() + 2 > self.max_line {
                    return Some(Line::TooLong);
                }
                if line.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
                    return Some(Line::Invalid);
                }
                Some(Line::Complete(line.to_vec()))
            }
            None => {
                if buf.len() >= self.max_line {
                    // Keep a trailing CR: it may be the first half of the CRLF that ends the line.
                    let keep = usize::from(buf.last() == Some(&b'\r'));
                    buf.advance(buf.len() - keep);
                    self.discarding = true;
                }
                None
            }
        }
    }

    /// True while the reader is dropping the rest of an over-long line.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[&[u8]], max: usize) -> Vec<Line> {
        let mut reader = LineReader::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            while let Some(line) = reader.next_line(&mut buf) {
                out.push(line);
            }
            assert!(buf.len() <= max + chunk.len());
        }
        out
    }

    #[test]
    fn frames_lines_only_on_crlf() {
        assert_eq!(
            lines(&[b"NOOP\r\nQUIT\r\n"], 512),
            vec![Line::Complete(b"NOOP".to_vec()), Line::Complete(b"QUIT".to_vec())]
        );
        assert_eq!(lines(&[b"NO", b"OP\r", b"\n"], 512), vec![Line::Complete(b"NOOP".to_vec())]);
        assert_eq!(lines(&[b"NOOP\nMAIL FROM:<a@b>\r\n"], 512), vec![Line::Invalid]);
        assert_eq!(lines(&[b"NOOP\rX\r\n"], 512), vec![Line::Invalid]);
        assert_eq!(lines(&[b"\0MAIL FROM:<a@b>\r\n"], 512), vec![Line::Invalid]);
    }

    #[test]
    fn drops_overlong_lines_with_bounded_memory() {
        let long = vec![b'a'; 100_000];
        assert_eq!(lines(&[&long, &long, b"\r\nNOOP\r\n"], 512), vec![Line::TooLong, Line::Complete(b"NOOP".to_vec())]);
        // The CRLF split across the discard boundary still ends the line.
        assert_eq!(lines(&[&long, b"\r", b"\nNOOP\r\n"], 512), vec![Line::TooLong, Line::Complete(b"NOOP".to_vec())]);
        let exact = [vec![b'a'; 510], b"\r\n".to_vec()].concat();
        assert_eq!(lines(&[&exact], 512), vec![Line::Complete(vec![b'a'; 510])]);
        let over = [vec![b'a'; 511], b"\r\n".to_vec()].concat();
        assert_eq!(lines(&[&over], 512), vec![Line::TooLong]);
    }
}
