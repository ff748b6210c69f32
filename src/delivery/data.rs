//! The DATA phase's transparency (RFC 5321 §4.5.2), without copying the
//! message: a `.` that starts a line is sent twice, and the data ends with
//! CRLF "." CRLF. The message is cut into parts at the dots that need a
//! second one (found with memchr), so the caller writes long runs of the
//! (memory-mapped) message straight to the connection.
//!
//! A line starts at the beginning of the data and after every LF, with or
//! without a CR before it: the gateway's own output is CRLF-only, and
//! should a bare LF slip through, a next hop that takes it for a line end
//! still cannot be made to see "." alone on a line (SMTP smuggling).

use memchr::memmem;

/// The second dot put before a dot that starts a line.
const DOT: &[u8] = b".";

/// Dot-stuffs a message handed over in pieces of any size; the result
/// does not depend on where the pieces are cut.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The next byte starts a line.
    line_start: bool,
    /// The last two bytes seen (the older first), to tell whether the
    /// data ended with CRLF.
    tail: [u8; 2],
    /// Nothing was handed over yet.
    empty: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        Self {
            line_start: true,
            tail: [0, 0],
            empty: true,
        }
    }

    /// What to send for `piece`, in order: runs of `piece` with a "."
    /// between them where a line starts with a dot. Nothing is copied.
    pub fn parts<'a>(&mut self, piece: &'a [u8]) -> Vec<&'a [u8]> {
        let Some(&last) = piece.last() else {
            return Vec::new();
        };
        let mut parts = Vec::with_capacity(1);
        let mut from = 0;
        if self.line_start && piece.first() == Some(&b'.') {
            parts.push(DOT);
        }
        for at in memmem::find_iter(piece, b"\n.") {
            // Up to and including the LF; the dot starts the next run.
            parts.push(&piece[from..=at]);
            parts.push(DOT);
            from = at + 1;
        }
        parts.push(&piece[from..]);
        self.line_start = last == b'\n';
        self.tail = match piece.len() {
            1 => [self.tail[1], last],
            n => [piece[n - 2], last],
        };
        self.empty = false;
        parts
    }

    /// What ends the data after everything handed over: "." CRLF when the
    /// message ended with CRLF (or was empty), so it arrives as it is;
    /// otherwise CRLF "." CRLF (the last line gets its CRLF).
    pub fn end(&self) -> &'static [u8] {
        if self.empty || self.tail == *b"\r\n" {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }
}

