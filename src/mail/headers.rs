//! Small reads of a message's header section: the Message-ID for log
//! lines, the Subject for migrate's report, the From addresses for the signing decision and the From
//! address signers are compared with. A section over the caps of
//! `nesting::section_within_caps` is not read (mail-parser's reading of
//! it is what would cost): it has no Message-ID and no readable From.

use std::borrow::Cow;

use mail_parser::{HeaderName, MimeHeaders, PartType};

use super::nesting::{header_lines, MAX_SECTION_LINES};

/// mail-parser's reading of the header section, when it is within the
/// caps of what reading it may cost.
fn section(message: &[u8]) -> Option<mail_parser::Message<'_>> {
    if !super::nesting::section_within_caps(message) {
        return None;
    }
    mail_parser::MessageParser::new().parse_headers(message)
}

/// The Message-ID of a message (`<id>`), or an empty string.
pub fn message_id(message: &[u8]) -> String {
    section(message)
        .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
        .unwrap_or_default()
}

/// The Subject of a message, as written (empty when there is none or
/// the header section is not read).
pub fn subject(message: &[u8]) -> String {
    section(message)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default()
}

/// The header fields a client may show as who sent the message.
const SENDER_FIELDS: &[&str] = &["from", "sender", "resent-from", "resent-sender"];

