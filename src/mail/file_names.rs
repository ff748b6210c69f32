//! Every name a part gives its file, read every way a mail client might
//! read it. A part names its file by `name` in Content-Type and
//! `filename` in Content-Disposition, plainly, in RFC 2231 form
//! (`name*=UTF-8''…`), in RFC 2231 pieces (`name*0=…; name*1=…`), as an
//! encoded word, or in a second Content-Disposition field; readers differ
//! on which one wins and on how pieces join (mail-parser 0.11 joins
//! `name="a.pdf"; name*0="smime."; name*1="p7m"` into `a.pdfp7m` and
//! `smime.`, a client into `smime.p7m`; of two Content-Disposition fields
//! mail-parser reads the last, clients the first). A gateway that goes by
//! one reading can take for an attachment what a client opens as S/MIME,
//! so the rooms that decide by name ask for all of them. Pure.

use std::borrow::Cow;

use mail_parser::{HeaderName, MessagePart, MimeHeaders};

/// Every reading of the file names `part` gives (Content-Type `name`,
/// Content-Disposition `filename`, every such field), from its raw
/// header fields in `raw` (the message its offsets refer to) and from
/// mail-parser's parse of them; duplicates left in.
pub fn of_part(part: &MessagePart<'_>, raw: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for header in &part.headers {
        let (from, to) = (header.offset_start as usize, header.offset_end as usize);
        let field = match header.name {
            HeaderName::ContentType | HeaderName::ContentDisposition => raw.get(from..to),
            _ => None,
        };
        if let Some(field) = field {
            let params = parameters(&String::from_utf8_lossy(field));
            for key in ["name", "filename"] {
                names.extend(readings(&params, key));
            }
        }
    }
    for ct in [part.content_type(), part.content_disposition()]
        .into_iter()
        .flatten()
    {
        let given = ct.attributes.as_deref().unwrap_or_default();
        names.extend(
            given
                .iter()
                .filter(|a| {
                    a.name.eq_ignore_ascii_case("name") || a.name.eq_ignore_ascii_case("filename")
                })
                .map(|a| a.value.to_string()),
        );
    }
    names
}

/// Every reading of the file names one raw Content-Type or
/// Content-Disposition field gives (`name` and `filename`, pieces joined
/// by number and as written, escapes and encoded words undone), for
/// readers that have no parse of the part.
pub fn of_field(field: &str) -> Vec<String> {
    let params = parameters(field);
    ["name", "filename"]
        .into_iter()
        .flat_map(|key| readings(&params, key))
        .collect()
}

/// The parameters of a raw Content-Type or Content-Disposition value
/// (after the colon), in order, names in lower case, read leniently: a
/// quoted string up to its closing quote (backslash escapes undone), any
/// other value up to the next `;`; folding undone; a piece without `=`
/// skipped.
fn parameters(value: &str) -> Vec<(String, String)> {
    let text = value.replace("\r\n", "").replace('\n', "");
    let mut rest = match split_outside_quotes(&text) {
        Some((_, after)) => after,
        None => return Vec::new(),
    };
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return out;
        }
        let stop = rest.find(['=', ';']).unwrap_or(rest.len());
        if !rest[stop..].starts_with('=') {
            rest = &rest[stop..];
            continue;
        }
        let name = rest[..stop].trim().to_ascii_lowercase();
        let after = rest[stop + 1..].trim_start_matches([' ', '\t']);
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => unquote(quoted),
            None => {
                let end = after.find(';').unwrap_or(after.len());
                (after[..end].trim_end().to_string(), &after[end..])
            }
        };
        out.push((name, value));
        rest = next;
    }
}

/// The text before and after the first `;` outside a quoted string.
fn split_outside_quotes(text: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => return Some((&text[..i], &text[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A quoted string's content (after its opening quote), escapes undone,
/// and what follows its closing quote (nothing when it is not closed).
fn unquote(text: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, next)) = chars.next() {
                    value.push(next);
                }
            }
            '"' => return (value, &text[i + 1..]),
            _ => value.push(c),
        }
    }
    (value, "")
}

/// Every reading of parameter `key` in `params`: each plain value; each
/// RFC 2231 value (`key*`), decoded and as written; the RFC 2231 pieces
/// (`key*0`, `key*1*`, …) joined in the order of their numbers and in the
/// order written; everything given for `key` joined in the order
/// written; and each of them with encoded words decoded.
fn readings(params: &[(String, String)], key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pieces: Vec<(u32, String)> = Vec::new();
    let mut written = String::new();
    for (name, value) in params {
        let Some(rest) = name.strip_prefix(key) else {
            continue;
        };
        if rest.is_empty() {
            out.push(value.clone());
        } else if rest == "*" {
            out.push(extended(value, true));
            out.push(value.clone());
        } else if let Some(piece) = rest.strip_prefix('*') {
            let (number, encoded) = match piece.strip_suffix('*') {
                Some(n) => (n, true),
                None => (piece, false),
            };
            let Ok(number) = number.parse::<u32>() else {
                continue;
            };
            let decoded = if encoded {
                extended(value, number == 0)
            } else {
                value.clone()
            };
            pieces.push((number, decoded));
        } else {
            continue;
        }
        written.push_str(value);
    }
    if !pieces.is_empty() {
        out.push(pieces.iter().map(|(_, v)| v.as_str()).collect());
        pieces.sort_by_key(|(n, _)| *n);
        out.push(pieces.iter().map(|(_, v)| v.as_str()).collect());
    }
    if !written.is_empty() {
        out.push(written);
    }
    let words: Vec<String> = out
        .iter()
        .filter(|v| v.contains("=?"))
        .filter_map(|v| encoded_words(v))
        .collect();
    out.extend(words);
    out
}

