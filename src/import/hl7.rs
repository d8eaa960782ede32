//! What the mapping engine reads — HL7 v2 messages as SS-MIX2 stores them, and CSV rows —
//! and how bytes become text. HL7 v2: ISO-2022-JP bytes, decoded to Unicode *before*
//! any delimiter is looked at (the two bytes of a JIS X 0208 character are in 0x21–0x7E and
//! include `| ^ ~ \ &`), then parsed by `hl7-parser` into segments, fields, repetitions,
//! components and subcomponents.
//!
//! A byte sequence that is not ASCII or JIS X 0208 (ISO IR87) is refused with its place —
//! segment, field and byte offset — never replaced.

use encoding_rs::{DecoderResult, ISO_2022_JP};

/// Where something went wrong in a message, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `PID-5`, `PRB`, `byte 312 (segment 3, PID-5)`, or empty for the whole message.
    pub location: String,
    pub message: String,
}

impl Problem {
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { location: location.into(), message: message.into() }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.location.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

/// A byte sequence outside an encoding: its offset, its bytes (hex), and the text decoded
/// before it (to say where it is).
#[derive(Debug)]
pub struct Malformed {
    pub offset: usize,
    pub bytes: String,
    pub before: String,
}

/// Decodes `bytes` in `encoding` without replacing anything: the first byte sequence
/// outside the encoding is an error.
pub fn decode_strictly(encoding: &'static encoding_rs::Encoding, bytes: &[u8]) -> Result<String, Malformed> {
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let capacity = decoder.max_utf8_buffer_length_without_replacement(bytes.len()).unwrap_or(bytes.len().saturating_mul(3));
    let mut text = String::with_capacity(capacity);
    let mut read = 0;
    loop {
        let rest = bytes.get(read..).unwrap_or_default();
        let (result, consumed) = decoder.decode_to_string_without_replacement(rest, &mut text, true);
        read += consumed;
        match result {
            DecoderResult::InputEmpty => return Ok(text),
            DecoderResult::OutputFull => text.reserve(bytes.len().max(64)),
            DecoderResult::Malformed(length, after) => {
                let offset = read.saturating_sub(usize::from(length) + usize::from(after));
                let character = bytes.get(offset..offset + usize::from(length).max(1)).unwrap_or_default();
                let hex: Vec<String> = character.iter().map(|b| format!("{b:02X}")).collect();
                return Err(Malformed { offset, bytes: hex.join(" "), before: text });
            }
        }
    }
}

/// Decodes ISO-2022-JP to a String; the first byte sequence outside the code set is an
/// error naming its offset and the segment and field it is in.
pub fn decode_iso_2022_jp(bytes: &[u8]) -> Result<String, Problem> {
    decode_strictly(ISO_2022_JP, bytes).map_err(|bad| {
        Problem::new(
            format!("byte {} ({})", bad.offset, place_of_end(&bad.before)),
            format!("bytes {} are not a character of ISO-2022-JP (ASCII and JIS X 0208)", bad.bytes),
        )
    })
}

/// The segment and field at the end of the text decoded so far, e.g. `segment 3, PID-5`.
fn place_of_end(text: &str) -> String {
    let segments: Vec<&str> = text.split(['\r', '\n']).filter(|s| !s.is_empty()).collect();
    let number = segments.len().max(1);
    let Some(last) = segments.last() else { return "segment 1".to_owned() };
    let name: String = last.chars().take(3).collect();
    let delimiters = last.matches('|').count();
    // MSH-1 is the field separator itself: MSH's fields are counted one further.
    let field = if name == "MSH" { delimiters + 1 } else { delimiters };
    format!("segment {number}, {name}-{field}")
}

/// What the mapping reads: a parsed HL7 message, or rows of a CSV file (each a segment
/// named `ROW` whose fields are the columns, also reachable by their header names).
pub struct Message<'m> {
    inner: Inner<'m>,
}

enum Inner<'m> {
    Hl7(hl7_parser::Message<'m>),
    Rows { header: &'m [String], rows: Vec<&'m [String]> },
}

/// One repetition of a field: components of subcomponents (a CSV cell: one value).
#[derive(Clone, Copy)]
pub struct Repetition<'a, 'm> {
    inner: RepetitionOf<'a, 'm>,
}

