//! The MIME side of S/MIME: what shape a message has (enveloped, signed
//! detached or opaque, plain), the exact bytes a detached signature covers,
//! header sections taken apart and put together, CRLF normalisation and
//! base64 for output. Parsing is mail-parser's; this module only asks it
//! the questions S/MIME needs answered.
//!
//! Why long: recognition covers every form clients send (by type and by
//! file name, nested or alone), and its unit tests are the list of them.

pub use crate::mail::section::{each_field, fields, split};
use std::borrow::Cow;

use base64::Engine;
use mail_parser::{Message, MessagePart, MimeHeaders, PartType};

use crate::mail::nesting::{self, TooComplex};
use crate::mail::{file_names, readings};

/// What a message (or entity) is, as far as S/MIME goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `application/(x-)pkcs7-mime` holding enveloped or authEnveloped data
    /// (or a `.p7m` without smime-type); the CMS bytes, decoded.
    Enveloped {
        cms: Vec<u8>,
    },
    /// `application/(x-)pkcs7-mime; smime-type=signed-data` (or a `.p7m`
    /// whose CMS is SignedData with its content inside).
    OpaqueSigned {
        cms: Vec<u8>,
    },
    /// `multipart/signed` with a PKCS#7 signature: the exact bytes of the
    /// first part (what was signed) and the signature's CMS bytes.
    DetachedSigned {
        content: Vec<u8>,
        signature: Vec<u8>,
    },
    /// Encrypted or signed data sits inside a multipart next to other parts
    /// or in an attached message, or is CMS under another type or name:
    /// never spliced back together with them, never opened.
    Mixed(Nested),
    Plain,
    /// Nested too deep, or too many parts, to be parsed at all
    /// (`mail::nesting`): nothing inside is known.
    Unreadable(TooComplex),
}

/// S/MIME parts found inside a multipart next to other parts, inside an
/// attached message, or under another type or name (CMS known by its
/// content, [`disguised_cms`]): none of them opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nested {
    /// Encrypted parts (enveloped data).
    pub encrypted: usize,
    /// Signed parts (multipart/signed, signed data, lone signatures).
    pub signed: usize,
    /// The type they sit in (`multipart/alternative`, `message/rfc822`)
    /// or, for CMS under another type, that type.
    pub container: String,
    /// Found by the message's bytes alone (`evidence`), in no part the
    /// walk reads as S/MIME.
    pub hidden: bool,
}

/// The file name endings MS-OXOSMIME says mark S/MIME in an
/// `application/octet-stream` part.
const SMIME_NAMES: [&str; 3] = [".p7m", ".p7s", ".p7c"];

fn is_pkcs7_mime(ctype: &str, subtype: Option<&str>) -> bool {
    ctype.eq_ignore_ascii_case("application")
        && subtype.is_some_and(|s| {
            s.eq_ignore_ascii_case("pkcs7-mime") || s.eq_ignore_ascii_case("x-pkcs7-mime")
        })
}

fn is_pkcs7_signature(ctype: &str, subtype: Option<&str>) -> bool {
    ctype.eq_ignore_ascii_case("application")
        && subtype.is_some_and(|s| {
            s.eq_ignore_ascii_case("pkcs7-signature") || s.eq_ignore_ascii_case("x-pkcs7-signature")
        })
}

/// The S/MIME ending (`.p7m`, `.p7s`, `.p7c`) of an
/// `application/octet-stream` part's name or filename.
fn smime_name(part: &MessagePart<'_>, raw: &[u8]) -> Option<&'static str> {
    let ct = part.content_type()?;
    let octet = ct.ctype().eq_ignore_ascii_case("application")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("octet-stream"));
    if !octet {
        return None;
    }
    name_ending(part, raw)
}

/// The S/MIME ending (`.p7m`, `.p7s`, `.p7c`) of a part's Content-
/// Disposition filename or Content-Type name, whatever its type, read
/// from `raw` (the message the part's offsets refer to). Every reading
/// counts (`mail::file_names`: a name given twice, plainly and in RFC
/// 2231 form or pieces, in a second Content-Disposition): a client may
/// go by any of them, so one that names S/MIME makes the part S/MIME.
fn name_ending(part: &MessagePart<'_>, raw: &[u8]) -> Option<&'static str> {
    file_names::of_part(part, raw).into_iter().find_map(|n| {
        let n = n.trim().to_ascii_lowercase();
        SMIME_NAMES.into_iter().find(|e| n.ends_with(e))
    })
}

/// What a leaf part holds, known by its content, when neither its type
/// nor its names say S/MIME ([`disguised_cms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disguised {
    /// Enveloped or authEnveloped data, or content in a transfer encoding
    /// the gateway does not decode under a name or type that mentions
    /// S/MIME.
    Encrypted,
    /// Signed data with its content inside.
    Signed,
}

impl Disguised {
    /// Counts one such part in `nested`.
    fn count(self, nested: &mut Nested) {
        match self {
            Disguised::Encrypted => nested.encrypted += 1,
            Disguised::Signed => nested.signed += 1,
        }
    }
}