/// An RFC 2231 value: `charset'language'` taken off (when `leading`, and
/// present) and percent escapes undone, as UTF-8 (what is not UTF-8
/// replaced).
fn extended(value: &str, leading: bool) -> String {
    let parts: Vec<&str> = value.splitn(3, '\'').collect();
    let body = match parts[..] {
        [_, _, body] if leading => body,
        _ => value,
    };
    percent_encoding::percent_decode_str(body)
        .decode_utf8_lossy()
        .into_owned()
}

/// `value` with its RFC 2047 encoded words decoded, as mail-parser
/// decodes them in an unstructured field; `None` when nothing changes.
pub fn encoded_words(value: &str) -> Option<String> {
    let field = format!("Subject: {value}\r\n\r\n");
    let msg = mail_parser::MessageParser::default().parse_headers(field.as_bytes())?;
    let decoded: Cow<'_, str> = msg.subject()?.into();
    (decoded != value).then(|| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(field: &str) -> Vec<String> {
        let params = parameters(field.split_once(':').map(|(_, v)| v).unwrap_or(field));
        let mut all = readings(&params, "name");
        all.extend(readings(&params, "filename"));
        all
    }

    #[test]
    fn a_plain_name_reads_one_way() {
        let n = names("Content-Type: application/pdf; name=\"a b.pdf\"");
        assert!(n.iter().all(|n| n == "a b.pdf"), "{n:?}");
        let n = names("Content-Type: application/pdf; name=a.pdf ; x=y");
        assert!(n.iter().all(|n| n == "a.pdf"), "{n:?}");
    }

    #[test]
    fn rfc_2231_pieces_join_in_number_order_and_as_written() {
        let n = names("Content-Type: x/y; name*1=\"me.\"; name*0=\"smi\"; name*2=\"p7m\"");
        assert!(n.contains(&"smime.p7m".to_string()), "{n:?}");
        assert!(n.contains(&"me.smip7m".to_string()), "{n:?}");
    }

    #[test]
    fn a_plain_name_beside_pieces_is_read_alone_and_joined() {
        let n = names("Content-Type: x/y; name=\"a.pdf\"; name*0=\"smime.\"; name*1=\"p7m\"");
        for want in ["a.pdf", "smime.p7m", "a.pdfsmime.p7m"] {
            assert!(n.contains(&want.to_string()), "{want} not in {n:?}");
        }
    }

    #[test]
    fn percent_escapes_and_charsets_are_undone_only_where_rfc_2231_says() {
        let n = names("Content-Disposition: attachment; filename*=UTF-8''%C3%A6%2Ep7m");
        assert!(n.contains(&"æ.p7m".to_string()), "{n:?}");
        let n = names("Content-Type: x/y; name*0*=UTF-8''smime%2E; name*1=\"p7m\"");
        assert!(n.contains(&"smime.p7m".to_string()), "{n:?}");
    }

    #[test]
    fn encoded_words_are_read_too() {
        let n = names("Content-Type: x/y; name=\"=?us-ascii?Q?smime=2Ep7m?=\"");
        assert!(n.contains(&"smime.p7m".to_string()), "{n:?}");
    }

    #[test]
    fn quotes_hide_semicolons_and_escapes_are_undone() {
        let n = names("Content-Type: x/y; name=\"a;b\\\".p7m\"; q=1");
        assert!(n.contains(&"a;b\".p7m".to_string()), "{n:?}");
        // Unclosed, folded, without `=`: read leniently, never a panic.
        assert_eq!(
            names("Content-Type: x/y; name=\"smime.p7m"),
            vec!["smime.p7m"; 2]
        );
        let n = names("Content-Type: x/y;\r\n name=\r\n smime.p7m; junk; =; name*x=1");
        assert!(n.contains(&"smime.p7m".to_string()), "{n:?}");
    }

    #[test]
    fn each_content_disposition_field_counts() {
        let raw = b"Content-Type: application/octet-stream\r\n\
            Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
            Content-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nMAA=\r\n";
        let msg = mail_parser::MessageParser::default()
            .parse(&raw[..])
            .expect("parse");
        let n = of_part(&msg.parts[0], raw);
        assert!(n.contains(&"smime.p7m".to_string()), "{n:?}");
        assert!(n.contains(&"a.pdf".to_string()), "{n:?}");
    }
}
