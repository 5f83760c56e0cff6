//! The DATA receiver over any input split any way, under both line-ending policies: the same
//! content and the same end whatever the split; under `normalize` the content is canonical
//! CRLF without NUL; and dot-stuffing the content then receiving it again gives it back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmtp::smtp::data::{DataReceiver, DotStuffer, LineEndings};

fn receive(input: &[u8], chunk: usize, policy: LineEndings) -> (Vec<u8>, Option<usize>, bool) {
    let mut rx = DataReceiver::new(policy, 1 << 20, 4096);
    let mut content = Vec::new();
    let mut offset = 0;
    for piece in input.chunks(chunk.max(1)) {
        let fed = rx.feed(piece, &mut content);
        assert!(fed.consumed <= piece.len());
        if fed.done {
            return (content, Some(offset + fed.consumed), rx.faults().bad_line_endings());
        }
        assert_eq!(fed.consumed, piece.len(), "everything before the end is consumed");
        offset += piece.len();
    }
    (content, None, rx.faults().bad_line_endings())
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else { return };
    for policy in [LineEndings::Reject, LineEndings::Normalize] {
        let whole = receive(input, input.len().max(1), policy);
        assert_eq!(receive(input, chunk as usize, policy), whole, "{policy:?}");
        let (content, end, _) = whole;
        if policy == LineEndings::Normalize && end.is_some() {
            assert!(!content.contains(&0));
            for (i, &b) in content.iter().enumerate() {
                match b {
                    b'\r' => assert_eq!(content.get(i + 1), Some(&b'\n')),
                    b'\n' => assert!(i > 0 && content[i - 1] == b'\r'),
                    _ => {}
                }
            }
            // Canonical content survives the round trip through the wire form.
            let mut wire = Vec::new();
            let mut stuffer = DotStuffer::new();
            stuffer.stuff(&content, &mut wire);
            stuffer.finish(&mut wire);
            let (again, again_end, faults) = receive(&wire, wire.len(), LineEndings::Reject);
            assert_eq!(again_end, Some(wire.len()));
            assert!(!faults);
            assert_eq!(again, content);
        }
    }
});