/// Whether leaf `part` (its offsets into `raw`) holds CMS a client opens
/// though neither its type nor its names say S/MIME: its body, decoded as
/// lenient decoders do by the first word of its Content-Transfer-Encoding
/// (base64 with characters outside the alphabet skipped and decoding
/// going on after padding; quoted-printable; or none, raw or as base64
/// text), is a ContentInfo of enveloped or authEnveloped data, or signed
/// data with content inside. Clients go by names the gateway cannot all
/// foresee (pieces cut short at a gap, a `Content-Name` field, a type
/// guessed from a name), so ciphertext is known by what it is. A body in
/// an encoding the gateway does not decode (uuencode, yEnc) counts as
/// encrypted when anything in its header section mentions S/MIME. A
/// detached signature (a signature part by type or name) is not such
/// content.
pub(super) fn disguised_cms(part: &MessagePart<'_>, raw: &[u8]) -> Option<Disguised> {
    if matches!(part.body, PartType::Multipart(_) | PartType::Message(_))
        || is_signature_part(part, raw)
    {
        return None;
    }
    let end = (part.offset_end as usize).min(raw.len());
    let body = raw.get(part.offset_body as usize..end).unwrap_or_default();
    let encoding = first_word(part.content_transfer_encoding().unwrap_or_default());
    let readings: &[&str] = match encoding.as_str() {
        "base64" => &["base64", "libmime-base64"],
        "quoted-printable" => &["quoted-printable"],
        "" | "7bit" | "8bit" | "binary" => &["", "base64", "libmime-base64"],
        _ if mentions_smime(part, raw) => return Some(Disguised::Encrypted),
        _ => return None,
    };
    readings.iter().find_map(
        |reading| match super::cms::kind(&decoded(body, reading, Some(64))) {
            Some(super::cms::Kind::Enveloped | super::cms::Kind::AuthEnveloped) => {
                Some(Disguised::Encrypted)
            }
            Some(super::cms::Kind::Signed)
                if super::cms::signed_content_inside(&decoded(body, reading, None)) =>
            {
                Some(Disguised::Signed)
            }
            _ => None,
        },
    )
}

/// The first word of a Content-Transfer-Encoding value, in lower case
/// (`base64 (mime)`, `"base64"` and `base64;` read as `base64`, as
/// clients read them).
fn first_word(value: &str) -> String {
    value
        .trim_start_matches(|c: char| c.is_whitespace() || c == '"')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Whether anything in `part`'s header section, or the first line of its
/// body (where uuencode and yEnc name the file), names S/MIME (`p7m`,
/// `p7c`, `p7z`, `pkcs7`), read with percent escapes undone, encoded
/// words decoded and everything but letters and digits left out.
fn mentions_smime(part: &MessagePart<'_>, raw: &[u8]) -> bool {
    let body = part.offset_body as usize;
    let head = raw
        .get(part.offset_header as usize..body.min(raw.len()))
        .unwrap_or_default();
    let first_line = raw
        .get(body..raw.len().min(body.saturating_add(512)))
        .unwrap_or_default();
    let first_line = first_line
        .split(|b| *b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .unwrap_or_default();
    let mut texts: Vec<String> = [head, first_line]
        .iter()
        .map(|t| {
            percent_encoding::percent_decode(t)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    texts.extend(file_names::of_part(part, raw));
    texts.iter().any(|t| {
        let squashed: String = t
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        ["p7m", "p7c", "p7z", "pkcs7"]
            .iter()
            .any(|w| squashed.contains(w))
    })
}

/// `body` decoded by the transfer encoding `reading` (`base64`,
/// `quoted-printable`, or none), as lenient decoders read it; with
/// `start`, only about that many bytes from its beginning.
fn decoded<'a>(body: &'a [u8], reading: &str, start: Option<usize>) -> Cow<'a, [u8]> {
    match reading {
        "base64" => {
            // At most the characters `start` bytes take, and a few more.
            let cap = start.map_or(usize::MAX, |n| n / 3 * 4 + 8);
            Cow::Owned(lenient_base64(body, cap))
        }
        // Old Thunderbird's reading (`evidence::libmime_base64`).
        "libmime-base64" => Cow::Owned(super::evidence::libmime_base64(
            body,
            start.map_or(usize::MAX, |n| n + 8),
        )),
        "quoted-printable" => {
            let cut = match start {
                // Whole lines, so no escape is cut in two.
                Some(n) if body.len() > n.saturating_mul(3) => {
                    let limit = n.saturating_mul(3);
                    let at = body[..limit].iter().rposition(|b| *b == b'\n');
                    &body[..at.map_or(limit, |a| a + 1)]
                }
                _ => body,
            };
            let mut out = Vec::with_capacity(cut.len());
            super::evidence::quoted_printable(cut, &mut out);
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(&body[..body.len().min(start.unwrap_or(usize::MAX))]),
    }
}

/// base64 as lenient decoders (Thunderbird's) read it: characters outside
/// the alphabet skipped, and decoding going on after padding (each run
/// between `=` signs decoded on its own), from at most `cap` characters.
fn lenient_base64(body: &[u8], cap: usize) -> Vec<u8> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/' || *b == b'=';
    let chars: Vec<u8> = body.iter().copied().filter(alphabet).take(cap).collect();
    let mut out = Vec::with_capacity(chars.len() / 4 * 3 + 3);
    for run in chars.split(|b| *b == b'=').filter(|r| !r.is_empty()) {
        // A lone character at the end of a run carries no whole byte.
        let whole = &run[..run.len() - usize::from(run.len() % 4 == 1)];
        if let Ok(bytes) = LENIENT.decode(whole) {
            out.extend_from_slice(&bytes);
        }
    }
    out
}

/// An `application/(x-)pkcs7-mime` part, or an octet-stream named `.p7m`
/// or `.p7c`.
fn is_smime_entity(part: &MessagePart<'_>, raw: &[u8]) -> bool {
    part.content_type()
        .is_some_and(|c| is_pkcs7_mime(c.ctype(), c.subtype()))
        || matches!(smime_name(part, raw), Some(".p7m") | Some(".p7c"))
}

/// A detached signature part: `application/(x-)pkcs7-signature` or an
/// octet-stream named `.p7s`.
fn is_signature_part(part: &MessagePart<'_>, raw: &[u8]) -> bool {
    part.content_type()
        .is_some_and(|c| is_pkcs7_signature(c.ctype(), c.subtype()))
        || smime_name(part, raw) == Some(".p7s")
}

/// `message/news`: a message to Thunderbird (shown, and S/MIME in it
/// opened, like `message/rfc822`), a leaf to mail-parser. Its body is
/// parsed and walked here as an attached message's.
pub(super) fn is_news(part: &MessagePart<'_>) -> bool {
    matches!(
        part.body,
        PartType::Text(_) | PartType::Binary(_) | PartType::InlineBinary(_)
    ) && part.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("message")
            && c.subtype().is_some_and(|s| s.eq_ignore_ascii_case("news"))
    })
}

