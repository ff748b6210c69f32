//! Caps on the shape of CMS input, checked before OpenSSL parses it: a
//! structure too deep, a SET or SEQUENCE with too many elements (say a
//! million RecipientInfos), or too many elements in all is refused at the
//! cost of one pass over the bytes, before anything is built from them.
//! Primitive OCTET STRING chunks inside a constructed element (BER
//! streaming of large content, `[0] IMPLICIT` included) are not counted:
//! they cost OpenSSL no more than the content itself. Input the walker
//! cannot read is refused too, so that a quirk of encoding cannot slip a
//! structure past the caps. Also the length of an AuthEnvelopedData's
//! MAC, read the same way (a tag shorter than RFC 5084 allows protects
//! less than its name says). Pure.

use asn1_rs::{Class, FromBer, Header, Length, Tag};

/// Deepest nesting of constructed elements.
pub const MAX_DEPTH: usize = 32;
/// Most elements inside one constructed element (recipients, signers,
/// certificates, attributes, …).
pub const MAX_ITEMS: usize = 4096;
/// Most elements in all, chunks of constructed strings not counted.
pub const MAX_ELEMENTS: usize = 262_144;
/// Most S/MIME layers taken off one message (unwrap), and so how deep
/// the scan follows signatures one inside the other.
pub const MAX_LAYERS: usize = 6;
/// Most SignerInfos in one SignedData: each costs a public-key operation
/// (or two: the content is tried as sent and with LF line ends) whatever
/// it claims, and a 3,070-bit public exponent makes one RSA check 7 ms
/// (4,096 signers took 28 s, review 25). Mail has one or two.
pub const MAX_SIGNERS: usize = 8;

/// Why CMS input was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_ITEMS} elements in one structure")]
    TooManyItems,
    #[error("more than {MAX_ELEMENTS} elements in all")]
    TooManyElements,
    #[error("more than {MAX_SIGNERS} signers in one signature")]
    TooManySigners,
    #[error("malformed BER: {0}")]
    Malformed(&'static str),
}

/// How many bytes follow the one element `ber` starts with (walked under
/// the same caps); `None` when it cannot be walked.
pub fn trailing(ber: &[u8]) -> Option<usize> {
    let mut budget = MAX_ELEMENTS;
    match element(ber, 0, &mut budget) {
        Ok(Walked::Element { rest, .. }) => Some(rest.len()),
        _ => None,
    }
}

/// Checks `ber` (one CMS ContentInfo, DER or BER) against the caps.
/// Trailing bytes after the element are OpenSSL's to judge.
pub fn check(ber: &[u8]) -> Result<(), LimitError> {
    let mut budget = MAX_ELEMENTS;
    match element(ber, 0, &mut budget)? {
        Walked::EndOfContents(_) => Err(LimitError::Malformed("empty")),
        Walked::Element { .. } => match signers(ber) {
            Some(Some(n)) if n > MAX_SIGNERS => Err(LimitError::TooManySigners),
            // Signed data whose signers cannot be counted is not given
            // to OpenSSL to count them by checking each.
            Some(None) => Err(LimitError::Malformed("signers not readable")),
            _ => Ok(()),
        },
    }
}

/// The content type of signed data.
const SIGNED_DATA: &str = "1.2.840.113549.1.7.2";

/// The fields of the SignedData in `ber` (a ContentInfo, DER or BER):
/// `None` for other content, `Some(None)` for signed data the walk cannot
/// read. The type is read as an identifier, in any length form BER
/// allows (a byte prefix missed `06 81 09 …`, review 26).
fn signed_data_fields(ber: &[u8]) -> Option<Option<&[u8]>> {
    let content_info = inside(ber)?;
    let (after_type, oid) = asn1_rs::Oid::from_ber(content_info).ok()?;
    if oid.to_id_string() != SIGNED_DATA {
        return None;
    }
    Some(inside(after_type).and_then(inside))
}

/// Whether the SignedData in `ber` (a ContentInfo, DER or BER) carries its
/// content (an eContent after the type in encapContentInfo): read without
/// OpenSSL, so also of a structure the caps refuse (a signature with
/// too many signers is still one with content, not plain mail). `None`
/// for other content, or when the walk cannot tell.
pub fn signed_has_content(ber: &[u8]) -> Option<bool> {
    let fields = signed_data_fields(ber)??;
    // version, digestAlgorithms, then encapContentInfo.
    let encapsulated = inside(skip(skip(fields)?)?)?;
    let after_type = skip(encapsulated)?;
    Some(!after_type.is_empty() && !after_type.starts_with(&[0, 0]))
}

