//! The DATA receiver: turns the dot-stuffed wire form of a message into its content, finding
//! the one true end of data (`CRLF.CRLF`) however the bytes are split across reads.
//!
//! Line endings are where smuggling lives (`\n.\n`, `\r.\r`, NUL tricks — see
//! tests/data/smuggling_vectors.json). The receiver therefore recognises a line start only after
//! CRLF; a bare CR, bare LF or NUL never ends data and never starts a line that could be
//! unstuffed. Under [`LineEndings::Reject`] such bytes are recorded as a fault and the message is
//! refused after its real end; under [`LineEndings::Normalize`] bare CR and LF become CRLF and NUL
//! is dropped, and whatever follows is literal content, so a `.` line that arrived after a bare LF
//! is re-stuffed on the way out instead of ending anything.
//!
//! The content it produces always uses CRLF and includes the CRLF of its last line; the final
//! `.` line is not part of it.

use serde::Deserialize;

/// What to do with bare CR, bare LF and NUL in message data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEndings {
    /// Read to the real end of data, then refuse the message with `550 5.6.0`.
    #[default]
    Reject,
    /// Convert bare CR and bare LF to CRLF and drop NUL; the result is relayed re-stuffed.
    Normalize,
}

/// Faults seen in one message; all of them are decided on after the end of data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    pub bare_cr: bool,
    pub bare_lf: bool,
    pub nul: bool,
    /// A line exceeded the configured maximum line length.
    pub long_line: bool,
    /// The content exceeded the configured maximum size; output stopped at the limit.
    pub too_big: bool,
}

impl Faults {
    pub fn bad_line_endings(&self) -> bool {
        self.bare_cr || self.bare_lf || self.nul
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line that followed CRLF (or the start of data).
    LineStart,
    /// Inside a line.
    Text,
    /// Saw CR inside a line.
    Cr,
    /// Saw `.` at a line start.
    Dot,
    /// Saw `.` CR at a line start.
    DotCr,
}

/// Incremental receiver for one message.
#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    policy: LineEndings,
    max_size: u64,
    max_line: usize,
    size: u64,
    line_len: usize,
    faults: Faults,
}

/// Result of feeding input to the receiver.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of input used; anything after the end of data is left for the command reader.
    pub consumed: usize,
    /// The end of data was found.
    pub done: bool,
}

impl DataReceiver {
    /// `max_size` bounds the content; `max_line` bounds a line, CRLF included.
    pub fn new(policy: LineEndings, max_size: u64, max_line: usize) -> Self {
        Self { state: State::LineStart, policy, max_size, max_line, size: 0, line_len: 0, faults: Faults::default() }
    }

    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// Content octets seen so far, including any past the size limit that were not kept.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Consumes input up to and including the end of data, appending content to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::LineStart => {
                    if b == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Text => {
                    let rest = &input[i..];
                    let run = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
                    self.emit(&rest[..run], out);
                    i += run;
                    if i == input.len() {
                        break;
                    }
                    i += 1;
                    match input[i - 1] {
                        b'\r' => self.state = State::Cr,
                        b'\n' => {
                            self.faults.bare_lf = true;
                            self.normalized_line_end(out);
                        }
                        _ => self.faults.nul = true, // NUL: dropped when normalizing
                    }
                }
                State::Cr => {
                    if b == b'\n' {
                        i += 1;
                        self.end_line(out);
                        self.state = State::LineStart;
                    } else {
                        self.faults.bare_cr = true;
                        self.normalized_line_end(out);
                        self.state = State::Text;
                    }
                }
                State::Dot => match b {
                    b'\r' => {
                        self.state = State::DotCr;
                        i += 1;
                    }
                    b'\n' | 0 => {
                        // ".\n" or ".\0": not a stuffed line but a literal dot before a fault.
                        self.emit(b".", out);
                        self.state = State::Text;
                    }
                    _ => {
                        // The leading dot of any other line is stuffing (RFC 5321 §4.5.2).
                        self.state = State::Text;
                    }
                },
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::LineStart;
                        return Fed { consumed: i + 1, done: true };
                    }
                    // ".\r" followed by anything else: a line holding a dot, ended by a bare CR.
                    self.emit(b".", out);
                    self.faults.bare_cr = true;
                    self.normalized_line_end(out);
                    self.state = State::Text;
                }
            }
        }
        Fed { consumed: input.len(), done: false }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.line_len += bytes.len();
        if self.line_len + 2 > self.max_line {
            self.faults.long_line = true;
        }
        self.keep(bytes, out);
    }

    fn keep(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.faults.too_big = true;
        } else if !self.faults.too_big {
            out.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        self.line_len = 0;
        self.keep(b"\r\n", out);
    }

    /// A bare CR or LF ended a line: under `Normalize` it becomes CRLF, under `Reject` the
    /// message is refused anyway, so the same is done to keep line lengths meaningful.
    fn normalized_line_end(&mut self, out: &mut Vec<u8>) {
        self.end_line(out);
    }

    pub fn policy(&self) -> LineEndings {
        self.policy
    }
}