/// The whole of `message` as it goes on the wire, terminator included (for
/// tests and small messages).
pub fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut s = DotStuffer::new();
    let mut out = Vec::with_capacity(message.len() + 5);
    for p in s.parts(message) {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(s.end());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_pieces(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&message.len())) {
            for p in s.parts(&message[from..c]) {
                out.extend_from_slice(p);
            }
            from = c;
        }
        out.extend_from_slice(s.end());
        out
    }

    #[test]
    fn a_dot_at_the_start_of_the_message_is_doubled() {
        assert_eq!(stuffed(b".hidden\r\n"), b"..hidden\r\n.\r\n");
        assert_eq!(stuffed(b".\r\n"), b"..\r\n.\r\n");
    }

    #[test]
    fn a_dot_after_crlf_is_doubled_and_others_are_not() {
        assert_eq!(
            stuffed(b"a.b\r\n.\r\n..x\r\nend.\r\n"),
            b"a.b\r\n..\r\n...x\r\nend.\r\n.\r\n"
        );
    }

    #[test]
    fn the_smuggling_sequence_inside_a_message_is_made_harmless() {
        let out = stuffed(b"one\r\n.\r\nMAIL FROM:<x@y>\r\n");
        // The only CRLF "." CRLF is the terminator at the very end.
        let hits: Vec<usize> = memmem::find_iter(&out, b"\r\n.\r\n").collect();
        assert_eq!(hits, vec![out.len() - 5]);
    }

    #[test]
    fn a_dot_after_a_bare_lf_is_doubled_too() {
        assert_eq!(stuffed(b"a\n.b\r\n"), b"a\n..b\r\n.\r\n");
        // Control: a bare CR does not start a line.
        assert_eq!(stuffed(b"a\r.b\r\n"), b"a\r.b\r\n.\r\n");
    }

    #[test]
    fn a_message_without_a_final_crlf_gets_one() {
        assert_eq!(stuffed(b"no end"), b"no end\r\n.\r\n");
        assert_eq!(stuffed(b"bare lf\n"), b"bare lf\n\r\n.\r\n");
        assert_eq!(stuffed(b"cr\r"), b"cr\r\r\n.\r\n");
        // Control: with its CRLF the message arrives unchanged.
        assert_eq!(stuffed(b"end\r\n"), b"end\r\n.\r\n");
        assert_eq!(stuffed(b""), b".\r\n");
        assert_eq!(stuffed(b"\r\n"), b"\r\n.\r\n");
    }

    #[test]
    fn the_result_does_not_depend_on_where_the_pieces_are_cut() {
        let message = b".a\r\n.\r\n..b\n.c\r\r\n.\r\nx.y\r\n.z";
        let whole = stuffed(message);
        assert_eq!(
            whole,
            b"..a\r\n..\r\n...b\n..c\r\r\n..\r\nx.y\r\n..z\r\n.\r\n".to_vec()
        );
        for i in 0..=message.len() {
            assert_eq!(in_pieces(message, &[i]), whole, "cut at {i}");
            for j in i..=message.len() {
                assert_eq!(in_pieces(message, &[i, j]), whole, "cut at {i}, {j}");
            }
        }
        // One byte at a time, and a CRLF split across pieces at the end.
        let cuts: Vec<usize> = (1..message.len()).collect();
        assert_eq!(in_pieces(message, &cuts), whole);
        assert_eq!(in_pieces(b"end\r\n", &[4]), b"end\r\n.\r\n");
    }

    #[test]
    fn a_message_without_dots_is_one_part() {
        let mut s = DotStuffer::new();
        let body = vec![b'x'; 1 << 20];
        let parts = s.parts(&body);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].as_ptr(), body.as_ptr(), "copied");
    }

    /// What the gateway's own DATA decoder (the receiving side) makes of
    /// the stuffed bytes is the message again, ended exactly at the
    /// terminator, for messages full of dots cut into pieces anywhere.
    #[test]
    fn the_receiving_side_gets_the_message_back() {
        use crate::smtp::data::DataDecoder;
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            let mut message = Vec::new();
            for _ in 0..next(40) {
                let dots = next(4) as usize;
                message.extend(std::iter::repeat_n(b'.', dots));
                for _ in 0..next(30) {
                    message.push(b"ab. x"[next(5) as usize]);
                }
                message.extend_from_slice(b"\r\n");
            }
            if round % 3 == 0 {
                message.extend_from_slice(b"..no final line end");
            }
            let mut stuffer = DotStuffer::new();
            let mut wire = Vec::new();
            let mut rest: &[u8] = &message;
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(1 + next(rest.len() as u64) as usize);
                for p in stuffer.parts(piece) {
                    wire.extend_from_slice(p);
                }
                rest = tail;
            }
            wire.extend_from_slice(stuffer.end());
            let mut decoder = DataDecoder::new(1 << 20);
            let mut got = Vec::new();
            assert_eq!(decoder.feed(&wire, &mut got), Some(wire.len()), "{round}");
            assert_eq!(decoder.violation(), None);
            let mut expect = message.clone();
            if !expect.ends_with(b"\r\n") && !expect.is_empty() {
                expect.extend_from_slice(b"\r\n");
            }
            assert_eq!(got, expect, "round {round}");
        }
        // Control: without stuffing, a "." line ends the data early.
        let plain = b"a\r\n.\r\nb\r\n.\r\n";
        let mut got = Vec::new();
        assert_eq!(DataDecoder::new(1 << 20).feed(plain, &mut got), Some(6));
        assert_eq!(got, b"a\r\n");
    }

    /// Positive control against the client used before (lettre's
    /// byte-by-byte encoder): on CRLF-only messages both put the same
    /// bytes on the wire. lettre is driven against a listener that records
    /// what it receives after EHLO.
    #[test]
    fn the_same_bytes_as_lettre_on_crlf_messages() {
        let messages: Vec<Vec<u8>> = vec![
            b".start\r\nmiddle\r\n.\r\n..\r\nend".to_vec(),
            b"Subject: x\r\n\r\n.\r\n.dot\r\nplain line. with dot\r\n.".to_vec(),
            {
                let mut m = Vec::new();
                for i in 0..5000u32 {
                    if i % 7 == 0 {
                        m.extend_from_slice(b".");
                    }
                    m.extend_from_slice(format!("line {i} Blåbær\r\n").as_bytes());
                }
                m.extend_from_slice(b"last");
                m
            },
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for message in messages {
            let wire = rt.block_on(lettre_wire(&message));
            // lettre adds CRLF "." CRLF itself; the message has no final CRLF.
            assert_eq!(wire, stuffed(&message));
        }
    }

    async fn lettre_wire(message: &[u8]) -> Vec<u8> {
        use lettre::transport::smtp::client::AsyncSmtpConnection;
        use lettre::transport::smtp::extension::ClientId;
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut sock = BufReader::new(sock);
            sock.get_mut().write_all(b"220 test\r\n").await.unwrap();
            let mut line = String::new();
            sock.read_line(&mut line).await.unwrap();
            sock.get_mut().write_all(b"250 test\r\n").await.unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n.\r\n") {
                let mut buf = [0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            sock.get_mut().write_all(b"250 ok\r\n").await.unwrap();
            got
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut conn = AsyncSmtpConnection::connect_with_transport(
            Box::new(tcp),
            &ClientId::Domain("client.test".into()),
        )
        .await
        .unwrap();
        conn.message(message).await.unwrap();
        server.await.unwrap()
    }
}