/// How many SignerInfos the SignedData in `ber` (a ContentInfo, DER or
/// BER) holds: the elements of the last SET at its top level (after
/// digestAlgorithms); `None` for other content, `Some(None)` when the
/// walk cannot tell. Takes input the element walk passed.
fn signers(ber: &[u8]) -> Option<Option<usize>> {
    let fields = signed_data_fields(ber)?;
    Some(fields.and_then(|mut fields| {
        let mut last_set = None;
        while !fields.is_empty() && !fields.starts_with(&[0, 0]) {
            let (_, header) = Header::from_ber(fields).ok()?;
            if header.class() == Class::Universal && header.tag() == Tag::Set {
                last_set = Some(fields);
            }
            fields = skip(fields)?;
        }
        let mut items = inside(last_set?)?;
        let mut n = 0;
        while !items.is_empty() && !items.starts_with(&[0, 0]) {
            n += 1;
            items = skip(items)?;
        }
        Some(n)
    }))
}

/// Shortest MAC (AES-GCM tag) RFC 5084 allows an AuthEnvelopedData.
pub const MIN_MAC_LEN: usize = 12;

/// The octets of the MAC (the `mac` OCTET STRING) of the
/// AuthEnvelopedData in `ber` (a ContentInfo, DER or BER), or `None`
/// when it holds no MAC this walk can read. Takes input [`check`] passed.
pub fn auth_mac_len(ber: &[u8]) -> Option<usize> {
    let content_info = inside(ber)?;
    let explicit = inside(skip(content_info)?)?;
    let mut fields = inside(explicit)?;
    // version, [0] originatorInfo, recipientInfos, authEncryptedContentInfo,
    // [1] authAttrs: the first universal OCTET STRING at this level is the MAC.
    while !fields.is_empty() && !fields.starts_with(&[0, 0]) {
        let (after, header) = Header::from_ber(fields).ok()?;
        if header.class() == Class::Universal && header.tag() == Tag::OctetString {
            return match (header.is_constructed(), header.length()) {
                (false, Length::Definite(n)) => after.get(..n).map(<[u8]>::len),
                _ => chunks_len(inside(fields)?),
            };
        }
        fields = skip(fields)?;
    }
    None
}

/// Whether the (Auth)EnvelopedData in `ber` (a ContentInfo, DER or BER)
/// has fields that are not encrypted: originatorInfo, unprotectedAttrs,
/// authAttrs or unauthAttrs (the context-tagged fields at its top level).
/// Anyone can read what they hold; `None` when the walk cannot tell.
pub fn has_clear_fields(ber: &[u8]) -> Option<bool> {
    let content_info = inside(ber)?;
    let explicit = inside(skip(content_info)?)?;
    let mut fields = inside(explicit)?;
    while !fields.is_empty() && !fields.starts_with(&[0, 0]) {
        let (_, header) = Header::from_ber(fields).ok()?;
        if header.class() == Class::ContextSpecific {
            return Some(true);
        }
        fields = skip(fields)?;
    }
    Some(false)
}

/// The contents of the constructed element at the start of `input` (for an
/// indefinite length: up to and including its end-of-contents marker).
fn inside(input: &[u8]) -> Option<&[u8]> {
    let (rest, header) = Header::from_ber(input).ok()?;
    if !header.is_constructed() {
        return None;
    }
    match header.length() {
        Length::Definite(n) => rest.get(..n),
        Length::Indefinite => Some(rest),
    }
}

/// What follows the element at the start of `input`.
fn skip(input: &[u8]) -> Option<&[u8]> {
    let mut unlimited = usize::MAX;
    match element(input, 0, &mut unlimited).ok()? {
        Walked::Element { rest, .. } => Some(rest),
        Walked::EndOfContents(_) => None,
    }
}

/// The octets of a constructed OCTET STRING's chunks.
fn chunks_len(mut input: &[u8]) -> Option<usize> {
    let mut total = 0usize;
    while !input.is_empty() && !input.starts_with(&[0, 0]) {
        let (rest, header) = Header::from_ber(input).ok()?;
        match (is_octet_chunk(&header), header.length()) {
            (true, Length::Definite(n)) => {
                total = total.checked_add(n)?;
                input = rest.get(n..)?;
            }
            _ => return None,
        }
    }
    Some(total)
}

