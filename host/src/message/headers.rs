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

/// The header section has more fields than the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the header section has more than {0} fields")]
pub struct TooManyFields(pub usize);

/// The header section and where the body starts in the original content.
///
/// Edits are linear in the number of fields: a removal only marks the field (it leaves on the
/// next [`HeaderSection::compact`] or render), and fields are found by (name, occurrence)
/// through a per-name index with a Fenwick tree of the live occurrences, so removing every one
/// of N fields, in any order, costs O(N log N). Only an insert at a position shifts the fields
/// and drops the index (O(N) each; the edits of one call and the fields of a message are
/// capped, so that stays bounded).
#[derive(Debug, Clone)]
pub struct HeaderSection {
    /// In order, including removed fields until the next compaction.
    fields: Vec<Slot>,
    removed: usize,
    /// Built on the first lookup by name; `None` after an insert.
    index: Option<NameIndex>,
    /// Offset of the body in the original content (after the blank line, if any).
    pub body_offset: u64,
    /// The original had a blank line between header and body.
    blank_line: bool,
    changed: bool,
}

#[derive(Debug, Clone)]
struct Slot {
    field: Field,
    removed: bool,
}

impl PartialEq for HeaderSection {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
            && self.body_offset == other.body_offset
            && self.blank_line == other.blank_line
            && self.changed == other.changed
    }
}

impl Eq for HeaderSection {}

/// Where each name's fields are, in order, and how many of them are still there.
#[derive(Debug, Clone, Default)]
struct NameIndex {
    by_name: std::collections::HashMap<String, Occurrences>,
}

#[derive(Debug, Clone, Default)]
struct Occurrences {
    /// Positions in `fields`, ascending.
    positions: Vec<usize>,
    /// 1 for each position whose field is still there.
    live: Fenwick,
}

