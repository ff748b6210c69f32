//! Ciphertext known by a message's bytes alone, wherever it sits: the
//! backstop behind the MIME walk (`scan`, `mime`). The walk reads a
//! message as mail-parser does; a client may read it otherwise (a header
//! field written twice, a boundary it takes literally, a wrapper type the
//! walk does not open, nesting the walk stops at), and then show and open
//! CMS the walk never met. The object identifier of enveloped or
//! authEnveloped data starts every such ContentInfo; a client decodes it
//! from base64 (skipping what is not base64, restarting after padding),
//! quoted-printable or raw bytes, so it is looked for in each of those
//! forms: raw, in the message's base64 characters at each of the three
//! alignments, and with quoted-printable escapes undone. What holds it
//! and is not counted by the walk is ciphertext the gateway does not
//! open. Pure, and linear in the message's size (about 12 µs for 10 KiB of text).

use std::sync::OnceLock;

use base64::Engine;

/// The content types a client decrypts, as a ContentInfo starts: the
/// contents octets of id-envelopedData (1.2.840.113549.1.7.3) and
/// id-ct-authEnvelopedData (1.2.840.113549.1.9.16.1.23), and the tag of
/// the content that follows (`[0]`, 0xa0). Not the identifier's own tag
/// and length: BER may write the length in long form (`06 81 09`), which
/// NSS and OpenSSL accept. The trailing tag makes the identifier's last
/// bits part of every base64 form (without it, one alignment's form ends
/// before them, and enveloped data reads like signed or plain data).
const ENCRYPTED: [&[u8]; 2] = [
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03, 0xa0],
    &[
        0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x17, 0xa0,
    ],
];

/// id-signedData (1.2.840.113549.1.7.2), likewise: a signature may wrap
/// ciphertext whose own identifier is then encoded twice. Looked for only
/// where a message reads two ways ([`mentions_cms`]): signed software and
/// documents carry it in plain mail too.
const SIGNED: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0];

/// The base64 characters determined by `bytes` alone when they start at
/// `skip` (0, 1 or 2) bytes into a group of three.
fn base64_form(bytes: &[u8], skip: usize) -> Vec<u8> {
    let mut padded = vec![0u8; skip];
    padded.extend_from_slice(bytes);
    padded.extend_from_slice(&[0, 0]);
    let text = base64::engine::general_purpose::STANDARD.encode(&padded);
    let (first_bit, end_bit) = (8 * skip, 8 * (skip + bytes.len()));
    // Character i carries bits 6i..6i+6: kept when all of them are ours.
    (0..text.len())
        .filter(|i| 6 * i >= first_bit && 6 * i + 6 <= end_bit)
        .map(|i| text.as_bytes()[i])
        .collect()
}

/// Every form of some identifiers: raw and base64 at each alignment,
/// each looked for on its own (memchr's substring search, by its rarest
/// bytes: several times faster on text than one automaton for all).
struct Forms {
    finders: Vec<memchr::memmem::Finder<'static>>,
    longest: usize,
}

impl Forms {
    fn of(ids: &[&[u8]]) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for id in ids {
            patterns.push(id.to_vec());
            patterns.extend((0..3).map(|skip| base64_form(id, skip)));
        }
        Forms {
            longest: patterns.iter().map(Vec::len).max().unwrap_or(0),
            finders: patterns
                .iter()
                .map(|p| memchr::memmem::Finder::new(p).into_owned())
                .collect(),
        }
    }

    fn is_in(&self, haystack: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(haystack).is_some())
    }
}

fn encrypted_forms() -> &'static Forms {
    static FORMS: OnceLock<Forms> = OnceLock::new();
    FORMS.get_or_init(|| Forms::of(&ENCRYPTED))
}

fn any_cms_forms() -> &'static Forms {
    static FORMS: OnceLock<Forms> = OnceLock::new();
    FORMS.get_or_init(|| Forms::of(&[ENCRYPTED[0], ENCRYPTED[1], SIGNED]))
}

/// Whether `raw` holds the identifier of enveloped or authEnveloped data
/// in any form a client decodes: raw, in base64 (read from its base64
/// characters only, so line breaks, padding and other characters between
/// them hide nothing), or quoted-printable.
pub fn holds_ciphertext(raw: &[u8]) -> bool {
    found(raw, encrypted_forms())
}