fn is_multipart(part: &MessagePart<'_>, sub: &str) -> bool {
    part.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("multipart")
            && c.subtype().is_some_and(|s| s.eq_ignore_ascii_case(sub))
    })
}

/// Classifies the message or entity in `raw`.
pub fn shape(raw: &[u8]) -> Shape {
    match parse_for_smime(raw) {
        Ok(Some(msg)) => shape_taken(msg, raw),
        Ok(None) => Shape::Plain,
        Err(e) => Shape::Unreadable(e),
    }
}

/// The parse that [`shape`] and `scan` read: for a single leaf entity
/// that is S/MIME neither by type nor by name, its header section alone
/// (nothing reads its body: `body` is empty); otherwise the whole message
/// ([`super::parse::message`]). `None` when there is no header section;
/// an error when its structure is over the caps of `mail::nesting` (a
/// single leaf never is), or when it reads two ways (`mail::readings`:
/// what is signed or encrypted in it is not what a client shows) and
/// mail-parser finds S/MIME in it, or its bytes name S/MIME or hold CMS
/// in any form a client decodes (`evidence::mentions_cms`: the other
/// reading may be the one with S/MIME in it). One that reads two ways with
/// no sign of S/MIME in it is plain: nothing in it is opened or vouched
/// for either way (a decrypted one still meets the EFAIL defence's own
/// check).
pub(super) fn parse_for_smime(raw: &[u8]) -> Result<Option<Message<'_>>, TooComplex> {
    let parsed = parse_unchecked(raw)?;
    if let Some(msg) = &parsed {
        if let Err(e) = readings::structure(msg, raw) {
            if any_smime(msg) || super::evidence::mentions_cms(raw) {
                return Err(e.into());
            }
        }
    }
    Ok(parsed)
}

/// Whether mail-parser finds anything S/MIME in `msg`, attached messages
/// included: a pkcs7 type or name, or a multipart/signed.
fn any_smime(msg: &Message<'_>) -> bool {
    let raw = msg.raw_message.as_ref();
    msg.parts.iter().any(|p| {
        claims_smime_content(p, raw)
            || is_smime_entity(p, raw)
            || is_multipart(p, "signed")
            || p.content_type()
                .and_then(|c| c.subtype())
                .is_some_and(|s| s.to_ascii_lowercase().contains("pkcs7"))
            || matches!(&p.body, PartType::Message(m) if any_smime(m))
    })
}

/// [`parse_for_smime`] before the check that it reads one way.
fn parse_unchecked(raw: &[u8]) -> Result<Option<Message<'_>>, TooComplex> {
    match super::parse::leaf(raw) {
        Some(part) if !is_smime_entity(&part, raw) && !claims_smime_content(&part, raw) => {
            Ok(Some(Message {
                parts: vec![part],
                raw_message: std::borrow::Cow::Borrowed(raw),
                ..Default::default()
            }))
        }
        Some(part) => Ok(super::parse::message_from_leaf(part, raw)),
        None => nesting::parse(raw),
    }
}

/// As [`shape_parsed`], taking the parse: the CMS of a top-level S/MIME
/// entity is moved out of it, not copied.
pub fn shape_taken(mut msg: Message<'_>, raw: &[u8]) -> Shape {
    if let Some(part) = msg.parts.first_mut() {
        if is_smime_entity(part, raw)
            && matches!(part.body, PartType::Binary(_) | PartType::InlineBinary(_))
        {
            let body = std::mem::replace(&mut part.body, PartType::Text("".into()));
            if let PartType::Binary(b) | PartType::InlineBinary(b) = body {
                return pkcs7_shape(part, cms_from(b));
            }
        }
    }
    shape_parsed(&msg, raw)
}

/// The shape of a message mail-parser has parsed already from `raw`.
pub fn shape_parsed(msg: &Message<'_>, raw: &[u8]) -> Shape {
    if msg.parts.is_empty() {
        return Shape::Plain;
    }
    shape_of(msg, raw, 0, 0)
}

/// Most multiparts with a single part looked through.
const MAX_WRAPPERS: usize = 16;

