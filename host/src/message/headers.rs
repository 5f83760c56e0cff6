//! The header section of a message as plugins see and edit it: fields addressed by
//! (name, occurrence) or by index, unchanged fields written back byte for byte.
//!
//! Hand-written rather than taken from a MIME crate: relaying byte for byte needs each field's
//! original bytes, plugins need values unfolded but otherwise undecoded, and the section must
//! end exactly where a mail reader ends it (the blank line, or the first line that is neither a
//! field nor a continuation). `mail-parser` (already a dependency through mail-auth) decodes
//! RFC 2047 words and charsets into its values and recovers from malformed lines differently,
//! so it would change what plugins see and where the body starts.

/// Most octets read to find the end of the header section. A longer header section is not
/// parsed: plugins then see the first fields only and the rest stays part of the body bytes.
pub const MAX_HEADER_SECTION: usize = 1 << 20;

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// Unfolded value, leading whitespace removed.
    pub value: String,
    /// The original bytes (all lines, CRLF included) when unchanged; `None` once edited.
    raw: Option<Vec<u8>>,
}

impl Field {
    pub fn new(name: &str, value: &str) -> Self {
        Self { name: name.to_string(), value: value.to_string(), raw: None }
    }

    /// Octets this field renders to.
    fn rendered_len(&self) -> usize {
        match &self.raw {
            Some(raw) => raw.len(),
            None => self.name.len() + 2 + self.value.len() + 2,
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match &self.raw {
            Some(raw) => out.extend_from_slice(raw),
            None => {
                out.extend_from_slice(self.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(self.value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// The header section and where the body starts in the original content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSection {
    pub fields: Vec<Field>,
    /// Offset of the body in the original content (after the blank line, if any).
    pub body_offset: u64,
    /// The original had a blank line between header and body.
    blank_line: bool,
    changed: bool,
}

impl HeaderSection {
    /// Parses the header section at the start of `content` (CRLF line endings). It ends at the
    /// blank line, or at the first line that is neither a field nor a continuation (that line
    /// then starts the body, as mail readers treat it).
    pub fn parse(content: &[u8]) -> Self {
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = 0;
        loop {
            let Some(len) = memchr::memmem::find(&content[pos..], b"\r\n") else {
                // No complete line left: whatever remains is body.
                return Self { fields, body_offset: pos as u64, blank_line: false, changed: false };
            };
            let line = &content[pos..pos + len];
            let next = pos + len + 2;
            if line.is_empty() {
                return Self { fields, body_offset: next as u64, blank_line: true, changed: false };
            }
            if matches!(line[0], b' ' | b'\t') {
                if let Some(field) = fields.last_mut() {
                    field.value.push_str(&String::from_utf8_lossy(line));
                    field.raw.get_or_insert_with(Vec::new).extend_from_slice(&content[pos..next]);
                    pos = next;
                    continue;
                }
                return Self { fields, body_offset: pos as u64, blank_line: false, changed: false };
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Self { fields, body_offset: pos as u64, blank_line: false, changed: false };
            };
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                return Self { fields, body_offset: pos as u64, blank_line: false, changed: false };
            }
            let value = String::from_utf8_lossy(&line[colon + 1..]).trim_start().to_string();
            fields.push(Field {
                name: String::from_utf8_lossy(name).into_owned(),
                value,
                raw: Some(content[pos..next].to_vec()),
            });
            pos = next;
        }
    }

    /// Index of the `occurrence`-th (from 1) field called `name`, case-insensitive.
    pub fn find(&self, name: &str, occurrence: u32) -> Option<usize> {
        if occurrence == 0 {
            return None;
        }
        self.fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name.eq_ignore_ascii_case(name))
            .nth(occurrence as usize - 1)
            .map(|(i, _)| i)
    }

    pub fn append(&mut self, field: Field) {
        self.fields.push(field);
        self.changed = true;
    }

    /// Inserts at `index` (0 = first); `index` must be at most the number of fields.
    pub fn insert(&mut self, index: usize, field: Field) {
        self.fields.insert(index, field);
        self.changed = true;
    }

    pub fn set_value(&mut self, index: usize, value: &str) {
        let field = &mut self.fields[index];
        field.value = value.to_string();
        field.raw = None;
        self.changed = true;
    }

    pub fn remove(&mut self, index: usize) {
        self.fields.remove(index);
        self.changed = true;
    }

    /// The length of [`HeaderSection::render`]'s output, without rendering.
    pub fn rendered_len(&self, body_is_empty: bool) -> usize {
        self.fields.iter().map(Field::rendered_len).sum::<usize>() + if self.separated(body_is_empty) { 2 } else { 0 }
    }

    /// Whether the rendered section ends with the blank line.
    fn separated(&self, body_is_empty: bool) -> bool {
        self.blank_line || (self.changed && !self.fields.is_empty() && !body_is_empty)
    }

    /// Renders the header section including the blank line that separates it from the body
    /// (kept when the original had it, added when edits made a header section appear in front of
    /// a body).
    pub fn render(&self, body_is_empty: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for field in &self.fields {
            field.write_to(&mut out);
        }
        if self.separated(body_is_empty) {
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: a@example.org\r\nSubject: hello\r\n  world\r\nX-Tag: 1\r\nx-tag: 2\r\n\r\nbody\r\n";

    #[test]
    fn parses_fields_and_unfolds_values() {
        let h = HeaderSection::parse(MSG);
        let names: Vec<_> = h.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["From", "Subject", "X-Tag", "x-tag"]);
        assert_eq!(h.fields[1].value, "hello  world");
        assert_eq!(&MSG[h.body_offset as usize..], b"body\r\n");
        assert_eq!(h.find("X-TAG", 2), Some(3));
        assert_eq!(h.find("x-tag", 3), None);
        assert_eq!(h.find("x-tag", 0), None);
    }

    #[test]
    fn unchanged_sections_render_byte_for_byte() {
        let h = HeaderSection::parse(MSG);
        let mut out = h.render(false);
        out.extend_from_slice(&MSG[h.body_offset as usize..]);
        assert_eq!(out, MSG);
    }

    #[test]
    fn edits_render_in_place() {
        let mut h = HeaderSection::parse(MSG);
        h.set_value(1, "changed");
        h.remove(h.find("x-tag", 1).unwrap());
        h.insert(0, Field::new("X-First", "1"));
        h.append(Field::new("X-Last", "2"));
        assert_eq!(h.rendered_len(false), h.render(false).len());
        assert_eq!(
            h.render(false),
            b"X-First: 1\r\nFrom: a@example.org\r\nSubject: changed\r\nx-tag: 2\r\nX-Last: 2\r\n\r\n"
        );
    }

    #[test]
    fn a_body_without_header_section() {
        let h = HeaderSection::parse(b"just a body line\r\n");
        assert!(h.fields.is_empty());
        assert_eq!(h.body_offset, 0);
        let mut h = HeaderSection::parse(b"");
        h.append(Field::new("Subject", "x"));
        assert_eq!(h.render(true), b"Subject: x\r\n");
        let mut h = HeaderSection::parse(b"body\r\n");
        h.append(Field::new("Subject", "x"));
        assert_eq!(h.render(false), b"Subject: x\r\n\r\n");
    }
}