/// [`holds_ciphertext`], signed data too, or a name of S/MIME (`pkcs7`,
/// `p7m`, `p7s`, `p7c`, `p7z`, in any case) where a type or name is
/// written: a header field in a header section (folded lines joined; its
/// file names read as `mail::file_names` reads them, pieces joined) or a
/// uuencode or yEnc first line, read with percent escapes undone and
/// encoded words decoded, and long runs of base64 (a DKIM signature) left
/// out; not in body text, where three letters turn up by chance (in half
/// of all 10 KiB base64 attachments, in tracking links, in uuencode). The
/// evidence that makes a message that reads two ways one that cannot be
/// read. Not read: the header section of a message attached inside (a
/// body to this reading).
pub fn mentions_cms(raw: &[u8]) -> bool {
    // Header sections: the message's, and each part's (after a line that
    // may be a boundary, up to the next empty line). A field's folded
    // lines are joined to it, so that its parameters can be read whole.
    let mut in_head = true;
    let mut field: Vec<u8> = Vec::new();
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        if !(field.is_empty() || in_head && folded) {
            if names_smime(&field) {
                return true;
            }
            field.clear();
        }
        if line.is_empty() {
            in_head = false;
        } else if line.starts_with(b"--") {
            in_head = true;
        } else if in_head {
            field.extend_from_slice(line);
        } else if (line.starts_with(b"begin ") || line.starts_with(b"=ybegin "))
            && names_smime(line)
        {
            return true;
        }
    }
    (!field.is_empty() && names_smime(&field)) || found(raw, any_cms_forms())
}

/// Whether `line` names S/MIME, read as [`mentions_cms`] says: as text,
/// and by every reading of a file name in it (RFC 2231 pieces joined).
fn names_smime(line: &[u8]) -> bool {
    let raw_text = String::from_utf8_lossy(line);
    let by_name = raw_text
        .split_once(':')
        .map(|(_, value)| crate::mail::file_names::of_field(value))
        .unwrap_or_default()
        .iter()
        .any(|name| {
            let name = name.trim().to_ascii_lowercase();
            [".p7m", ".p7s", ".p7c", ".p7z"]
                .iter()
                .any(|e| name.ends_with(e))
        });
    if by_name {
        return true;
    }
    let text = percent_encoding::percent_decode(line)
        .decode_utf8_lossy()
        .into_owned();
    let text = crate::mail::file_names::encoded_words(&text).unwrap_or(text);
    let mut squashed = String::new();
    for run in text.split(|c: char| !c.is_ascii() || !BASE64[usize::from(c as u8)]) {
        if run.len() < 20 {
            squashed.extend(
                run.chars()
                    .filter(char::is_ascii_alphanumeric)
                    .map(|c| c.to_ascii_lowercase()),
            );
        }
    }
    ["pkcs7", "p7m", "p7s", "p7c", "p7z"]
        .iter()
        .any(|name| squashed.contains(name))
}

/// How much of a message is read into one piece: its base64 characters
/// and its quoted-printable reading are looked through piece by piece,
/// so a large message costs no copy of itself.
const PIECE: usize = 64 * 1024;

/// Whether `raw`, its base64 characters alone, or its quoted-printable
/// reading holds one of `forms`.
fn found(raw: &[u8], forms: &Forms) -> bool {
    if forms.is_in(raw) {
        return true;
    }
    let letters = |piece: &[u8], out: &mut Vec<u8>| {
        out.extend(piece.iter().copied().filter(|b| BASE64[usize::from(*b)]));
    };
    if read_in_pieces(raw.chunks(PIECE), forms, letters) {
        return true;
    }
    // An octet written as `=XX` (the identifiers' second, 0x86, is one
    // quoted-printable escapes), or a line broken by `=`.
    if memchr::memmem::find(raw, b"=86").is_none() && memchr::memchr(0x86, raw).is_none() {
        return false;
    }
    // Whole lines, so that no escape is cut in two.
    let mut rest = raw;
    let lines = std::iter::from_fn(move || {
        let cut = match rest.len() > PIECE {
            true => memchr::memrchr(b'\n', &rest[..PIECE]).map_or(PIECE, |at| at + 1),
            false => rest.len(),
        };
        let (piece, after) = rest.split_at(cut);
        rest = after;
        (!piece.is_empty()).then_some(piece)
    });
    read_in_pieces(lines, forms, quoted_printable)
}

/// Whether `forms` are in the reading `read` makes of `pieces`, read one
/// after another: each reading starts with the end of the one before, so
/// that no form is cut in two between them, and a large message costs no
/// copy of itself.
fn read_in_pieces<'a>(
    pieces: impl Iterator<Item = &'a [u8]>,
    forms: &Forms,
    mut read: impl FnMut(&[u8], &mut Vec<u8>),
) -> bool {
    let keep = forms.longest.saturating_sub(1);
    let mut out: Vec<u8> = Vec::new();
    for piece in pieces {
        read(piece, &mut out);
        if forms.is_in(&out) {
            return true;
        }
        let from = out.len().saturating_sub(keep);
        out.drain(..from);
    }
    false
}

