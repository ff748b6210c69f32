//! Caps on the shape of CMS input, checked before OpenSSL parses it: a
//! structure too deep, a SET or SEQUENCE with too many elements (say a
//! million RecipientInfos), or too many elements in all is refused at the
//! cost of one pass over the bytes, before anything is built from them.
//! Primitive OCTET STRING chunks inside a constructed element (BER
//! streaming of large content, `[0] IMPLICIT` included) are not counted:
//! they cost OpenSSL no more than the content itself. Input the walker
//! cannot read is refused too, so that a quirk of encoding cannot slip a
//! structure past the caps. Pure.

use asn1_rs::{Class, FromBer, Header, Length, Tag};

/// Deepest nesting of constructed elements.
pub const MAX_DEPTH: usize = 32;
/// Most elements inside one constructed element (recipients, signers,
/// certificates, attributes, …).
pub const MAX_ITEMS: usize = 4096;
/// Most elements in all, chunks of constructed strings not counted.
pub const MAX_ELEMENTS: usize = 262_144;

/// Why CMS input was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_ITEMS} elements in one structure")]
    TooManyItems,
    #[error("more than {MAX_ELEMENTS} elements in all")]
    TooManyElements,
    #[error("malformed BER: {0}")]
    Malformed(&'static str),
}

/// Checks `ber` (one CMS ContentInfo, DER or BER) against the caps.
/// Trailing bytes after the element are OpenSSL's to judge.
pub fn check(ber: &[u8]) -> Result<(), LimitError> {
    let mut budget = MAX_ELEMENTS;
    match element(ber, 0, &mut budget)? {
        Walked::EndOfContents(_) => Err(LimitError::Malformed("empty")),
        Walked::Element { .. } => Ok(()),
    }
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
mod tests {
    use super::*;

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