/// The shape of part `index` of `msg` (parsed from `raw`), `depth`
/// single-part multiparts down.
fn shape_of(msg: &Message<'_>, raw: &[u8], index: usize, depth: usize) -> Shape {
    let Some(part) = msg.parts.get(index) else {
        return Shape::Plain;
    };
    if is_smime_entity(part, raw) {
        return pkcs7_mime_shape(part);
    }
    // CMS under another type or name, or S/MIME in an attached message:
    // not opened, and said so.
    let disguised = disguised_cms(part, raw);
    if disguised.is_some() || matches!(part.body, PartType::Message(_)) || is_news(part) {
        let mut nested = Nested::default();
        match disguised {
            Some(kind) => kind.count(&mut nested),
            None => count_nested(msg, raw, index, &mut nested, depth),
        }
        if nested.encrypted + nested.signed == 0 {
            return Shape::Plain;
        }
        nested.container = type_of(part);
        return Shape::Mixed(nested);
    }
    let PartType::Multipart(children) = &part.body else {
        return Shape::Plain;
    };
    if is_multipart(part, "signed") && children.len() == 2 {
        let first = &msg.parts[children[0] as usize];
        let second = &msg.parts[children[1] as usize];
        let content = raw.get(first.offset_header as usize..first.offset_end as usize);
        if let (true, Some(content)) = (is_signature_part(second, raw), content) {
            return Shape::DetachedSigned {
                content: content.to_vec(),
                signature: cms_bytes(second),
            };
        }
        // No signature to check: its parts are counted like any
        // multipart's (a client that does not take it for signed mail
        // shows them, and opens S/MIME among them).
    }
    // Any other multipart: S/MIME inside is used only when it is the one
    // and only part (the body carried as a single attachment).
    if let ([only], true) = (children.as_slice(), depth < MAX_WRAPPERS) {
        let inner = shape_of(msg, raw, *only as usize, depth + 1);
        if !matches!(inner, Shape::Plain) {
            return inner;
        }
    }
    let mut nested = Nested::default();
    for &c in children {
        count_nested(msg, raw, c as usize, &mut nested, 0);
    }
    if nested.encrypted + nested.signed == 0 {
        return Shape::Plain;
    }
    nested.container = type_of(part);
    Shape::Mixed(nested)
}

/// A part's `type/subtype`, in lower case (empty without a Content-Type).
fn type_of(part: &MessagePart<'_>) -> String {
    part.content_type()
        .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase())
        .unwrap_or_default()
}

/// Counts the S/MIME parts at and under part `index`, `depth` containers
/// down: every level the parse made (`mail::nesting` caps it); one past
/// that counts as ciphertext, never as nothing.
fn count_nested(msg: &Message<'_>, raw: &[u8], index: usize, out: &mut Nested, depth: usize) {
    let Some(part) = msg.parts.get(index) else {
        return;
    };
    if depth > nesting::MAX_DEPTH {
        out.encrypted += 1;
        return;
    }
    if is_smime_entity(part, raw) {
        match pkcs7_mime_shape(part) {
            Shape::Enveloped { .. } => out.encrypted += 1,
            Shape::OpaqueSigned { .. } => out.signed += 1,
            _ => {}
        }
        return;
    }
    if is_signature_part(part, raw) {
        out.signed += 1;
        return;
    }
    if let Some(kind) = disguised_cms(part, raw) {
        return kind.count(out);
    }
    if is_news(part) {
        // Read as an attached message; one that cannot be read (too
        // deep, two ways with S/MIME in it) counts as ciphertext.
        match parse_for_smime(part.contents()) {
            Ok(Some(inner)) if !inner.parts.is_empty() => {
                count_nested(&inner, part.contents(), 0, out, depth + 1)
            }
            Ok(_) => {}
            Err(_) => out.encrypted += 1,
        }
        return;
    }
    match &part.body {
        PartType::Multipart(children) => {
            if is_multipart(part, "signed") {
                // Signed, and what it signs may hold ciphertext: its first
                // part is looked through (its signature is the one count).
                out.signed += 1;
                let mut inside = Nested::default();
                if let Some(&first) = children.first() {
                    count_nested(msg, raw, first as usize, &mut inside, depth + 1);
                }
                out.encrypted += inside.encrypted;
                return;
            }
            for &c in children {
                count_nested(msg, raw, c as usize, out, depth + 1);
            }
        }
        // An attached message's S/MIME counts too.
        PartType::Message(inner) if !inner.parts.is_empty() => {
            count_nested(inner, inner.raw_message.as_ref(), 0, out, depth + 1);
        }
        _ => {}
    }
}

/// The decoded body of a part holding CMS. mail-parser undoes base64
/// and quoted-printable; a base64 body labelled 7bit (or not labelled)
/// is decoded here.
pub(super) fn cms_bytes(part: &MessagePart<'_>) -> Vec<u8> {
    cms_from(std::borrow::Cow::Borrowed(part.contents()))
}

/// [`cms_bytes`] of a body taken out of its part (kept, not copied, when
/// it is DER already).
fn cms_from(body: std::borrow::Cow<'_, [u8]>) -> Vec<u8> {
    if body.first() == Some(&0x30) {
        return body.into_owned();
    }
    // base64 text, perhaps PEM-armoured (`-----BEGIN PKCS7-----`, as
    // `openssl crl2pkcs7` and some signing tools write `.p7c`/`.p7m`).
    let text: Vec<u8> = body
        .split(|b| *b == b'\n')
        .filter(|line| !line.starts_with(b"-----"))
        .flatten()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    match base64::engine::general_purpose::STANDARD.decode(&text) {
        Ok(der) if der.first() == Some(&0x30) => der,
        _ => body.into_owned(),
    }
}

