//! The header section of a message or MIME entity as RFC 5322 reads it,
//! and as mail clients and the gateway's own writer read it: everything up
//! to the first empty line, field by field with their continuation lines.
//! What the gateway vouches for, signs or rewrites is found by this
//! reading (mail-parser's may differ: `mail::readings`).

/// Splits a message into its header section (with the CRLF ending the last
/// field, without the blank line) and its body.
pub fn split(raw: &[u8]) -> (&[u8], &[u8]) {
    if raw.starts_with(b"\r\n") {
        return (&[], &raw[2..]);
    }
    match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&raw[..i + 2], &raw[i + 4..]),
        None => (raw, &[]),
    }
}

/// The header fields of `headers` (each with its folded continuation
/// lines), as (lower-case name, raw bytes).
pub fn fields(headers: &[u8]) -> Vec<(String, &[u8])> {
    let mut out: Vec<(String, &[u8])> = Vec::new();
    each_field(headers, |name, field| out.push((name, field)));
    out
}

/// Calls `f` with each header field of `headers` (lower-case name, raw
/// bytes with its continuation lines), holding nothing between fields.
pub fn each_field<'a>(headers: &'a [u8], mut f: impl FnMut(String, &'a [u8])) {
    let mut start = 0;
    let mut i = 0;
    while i < headers.len() {
        let line_end = memchr::memmem::find(&headers[i..], b"\r\n")
            .map(|p| i + p + 2)
            .unwrap_or(headers.len());
        let next_is_continuation = headers
            .get(line_end)
            .is_some_and(|b| *b == b' ' || *b == b'\t');
        if !next_is_continuation {
            let field = &headers[start..line_end];
            let name = field
                .iter()
                .position(|b| *b == b':')
                .map(|c| {
                    String::from_utf8_lossy(&field[..c])
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            f(name, field);
            start = line_end;
        }
        i = line_end;
    }
}