#[derive(Clone, Copy)]
enum RepetitionOf<'a, 'm> {
    Hl7 { repeat: &'a hl7_parser::message::Repeat<'m>, separators: &'a hl7_parser::message::Separators },
    Cell(&'a str),
}

impl<'m> Message<'m> {
    pub fn parse(text: &'m str) -> Result<Message<'m>, Problem> {
        if !text.starts_with("MSH") {
            return Err(Problem::new("segment 1", "a message begins with its MSH segment"));
        }
        let parsed = hl7_parser::Message::parse_with_lenient_newlines(text, true)
            .map_err(|error| Problem::new("", format!("not an HL7 v2 message: {error}")))?;
        Ok(Message { inner: Inner::Hl7(parsed) })
    }

    /// CSV rows (each a segment `ROW`) with their file's header (empty when it has none).
    pub fn rows(header: &'m [String], rows: Vec<&'m [String]>) -> Message<'m> {
        Message { inner: Inner::Rows { header, rows } }
    }

    /// The segments' names, in order.
    pub fn segment_names(&self) -> Vec<&'m str> {
        match &self.inner {
            Inner::Hl7(parsed) => parsed.segments.iter().map(|segment| segment.name).collect(),
            Inner::Rows { rows, .. } => vec!["ROW"; rows.len()],
        }
    }

    /// The field (1-based) of a CSV column named `name` in the header.
    pub fn column(&self, name: &str) -> Option<usize> {
        match &self.inner {
            Inner::Hl7(_) => None,
            Inner::Rows { header, .. } => header.iter().position(|h| h.trim() == name).map(|i| i + 1),
        }
    }

    /// The repetitions of field `field` of the segment at `segment` (0-based position).
    pub fn repetitions(&self, segment: usize, field: usize) -> Vec<Repetition<'_, 'm>> {
        if field == 0 {
            return Vec::new();
        }
        match &self.inner {
            Inner::Hl7(parsed) => {
                let Some(field) = parsed.segments.get(segment).and_then(|s| s.field(field)) else { return Vec::new() };
                field
                    .repeats
                    .iter()
                    .map(|repeat| Repetition { inner: RepetitionOf::Hl7 { repeat, separators: &parsed.separators } })
                    .collect()
            }
            Inner::Rows { rows, .. } => match rows.get(segment).and_then(|cells| cells.get(field - 1)) {
                Some(cell) => vec![Repetition { inner: RepetitionOf::Cell(cell) }],
                None => Vec::new(),
            },
        }
    }
}

impl Repetition<'_, '_> {
    /// Component `component`, subcomponent `subcomponent` (both 1-based), escape sequences
    /// decoded; empty when absent.
    pub fn value(&self, component: usize, subcomponent: usize) -> String {
        if component == 0 || subcomponent == 0 {
            return String::new();
        }
        let (repeat, separators) = match self.inner {
            RepetitionOf::Cell(text) => return if component == 1 && subcomponent == 1 { text.to_owned() } else { String::new() },
            RepetitionOf::Hl7 { repeat, separators } => (repeat, separators),
        };
        let Some(component) = repeat.component(component) else { return String::new() };
        let Some(subcomponent) = component.subcomponent(subcomponent) else {
            // A component without subcomponent delimiters is its own first subcomponent.
            return if subcomponent == 1 { component.display(separators).to_string() } else { String::new() };
        };
        subcomponent.display(separators).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` encoded as ISO-2022-JP by encoding_rs (the inverse of what is tested).
    fn jis(text: &str) -> Vec<u8> {
        let (bytes, _, unmappable) = ISO_2022_JP.encode(text);
        assert!(!unmappable, "{text} is representable");
        bytes.into_owned()
    }

    #[test]
    fn kanji_whose_bytes_are_delimiters_stay_in_their_field() {
        // In JIS X 0208 宮 is 0x35 0x5C ('\\'), 京 0x35 0x7E ('~'), 五 0x38 0x5E ('^'),
        // 万 0x4B 0x7C ('|') and 侃 0x34 0x26 ('&').
        let text = "MSH|^~\\&|HIS|FAC|||20240401||ADT^A08^ADT_A01|1|P|2.5||||||~ISO IR87\rPID|||123||宮本^京五万侃^^^^^L^I||19400101|F\r";
        let bytes = jis(text);
        assert!(bytes.windows(2).any(|w| w == [0x35, 0x5C]), "the backslash byte is in the encoding");
        let decoded = decode_iso_2022_jp(&bytes).expect("decodes");
        assert_eq!(decoded, text);
        let message = Message::parse(&decoded).expect("parses");
        assert_eq!(message.segment_names(), vec!["MSH", "PID"]);
        let name = message.repetitions(1, 5);
        assert_eq!(name.len(), 1);
        assert_eq!(name[0].value(1, 1), "宮本");
        assert_eq!(name[0].value(2, 1), "京五万侃");
        assert_eq!(name[0].value(8, 1), "I");
        assert_eq!(message.repetitions(0, 9)[0].value(1, 1), "ADT");
    }

    #[test]
    fn bytes_outside_the_code_set_are_reported_with_their_place() {
        let mut bytes = b"MSH|^~\\&|HIS\rPID|||123||".to_vec();
        bytes.extend_from_slice("山田".as_bytes()); // UTF-8 bytes are not ISO-2022-JP
        let problem = decode_iso_2022_jp(&bytes).expect_err("refused");
        assert_eq!(problem.location, "byte 24 (segment 2, PID-5)");
        assert!(problem.message.contains("E5"), "{problem}");
    }

    #[test]
    fn escape_sequences_are_decoded() {
        let message = Message::parse("MSH|^~\\&|A\rOBX|1|ST|||a\\F\\b\\S\\c&d\r").expect("parses");
        let value = message.repetitions(1, 5);
        assert_eq!(value[0].value(1, 1), "a|b^c");
        assert_eq!(value[0].value(1, 2), "d");
    }
}
