//! Small reads of a message's header section: for log lines, and the
//! From address signers are compared with.

/// The Message-ID of a message (`<id>`), or an empty string.
pub fn message_id(message: &[u8]) -> String {
    mail_parser::MessageParser::new()
        .parse_headers(message)
        .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
        .unwrap_or_default()
}

/// The address of the first mailbox in the From field, lower-cased.
pub fn from_address(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let addr = parsed
        .from()?
        .first()?
        .address()?
        .trim()
        .to_ascii_lowercase();
    (!addr.is_empty()).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_address_is_read() {
        let m = b"To: x@y\r\nFrom: \"Court\" <Post@Domstol.DK>\r\n\r\nbody\r\n";
        assert_eq!(from_address(m).as_deref(), Some("post@domstol.dk"));
        assert_eq!(from_address(b"Subject: none\r\n\r\n"), None);
    }
}
