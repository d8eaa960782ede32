//! Wire formats: FHIR JSON and FHIR XML in and out.
//!
//! Architecture invariant: the rest of the gateway works on `serde_json::Value` in FHIR
//! JSON form; XML exists only at this boundary, converted through fhirbolt's typed R4 model.

use serde_json::Value;

use crate::config::Limits;
use crate::error::Error;
use crate::outcome::{Issue, IssueCode};

/// A FHIR representation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }

    /// Reads a MIME type or `_format` shorthand (`json`, `xml`, `application/fhir+json`, …).
    pub fn from_mime(text: &str) -> Option<Format> {
        let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "json" | "application/fhir+json" | "application/json" | "application/json+fhir" | "text/json" => {
                Some(Format::Json)
            }
            "xml" | "application/fhir+xml" | "application/xml" | "application/xml+fhir" | "text/xml" => {
                Some(Format::Xml)
            }
            _ => None,
        }
    }
}

/// Converts FHIR JSON into fhirbolt's typed R4 model. fhirbolt can panic on some inputs
/// (for example an empty array); the panic is contained here and becomes an error.
pub fn to_model(
    value: Value,
    mode: fhirbolt::serde::DeserializationMode,
) -> Result<fhirbolt::model::r4::Resource, String> {
    let config = fhirbolt::serde::DeserializationConfig { mode };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        fhirbolt::json::from_json_value::<fhirbolt::model::r4::Resource>(value, Some(config))
    }))
    .map_err(|_| "the resource cannot be represented in the R4 model".to_owned())?
    .map_err(|error| error.to_string())
}

/// Parses a request body in `format` into FHIR JSON. Syntax errors are 400s; a body nested
/// deeper than `limits` allows is refused before any parser (whose recursion a deep enough
/// body would take past the thread's stack) sees it.
pub fn parse(bytes: &[u8], format: Format, limits: &Limits) -> Result<Value, Error> {
    let (depth, limit, name) = match format {
        Format::Json => (json_depth(bytes, limits.json_depth), limits.json_depth, "json_depth"),
        Format::Xml => (xml_depth(bytes, limits.xml_depth), limits.xml_depth, "xml_depth"),
    };
    if depth > limit {
        return Err(Error::LimitExceeded { limit: name, allowed: limit as u64, what: "the body is nested too deeply".into() });
    }
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|error| {
            Error::BadRequest(Issue::error(
                IssueCode::Structure,
                format!("the body is not valid JSON: {error}"),
            ))
        }),
        Format::Xml => {
            let bytes = &canonical_encoding_name(bytes);
            let parsed = std::panic::catch_unwind(|| fhirbolt::xml::from_slice::<fhirbolt::model::r4::Resource>(bytes, None))
                .map_err(|_| "the XML cannot be represented in the R4 model".to_owned())
                .and_then(|result| result.map_err(|error| error.to_string()));
            let resource = parsed.map_err(|error| {
                Error::BadRequest(Issue::error(
                    IssueCode::Structure,
                    format!("the body is not a valid FHIR R4 XML resource: {error}"),
                ))
            })?;
            let mut value = fhirbolt::json::to_json_value(resource, None)
                .map_err(|error| Error::internal(format!("XML to JSON conversion: {error}")))?;
            narrative::restore_from_xml(bytes, &mut value);
            Ok(value)
        }
    }
}

/// The body with its XML declaration's encoding name in upper case: encoding names are
/// case-insensitive (XML 1.0 §4.3.3), and `encoding="utf-8"` is common, but the parser
/// accepts only `UTF-8`. Only UTF-8 is read; any other name is left for the parser to refuse.
fn canonical_encoding_name(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let head = bytes.get(..bytes.len().min(200)).unwrap_or_default();
    let Some(declaration_end) = head.windows(2).position(|w| w == b"?>") else { return bytes.into() };
    let declaration = head.get(..declaration_end).unwrap_or_default();
    if !declaration.starts_with(b"<?xml") {
        return bytes.into();
    }
    for quote in [b'"', b'\''] {
        let needle = [b"encoding=".as_slice(), &[quote]].concat();
        let Some(start) = declaration.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(&needle)) else { continue };
        let value_start = start + needle.len();
        let Some(length) = declaration.get(value_start..).and_then(|rest| rest.iter().position(|&b| b == quote)) else { continue };
        let value = declaration.get(value_start..value_start + length).unwrap_or_default();
        if value.eq_ignore_ascii_case(b"utf-8") && value != b"UTF-8" {
            let mut fixed = bytes.to_vec();
            if let Some(slot) = fixed.get_mut(value_start..value_start + length) {
                slot.copy_from_slice(b"UTF-8");
            }
            return fixed.into();
        }
    }
    bytes.into()
}

