//! Line ends of mail: made CRLF as SMTP and signatures want them, or LF as
//! some signers sign over. Ground floor: bytes in, bytes out.

use std::borrow::Cow;

/// True when every line of `bytes` ends in CRLF (no bare CR or LF).
pub fn is_crlf(bytes: &[u8]) -> bool {
    let mut i = 0;
    while let Some(at) = memchr::memchr2(b'\r', b'\n', &bytes[i..]) {
        let at = i + at;
        if bytes[at] == b'\n' || bytes.get(at + 1) != Some(&b'\n') {
            return false;
        }
        i = at + 2;
    }
    true
}

/// Writes `bytes` to `w` with every line ending in CRLF: the same bytes
/// as [`crlf`], without building them in memory.
pub fn write_crlf(bytes: &[u8], w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let (mut start, mut i) = (0, 0);
    while let Some(at) = memchr::memchr2(b'\r', b'\n', &bytes[i..]) {
        let at = i + at;
        if bytes[at] == b'\r' && bytes.get(at + 1) == Some(&b'\n') {
            i = at + 2;
            continue;
        }
        w.write_all(&bytes[start..at])?;
        w.write_all(b"\r\n")?;
        i = at + 1;
        start = i;
    }
    w.write_all(&bytes[start..])
}

/// Makes every line end in CRLF (bare LF and bare CR become CRLF).
pub fn crlf(bytes: &[u8]) -> Cow<'_, [u8]> {
    if is_crlf(bytes) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// CRLF line ends made LF (what some signers sign over).
pub fn lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_normalisation() {
        assert_eq!(&*crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert!(matches!(crlf(b"a\r\nb"), Cow::Borrowed(_)));
        assert_eq!(lf(b"a\r\nb\r\n"), b"a\nb\n");
    }

    #[test]
    fn written_crlf_is_the_same_as_built() {
        for input in [
            &b""[..],
            b"a\r\nb\r\n",
            b"a\nb\rc\r\n\n\r",
            b"\r",
            b"\n\n",
            b"x\r\r\ny",
        ] {
            let mut out = Vec::new();
            write_crlf(input, &mut out).unwrap();
            assert_eq!(out, crlf(input).into_owned(), "{input:?}");
            assert_eq!(is_crlf(input), out == input, "{input:?}");
        }
    }
}