fn pkcs7_mime_shape(part: &MessagePart<'_>) -> Shape {
    pkcs7_shape(part, cms_bytes(part))
}

/// The shape of the S/MIME entity `part` whose body holds `cms`.
fn pkcs7_shape(part: &MessagePart<'_>, cms: Vec<u8>) -> Shape {
    let ct = part.content_type();
    let smime_type = ct
        .and_then(|c| c.attribute("smime-type"))
        .map(|s| s.to_ascii_lowercase());
    match smime_type.as_deref() {
        Some("enveloped-data") | Some("authenveloped-data") => Shape::Enveloped { cms },
        // Labelled signed data that is not CMS is reported as a broken
        // signature, not passed over in silence.
        Some("signed-data") if super::cms::kind(&cms).is_none() => Shape::OpaqueSigned { cms },
        // Otherwise the CMS content type decides: a signed-data label on
        // something else, a .p7m without a label, certificates only.
        // A certificates-only bundle (`.p7c`, signed data without
        // content) is no layer.
        Some("certs-only") => Shape::Plain,
        _ => match super::cms::kind(&cms) {
            Some(super::cms::Kind::Signed) if super::cms::signed_content_inside(&cms) => {
                Shape::OpaqueSigned { cms }
            }
            Some(super::cms::Kind::Enveloped) | Some(super::cms::Kind::AuthEnveloped) => {
                Shape::Enveloped { cms }
            }
            Some(super::cms::Kind::Signed) => Shape::Plain,
            // S/MIME by type or name, in a form the gateway cannot read
            // as CMS (smime-type is optional; a client may decode base64
            // otherwise, or uuencode): a ciphertext that cannot be
            // opened, never plain mail (review 22).
            Some(super::cms::Kind::Other) | None => Shape::Enveloped { cms },
        },
    }
}

/// True for the fields that describe a MIME entity's content.
pub fn is_content_field(name: &str) -> bool {
    name.starts_with("content-") || name == "mime-version"
}

/// `headers` without the fields for which `drop` is true.
pub fn without(headers: &[u8], drop: impl Fn(&str) -> bool) -> Vec<u8> {
    // Field by field, no list of them: a header section of a million tiny
    // fields costs its own size, not fifteen times that.
    let mut out = Vec::with_capacity(headers.len());
    each_field(headers, |name, raw| {
        if !drop(&name) {
            out.extend_from_slice(raw);
        }
    });
    out
}

pub use crate::mail::lines::{crlf, lf};

/// base64 in lines of 76 characters, each ending in CRLF.
pub fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = Vec::with_capacity(text.len() + text.len() / 38 + 2);
    for chunk in text.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A writer that base64-encodes what it is given into `inner`, in lines of
/// 76 characters each ending in CRLF: the same bytes as
/// [`base64_lines`] of everything written, without holding it. The lines
/// go to `inner` through one buffer of [`LINES_AT_ONCE`] lines, reused.
/// [`Base64Lines::finish`] writes the last line.
pub struct Base64Lines<W: std::io::Write> {
    inner: W,
    /// Input not encoded yet (less than one line's 57 octets).
    pending: Vec<u8>,
    /// Encoded lines on their way to `inner`.
    out: Vec<u8>,
}

/// Octets that make one 76-character line.
const LINE_OCTETS: usize = 57;

/// Lines encoded before they are handed to the inner writer (about
/// 80 KB: stays in cache, and is allocated once per writer).
const LINES_AT_ONCE: usize = 1024;

