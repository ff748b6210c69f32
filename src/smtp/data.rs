//! The DATA phase decoder: finds the end of the message, undoes
//! dot-stuffing, and enforces what a message may contain.
//!
//! Only `<CR><LF>.<CR><LF>` ends the data. A bare CR, a bare LF or a NUL
//! anywhere marks the message for rejection (SMTP smuggling, CVE-2023-51764
//! and siblings), as does a line over 1000 octets or a message over the size
//! limit; decoding still runs to the real end so the session stays in step
//! with the client, and content past the size limit is discarded, not kept.

/// What is wrong with a message, with the line where it was first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    BareCr { line: u64 },
    BareLf { line: u64 },
    Nul { line: u64 },
    LineTooLong { line: u64 },
    TooBig,
}

/// Longest text line in octets, without its CRLF (RFC 5321 §4.5.3.1.6).
pub const MAX_LINE: usize = 998;

#[derive(Debug)]
pub struct DataDecoder {
    max_size: u64,
    size: u64,
    line: u64,
    line_len: usize,
    at_line_start: bool,
    dot_line: bool,
    dot_only: bool,
    cr_pending: bool,
    violation: Option<Violation>,
}

impl DataDecoder {
    pub fn new(max_size: u64) -> Self {
        Self {
            max_size,
            size: 0,
            line: 1,
            line_len: 0,
            at_line_start: true,
            dot_line: false,
            dot_only: false,
            cr_pending: false,
            violation: None,
        }
    }

    /// The first problem found so far, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Message bytes received so far (after unstuffing, up to the limit).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn flag(&mut self, v: Violation) {
        // A smuggling pattern outranks size: it is the more serious reason.
        match (self.violation, v) {
            (None, _)
            | (Some(Violation::TooBig), Violation::BareCr { .. })
            | (Some(Violation::TooBig), Violation::BareLf { .. })
            | (Some(Violation::TooBig), Violation::Nul { .. }) => self.violation = Some(v),
            _ => {}
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.violation.is_some() {
            return;
        }
        // What fits is kept and the rest flagged, so a run handed over at
        // once ends exactly where the same bytes one by one would.
        let room = self.max_size.saturating_sub(self.size);
        let fits = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.size += fits as u64;
        out.extend_from_slice(&bytes[..fits]);
        if fits < bytes.len() {
            self.flag(Violation::TooBig);
        }
    }

    /// A bare CR or LF is not a line break: whatever follows it is in the
    /// middle of a line, so a `.` there can never start the end-of-data
    /// line. Only a CRLF starts a line again.
    fn broken_line(&mut self) {
        self.at_line_start = false;
        self.dot_line = false;
        self.dot_only = false;
    }

    /// Decodes `input`, appending message bytes to `out`. Returns
    /// `Some(consumed)` when the end of data was found after `consumed`
    /// bytes of `input` (the rest belongs to the next command), or `None`
    /// when all of `input` was used and more is needed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut next = 0;
        while next < input.len() {
            if self.at_line_start && !self.cr_pending {
                // Whole ordinary lines at once (no leading dot, no bare CR
                // or LF, no NUL, not too long, CRLF inside `input`): the
                // same as byte by byte, in one copy.
                let (end, lines) = ordinary_lines(&input[next..]);
                if end > 0 {
                    self.emit(out, &input[next..next + end]);
                    self.line += lines;
                    next += end;
                    continue;
                }
            }
            let (i, b) = (next, input[next]);
            next += 1;
            if !self.cr_pending && !self.at_line_start && !matches!(b, b'\r' | b'\n' | 0) {
                // The rest of a line up to its next CR, LF or NUL at once:
                // the same as byte by byte, a long line flagged where it
                // passes the limit.
                let run = memchr::memchr3(b'\r', b'\n', 0, &input[i..]).unwrap_or(input.len() - i);
                let bytes = &input[i..i + run];
                let over = (self.line_len + run > MAX_LINE)
                    .then(|| MAX_LINE.saturating_sub(self.line_len).min(run));
                match over {
                    Some(at) => {
                        self.emit(out, &bytes[..at]);
                        self.flag(Violation::LineTooLong { line: self.line });
                        self.emit(out, &bytes[at..]);
                    }
                    None => self.emit(out, bytes),
                }
                self.line_len += run;
                self.dot_only = false;
                next = i + run;
                continue;
            }
            if self.cr_pending {
                self.cr_pending = false;
                if b == b'\n' {
                    if self.dot_line && self.dot_only {
                        return Some(i + 1);
                    }
                    self.emit(out, b"\r\n");
                    self.line += 1;
                    self.line_len = 0;
                    self.at_line_start = true;
                    self.dot_line = false;
                    continue;
                }
                self.flag(Violation::BareCr { line: self.line });
                self.broken_line();
            }
            match b {
                b'\r' => {
                    self.cr_pending = true;
                    continue;
                }
                b'\n' => {
                    self.flag(Violation::BareLf { line: self.line });
                    self.broken_line();
                    continue;
                }
                0 => self.flag(Violation::Nul { line: self.line }),
                _ => {}
            }
            self.line_len += 1;
            if self.line_len > MAX_LINE {
                self.flag(Violation::LineTooLong { line: self.line });
            }
            if self.at_line_start {
                self.at_line_start = false;
                if b == b'.' {
                    self.dot_line = true;
                    self.dot_only = true;
                    continue;
                }
            }
            self.dot_only = false;
            self.emit(out, &[b]);
        }
        None
    }
}

