//! Header sections: any content parses (or is refused for too many fields) without a panic;
//! unchanged, it renders back byte for byte; after any edits it renders without a bare CR or
//! LF, as long as its rendered length says.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wasmtp::message::HeaderSection;
use wasmtp::message::headers::Field;

#[derive(Debug, Arbitrary)]
enum Op {
    Append(String, String),
    Insert(u8, String, String),
    Change(String, u8, String),
    Remove(String, u8),
    RemoveAll(String),
    Compact,
}

#[derive(Debug, Arbitrary)]
struct Input {
    content: Vec<u8>,
    ops: Vec<Op>,
}

/// What the edit model itself guarantees once validation let a name and value through.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.len() < 100 && s.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

fuzz_target!(|input: Input| {
    let Ok(mut h) = HeaderSection::parse(&input.content, 200) else { return };
    let offset = h.body_offset as usize;
    assert!(offset <= input.content.len());
    let mut rendered = h.render(offset == input.content.len());
    rendered.extend_from_slice(&input.content[offset..]);
    assert_eq!(rendered, input.content, "an unchanged section renders byte for byte");
    for op in input.ops {
        match op {
            Op::Append(name, value) if plain(&name) && plain(&value) => h.append(Field::new(&name, &value)),
            Op::Insert(at, name, value) if plain(&name) && plain(&value) && usize::from(at) <= h.len() => {
                h.insert(at.into(), Field::new(&name, &value))
            }
            Op::Change(name, occurrence, value) if plain(&value) => {
                let _ = h.set_value(&name, occurrence.into(), &value);
            }
            Op::Remove(name, occurrence) => {
                let before = h.len();
                let removed = h.remove(&name, occurrence.into());
                assert_eq!(h.len(), before - usize::from(removed));
            }
            Op::RemoveAll(name) => {
                h.remove_where(|f| f.name.eq_ignore_ascii_case(&name));
                assert!(!h.find(&name, 1));
            }
            Op::Compact => h.compact(),
            _ => {}
        }
        let out = h.render(false);
        assert_eq!(out.len(), h.rendered_len(false));
    }
});
