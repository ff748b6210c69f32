//! Small reads of a message's header section, for log lines.

/// The Message-ID of a message (`<id>`), or an empty string.
pub fn message_id(message: &[u8]) -> String {
    mail_parser::MessageParser::new()
        .parse_headers(message)
        .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
        .unwrap_or_default()
}
