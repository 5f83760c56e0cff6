//! Command framing over any input split any way: the buffer never holds more than one line
//! past the limit, complete lines hold no CR, LF or NUL, and how the input is split does not
//! change what comes out.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wasmtp::smtp::line::{Line, LineReader};

const MAX: usize = 512;

fn frame(input: &[u8], chunk: usize) -> Vec<Line> {
    let mut reader = LineReader::new(MAX);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(line) = reader.next_line(&mut buf) {
            if let Line::Complete(bytes) = &line {
                assert!(bytes.len() + 2 <= MAX);
                assert!(!bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
            }
            out.push(line);
        }
        assert!(buf.len() <= MAX + piece.len());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else { return };
    assert_eq!(frame(input, chunk as usize), frame(input, input.len().max(1)));
});
