//! The gateway's own envelope sender for S/MIME mail it hands to the
//! mailbox server: `<local>+<queue id>@<hostname>` (VERP style), so that
//! whatever the mailbox server or anything after it sends back (a bounce,
//! a vacation reply) comes to the gateway, never to the outside sender.

/// The return path for the message with queue id `id`.
pub fn tagged(local: &str, hostname: &str, id: &str) -> String {
    format!("{local}+{id}@{hostname}")
}

/// When `addr` is one of the gateway's return paths (`local@hostname` or
/// `local+tag@hostname`, any case): the tag (empty when there is none).
pub fn tag_of<'a>(local: &str, hostname: &str, addr: &'a str) -> Option<&'a str> {
    let (lp, domain) = addr.rsplit_once('@')?;
    if !domain.trim_end_matches('.').eq_ignore_ascii_case(hostname) || local.is_empty() {
        return None;
    }
    let (base, tag) = match lp.split_once('+') {
        Some((b, t)) => (b, t),
        None => (lp, ""),
    };
    base.eq_ignore_ascii_case(local).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let a = tagged("smimegw-bounce", "gw.example.dk", "0661702ABC");
        assert_eq!(a, "smimegw-bounce+0661702ABC@gw.example.dk");
        assert_eq!(
            tag_of("smimegw-bounce", "gw.example.dk", &a),
            Some("0661702ABC")
        );
        assert_eq!(
            tag_of(
                "smimegw-bounce",
                "gw.example.dk",
                "SMIMEGW-Bounce@GW.example.dk."
            ),
            Some("")
        );
        assert_eq!(
            tag_of(
                "smimegw-bounce",
                "gw.example.dk",
                "smimegw-bounce+x@other.dk"
            ),
            None
        );
        assert_eq!(
            tag_of("smimegw-bounce", "gw.example.dk", "bob@gw.example.dk"),
            None
        );
    }
}