/// What the walk found at the start of some input.
enum Walked<'a> {
    /// The end-of-contents marker (exactly `00 00`).
    EndOfContents(&'a [u8]),
    /// An element, whether it counts against the caps, and what follows.
    Element { counted: bool, rest: &'a [u8] },
}

/// A primitive universal OCTET STRING: how streamed content is chunked.
fn is_octet_chunk(header: &Header<'_>) -> bool {
    header.class() == Class::Universal
        && header.tag() == Tag::OctetString
        && !header.is_constructed()
}

/// Walks the element at the start of `input`.
fn element<'a>(
    input: &'a [u8],
    depth: usize,
    budget: &mut usize,
) -> Result<Walked<'a>, LimitError> {
    if let Some(rest) = input.strip_prefix(&[0, 0]) {
        return Ok(Walked::EndOfContents(rest));
    }
    let (rest, header) =
        Header::from_ber(input).map_err(|_| LimitError::Malformed("bad header"))?;
    if header.class() == Class::Universal && header.tag() == Tag::EndOfContent {
        return Err(LimitError::Malformed("tag 0 that is not end-of-contents"));
    }
    let counted = !is_octet_chunk(&header);
    if counted {
        *budget = budget.checked_sub(1).ok_or(LimitError::TooManyElements)?;
    }
    let length = header.length();
    if !header.is_constructed() {
        let Length::Definite(n) = length else {
            return Err(LimitError::Malformed("indefinite primitive"));
        };
        let rest = rest.get(n..).ok_or(LimitError::Malformed("truncated"))?;
        return Ok(Walked::Element { counted, rest });
    }
    if depth + 1 > MAX_DEPTH {
        return Err(LimitError::TooDeep);
    }
    let rest = match length {
        Length::Definite(n) => {
            let content = rest.get(..n).ok_or(LimitError::Malformed("truncated"))?;
            children(content, depth + 1, false, budget)?;
            &rest[n..]
        }
        Length::Indefinite => children(rest, depth + 1, true, budget)?,
    };
    Ok(Walked::Element { counted, rest })
}