/// Dot-stuffs content for the wire (RFC 5321 §4.5.2) and terminates it with `.CRLF`, making sure
/// the last line ends in CRLF first. Chunks may split lines anywhere.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    last: Option<u8>,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self { at_line_start: true, last: None }
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the stuffed form of `chunk` to `out`.
    pub fn stuff(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.at_line_start && rest[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', rest) {
                Some(nl) => {
                    out.extend_from_slice(&rest[..=nl]);
                    rest = &rest[nl + 1..];
                    self.at_line_start = true;
                }
                None => {
                    out.extend_from_slice(rest);
                    rest = &[];
                    self.at_line_start = false;
                }
            }
        }
        if let Some(&b) = chunk.last() {
            self.last = Some(b);
        }
    }

    /// Appends the end of data: a CRLF if the content did not end with one, then `.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.last.is_some() && !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` split into `chunk`-sized pieces; returns content, faults and leftover bytes.
    fn receive(wire: &[u8], chunk: usize, policy: LineEndings) -> (Vec<u8>, Faults, Vec<u8>, bool) {
        let mut rx = DataReceiver::new(policy, 1 << 20, 1000);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let end = (pos + chunk).min(wire.len());
            let fed = rx.feed(&wire[pos..end], &mut out);
            pos += fed.consumed;
            if fed.done {
                return (out, rx.faults(), wire[pos..].to_vec(), true);
            }
        }
        (out, rx.faults(), Vec::new(), false)
    }

    fn stuff(content: &[u8]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.stuff(content, &mut out);
        s.finish(&mut out);
        out
    }

    #[test]
    fn finds_the_end_of_data_however_the_input_is_split() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n";
        for chunk in 1..wire.len() {
            let (content, faults, rest, done) = receive(wire, chunk, LineEndings::Reject);
            assert!(done);
            assert_eq!(content, b"Subject: x\r\n\r\n.leading dot\r\nbody\r\n");
            assert_eq!(faults, Faults::default());
            assert_eq!(rest, b"QUIT\r\n");
        }
    }

    #[test]
    fn empty_message_and_unstuffed_dot_lines() {
        assert_eq!(receive(b".\r\n", 1, LineEndings::Reject).0, b"");
        // A client that forgot to stuff: the leading dot is removed, as RFC 5321 says.
        assert_eq!(receive(b".x\r\n.\r\n", 3, LineEndings::Reject).0, b"x\r\n");
    }

    #[test]
    fn every_smuggling_vector_is_content_never_an_end() {
        let vectors: &[&[u8]] = &[
            b"\n.\n",
            b"\n.\r\n",
            b"\r.\r",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\n.\r",
            b"\r.\n",
            b"\r\n\0.\r\n",
            b"\r\n.\0\r\n",
            b"\r\n.\r\r\n",
            b"\r\r\n.\r\r\n",
            b"\0\r\n.\r\n",
            b"\r\0\n.\r\n",
            b"\r\n.\r\0\n",
        ];
        for policy in [LineEndings::Reject, LineEndings::Normalize] {
            for v in vectors {
                let mut wire = b"body\r\n".to_vec();
                wire.extend_from_slice(v);
                wire.extend_from_slice(b"MAIL FROM:<spoof@evil.example>\r\n");
                // `\0\r\n.\r\n` holds a genuine CRLF.CRLF: data ends there, with the NUL flagged.
                let genuine_end = wire.windows(5).any(|w| w == b"\r\n.\r\n");
                for chunk in [1, 2, 3, 1024] {
                    let (content, faults, _, done) = receive(&wire, chunk, policy);
                    assert_eq!(done, genuine_end, "{v:?} ({policy:?}, chunk {chunk})");
                    assert!(faults.bad_line_endings(), "{v:?} not flagged");
                    // Re-stuffed, the smuggled text can never end data upstream.
                    let wire_out = stuff(&content);
                    let body = &wire_out[..wire_out.len() - 3];
                    assert!(!body.windows(5).any(|w| w == b"\r\n.\r\n"), "{v:?} re-stuffing failed");
                    if policy == LineEndings::Normalize {
                        assert!(!content.contains(&0), "NUL kept");
                        for (i, &b) in content.iter().enumerate() {
                            if b == b'\n' {
                                assert_eq!(content[i - 1], b'\r', "{v:?} bare LF kept");
                            }
                            if b == b'\r' {
                                assert_eq!(content.get(i + 1), Some(&b'\n'), "{v:?} bare CR kept");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn normalize_restuffs_a_dot_line_that_followed_a_bare_lf() {
        let (content, _, _, done) = receive(b"a\n.\nb\r\n.\r\n", 1, LineEndings::Normalize);
        assert!(done);
        assert_eq!(content, b"a\r\n.\r\nb\r\n");
        assert_eq!(stuff(&content), b"a\r\n..\r\nb\r\n.\r\n");
    }

    #[test]
    fn size_and_line_limits_are_recorded_not_truncated_silently() {
        let mut rx = DataReceiver::new(LineEndings::Reject, 10, 1000);
        let mut out = Vec::new();
        assert!(rx.feed(b"0123456789abcdef\r\n.\r\n", &mut out).done);
        assert!(rx.faults().too_big);
        assert!(out.len() <= 10);

        let line = [vec![b'x'; 998], b"\r\n.\r\n".to_vec()].concat();
        let mut rx = DataReceiver::new(LineEndings::Reject, 1 << 20, 1000);
        let mut out = Vec::new();
        assert!(rx.feed(&line, &mut out).done);
        assert!(!rx.faults().long_line);
        assert_eq!(out.len(), 1000);
        let line = [vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat();
        let mut rx = DataReceiver::new(LineEndings::Reject, 1 << 20, 1000);
        assert!(rx.feed(&line, &mut Vec::new()).done);
        assert!(rx.faults().long_line);
    }

    #[test]
    fn stuffing_round_trips() {
        let samples: &[&[u8]] = &[b"", b"a", b".", b"..\r\n", b"a\r\n.\r\n.b\r\n", b"x\r\n.", b"\r\n\r\n"];
        for s in samples {
            let wire = stuff(s);
            let (content, faults, rest, done) = receive(&wire, 1, LineEndings::Reject);
            assert!(done && rest.is_empty() && faults == Faults::default(), "{s:?}");
            let mut expect = s.to_vec();
            if !expect.is_empty() && !expect.ends_with(b"\r\n") {
                expect.extend_from_slice(b"\r\n");
            }
            assert_eq!(content, expect, "{s:?}");
        }
    }

    /// Deterministic pseudo-random inputs (xorshift), so the property runs the same everywhere.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_content_survives_stuffing_and_any_split() {
        let alphabet: &[u8] = b".\r\nab ";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            // Canonical content: lines of random length made of dots, letters and spaces.
            let mut content = Vec::new();
            for _ in 0..rng.below(6) {
                for _ in 0..rng.below(6) {
                    let b = alphabet[rng.below(alphabet.len())];
                    if b != b'\r' && b != b'\n' {
                        content.push(b);
                    }
                }
                content.extend_from_slice(b"\r\n");
            }
            let wire = stuff(&content);
            let chunk = 1 + rng.below(8);
            let (got, faults, rest, done) = receive(&wire, chunk, LineEndings::Reject);
            assert!(done && rest.is_empty() && faults == Faults::default(), "{content:?}");
            assert_eq!(got, content);
        }
    }

    #[test]
    fn random_bytes_never_panic_and_never_end_early() {
        let alphabet: &[u8] = b".\r\n\0a";
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for _ in 0..5000 {
            let len = rng.below(40);
            let input: Vec<u8> = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            for policy in [LineEndings::Reject, LineEndings::Normalize] {
                let mut rx = DataReceiver::new(policy, 1 << 20, 1000);
                let mut out = Vec::new();
                let fed = rx.feed(&input, &mut out);
                if fed.done {
                    // Data may only end right after a genuine CRLF.CRLF (or ".CRLF" at the start).
                    let prefix = &input[..fed.consumed];
                    assert!(prefix == b".\r\n" || prefix.ends_with(b"\r\n.\r\n"), "{input:?}");
                }
            }
        }
    }
}