/// The length of the run of ordinary lines at the start of `input`, and
/// how many lines it holds: each line CRLF-terminated within `input`, at
/// most [`MAX_LINE`] octets before its CRLF, not starting with a dot and
/// holding no CR, LF or NUL before its CRLF.
fn ordinary_lines(input: &[u8]) -> (usize, u64) {
    let (mut end, mut lines) = (0, 0);
    while end < input.len() && input[end] != b'.' {
        let rest = &input[end..];
        match memchr::memchr3(b'\r', b'\n', 0, rest) {
            Some(k) if k <= MAX_LINE && rest[k] == b'\r' && rest.get(k + 1) == Some(&b'\n') => {
                end += k + 2;
                lines += 1;
            }
            _ => break,
        }
    }
    (end, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Option<usize>, Vec<u8>, Option<Violation>) {
        let mut d = DataDecoder::new(1 << 20);
        let mut out = Vec::new();
        let end = d.feed(input, &mut out);
        (end, out, d.violation())
    }

    #[test]
    fn plain_message_and_unstuffing() {
        let (end, out, v) = run(b"Subject: a\r\n\r\n..dot\r\nx\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: a\r\n\r\n.dot\r\nx\r\n");
        assert_eq!(end, Some(b"Subject: a\r\n\r\n..dot\r\nx\r\n.\r\n".len()));
        assert_eq!(v, None);
    }

    #[test]
    fn a_run_over_the_size_limit_ends_where_byte_by_byte_would() {
        // Fuzz finding: a line handed over at once used to be dropped whole
        // at the size limit, one byte at a time kept what fitted.
        let input = b"Subject: x\r\n\r\nabcdefghijklmnopqrstuvwxyz0123456789\r\n.\r\n";
        for max in [0u64, 5, 12, 13, 14, 20, 40, 60] {
            let mut whole = DataDecoder::new(max);
            let mut whole_out = Vec::new();
            let whole_end = whole.feed(input, &mut whole_out);
            let mut single = DataDecoder::new(max);
            let mut single_out = Vec::new();
            let mut single_end = None;
            for (i, b) in input.iter().enumerate() {
                if let Some(n) = single.feed(std::slice::from_ref(b), &mut single_out) {
                    single_end = Some(i + n);
                    break;
                }
            }
            assert_eq!(whole_end, single_end, "max {max}");
            assert_eq!(whole_out, single_out, "max {max}");
            assert_eq!(whole.size(), single.size(), "max {max}");
            assert_eq!(whole.violation(), single.violation(), "max {max}");
        }
        // Positive control: under the limit nothing is flagged.
        let mut d = DataDecoder::new(1000);
        let mut out = Vec::new();
        assert!(d.feed(input, &mut out).is_some());
        assert_eq!(d.violation(), None);
    }

    /// The decoder fed byte by byte: every fast path off (one octet never
    /// holds a whole line), the reference for whole feeds.
    fn one_by_one(input: &[u8], max: u64) -> (Option<usize>, Vec<u8>, Option<Violation>, u64) {
        let mut d = DataDecoder::new(max);
        let mut out = Vec::new();
        for (i, b) in input.iter().enumerate() {
            if let Some(n) = d.feed(std::slice::from_ref(b), &mut out) {
                return (Some(i + n), out, d.violation(), d.size());
            }
        }
        (None, out, d.violation(), d.size())
    }

    #[test]
    fn whole_lines_at_once_decode_as_byte_by_byte() {
        // Random inputs over the octets that matter, cut at random places:
        // end, output, size and violation (with its line) agree.
        let alphabet = b"ab.\r\n\0";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut differed = 0;
        for round in 0..4000 {
            let len = (next() % 80) as usize;
            let mut input: Vec<u8> = (0..len)
                .map(|_| match next() % 10 {
                    0..=5 => b'a',
                    6 => b'\r',
                    7 => b'\n',
                    _ => alphabet[(next() % 6) as usize],
                })
                .collect();
            if round % 3 == 0 {
                // Mostly well-formed: CRLF after every few octets.
                input = input
                    .chunks(1 + (next() % 7) as usize)
                    .flat_map(|c| c.iter().copied().chain(*b"\r\n"))
                    .collect();
            }
            if round % 5 == 0 {
                input.extend_from_slice(b".\r\n");
            }
            if round % 7 == 0 {
                // A line over the limit.
                input.extend(std::iter::repeat_n(b'x', MAX_LINE + (next() % 3) as usize));
                input.extend_from_slice(b"\r\n.\r\n");
            }
            let max = [u64::MAX, 0, 5, 17, 40][(next() % 5) as usize];
            let reference = one_by_one(&input, max);
            let cut = if input.is_empty() {
                0
            } else {
                (next() as usize) % input.len()
            };
            let mut d = DataDecoder::new(max);
            let mut out = Vec::new();
            let end = match d.feed(&input[..cut], &mut out) {
                Some(n) => Some(n),
                None => d.feed(&input[cut..], &mut out).map(|n| cut + n),
            };
            let got = (end, out, d.violation(), d.size());
            assert_eq!(
                got,
                reference,
                "{:?} cut at {cut}, max {max}",
                String::from_utf8_lossy(&input)
            );
            let mut d = DataDecoder::new(max);
            let mut out = Vec::new();
            let end = d.feed(&input, &mut out);
            let whole = (end, out, d.violation(), d.size());
            assert_eq!(
                whole,
                reference,
                "{:?} whole, max {max}",
                String::from_utf8_lossy(&input)
            );
            differed += usize::from(reference.0.is_some());
        }
        // Positive control: many of the inputs ended the data.
        assert!(differed > 500, "{differed}");
    }

    #[test]
    fn empty_message() {
        let (end, out, v) = run(b".\r\n");
        assert_eq!((end, out.len(), v), (Some(3), 0, None));
    }

    #[test]
    fn split_feeds() {
        let msg = b"a\r\n..b\r\n.\r\n";
        for cut in 0..msg.len() {
            let mut d = DataDecoder::new(100);
            let mut out = Vec::new();
            let first = d.feed(&msg[..cut], &mut out);
            let end = first.or_else(|| d.feed(&msg[cut..], &mut out).map(|n| n + cut));
            assert_eq!(end, Some(msg.len()), "cut {cut}");
            assert_eq!(out, b"a\r\n.b\r\n");
        }
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for seq in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\r.\n",
            b"\n.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n\0.\r\n",
            b"\r\n.\0\r\n",
        ] {
            let mut input = b"Subject: x\r\n\r\nhello".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            let (end, _, v) = run(&input);
            assert_eq!(end, None, "{seq:?} ended data");
            assert!(v.is_some(), "{seq:?} not flagged");
            input.extend_from_slice(b"\r\n.\r\n");
            let (end, _, v) = run(&input);
            assert_eq!(end, Some(input.len()));
            assert!(v.is_some());
        }
    }

    /// Every look-alike of the end of data, at the very start of DATA and
    /// after a line, in one piece and split across two reads at every
    /// offset: none ends the data, each is flagged, and decoding ends only
    /// at the real `<CRLF>.<CRLF>` that follows.
    #[test]
    fn look_alikes_never_end_data_at_any_split() {
        let look_alikes: [&[u8]; 14] = [
            b"\r\n\n.\r\n",
            b"\r\n\r.\r\n",
            b"\r\n\r\r.\r\n",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\n\n.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r\n.\r\r\n",
            b"\n.\n",
            b"\r.\r",
            b"\r\n\n\r.\r\n",
            b"\r\n\x00.\r\n",
            b"\r\n.\x00\r\n",
        ];
        let smuggled = b"MAIL FROM:<ceo@example-law.dk>\r\nRCPT TO:<bob@example-law.dk>\r\nDATA\r\nSubject: smuggled\r\n";
        for prefix in [&b""[..], b"Subject: x\r\n\r\nhello"] {
            for seq in look_alikes {
                let mut input = prefix.to_vec();
                input.extend_from_slice(seq);
                input.extend_from_slice(smuggled);
                let body_len = input.len();
                input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
                let real_end = body_len + 5;
                for cut in 0..=input.len() {
                    let mut d = DataDecoder::new(1 << 20);
                    let mut out = Vec::new();
                    let end = match d.feed(&input[..cut], &mut out) {
                        Some(n) => Some(n),
                        None => d.feed(&input[cut..], &mut out).map(|n| n + cut),
                    };
                    assert_eq!(end, Some(real_end), "{seq:?} after {prefix:?}, cut {cut}");
                    assert!(d.violation().is_some(), "{seq:?} not flagged, cut {cut}");
                    assert!(out.is_empty() || !out.windows(4).any(|w| w == b"MAIL"));
                }
            }
        }
    }

    /// A message that starts with an ordinary line after an early bare LF
    /// is still refused, and a CRLF after the violation starts lines again.
    #[test]
    fn crlf_after_bare_lf_restores_line_start() {
        let (end, _, v) = run(b"a\nb\r\n.\r\n");
        assert_eq!(end, Some(8));
        assert_eq!(v, Some(Violation::BareLf { line: 1 }));
    }

    #[test]
    fn limits() {
        let mut d = DataDecoder::new(5);
        let mut out = Vec::new();
        assert!(d.feed(b"123456\r\n.\r\n", &mut out).is_some());
        assert_eq!(d.violation(), Some(Violation::TooBig));
        assert!(out.len() <= 5);

        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, _, v) = run(&long);
        assert_eq!(v, Some(Violation::LineTooLong { line: 1 }));
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run(&ok).2, None);
    }
}