impl HeaderSection {
    /// Parses the header section at the start of `content` (CRLF line endings). It ends at the
    /// blank line, or at the first line that is neither a field nor a continuation (that line
    /// then starts the body, as mail readers treat it). More than `max_fields` fields is an
    /// error: every later step works per field.
    pub fn parse(content: &[u8], max_fields: usize) -> Result<Self, TooManyFields> {
        let mut fields: Vec<Slot> = Vec::new();
        let mut pos = 0;
        let (body_offset, blank_line) = loop {
            let Some(len) = memchr::memmem::find(&content[pos..], b"\r\n") else {
                // No complete line left: whatever remains is body.
                break (pos, false);
            };
            let line = &content[pos..pos + len];
            let next = pos + len + 2;
            if line.is_empty() {
                break (next, true);
            }
            if matches!(line[0], b' ' | b'\t') {
                let Some(slot) = fields.last_mut() else { break (pos, false) };
                slot.field.value.push_str(&String::from_utf8_lossy(line));
                slot.field.raw.get_or_insert_with(Vec::new).extend_from_slice(&content[pos..next]);
                pos = next;
                continue;
            }
            let Some(colon) = memchr::memchr(b':', line) else { break (pos, false) };
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                break (pos, false);
            }
            if fields.len() == max_fields {
                return Err(TooManyFields(max_fields));
            }
            let value = String::from_utf8_lossy(&line[colon + 1..]).trim_start().to_string();
            let field = Field {
                name: String::from_utf8_lossy(name).into_owned(),
                value,
                raw: Some(content[pos..next].to_vec()),
            };
            fields.push(Slot { field, removed: false });
            pos = next;
        };
        Ok(Self { fields, removed: 0, index: None, body_offset: body_offset as u64, blank_line, changed: false })
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|s| !s.removed).map(|s| &s.field)
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.fields.len() - self.removed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn index(&mut self) -> &mut NameIndex {
        let fields = &self.fields;
        self.index.get_or_insert_with(|| {
            let mut index = NameIndex::default();
            for (position, slot) in fields.iter().enumerate() {
                let occurrences = index.by_name.entry(slot.field.name.to_ascii_lowercase()).or_default();
                occurrences.positions.push(position);
                occurrences.live.push(u32::from(!slot.removed));
            }
            index
        })
    }

    /// The position of the `occurrence`-th (from 1) field called `name`, case-insensitive.
    fn position(&mut self, name: &str, occurrence: u32) -> Option<(usize, usize)> {
        let k = occurrence.checked_sub(1)? as usize;
        let occurrences = self.index().by_name.get(&name.to_ascii_lowercase())?;
        let j = occurrences.live.find_kth(k)?;
        Some((occurrences.positions[j], j))
    }

    /// Whether the `occurrence`-th (from 1) field called `name` exists, case-insensitive.
    pub fn find(&mut self, name: &str, occurrence: u32) -> bool {
        self.position(name, occurrence).is_some()
    }

    pub fn append(&mut self, field: Field) {
        let position = self.fields.len();
        if let Some(index) = &mut self.index {
            let occurrences = index.by_name.entry(field.name.to_ascii_lowercase()).or_default();
            occurrences.positions.push(position);
            occurrences.live.push(1);
        }
        self.fields.push(Slot { field, removed: false });
        self.changed = true;
    }

    /// Inserts at `index` (0 = first); `index` must be at most [`HeaderSection::len`].
    pub fn insert(&mut self, index: usize, field: Field) {
        self.compact();
        self.fields.insert(index, Slot { field, removed: false });
        self.index = None;
        self.changed = true;
    }

    /// Sets the value of the `occurrence`-th field called `name`; false if there is none.
    pub fn set_value(&mut self, name: &str, occurrence: u32, value: &str) -> bool {
        let Some((position, _)) = self.position(name, occurrence) else { return false };
        let field = &mut self.fields[position].field;
        field.value = value.to_string();
        field.raw = None;
        self.changed = true;
        true
    }

    /// Removes the `occurrence`-th field called `name`; false if there is none.
    pub fn remove(&mut self, name: &str, occurrence: u32) -> bool {
        let Some((position, j)) = self.position(name, occurrence) else { return false };
        let key = name.to_ascii_lowercase();
        self.index().by_name.get_mut(&key).expect("found above").live.add(j, -1);
        self.fields[position].removed = true;
        self.removed += 1;
        self.changed = true;
        true
    }

    /// Removes every field `remove` picks, in one pass; returns how many.
    pub fn remove_where(&mut self, mut remove: impl FnMut(&Field) -> bool) -> usize {
        let mut count = 0;
        for slot in self.fields.iter_mut().filter(|s| !s.removed) {
            if remove(&slot.field) {
                slot.removed = true;
                count += 1;
            }
        }
        if count > 0 {
            self.removed += count;
            self.index = None;
            self.changed = true;
        }
        count
    }

    /// Drops removed fields for good (their positions shift, so the index goes too).
    pub fn compact(&mut self) {
        if self.removed > 0 {
            self.fields.retain(|s| !s.removed);
            self.removed = 0;
            self.index = None;
        }
    }

    /// The length of [`HeaderSection::render`]'s output, without rendering.
    pub fn rendered_len(&self, body_is_empty: bool) -> usize {
        self.iter().map(Field::rendered_len).sum::<usize>() + if self.separated(body_is_empty) { 2 } else { 0 }
    }

    /// Whether the rendered section ends with the blank line.
    fn separated(&self, body_is_empty: bool) -> bool {
        self.blank_line || (self.changed && !self.is_empty() && !body_is_empty)
    }

    /// Renders the header section including the blank line that separates it from the body
    /// (kept when the original had it, added when edits made a header section appear in front of
    /// a body).
    pub fn render(&self, body_is_empty: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rendered_len(body_is_empty));
        for field in self.iter() {
            field.write_to(&mut out);
        }
        if self.separated(body_is_empty) {
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// A Fenwick (binary indexed) tree of counts: prefix sums, point updates and "the k-th unit"
/// in O(log n).
#[derive(Debug, Clone, Default)]
struct Fenwick {
    /// 1-based: `tree[i - 1]` covers elements `(i - lowbit(i), i]`.
    tree: Vec<i64>,
}

impl Fenwick {
    fn prefix(&self, mut i: usize) -> i64 {
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i - 1];
            i &= i - 1;
        }
        sum
    }

    /// Appends an element with count `value`.
    fn push(&mut self, value: u32) {
        let i = self.tree.len() + 1;
        let low = i & i.wrapping_neg();
        // The new node covers (i - low, i]: the earlier elements of that range, plus this one.
        let covered = self.prefix(i - 1) - self.prefix(i - low);
        self.tree.push(covered + i64::from(value));
    }

    /// Adds `delta` to element `j` (0-based).
    fn add(&mut self, j: usize, delta: i64) {
        let mut i = j + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] += delta;
            i += i & i.wrapping_neg();
        }
    }

    /// The element holding the `k`-th unit (0-based), if there are more than `k` units.
    fn find_kth(&self, k: usize) -> Option<usize> {
        let mut remaining = k as i64 + 1;
        let mut pos = 0;
        let mut step = self.tree.len().checked_next_power_of_two()?;
        while step > 0 {
            let next = pos + step;
            if next <= self.tree.len() && self.tree[next - 1] < remaining {
                pos = next;
                remaining -= self.tree[next - 1];
            }
            step >>= 1;
        }
        (pos < self.tree.len()).then_some(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: a@example.org\r\nSubject: hello\r\n  world\r\nX-Tag: 1\r\nx-tag: 2\r\n\r\nbody\r\n";

    fn parse(content: &[u8]) -> HeaderSection {
        HeaderSection::parse(content, 1000).unwrap()
    }

    fn names(h: &HeaderSection) -> Vec<&str> {
        h.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn parses_fields_and_unfolds_values() {
        let mut h = parse(MSG);
        assert_eq!(names(&h), ["From", "Subject", "X-Tag", "x-tag"]);
        assert_eq!(h.iter().nth(1).unwrap().value, "hello  world");
        assert_eq!(&MSG[h.body_offset as usize..], b"body\r\n");
        assert!(h.find("X-TAG", 2));
        assert!(!h.find("x-tag", 3));
        assert!(!h.find("x-tag", 0));
    }

    #[test]
    fn unchanged_sections_render_byte_for_byte() {
        let h = parse(MSG);
        let mut out = h.render(false);
        out.extend_from_slice(&MSG[h.body_offset as usize..]);
        assert_eq!(out, MSG);
    }

    #[test]
    fn edits_render_in_place() {
        let mut h = parse(MSG);
        assert!(h.set_value("subject", 1, "changed"));
        assert!(h.remove("x-tag", 1));
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
        let h = parse(b"just a body line\r\n");
        assert!(h.is_empty());
        assert_eq!(h.body_offset, 0);
        let mut h = parse(b"");
        h.append(Field::new("Subject", "x"));
        assert_eq!(h.render(true), b"Subject: x\r\n");
        let mut h = parse(b"body\r\n");
        h.append(Field::new("Subject", "x"));
        assert_eq!(h.render(false), b"Subject: x\r\n\r\n");
    }

    #[test]
    fn too_many_fields_is_an_error() {
        let many: Vec<u8> = (0..11).flat_map(|i| format!("X-{i}: v\r\n").into_bytes()).collect();
        assert_eq!(HeaderSection::parse(&many, 10).unwrap_err(), TooManyFields(10));
        assert_eq!(HeaderSection::parse(&many, 11).unwrap().len(), 11);
    }

    #[test]
    fn occurrences_follow_removals_appends_and_inserts() {
        let mut h = parse(b"A: 1\r\nB: 1\r\nA: 2\r\nA: 3\r\n\r\n");
        assert!(h.remove("a", 2));
        assert!(h.set_value("A", 2, "three"), "the third A is now the second");
        h.append(Field::new("a", "4"));
        assert!(h.remove("A", 3));
        assert!(!h.remove("A", 3));
        h.insert(1, Field::new("A", "0"));
        assert!(h.remove("A", 1));
        let values: Vec<_> = h.iter().map(|f| format!("{}={}", f.name, f.value)).collect();
        assert_eq!(values, ["A=0", "B=1", "A=three"]);
        assert_eq!(h.remove_where(|f| f.name == "A"), 2);
        assert_eq!(names(&h), ["B"]);
    }

    #[test]
    fn removing_every_field_in_any_order_is_fast() {
        let n = 100_000;
        let many: Vec<u8> =
            (0..n).flat_map(|i| format!("X-Internal: {i}\r\n").into_bytes()).chain(*b"\r\nbody").collect();
        let mut h = HeaderSection::parse(&many, n).unwrap();
        let started = std::time::Instant::now();
        for occurrence in (1..=n as u32).rev() {
            assert!(h.remove("x-internal", occurrence));
        }
        assert!(h.is_empty());
        // Quadratic work would take minutes here; the bound is generous for slow machines.
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn the_fenwick_tree_finds_the_kth_unit() {
        let mut f = Fenwick::default();
        for v in [1, 0, 1, 1, 0, 1, 1] {
            f.push(v);
        }
        let kth: Vec<_> = (0..6).map(|k| f.find_kth(k)).collect();
        assert_eq!(kth, [Some(0), Some(2), Some(3), Some(5), Some(6), None]);
        f.add(3, -1);
        assert_eq!(f.find_kth(2), Some(5));
        assert_eq!(f.prefix(7), 4);
    }
}
