//! The normal form in which strings are indexed and searched, so that Japanese names match
//! however they were typed.
//!
//! The rule (applied to stored values and to search values alike):
//! 1. Unicode NFKC: full-width Latin and digits become ASCII, half-width katakana become
//!    full-width, and a half-width voiced mark joins its kana (`ﾀﾞ` → `ダ`).
//! 2. Katakana fold to hiragana (`ヤマダ` → `やまだ`), so kana searches ignore the script.
//! 3. Case folds to lower case, and Latin accents are removed (`José` → `jose`); kana
//!    voicing marks are kept, because `が` and `か` are different sounds.
//! 4. White space (including the ideographic space U+3000) is removed, so `山田 太郎`,
//!    `山田　太郎` and `山田太郎` are the same.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// The searchable form of `text` (see the module documentation).
pub fn normalize(text: &str) -> String {
    let composed: String = text.nfkc().collect();
    let mut out = String::with_capacity(composed.len());
    for c in composed.chars() {
        if c.is_whitespace() {
            continue;
        }
        let c = fold_katakana(c);
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if is_latin(c) {
            for decomposed in c.to_lowercase().nfd() {
                if !is_combining_mark(decomposed) {
                    out.push(decomposed);
                }
            }
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Katakana ァ (U+30A1) … ヶ (U+30F6) map onto hiragana ぁ (U+3041) … ゖ (U+3096).
fn fold_katakana(c: char) -> char {
    let code = c as u32;
    if (0x30A1..=0x30F6).contains(&code) {
        char::from_u32(code - 0x60).unwrap_or(c)
    } else {
        c
    }
}

fn is_latin(c: char) -> bool {
    matches!(c as u32, 0x00C0..=0x024F | 0x1E00..=0x1EFF)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn japanese_forms_meet() {
        let cases = [
            ("やまだ", "やまだ"),
            ("ヤマダ", "やまだ"),
            ("ﾔﾏﾀﾞ", "やまだ"),
            ("山田 太郎", "山田太郎"),
            ("山田　太郎", "山田太郎"),
            ("ＹＡＭＡＤＡ", "yamada"),
            ("José", "jose"),
            ("ガ", "が"),
            ("ｶﾞ", "が"),
            ("１２３", "123"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize(input), expected, "{input}");
        }
        assert_ne!(normalize("か"), normalize("が"), "voicing is kept");
    }
}