/// Quoted-printable as Thunderbird's decoder reads it, appended to `out`:
/// `=XX` (hex digits in either case) is that octet, `=` at the end of a
/// line (white space after it allowed) joins the line to the next, and
/// every other octet is itself: 8-bit octets and controls too, which the
/// `quoted_printable` crate drops (so ciphertext written with them raw
/// was not seen). Never fails.
pub(super) fn quoted_printable(input: &[u8], out: &mut Vec<u8>) {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        if let (Some(h), Some(l)) = (
            input.get(i + 1).copied().and_then(hex),
            input.get(i + 2).copied().and_then(hex),
        ) {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        let mut j = i + 1;
        while matches!(input.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        match input.get(j) {
            Some(b'\n') => i = j + 1,
            Some(b'\r') if input.get(j + 1) == Some(&b'\n') => i = j + 2,
            _ => {
                out.push(b'=');
                i += 1;
            }
        }
    }
}

/// base64 as libmime (Thunderbird's MIME decoder) reads it, at most about
/// `cap` octets: characters outside the alphabet skipped, and `=` anywhere
/// in a group of four read as six zero bits, the group then giving three
/// octets less one for each `=` (so `=QcD` gives `01 07`, and the next
/// group goes on from there: a form no other decoder reads as the
/// same octets).
pub(super) fn libmime_base64(body: &[u8], cap: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len().min(cap) / 4 * 3 + 3);
    let (mut group, mut filled, mut pads) = (0u32, 0, 0);
    for b in body {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pads += 1;
                0
            }
            _ => continue,
        };
        group = group << 6 | u32::from(value);
        filled += 1;
        if filled == 4 {
            let octets = group.to_be_bytes();
            out.extend_from_slice(&octets[1..4 - pads.min(3)]);
            (group, filled, pads) = (0, 0, 0);
            if out.len() >= cap {
                break;
            }
        }
    }
    out
}