/// Walks the elements of one constructed element: all of `input` when its
/// length was definite, up to the end-of-contents marker otherwise.
/// Returns what follows.
fn children<'a>(
    mut input: &'a [u8],
    depth: usize,
    indefinite: bool,
    budget: &mut usize,
) -> Result<&'a [u8], LimitError> {
    let mut count = 0usize;
    loop {
        if input.is_empty() {
            return if indefinite {
                Err(LimitError::Malformed("missing end-of-contents"))
            } else {
                Ok(input)
            };
        }
        match element(input, depth, budget)? {
            Walked::EndOfContents(rest) if indefinite => return Ok(rest),
            Walked::EndOfContents(_) => {
                return Err(LimitError::Malformed(
                    "end-of-contents in a definite length",
                ))
            }
            Walked::Element { counted, rest } => {
                if counted {
                    count += 1;
                    if count > MAX_ITEMS {
                        return Err(LimitError::TooManyItems);
                    }
                }
                input = rest;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The elements of DER `input` (low tag numbers): tag octet, content.
    fn elements(mut input: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (head, n) = match input[1] {
                l if l < 0x80 => (2, l as usize),
                l => {
                    let k = (l & 0x7f) as usize;
                    let n = input[2..2 + k]
                        .iter()
                        .fold(0usize, |a, b| (a << 8) | *b as usize);
                    (2 + k, n)
                }
            };
            out.push((input[0], &input[head..head + n]));
            input = &input[head + n..];
        }
        out
    }

    /// `der` (a DER AuthEnvelopedData ContentInfo) with its MAC cut to
    /// `n` octets, every enclosing length rewritten.
    pub(crate) fn with_mac_len(der: &[u8], n: usize) -> Vec<u8> {
        let outer = elements(der);
        let info = elements(outer[0].1);
        let explicit = elements(info[1].1);
        let mut fields = Vec::new();
        let mut cut = false;
        for (tag, content) in elements(explicit[0].1) {
            if tag == 0x04 && !cut {
                fields.extend(tlv(tag, &content[..n]));
                cut = true;
            } else {
                fields.extend(tlv(tag, content));
            }
        }
        assert!(cut, "no MAC");
        let mut info_bytes = tlv(info[0].0, info[0].1);
        info_bytes.extend(tlv(info[1].0, &tlv(explicit[0].0, &fields)));
        tlv(outer[0].0, &info_bytes)
    }

    fn auth_enveloped(fields: &[u8], indefinite: bool) -> Vec<u8> {
        // id-smime-ct-authEnvelopedData, 1.2.840.113549.1.9.16.1.23
        let oid = tlv(0x06, &[42, 134, 72, 134, 247, 13, 1, 9, 16, 1, 23]);
        if indefinite {
            let mut v = vec![0x30, 0x80];
            v.extend(oid);
            v.extend([0xa0, 0x80, 0x30, 0x80]);
            v.extend(fields);
            v.extend([0, 0, 0, 0, 0, 0]);
            v
        } else {
            let mut info = oid;
            info.extend(tlv(0xa0, &tlv(0x30, fields)));
            tlv(0x30, &info)
        }
    }

    #[test]
    fn clear_fields_beside_the_ciphertext_are_seen() {
        let version = [0x02, 0x01, 0x00];
        let recipients = tlv(0x31, &tlv(0x30, b""));
        let content = tlv(0x30, &tlv(0x06, b"\x2a"));
        let unprotected = tlv(0xa1, &tlv(0x30, &tlv(0x0c, b"SECRET")));
        let wrap = |fields: &[u8]| {
            let data = tlv(0x30, fields);
            tlv(0x30, &[tlv(0x06, b"\x2a\x86"), tlv(0xa0, &data)].concat())
        };
        let plain = [&version[..], &recipients, &content].concat();
        assert_eq!(has_clear_fields(&wrap(&plain)), Some(false));
        let with = [&version[..], &recipients, &content, &unprotected].concat();
        assert_eq!(has_clear_fields(&wrap(&with)), Some(true));
        let originator = [&version[..], &tlv(0xa0, b""), &recipients, &content].concat();
        assert_eq!(has_clear_fields(&wrap(&originator)), Some(true));
        assert_eq!(has_clear_fields(b"\x30\x01"), None);
    }

    #[test]
    fn the_mac_is_found_in_der_and_ber() {
        let version = tlv(0x02, &[0]);
        let recipients = tlv(0x31, &tlv(0x30, &tlv(0x02, &[2])));
        let content = tlv(0x30, &tlv(0x06, &[42, 134, 72, 134, 247, 13, 1, 7, 1]));
        let auth_attrs = tlv(0xa1, &tlv(0x30, &tlv(0x06, &[42, 3])));
        for mac_len in [16usize, 4] {
            let mac = tlv(0x04, &vec![7u8; mac_len]);
            let plain = [&version[..], &recipients, &content, &mac].concat();
            let with_attrs = [&version[..], &recipients, &content, &auth_attrs, &mac].concat();
            for fields in [&plain, &with_attrs] {
                for indefinite in [false, true] {
                    let v = auth_enveloped(fields, indefinite);
                    assert_eq!(check(&v), Ok(()));
                    assert_eq!(auth_mac_len(&v), Some(mac_len), "{indefinite}");
                }
            }
            // BER: the MAC as a constructed string of two chunks.
            let mut chunked = vec![0x24, 0x80];
            chunked.extend(tlv(0x04, &vec![7u8; mac_len - 2]));
            chunked.extend(tlv(0x04, &[7, 7]));
            chunked.extend([0, 0]);
            let fields = [&version[..], &recipients, &content, &chunked].concat();
            assert_eq!(auth_mac_len(&auth_enveloped(&fields, true)), Some(mac_len));
        }
        // No MAC, a truncated MAC, not a structure: none.
        let fields = [&version[..], &recipients, &content].concat();
        assert_eq!(auth_mac_len(&auth_enveloped(&fields, false)), None);
        let cut = auth_enveloped(&[&fields[..], &[0x04, 16, 1, 2]].concat(), false);
        assert_eq!(auth_mac_len(&cut), None);
        assert_eq!(auth_mac_len(b"\x04\x02ab"), None);
        assert_eq!(auth_mac_len(b""), None);
    }

    /// DER length octets for `n`.
    fn len(n: usize) -> Vec<u8> {
        if n < 128 {
            vec![n as u8]
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            let mut v = vec![0x80 | bytes.len() as u8];
            v.extend(bytes);
            v
        }
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(len(content.len()));
        v.extend_from_slice(content);
        v
    }

    fn set_of(n: usize) -> Vec<u8> {
        let item = tlv(0x30, &tlv(0x02, &[1]));
        tlv(0x31, &item.repeat(n))
    }

    #[test]
    fn ordinary_structures_pass() {
        assert_eq!(check(&tlv(0x30, &set_of(3))), Ok(()));
        assert_eq!(check(&set_of(MAX_ITEMS)), Ok(()));
    }

    #[test]
    fn a_recipient_bomb_is_refused() {
        assert_eq!(check(&set_of(MAX_ITEMS + 1)), Err(LimitError::TooManyItems));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut v = tlv(0x02, &[1]);
        for _ in 0..MAX_DEPTH {
            v = tlv(0x30, &v);
        }
        assert_eq!(check(&v), Ok(()));
        assert_eq!(check(&tlv(0x30, &v)), Err(LimitError::TooDeep));
    }

    #[test]
    fn streamed_strings_may_have_many_chunks() {
        // BER: constructed OCTET STRING, indefinite, 10 000 chunks.
        let mut v = vec![0x24, 0x80];
        for _ in 0..10_000 {
            v.extend(tlv(0x04, b"abc"));
        }
        v.extend([0, 0]);
        let whole = {
            let mut w = vec![0x30, 0x80];
            w.extend(&v);
            w.extend([0, 0]);
            w
        };
        assert_eq!(check(&whole), Ok(()));
    }

    #[test]
    fn streamed_content_under_an_implicit_tag_may_have_many_chunks() {
        // EnvelopedData's encryptedContent: [0] IMPLICIT, constructed,
        // definite, as `openssl cms -encrypt -stream` writes large content.
        let chunks = tlv(0x04, &[7u8; 16]).repeat(MAX_ITEMS * 3);
        assert_eq!(check(&tlv(0x30, &tlv(0xA0, &chunks))), Ok(()));
    }

    #[test]
    fn a_zero_tag_with_a_length_does_not_end_the_walk() {
        // `00 01 00` inside an algorithm's parameters, then the bomb.
        let mut seq = tlv(0x30, &[0x00, 0x01, 0x00]);
        seq.extend(set_of(MAX_ITEMS + 1));
        assert!(check(&tlv(0x30, &seq)).is_err());
    }

    #[test]
    fn more_signers_than_mail_has_are_refused() {
        // The signed-data identifier in its usual form, and with the
        // long-form length BER allows (review 26).
        let short = [
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
        ];
        let long = [
            0x06, 0x81, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
        ];
        let signed = |oid: &[u8], signers: usize| {
            let signer_info = tlv(0x30, &[2, 1, 1]);
            let fields = [
                tlv(0x02, &[1]),
                tlv(0x31, &tlv(0x30, &[0x06, 0x01, 0x01])),
                tlv(0x30, &[0x06, 0x01, 0x01]),
                tlv(0x31, &signer_info.repeat(signers)),
            ]
            .concat();
            tlv(0x30, &[oid, &tlv(0xa0, &tlv(0x30, &fields))].concat())
        };
        for oid in [&short[..], &long[..]] {
            assert_eq!(signers(&signed(oid, 3)), Some(Some(3)));
            assert_eq!(signed_has_content(&signed(oid, 3)), Some(false));
            assert_eq!(check(&signed(oid, MAX_SIGNERS)), Ok(()));
            assert_eq!(
                check(&signed(oid, MAX_SIGNERS + 1)),
                Err(LimitError::TooManySigners)
            );
        }
        // Other content (a recipient SET as large) is not counted so.
        let mut other = short;
        other[10] = 0x03;
        assert_eq!(signers(&signed(&other, MAX_SIGNERS + 1)), None);
        assert_eq!(check(&signed(&other, MAX_SIGNERS + 1)), Ok(()));
        // Signed data without readable fields is refused.
        let bare = tlv(0x30, &[&short[..], &tlv(0xa0, &tlv(0x02, &[1]))].concat());
        assert_eq!(signers(&bare), Some(None));
        assert!(check(&bare).is_err());
    }

    #[test]
    fn many_elements_in_all_are_refused() {
        let inner = set_of(MAX_ITEMS / 2);
        let outer = tlv(0x30, &inner.repeat(MAX_ELEMENTS / (MAX_ITEMS / 2) + 1));
        assert!(matches!(
            check(&outer),
            Err(LimitError::TooManyElements | LimitError::TooManyItems)
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            &[0x30],
            &[0x30, 0x05, 0x02],
            &[0x30, 0x80, 0x02, 0x01, 0x01],
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}