/// Serialises FHIR JSON in `format`.
pub fn render(value: &Value, format: Format, pretty: bool) -> Result<Vec<u8>, Error> {
    match format {
        Format::Json if pretty => Ok(serde_json::to_vec_pretty(value)?),
        Format::Json => Ok(serde_json::to_vec(value)?),
        Format::Xml => {
            let mut value = value.clone();
            let kept = narrative::set_aside(&mut value);
            let resource = to_model(value, fhirbolt::serde::DeserializationMode::Lax)
                .map_err(|error| Error::internal(format!("JSON to XML conversion: {error}")))?;
            let xml = fhirbolt::xml::to_vec(&resource, None).map_err(|error| Error::internal(format!("XML output: {error}")))?;
            Ok(kept.put_back(xml))
        }
    }
}

/// The nesting depth of a JSON text (objects and arrays), counted up to `stop + 1`: a scan
/// over the bytes, so it needs no stack whatever the input. Strings are skipped (with their
/// escapes); what is not JSON is left for the parser to refuse.
pub fn json_depth(bytes: &[u8], stop: usize) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in bytes {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > stop {
                    break;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The element nesting depth of an XML text, counted up to `stop + 1`, by a scan over the
/// bytes: start tags open a level, end tags and empty-element tags (`<a/>`) close it;
/// comments, processing instructions, declarations and CDATA sections are skipped, and so
/// is a `>` inside a quoted attribute value.
pub fn xml_depth(bytes: &[u8], stop: usize) -> usize {
    let (mut depth, mut deepest, mut position) = (0usize, 0usize, 0usize);
    let rest = |from: usize| bytes.get(from..).unwrap_or_default();
    let find = |from: usize, needle: &[u8]| rest(from).windows(needle.len()).position(|w| w == needle).map(|p| from + p + needle.len());
    while let Some(offset) = rest(position).iter().position(|&b| b == b'<') {
        let start = position + offset;
        let tail = rest(start + 1);
        position = if tail.starts_with(b"!--") {
            find(start, b"-->").unwrap_or(bytes.len())
        } else if tail.starts_with(b"![CDATA[") {
            find(start, b"]]>").unwrap_or(bytes.len())
        } else if tail.starts_with(b"?") {
            find(start, b"?>").unwrap_or(bytes.len())
        } else if tail.starts_with(b"!") {
            find(start, b">").unwrap_or(bytes.len())
        } else {
            // A start, end or empty-element tag: find its closing '>' outside quotes.
            let mut quote = None;
            let mut end = None;
            for (index, &byte) in tail.iter().enumerate() {
                match (quote, byte) {
                    (Some(q), b) if b == q => quote = None,
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') => quote = Some(byte),
                    (None, b'>') => {
                        end = Some(index);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else { break };
            let tag = tail.get(..end).unwrap_or_default();
            if tag.starts_with(b"/") {
                depth = depth.saturating_sub(1);
            } else if !tag.ends_with(b"/") {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > stop {
                    break;
                }
            }
            start + 1 + end + 1
        };
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths() {
        let check = |text: &str, json: bool, expected: usize| {
            let found = if json { json_depth(text.as_bytes(), 100) } else { xml_depth(text.as_bytes(), 100) };
            assert_eq!(found, expected, "{text}");
        };
        check(r#"{"a": [1, {"b": "[[[{{"}], "c": "\\\"{"}"#, true, 3);
        check("[]", true, 1);
        check("12", true, 0);
        check(r#"<?xml version="1.0"?><Patient xmlns="x"><!-- <a><b> --><id value="a>b"/><name><family value="x"/></name></Patient>"#, false, 2);
        check("<a><![CDATA[<b><c>]]></a>", false, 1);
        check(&"<extension>".repeat(700), false, 101);
        check(&"[".repeat(10_000), true, 101);
        let open = "{\"url\": \"http://example.org/x\", \"extension\": [".repeat(700);
        let close = "]}".repeat(700);
        check(&format!("{{\"resourceType\": \"Patient\", \"extension\": [{open}{close}]}}"), true, 101);
    }
}

/// Narrative XHTML (`text.div`) through XML exactly as it was written: fhirbolt trims the
/// text of XHTML and re-indents it both ways (a `<pre>` loses its leading spaces, every
/// newline between elements goes), so the divs are carried around it verbatim.
mod narrative {
    use quick_xml::events::Event;
    use serde_json::Value;

    const XHTML: &[u8] = b"http://www.w3.org/1999/xhtml";

    /// Calls `visit` with every narrative `div` of `value`, in document order.
    fn visit_divs(value: &mut Value, visit: &mut impl FnMut(&mut String)) {
        match value {
            Value::Object(object) => {
                for (key, child) in object.iter_mut() {
                    match child {
                        Value::String(text) if key == "div" && text.starts_with("<div") => visit(text),
                        other => visit_divs(other, visit),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| visit_divs(item, visit)),
            _ => {}
        }
    }

    /// The raw text of each outermost XHTML `div` of an XML document, in document order;
    /// `None` where the document does not scan or a div is not in the plain form
    /// `<div xmlns="http://www.w3.org/1999/xhtml">` (then fhirbolt's reading stands).
    fn divs_in_xml(bytes: &[u8]) -> Option<Vec<String>> {
        let mut reader = quick_xml::Reader::from_reader(bytes);
        let (mut divs, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
        let plain = |event: &quick_xml::events::BytesStart<'_>| {
            event.name().as_ref() == b"div" && event.attributes().flatten().any(|a| a.key.as_ref() == b"xmlns" && a.value.as_ref() == XHTML)
        };
        loop {
            let before = reader.buffer_position();
            match reader.read_event().ok()? {
                Event::Start(_) if depth > 0 => depth += 1,
                Event::Start(element) if element.local_name().as_ref() == b"div" => {
                    if !plain(&element) {
                        return None;
                    }
                    depth = 1;
                    start = before;
                }
                Event::Empty(element) if depth == 0 && element.local_name().as_ref() == b"div" => {
                    if !plain(&element) {
                        return None;
                    }
                    divs.push(String::from_utf8(bytes.get(before..reader.buffer_position())?.to_vec()).ok()?);
                }
                Event::End(_) if depth > 0 => {
                    depth -= 1;
                    if depth == 0 {
                        divs.push(String::from_utf8(bytes.get(start..reader.buffer_position())?.to_vec()).ok()?);
                    }
                }
                Event::Eof => return Some(divs),
                _ => {}
            }
        }
    }

    /// Puts the divs of the XML `bytes` into `value` (fhirbolt's reading of them), where
    /// both hold the same number of divs.
    pub(super) fn restore_from_xml(bytes: &[u8], value: &mut Value) {
        let Some(divs) = divs_in_xml(bytes) else { return };
        let mut count = 0;
        visit_divs(value, &mut |_| count += 1);
        if count != divs.len() {
            return;
        }
        let mut originals = divs.into_iter();
        visit_divs(value, &mut |text| {
            if let Some(original) = originals.next() {
                *text = original;
            }
        });
    }

    /// The well-formed divs taken out of a resource before fhirbolt writes it as XML.
    pub(super) struct SetAside {
        token: String,
        divs: Vec<Option<String>>,
    }

    fn placeholder(token: &str, index: usize) -> String {
        format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{token}-{index}</div>")
    }

    fn well_formed(div: &str) -> bool {
        let mut reader = quick_xml::Reader::from_str(div);
        let mut depth = 0i64;
        loop {
            match reader.read_event() {
                Ok(Event::Start(_)) => depth += 1,
                Ok(Event::End(_)) => depth -= 1,
                Ok(Event::Eof) => return depth == 0,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Replaces each well-formed div of `value` with a placeholder fhirbolt writes as it is.
    pub(super) fn set_aside(value: &mut Value) -> SetAside {
        let token = format!("renraku-narrative-{}", uuid::Uuid::new_v4().simple());
        let mut divs = Vec::new();
        visit_divs(value, &mut |text| {
            if well_formed(text) {
                divs.push(Some(std::mem::replace(text, placeholder(&token, divs.len()))));
            } else {
                divs.push(None);
            }
        });
        SetAside { token, divs }
    }

    impl SetAside {
        /// The XML with each placeholder replaced by the div it stands for.
        pub(super) fn put_back(self, xml: Vec<u8>) -> Vec<u8> {
            if self.divs.iter().all(Option::is_none) {
                return xml;
            }
            let Ok(mut text) = String::from_utf8(xml) else { return Vec::new() };
            for (index, div) in self.divs.into_iter().enumerate() {
                if let Some(div) = div {
                    text = text.replacen(&placeholder(&self.token, index), &div, 1);
                }
            }
            text.into_bytes()
        }
    }

    #[cfg(test)]
    mod tests {
        use serde_json::json;

        use crate::fhir::format::{parse, render, Format};

        #[test]
        fn narrative_keeps_its_whitespace_through_xml() {
            let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\">\n  <p>山田　太郎  様</p>\n  <pre>\n a\n  b</pre>\n</div>";
            let patient = json!({ "resourceType": "Patient", "id": "a", "text": { "status": "generated", "div": div },
                "contained": [{ "resourceType": "Practitioner", "id": "p", "text": { "status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"> x </div>" } }] });
            let xml = render(&patient, Format::Xml, false).unwrap_or_default();
            assert!(String::from_utf8_lossy(&xml).contains(div), "{}", String::from_utf8_lossy(&xml));
            let limits = crate::config::Limits::default();
            let back = parse(&xml, Format::Xml, &limits).unwrap_or_default();
            assert_eq!(back, patient);
        }
    }
}