impl<W: std::io::Write> Base64Lines<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            pending: Vec::with_capacity(LINE_OCTETS),
            out: Vec::new(),
        }
    }

    fn lines(&mut self, octets: &[u8]) -> std::io::Result<()> {
        let engine = &base64_simd::STANDARD;
        for block in octets.chunks(LINE_OCTETS * LINES_AT_ONCE) {
            // The block encoded in one go (the engine's fast loop), then
            // cut into lines behind it in the same buffer.
            let text = block.len().div_ceil(3) * 4;
            let lines = text.div_ceil(76);
            self.out.clear();
            self.out.resize(text + lines * 78, 0);
            let (dest, encoded) = self.out.split_at_mut(lines * 78);
            let n = engine
                .encode(block, base64_simd::Out::from_slice(encoded))
                .len();
            let mut at = 0;
            for line in encoded[..n].chunks(76) {
                dest[at..at + line.len()].copy_from_slice(line);
                dest[at + line.len()..at + line.len() + 2].copy_from_slice(b"\r\n");
                at += line.len() + 2;
            }
            self.inner.write_all(&self.out[..at])?;
        }
        Ok(())
    }

    /// Writes the last (short) line and gives the inner writer back.
    pub fn finish(mut self) -> std::io::Result<W> {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.lines(&rest)?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: std::io::Write> std::io::Write for Base64Lines<W> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let taken = buf.len();
        if !self.pending.is_empty() {
            let need = LINE_OCTETS - self.pending.len();
            let (head, tail) = buf.split_at(need.min(buf.len()));
            self.pending.extend_from_slice(head);
            buf = tail;
            if self.pending.len() < LINE_OCTETS {
                return Ok(taken);
            }
            let line = std::mem::take(&mut self.pending);
            self.lines(&line)?;
            self.pending = line;
            self.pending.clear();
        }
        let whole = buf.len() - buf.len() % LINE_OCTETS;
        if whole > 0 {
            self.lines(&buf[..whole])?;
        }
        self.pending.extend_from_slice(&buf[whole..]);
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// True when a header section looks like one (first line is a field).
pub fn looks_like_headers(raw: &[u8]) -> bool {
    let first = raw.split(|b| *b == b'\n').next().unwrap_or(&[]);
    match first.iter().position(|b| *b == b':') {
        Some(c) if c > 0 => first[..c].iter().all(|b| b.is_ascii_graphic()),
        _ => false,
    }
}

/// `application/(x-)pkcs7-mime` of any smime-type, or a part named like
/// one (`*.p7m` or `*.p7c`, by its Content-Disposition filename or its
/// Content-Type name, whatever its type): never narrower than what
/// unwrap opens ([`is_smime_entity`]), so the scan sees everything that
/// may be decrypted.
pub(super) fn claims_smime_content(part: &mail_parser::MessagePart<'_>, raw: &[u8]) -> bool {
    part.content_type()
        .is_some_and(|c| is_pkcs7_mime(c.ctype(), c.subtype()))
        || matches!(name_ending(part, raw), Some(".p7m") | Some(".p7c"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_part_any_of_whose_names_is_an_smime_file_claims_smime() {
        for fields in [
            "Content-Type: application/octet-stream; name=\"a.pdf\"; name*=UTF-8''smime.p7m",
            "Content-Type: application/octet-stream; name*=UTF-8''smime.p7m; name=\"a.pdf\"",
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.pdf\"; filename*=UTF-8''smime.p7m",
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.pdf\"; filename=\"smime.p7m\"",
            "Content-Type: application/octet-stream; name*0=\"smime.\"; name*1=\"p7m\"",
            "Content-Type: application/octet-stream; name=\"=?us-ascii?Q?smime=2Ep7m?=\"",
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=UTF-8''smime%2Ep7m",
            // mail-parser joins these into `a.pdfp7m` and `smime.`.
            "Content-Type: application/octet-stream; name=\"a.pdf\"; name*0=\"smime.\"; name*1=\"p7m\"",
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.pdf\"; filename*0=\"smime.\"; filename*1=\"p7m\"",
            // mail-parser reads the last Content-Disposition, clients the first.
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"smime.p7m\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"",
        ] {
            let m = format!("{fields}\r\nContent-Transfer-Encoding: base64\r\n\r\nMAA=\r\n");
            let parsed = mail_parser::MessageParser::default()
                .parse(m.as_bytes())
                .unwrap();
            assert!(
                super::claims_smime_content(&parsed.parts[0], m.as_bytes())
                    && super::is_smime_entity(&parsed.parts[0], m.as_bytes()),
                "{fields}"
            );
        }
        let m = "Content-Type: application/octet-stream; name=\"a.pdf\"; name*=UTF-8''b.pdf\r\n\r\nx\r\n";
        let parsed = mail_parser::MessageParser::default()
            .parse(m.as_bytes())
            .unwrap();
        assert!(!super::claims_smime_content(&parsed.parts[0], m.as_bytes()));
    }

    use super::*;

    #[test]
    fn reading_two_ways_matters_only_where_there_is_s_mime() {
        // Plain mail with two From fields or a one-letter zone: plain.
        let plain = b"From: a@x\r\nFrom: b@y\r\nDate: Mon, 30 Nov 2026 12:00:00 Z\r\n\r\nhi\r\n";
        assert_eq!(shape(plain), Shape::Plain);
        let scanned = crate::smime::scan::scan_and_shape(plain);
        assert_eq!(scanned.1, Shape::Plain);
        assert!(!scanned.0.encrypted);
        // The same trick around S/MIME: not read.
        let signed = b"Content-Type: multipart/mixed; boundary=\"E\"\r\n\
                       Content-Type: multipart/signed; boundary=\"S\"\r\n\r\n\
                       --S\r\nContent-Type: text/plain\r\n\r\nx\r\n\
                       --S\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--S--\r\n";
        assert!(matches!(
            shape(signed),
            Shape::Unreadable(TooComplex::TwoWays(_))
        ));
    }

    #[test]
    fn streamed_base64_lines_are_the_same_bytes() {
        use std::io::Write;
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for split in [0, 1, 56, 57, 58, 300, 999, 1000] {
            let mut w = Base64Lines::new(Vec::new());
            let mid = split.max(990);
            w.write_all(&data[..split]).unwrap();
            for b in &data[split..mid] {
                w.write_all(std::slice::from_ref(b)).unwrap();
            }
            w.write_all(&data[mid..]).unwrap();
            assert_eq!(w.finish().unwrap(), base64_lines(&data), "split at {split}");
        }
        assert!(Base64Lines::new(Vec::new()).finish().unwrap().is_empty());
    }

    #[test]
    fn detached_signed_content_is_exact() {
        let m = b"From: a\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=\"BB\"\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n\r\n--BB\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--BB--\r\n";
        match shape(m) {
            Shape::DetachedSigned { content, signature } => {
                assert_eq!(content, b"Content-Type: text/plain\r\n\r\nhello\r\n");
                assert_eq!(signature, vec![0, 1, 2]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_fields_and_filtering() {
        let h = b"From: a\r\nSubject: x\r\n y\r\nContent-Type: text/plain;\r\n\tcharset=utf-8\r\n";
        let f = fields(h);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].0, "subject");
        assert_eq!(
            without(h, is_content_field),
            b"From: a\r\nSubject: x\r\n y\r\n"
        );
    }

    #[test]
    fn mixed_multipart_is_not_spliced() {
        let m = b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nattacker text\r\n--X\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--X--\r\n";
        match shape(m) {
            Shape::Mixed(n) => {
                assert_eq!((n.encrypted, n.signed), (1, 0));
                assert_eq!(n.container, "multipart/mixed");
            }
            other => panic!("{other:?}"),
        }
    }

    fn enveloped_der() -> Vec<u8> {
        use openssl::cms::{CMSOptions, CmsContentInfo};
        let id = crate::pki::testkit::identity(1024, "Mime Test").unwrap();
        let mut certs = openssl::stack::Stack::new().unwrap();
        certs.push(id.cert.clone()).unwrap();
        CmsContentInfo::encrypt(
            &certs,
            b"Content-Type: text/plain\r\n\r\nx\r\n",
            openssl::symm::Cipher::aes_128_cbc(),
            CMSOptions::BINARY,
        )
        .unwrap()
        .to_der()
        .unwrap()
    }

    /// Signed data with `content` inside.
    fn signed_der(content: &[u8]) -> Vec<u8> {
        let id = crate::pki::testkit::identity(1024, "Mime Signer").unwrap();
        crate::pki::testkit::signed(&id, content).unwrap()
    }

    #[test]
    fn ciphertext_is_known_however_its_transfer_encoding_is_written() {
        // Review 19: the content check read `base64 (mime)` as no
        // encoding, stopped at padding in the middle, lost the last bytes
        // of signed data whose length is not a multiple of three, and knew
        // nothing of uuencode; Thunderbird reads all of these.
        use base64::Engine;
        let der = enveloped_der();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let with = |ct: &str, cte: &str, body: &str| {
            shape(
                format!("Content-Type: {ct}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n")
                    .as_bytes(),
            )
        };
        let encrypted =
            |s: &Shape| matches!(s, Shape::Mixed(n) if (n.encrypted, n.signed) == (1, 0));
        let split = format!(
            "{}{}",
            base64::engine::general_purpose::STANDARD.encode(&der[..1]),
            base64::engine::general_purpose::STANDARD.encode(&der[1..])
        );
        for (cte, body) in [
            ("base64 (mime)", b64.as_str()),
            ("base64;", b64.as_str()),
            ("\"Base64\"", b64.as_str()),
            ("base64", split.as_str()),
            ("7bit", b64.as_str()),
            ("x-uuencode", "begin 644 smime.p7m\r\n`\r\nend"),
        ] {
            let m = with("application/octet-stream; name=x", cte, body);
            assert!(encrypted(&m), "{cte}: {m:?}");
        }
        // uuencode under a name that says nothing of S/MIME: a client has
        // no reason to open it either.
        let m = with(
            "application/octet-stream; name=x.bin",
            "x-uuencode",
            "begin 644 x\r\nend",
        );
        assert_eq!(m, Shape::Plain);
        // Signed data of every length modulo three, content inside.
        for extra in 0..3 {
            let content = format!(
                "Content-Type: text/plain\r\n\r\nsigned{}\r\n",
                "x".repeat(extra)
            );
            let signed = signed_der(content.as_bytes());
            let body = base64::engine::general_purpose::STANDARD.encode(&signed);
            let m = with("application/pdf", "base64", &body);
            assert!(
                matches!(&m, Shape::Mixed(n) if (n.encrypted, n.signed) == (0, 1)),
                "{} bytes: {m:?}",
                signed.len()
            );
        }
    }

    /// `bytes` in quoted-printable, every byte escaped, in short lines.
    fn quoted_printable(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
            if i % 20 == 19 {
                out.extend_from_slice(b"=\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn octet_stream_is_smime_by_name_only() {
        let der = enveloped_der();
        let b64 = String::from_utf8(base64_lines(&der)).unwrap();
        let with = |ct: &str, cte: &str, body: &[u8]| {
            let mut m = format!("Subject: x\r\nContent-Type: {ct}\r\n{cte}\r\n").into_bytes();
            m.extend_from_slice(body);
            shape(&m)
        };
        let b64cte = "Content-Transfer-Encoding: base64\r\n";
        for ct in [
            "application/octet-stream; name=\"smime.p7m\"",
            "application/octet-stream; name=\"SMIME.P7M\"",
            "Application/Octet-Stream; name=smime.p7m",
        ] {
            assert!(
                matches!(with(ct, b64cte, b64.as_bytes()), Shape::Enveloped { .. }),
                "{ct}"
            );
        }
        // Named in Content-Disposition only.
        let m = with(
            "application/octet-stream",
            &format!("{b64cte}Content-Disposition: attachment; filename=\"mail.p7m\"\r\n"),
            b64.as_bytes(),
        );
        assert!(matches!(m, Shape::Enveloped { .. }), "{m:?}");
        // base64 labelled 7bit; raw DER labelled binary.
        let m = with(
            "application/octet-stream; name=smime.p7m",
            "Content-Transfer-Encoding: 7bit\r\n",
            b64.as_bytes(),
        );
        assert!(matches!(m, Shape::Enveloped { .. }), "{m:?}");
        let m = with(
            "application/octet-stream; name=smime.p7m",
            "Content-Transfer-Encoding: binary\r\n",
            &der,
        );
        assert_eq!(m, Shape::Enveloped { cms: der.clone() });
        // Under other names or types, ciphertext is known by its content
        // and not opened; a .p7m that is not CMS is plain.
        for ct in [
            "application/octet-stream; name=\"report.pdf\"",
            "application/octet-stream; name=\"smime.p7m.pdf\"",
            "application/octet-stream",
            "text/plain",
            "application/x-unknown-content-type; name*0=\"smime.p7m\"; name*2=\"x\"",
        ] {
            let m = with(ct, b64cte, b64.as_bytes());
            assert!(
                matches!(&m, Shape::Mixed(n) if (n.encrypted, n.signed) == (1, 0)),
                "{ct}: {m:?}"
            );
        }
        let qp = "Content-Transfer-Encoding: quoted-printable\r\n";
        let m = with("application/pdf", qp, &quoted_printable(&der));
        assert!(matches!(&m, Shape::Mixed(n) if n.encrypted == 1), "{m:?}");
        let m = with("application/pdf", "", &der);
        assert!(matches!(&m, Shape::Mixed(n) if n.encrypted == 1), "{m:?}");
        assert_eq!(
            with("application/pdf", b64cte, b"JVBERi0xLjQK\r\n"),
            Shape::Plain
        );
        assert_eq!(
            with(
                "application/octet-stream; name=smime.p7m",
                b64cte,
                b"bm90IENNUw==\r\n"
            ),
            // Named S/MIME and not readable as CMS: a ciphertext that
            // cannot be opened, not plain (review 22).
            Shape::Enveloped {
                cms: b"not CMS".to_vec()
            }
        );
    }

    #[test]
    fn signature_part_named_p7s_makes_multipart_signed() {
        let m = b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=\"BB\"\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n\r\n--BB\r\nContent-Type: application/octet-stream; name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--BB--\r\n";
        assert!(matches!(shape(m), Shape::DetachedSigned { .. }));
        let other = String::from_utf8_lossy(m).replace("smime.p7s", "notes.txt");
        assert_eq!(shape(other.as_bytes()), Shape::Plain);
    }

    #[test]
    fn nested_smime_is_counted_wherever_it_sits() {
        let m = b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nhi\r\n--X\r\nContent-Type: multipart/alternative; boundary=Y\r\n\r\n--Y\r\nContent-Type: text/html\r\n\r\n<b>\r\n--Y\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=Z\r\n\r\n--Z\r\nContent-Type: text/plain\r\n\r\ns\r\n--Z\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAEC\r\n--Z--\r\n--Y--\r\n--X--\r\n";
        match shape(m) {
            Shape::Mixed(n) => assert_eq!((n.encrypted, n.signed), (0, 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ciphertext_under_a_signature_or_deep_down_is_counted() {
        let pk = format!(
            "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}",
            String::from_utf8(base64_lines(&enveloped_der())).unwrap()
        );
        let text = "Content-Type: text/plain\r\n\r\nhi\r\n";
        let multipart = |sub: &str, b: &str, parts: &[&str]| {
            let body: String = parts.iter().map(|p| format!("--{b}\r\n{p}")).collect();
            format!("Content-Type: multipart/{sub}; boundary={b}\r\n\r\n{body}--{b}--\r\n")
        };
        let counts = |m: &str| match shape(m.as_bytes()) {
            Shape::Mixed(n) => (n.encrypted, n.signed),
            other => panic!("{other:?}"),
        };
        // A multipart/signed whose second part is no signature: a
        // multipart like any other (review 20: it was plain).
        assert_eq!(counts(&multipart("signed", "S", &[&pk, text])), (1, 0));
        // What a signature beside other parts signs is looked through.
        let signed = multipart(
            "signed",
            "S",
            &[
                &pk,
                "Content-Type: application/pkcs7-signature\r\n\r\nAAEC\r\n",
            ],
        );
        assert_eq!(counts(&multipart("mixed", "M", &[text, &signed])), (1, 1));
        // message/news, a message to Thunderbird and a leaf to mail-parser.
        let news =
            format!("Content-Type: message/news\r\n\r\nSubject: n\r\nMIME-Version: 1.0\r\n{pk}");
        match shape(news.as_bytes()) {
            Shape::Mixed(n) => assert_eq!((n.encrypted, n.container.as_str()), (1, "message/news")),
            other => panic!("{other:?}"),
        }
        assert_eq!(counts(&multipart("mixed", "N", &[text, &news])), (1, 0));
        // Nested past 16 levels, beside text.
        let deep = (0..20).fold(pk.clone(), |e, i| {
            multipart("mixed", &format!("L{i}"), &[&e])
        });
        assert_eq!(counts(&multipart("mixed", "T", &[text, &deep])), (1, 0));
        // Control: the same shapes with text only are plain.
        let deep = (0..20).fold(text.to_string(), |e, i| {
            multipart("mixed", &format!("L{i}"), &[&e])
        });
        for m in [
            multipart("signed", "S", &[text, text]),
            multipart("mixed", "T", &[text, &deep]),
            format!("Content-Type: message/news\r\n\r\nSubject: n\r\n{text}"),
        ] {
            assert_eq!(shape(m.as_bytes()), Shape::Plain);
        }
    }

    #[test]
    fn lf_form() {
        assert_eq!(lf(b"a\r\nb\nc\r"), b"a\nb\nc\r");
    }
}