/// Calls `f` with each field of [`SENDER_FIELDS`] in the header
/// section as RFC 5322 ends it (at its first empty line, as clients read
/// it: `mail::section`), and mail-parser's reading of that field alone,
/// so no field or body line another parser joins to the section counts.
/// A section too long to read has none.
fn each_sender_field(
    message: &[u8],
    mut f: impl FnMut(&str, &[u8], Option<mail_parser::Message<'_>>),
) {
    if header_lines(message, MAX_SECTION_LINES) > MAX_SECTION_LINES {
        return;
    }
    let (head, _) = super::section::split(message);
    super::section::each_field(head, |name, field| {
        if !SENDER_FIELDS.contains(&name.as_str()) {
            return;
        }
        let mut alone = super::lines::crlf(field).into_owned();
        alone.extend_from_slice(b"\r\n");
        f(
            &name,
            field,
            mail_parser::MessageParser::new().parse_headers(&alone[..]),
        );
    });
}

/// Every address in every `From:` field ([`each_sender_field`]), as
/// written (a field or mailbox without a readable address adds an empty
/// entry, so a message with two From fields, or an unreadable one, never
/// looks like it names exactly one address).
pub fn from_addresses(message: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    each_sender_field(message, |name, _, parsed| {
        if name != "from" {
            return;
        }
        let before = out.len();
        for value in parsed
            .iter()
            .flat_map(|p| p.header_values(HeaderName::From))
        {
            if let Some(list) = value.as_address() {
                out.extend(
                    list.iter()
                        .map(|a| a.address.as_deref().unwrap_or_default().to_string()),
                );
            }
        }
        if out.len() == before {
            out.push(String::new());
        }
    });
    out
}

/// What the header section shows as its sender besides the From
/// addresses: every display or group name in a From, Sender, Resent-From
/// or Resent-Sender field that holds an `@` (`"ceo@example-law.dk"
/// <bob@…>`, encoded words decoded), every address in the other three
/// ([`each_sender_field`]), and a field with raw control characters (an
/// ISO-2022 escape a client may decode into any address). When what a
/// client shows as the content is one attached message (RFC 8551 §3.1
/// wrapping, which clients show as the message itself), that message's
/// From addresses and what its header section shows too, as deep as they
/// are wrapped. The content is looked for beneath signatures (the first
/// part of a multipart/signed; an opaque signature's content, which
/// `open` takes out) and multiparts of one part (review 26).
pub fn shown_beside_from(message: &[u8], open: &dyn Fn(&[u8]) -> Option<Vec<u8>>) -> Vec<String> {
    let mut out = shown_in(message);
    let mut current = Cow::Borrowed(message);
    for _ in 0..MAX_BENEATH {
        match beneath(&current, open) {
            None => return out,
            Some(Err(why)) => {
                out.push(why);
                return out;
            }
            Some(Ok(Beneath::Message(inner))) => {
                out.extend(from_addresses(&inner).into_iter().map(|a| {
                    if a.trim().is_empty() {
                        "an unreadable From of the attached message".to_string()
                    } else {
                        a
                    }
                }));
                out.extend(shown_in(&inner));
                current = Cow::Owned(inner);
            }
            Some(Ok(Beneath::Entity(inner))) => current = Cow::Owned(inner),
        }
    }
    if beneath(&current, open).is_some() {
        out.push(format!("content wrapped more than {MAX_BENEATH} deep"));
    }
    out
}

/// How deep wrapped messages, signatures and multiparts of one part are
/// read for what they show.
const MAX_BENEATH: usize = 8;

/// What a client shows as the content of an entity, one level down.
enum Beneath {
    /// An attached message: shown as the message itself.
    Message(Vec<u8>),
    /// A signature's content, or a multipart's one part.
    Entity(Vec<u8>),
}

/// What `entity` holds one level down, when a client shows it as the
/// content ([`Beneath`]), or why it is not read: an attached message in
/// an encoding other than 7bit, 8bit or binary (which RFC 2046 does not
/// allow there and a client may decode), an entity over the caps of the
/// parse or one that reads two ways (a client may read another type than
/// mail-parser's; review 27), a digest (whose parts are messages without
/// saying so). Nothing read is nothing vouched for.
fn beneath(
    entity: &[u8],
    open: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<Result<Beneath, String>> {
    let msg = match super::nesting::parse(entity) {
        Ok(Some(msg)) => msg,
        Ok(None) => return None,
        Err(e) => return Some(Err(format!("content not read ({e})"))),
    };
    if let Err(e) = super::readings::structure(&msg, entity) {
        return Some(Err(format!("content that {e}")));
    }
    let root = msg.parts.first()?;
    let ct = root.content_type()?;
    let ty = ct.ctype().to_ascii_lowercase();
    let sub = ct.subtype()?.to_ascii_lowercase();
    match (&*ty, &*sub) {
        ("message", "rfc822" | "global" | "news") => {
            let encoding = root
                .content_transfer_encoding()
                .map(|e| e.trim().to_ascii_lowercase());
            Some(match encoding.as_deref() {
                None | Some("7bit") | Some("8bit") | Some("binary") => {
                    Ok(Beneath::Message(super::section::split(entity).1.to_vec()))
                }
                Some(other) => Err(format!("an attached message in the {other} encoding")),
            })
        }
        ("multipart", "digest") => Some(Err("a multipart/digest".into())),
        ("multipart", _) => {
            let PartType::Multipart(children) = &root.body else {
                return None;
            };
            if sub != "signed" && children.len() != 1 {
                return None;
            }
            let part = msg.parts.get(*children.first()? as usize)?;
            let bytes = msg
                .raw_message
                .get(part.offset_header as usize..part.offset_end as usize)?;
            Some(Ok(Beneath::Entity(bytes.to_vec())))
        }
        ("application", "pkcs7-mime" | "x-pkcs7-mime") => {
            open(entity).map(|e| Ok(Beneath::Entity(e)))
        }
        _ => None,
    }
}

/// What one header section shows beside its From addresses (see
/// [`shown_beside_from`]).
fn shown_in(message: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    each_sender_field(message, |name, raw, parsed| {
        // An encoded word mail-parser does not decode as a client would:
        // shown as it is (it holds no address the gateway can compare).
        if let Some(word) = unreadable_encoded_word(raw) {
            out.push(word);
        }
        // Raw ISO-2022-JP (ESC $ B …) may show a full-width `@` in a
        // name mail-parser reads as other characters.
        if raw
            .iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n'))
        {
            out.push(format!("raw control characters in the {name} field"));
        }
        let for_from = name == "from";
        for value in parsed
            .iter()
            .flat_map(|p| p.headers().iter().map(|h| &h.value))
        {
            let Some(list) = value.as_address() else {
                continue;
            };
            if !for_from {
                out.extend(
                    list.iter()
                        .filter_map(|a| a.address.as_deref().map(str::to_string)),
                );
            }
            let names = list.iter().filter_map(|a| a.name.as_deref());
            let groups = list
                .as_group()
                .into_iter()
                .flatten()
                .filter_map(|g| g.name.as_deref());
            // The characters NFKC makes `@` are shown as one too.
            let ats = |n: &str| n.replace(['\u{FF20}', '\u{FE6B}'], "@");
            out.extend(names.chain(groups).map(ats).filter(|n| n.contains('@')));
        }
    });
    out
}

/// Charsets of encoded words mail-parser decodes without its
/// `full_encoding` feature (the others it leaves as bytes or garbles,
/// while clients decode them).
const DECODED_CHARSETS: &[&str] = &["utf-8", "us-ascii", "iso-8859-", "windows-125", "cp125"];

/// The first encoded word (`=?charset?e?text?=`) in a raw field that
/// mail-parser does not decode as clients do: its charset is not one it
/// decodes, or it is glued to the text before it (clients such as
/// Thunderbird decode it anywhere, mail-parser only after a space).
fn unreadable_encoded_word(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let value_at = text.find(':').map_or(0, |c| c + 1);
    for (at, _) in text.match_indices("=?") {
        let before = text[..at].chars().next_back();
        let separated =
            at == value_at || before.is_none_or(|c| c.is_whitespace() || "\"(<,:".contains(c));
        let charset = text[at + 2..]
            .split('?')
            .next()
            .unwrap_or_default()
            .split('*')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let decoded = DECODED_CHARSETS.iter().any(|c| charset.starts_with(c));
        if !separated || !decoded {
            // The word alone (up to a space, `<` or a quote), not the
            // address after it.
            let word: String = text[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !"<\"".contains(*c))
                .take(60)
                .collect();
            return Some(word);
        }
    }
    None
}

/// The address of the From field, lower-cased, when the header section
/// has one From field naming one mailbox ([`from_addresses`]); `None`
/// otherwise (a signer is compared with the one sender a client shows,
/// never with one of several).
pub fn from_address(message: &[u8]) -> Option<String> {
    match from_addresses(message).as_slice() {
        [one] if !one.trim().is_empty() => Some(one.trim().to_ascii_lowercase()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_header_section_too_long_is_not_read() {
        let mut long = b"From: Alice <alice@example-law.dk>\r\n".to_vec();
        long.extend(b"A: b\r\n".repeat(MAX_SECTION_LINES));
        long.extend_from_slice(b"\r\nbody\r\n");
        assert!(from_addresses(&long).is_empty());
        assert_eq!(from_address(&long), None);
        // Control: one line fewer is read.
        let mut ok = b"From: Alice <alice@example-law.dk>\r\n".to_vec();
        ok.extend(b"A: b\r\n".repeat(MAX_SECTION_LINES - 1));
        ok.extend_from_slice(b"\r\nbody\r\n");
        assert_eq!(from_addresses(&ok), ["alice@example-law.dk"]);
    }

    use super::*;

    /// No opaque signature is opened.
    fn none(_: &[u8]) -> Option<Vec<u8>> {
        None
    }

    #[test]
    fn from_addresses_are_all_found() {
        let one = b"From: Alice <alice@example-law.dk>\r\nTo: x@y\r\n\r\nbody\r\n";
        assert_eq!(from_addresses(one), vec!["alice@example-law.dk"]);
        let two_fields = b"From: alice@example-law.dk\r\nFrom: dommer@domstol.dk\r\n\r\nbody\r\n";
        assert_eq!(from_addresses(two_fields).len(), 2);
        let list = b"From: a@example-law.dk, b@example-law.dk\r\n\r\nbody\r\n";
        assert_eq!(from_addresses(list).len(), 2);
        let group = b"From: staff: a@example-law.dk;\r\n\r\nbody\r\n";
        assert_eq!(from_addresses(group), vec!["a@example-law.dk"]);
        assert!(from_addresses(b"Subject: none\r\n\r\nbody\r\n").is_empty());
    }

    #[test]
    fn from_address_is_read() {
        let m = b"To: x@y\r\nFrom: \"Court\" <Post@Domstol.DK>\r\n\r\nbody\r\n";
        assert_eq!(from_address(m).as_deref(), Some("post@domstol.dk"));
        assert_eq!(from_address(b"Subject: none\r\n\r\n"), None);
        // Of two From fields or two addresses, neither is the sender.
        assert_eq!(from_address(b"From: a@x\r\nFrom: b@y\r\n\r\n"), None);
        assert_eq!(from_address(b"From: a@x, b@y\r\n\r\n"), None);
    }

    #[test]
    fn names_and_senders_shown_beside_from_are_found() {
        let m = b"From: \"ceo@x\" <bob@x>\r\nSender: Eve <eve@y>\r\n\r\nbody\r\n";
        assert_eq!(shown_beside_from(m, &none), vec!["ceo@x", "eve@y"]);
        let m = b"From: =?utf-8?q?ceo=40x?= <bob@x>\r\n\r\n";
        assert_eq!(shown_beside_from(m, &none), vec!["ceo@x"]);
        let m = b"From: ceo@x: bob@x;\r\n\r\n";
        assert_eq!(shown_beside_from(m, &none), vec!["ceo@x"]);
        let m = "From: \"ceo\u{FF20}x\" <bob@x>\r\nFrom: \"eve\u{FE6B}y\" <bob@x>\r\n\r\n";
        // Two From fields read two ways too.
        assert_eq!(
            shown_beside_from(m.as_bytes(), &none)[..2],
            ["ceo@x", "eve@y"]
        );
        // Encoded words mail-parser does not decode as clients do.
        let jp = b"From: =?iso-2022-jp?b?Y2VvGyRCIXcbKEJleGFtcGxlLWxhdy5kaw==?= <bob@x>\r\n\r\n";
        assert!(shown_beside_from(jp, &none)[0].starts_with("=?iso-2022-jp?b?"));
        let glued = b"From: ceo=?utf-8?q?=40?=x <bob@x>\r\n\r\n";
        assert_eq!(shown_beside_from(glued, &none), vec!["=?utf-8?q?=40?=x"]);
        let fine = b"From: =?utf-8?q?J=C3=B8rgen?= <bob@x>\r\n\r\n";
        assert!(shown_beside_from(fine, &none).is_empty());
        // Control: a plain name shows nothing beside the address.
        assert!(shown_beside_from(b"From: Bob Berg <bob@x>\r\n\r\n", &none).is_empty());
    }

    #[test]
    fn sender_names_resent_fields_and_raw_escapes_are_shown_beside_from() {
        // Review 24: a Sender's display name, Resent-From/Resent-Sender,
        // and a raw ISO-2022-JP name (ESC $ B !w ESC ( B is a full-width @).
        let m = b"From: <shared@x>\r\nSender: \"ceo@x\" <alice@x>\r\n\r\n";
        assert_eq!(shown_beside_from(m, &none), vec!["alice@x", "ceo@x"]);
        let m = b"From: <bob@x>\r\nResent-From: ceo@x\r\nResent-Sender: Eve <eve@y>\r\n\r\n";
        assert_eq!(shown_beside_from(m, &none), vec!["ceo@x", "eve@y"]);
        let m = b"From: \"partner \x1b$B!w\x1b(B x\" <bob@x>\r\n\r\n";
        assert_eq!(
            shown_beside_from(m, &none)[0],
            "raw control characters in the from field"
        );
        // Control: a Sender with a plain name shows its address only.
        let m = b"From: <shared@x>\r\nSender: Alice Berg <alice@x>\r\n\r\n";
        assert_eq!(shown_beside_from(m, &none), vec!["alice@x"]);
    }

    #[test]
    fn a_wrapped_message_shows_its_own_senders() {
        // Review 24: the whole content one attached message (RFC 8551
        // §3.1), which clients show as the message itself.
        let m = b"From: <bob@x>\r\nContent-Type: message/rfc822; forwarded=no\r\n\r\n\
                  From: CEO <ceo@x>\r\nSender: eve@y\r\nSubject: pay\r\n\r\nbody\r\n";
        assert_eq!(shown_beside_from(m, &none), vec!["ceo@x", "eve@y"]);
        let twice = b"From: <bob@x>\r\nContent-Type: message/global\r\n\r\n\
                      From: <bob@x>\r\nContent-Type: Message/RFC822\r\n\r\n\
                      From: <ceo@x>\r\n\r\nbody\r\n";
        assert_eq!(shown_beside_from(twice, &none), vec!["bob@x", "ceo@x"]);
        let encoded = b"From: <bob@x>\r\nContent-Type: message/rfc822\r\n\
                        Content-Transfer-Encoding: base64\r\n\r\nRnJvbTogY2VvQHgNCg0K\r\n";
        assert_eq!(
            shown_beside_from(encoded, &none),
            vec!["an attached message in the base64 encoding"]
        );
        let anonymous = b"From: <bob@x>\r\nContent-Type: message/rfc822\r\n\r\n\
                          From: undisclosed\r\n\r\nbody\r\n";
        assert_eq!(
            shown_beside_from(anonymous, &none),
            vec!["an unreadable From of the attached message"]
        );
        // Beneath a signature, a multipart of one part, and an opaque
        // signature (review 26).
        let signed = b"From: <bob@x>\r\nContent-Type: multipart/signed; boundary=s\r\n\r\n\
                       --s\r\nContent-Type: message/rfc822\r\n\r\nFrom: <ceo@x>\r\n\r\nbody\r\n\
                       --s\r\nContent-Type: application/pkcs7-signature\r\n\r\nMAA=\r\n--s--\r\n";
        assert_eq!(shown_beside_from(signed, &none), vec!["ceo@x"]);
        let one = b"From: <bob@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                    --b\r\nContent-Type: message/rfc822\r\n\r\nFrom: <ceo@x>\r\n\r\nbody\r\n--b--\r\n";
        assert_eq!(shown_beside_from(one, &none), vec!["ceo@x"]);
        let opaque =
            b"From: <bob@x>\r\nContent-Type: application/pkcs7-mime; smime-type=signed-data\r\n\
                       Content-Transfer-Encoding: base64\r\n\r\nMAA=\r\n";
        let opened = |_: &[u8]| {
            Some(b"Content-Type: message/rfc822\r\n\r\nFrom: <ceo@x>\r\n\r\nbody\r\n".to_vec())
        };
        assert_eq!(shown_beside_from(opaque, &opened), vec!["ceo@x"]);
        assert!(shown_beside_from(opaque, &none).is_empty());
        // Not read, so not vouched for (review 27): the type written
        // twice (clients read the first, mail-parser the last), a digest,
        // a header section over the caps.
        let twice =
            b"From: <bob@x>\r\nContent-Type: message/rfc822\r\nContent-Type: text/plain\r\n\r\n\
                      From: <ceo@x>\r\n\r\nbody\r\n";
        assert_eq!(shown_beside_from(twice, &none).len(), 1);
        let digest = b"From: <bob@x>\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n\
                       --d\r\n\r\nFrom: <ceo@x>\r\n\r\nbody\r\n--d--\r\n";
        assert_eq!(shown_beside_from(digest, &none), vec!["a multipart/digest"]);
        let mut over = b"From: <bob@x>\r\nContent-Type: message/rfc822".to_vec();
        for n in 0..=super::super::nesting::MAX_PIECES {
            over.extend_from_slice(format!(";\r\n x*{n}=a").as_bytes());
        }
        over.extend_from_slice(b"\r\n\r\nFrom: <ceo@x>\r\n\r\nbody\r\n");
        let shown = shown_beside_from(&over, &none);
        assert!(
            shown.len() == 1 && shown[0].starts_with("content not read"),
            "{shown:?}"
        );
        // Controls: a forwarded message attached beside a note, and one
        // wrapped that is the sender's own, show nothing else.
        let beside = b"From: <bob@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
                       --b\r\n\r\nnote\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n\
                       From: <ceo@x>\r\n\r\nbody\r\n--b--\r\n";
        assert!(shown_beside_from(beside, &none).is_empty());
        let own = b"From: <bob@x>\r\nContent-Type: message/rfc822\r\n\r\n\
                    From: Bob <bob@x>\r\n\r\nbody\r\n";
        assert_eq!(shown_beside_from(own, &none), vec!["bob@x"]);
    }

    #[test]
    fn from_is_read_where_rfc_5322_ends_the_header_section() {
        // mail-parser 0.11 reads the line end after a one-letter zone as
        // part of the date, and the body's first line as a field.
        let m = b"Date: Mon, 30 Nov 2026 12:00:00 Z\r\nFrom: CEO <ceo@x>\r\n\
                  Resent-Date: Mon, 30 Nov 2026 12:00:00 Z\r\n\r\nFrom: bob@x\r\n\r\nbody\r\n";
        assert_eq!(from_addresses(m), vec!["ceo@x"]);
        assert_eq!(from_address(m).as_deref(), Some("ceo@x"));
    }
}