/// The base64 alphabet (without the padding `=`), by octet.
static BASE64: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn enveloped() -> Vec<u8> {
        let id = crate::pki::testkit::identity(1024, "Evidence").unwrap();
        let mut certs = openssl::stack::Stack::new().unwrap();
        certs.push(id.cert.clone()).unwrap();
        openssl::cms::CmsContentInfo::encrypt(
            &certs,
            b"secret",
            openssl::symm::Cipher::aes_128_cbc(),
            openssl::cms::CMSOptions::BINARY,
        )
        .unwrap()
        .to_der()
        .unwrap()
    }

    #[test]
    fn base64_forms_are_the_characters_the_identifier_fixes() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        for skip in 0..3 {
            let form = base64_form(ENCRYPTED[0], skip);
            assert!(form.len() >= 12, "{skip}: {form:?}");
            // Whatever precedes and follows, the form is in the text.
            for before in [&b"\x00\x00"[..], b"\xff\xfe", b"ab"] {
                let mut bytes = before[..skip].to_vec();
                bytes.extend_from_slice(ENCRYPTED[0]);
                bytes.extend_from_slice(b"\xff\x01");
                let text = b64(&bytes);
                assert!(
                    text.as_bytes().windows(form.len()).any(|w| w == form),
                    "{skip} {before:?}: {text} lacks {}",
                    String::from_utf8_lossy(&form)
                );
            }
        }
    }

    #[test]
    fn every_form_tells_enveloped_from_signed_and_plain_data() {
        let data: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0xa0];
        for skip in 0..3 {
            let form = base64_form(ENCRYPTED[0], skip);
            for other in [SIGNED, data] {
                let mut bytes = vec![0x30; skip];
                bytes.extend_from_slice(other);
                bytes.extend_from_slice(&[0x80, 0x30, 0x80]);
                let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
                assert!(
                    !text.as_bytes().windows(form.len()).any(|w| w == form),
                    "alignment {skip}"
                );
            }
        }
    }

    #[test]
    fn ciphertext_is_found_in_every_form_a_client_decodes() {
        let der = enveloped();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut lines = String::new();
        for (i, c) in b64.chars().enumerate() {
            if i > 0 && i % 5 == 0 {
                lines.push_str("\r\n");
            }
            lines.push(c);
        }
        let junk: String = b64.chars().flat_map(|c| [c, '!']).collect();
        let padded_mid = format!("MA=={b64}");
        let qp: String = der.iter().map(|b| format!("={b:02X}")).collect();
        let qp_lines: String = qp
            .as_bytes()
            .chunks(60)
            .map(|c| format!("{}=\r\n", String::from_utf8_lossy(c)))
            .collect();
        for (name, text) in [
            ("raw", der.clone()),
            ("base64", b64.clone().into_bytes()),
            ("short lines", lines.into_bytes()),
            ("junk between", junk.into_bytes()),
            ("padding first", padded_mid.into_bytes()),
            ("quoted-printable", qp.into_bytes()),
            ("quoted-printable lines", qp_lines.into_bytes()),
        ] {
            let mut message = b"Subject: x\r\n\r\nsome text\r\n".to_vec();
            message.extend_from_slice(&text);
            assert!(holds_ciphertext(&message), "{name}");
            assert!(mentions_cms(&message), "{name}");
        }
    }

    #[test]
    fn base64_is_read_as_libmime_reads_it() {
        assert_eq!(libmime_base64(b"AQcD", 99), [1, 7, 3]);
        assert_eq!(libmime_base64(b"=QcD A6A=", 99), [1, 7, 3, 0xa0]);
        assert_eq!(libmime_base64(b"AQ==\r\nAQcD", 99), [1, 1, 7, 3]);
        assert_eq!(libmime_base64(b"AQcDAQcD", 2), [1, 7, 3]);
    }

    #[test]
    fn quoted_printable_is_read_as_a_client_reads_it() {
        let read = |s: &[u8]| {
            let mut out = Vec::new();
            quoted_printable(s, &mut out);
            out
        };
        assert_eq!(read(b"a=3Db=3db"), b"a=b=b");
        assert_eq!(read(b"ab=\r\ncd= \r\nef=\ngh"), b"abcdefgh");
        // 8-bit octets and controls written raw are kept.
        assert_eq!(read(b"\x06\x86\xf7=0D"), b"\x06\x86\xf7\r");
        assert_eq!(read(b"a=zz=4"), b"a=zz=4");
    }

    #[test]
    fn ciphertext_in_ber_or_raw_quoted_printable_is_found() {
        let der = enveloped();
        // The identifier's length in long form, as BER allows.
        let at = der
            .windows(3)
            .position(|w| w == [0x06, 0x09, 0x2a])
            .unwrap();
        let mut ber = der[..at + 1].to_vec();
        ber.push(0x81);
        ber.extend_from_slice(&der[at + 1..]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&ber);
        assert!(holds_ciphertext(b64.as_bytes()));
        // Quoted-printable with the 8-bit octets raw and the rest escaped.
        let qp: Vec<u8> = der
            .iter()
            .flat_map(|b| match b {
                0x80.. => vec![*b],
                _ => format!("={b:02x}").into_bytes(),
            })
            .collect();
        assert!(holds_ciphertext(&qp));
    }

    #[test]
    fn plain_mail_and_other_cms_hold_no_ciphertext() {
        let id = crate::pki::testkit::identity(1024, "Evidence Plain").unwrap();
        let signed = crate::pki::testkit::signed(&id, b"hello").unwrap();
        let cert = id.cert.to_der().unwrap();
        let text = b"Subject: S/MIME\r\n\r\nWe discuss smime.p7m and pkcs7 here.\r\n".to_vec();
        for (name, bytes) in [
            ("text", text.clone()),
            ("signed data", signed.clone()),
            ("certificate", cert.clone()),
            (
                "base64 certificate",
                base64::engine::general_purpose::STANDARD
                    .encode(&cert)
                    .into_bytes(),
            ),
            (
                "random base64",
                base64::engine::general_purpose::STANDARD
                    .encode(openssl::sha::sha512(b"x").repeat(200))
                    .into_bytes(),
            ),
        ] {
            assert!(!holds_ciphertext(&bytes), "{name}");
        }
        // Where a message reads two ways, a name in a header field or
        // first line, or signed data, is enough; body text is not.
        assert!(!mentions_cms(&text));
        assert!(mentions_cms(&signed));
        assert!(mentions_cms(b"begin 644 smime.p7m\r\n"));
        for field in [
            &b"Content-Type: application/octet-stream;\r\n name*=utf-8''smime.%70%37%6D\r\n"[..],
            b"Content-Type: application/octet-stream; name=\"=?utf-8?Q?smime=2Ep7m?=\"\r\n",
            b"Content-Type: application/x-pkcs7-mime\r\n",
        ] {
            assert!(mentions_cms(field), "{}", String::from_utf8_lossy(field));
        }
        // A name in RFC 2231 pieces, folded over two lines.
        assert!(mentions_cms(
            b"Content-Type: application/octet-stream;\r\n name*0=\"smime.p\"; name*1=\"7m\"\r\n\r\nx\r\n"
        ));
        // A body line with a colon is no header field.
        assert!(!mentions_cms(b"Subject: x\r\n\r\nM:P7M(smime.p7m)\r\n"));
        assert!(!mentions_cms(
            b"DKIM-Signature: v=1; a=rsa-sha256;\r\n b=AbCdEfGhp7mIjKlMnOpQrStUvWxYz012345+/AbCd\r\n\r\nhi\r\n"
        ));
        assert!(!mentions_cms(b"Subject: hi\r\n\r\nplain text\r\n"));
        // Not three letters that base64 text holds by chance.
        assert!(!mentions_cms(
            b"Content-Type: application/pdf\r\n\r\nJVBERi0xLjQKp7mAAAp7sBBBBBBBBBB\r\n"
        ));
    }
}
