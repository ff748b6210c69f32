//! Who may have mail signed with the organisation's keys. A signature is
//! the organisation vouching for the header `From:`, so it is made only
//! when: the mail came in on the submission path (`submission_listen`;
//! without one, only when the operator has said the mail server ties
//! every sender to its login, `sign_without_submission_path`);
//! the header From is one address in the internal domains; and it is the
//! envelope sender (which the mail server ties to the logged-in user), or
//! a `[[mailbox]]` lets the envelope sender send as it (`send_as`). Which
//! identity may then sign is `covers`. Pure.

use crate::config::Settings;
use crate::mail::address::{domain_of, normalize, same};
use crate::pki::identity::Identity;

/// What the message and its envelope say about who sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// `MAIL FROM` (empty for the null sender).
    pub envelope_sender: String,
    /// The addresses in the header `From:` (none when it is missing or
    /// unreadable).
    pub header_from: Vec<String>,
    /// Taken by a `server.submission_listen` listener.
    pub submission: bool,
    /// What the header section shows as the sender beside the From
    /// address: display or group names holding an address, and Sender
    /// addresses (`mail::headers::shown_beside_from`).
    pub shown_beside: Vec<String>,
}

/// Why nothing is signed when no submission path is configured.
pub const NO_SUBMISSION_PATH: &str = "no submission path is configured \
     (server.submission_listen), and server.sign_without_submission_path is off";

/// The internal address the organisation may sign for, or why it may not.
pub fn signable_address(settings: &Settings, origin: &Origin) -> Result<String, String> {
    if settings.server.submission_listen.is_empty() {
        // Anyone whose mail the mail server relays here (an outside sender
        // forged as an internal one, forwarded by an alias) would get the
        // organisation's signature: fail closed unless told otherwise.
        if !settings.server.sign_without_submission_path {
            return Err(NO_SUBMISSION_PATH.into());
        }
    } else if !origin.submission {
        return Err(
            "the message did not come in on the submission path (server.submission_listen)".into(),
        );
    }
    let from = match origin.header_from.as_slice() {
        [one] => normalize(one),
        [] => return Err("the message has no readable header From".into()),
        many => {
            return Err(format!(
                "the header From names {} addresses; only one can be vouched for",
                many.len()
            ))
        }
    };
    if !domain_of(&from).is_some_and(|d| settings.server.is_internal_domain(&d)) {
        return Err(format!(
            "the header From <{from}> is not in the internal domains"
        ));
    }
    let sender = normalize(&origin.envelope_sender);
    // A client shows these too ("ceo@…" <bob@…>, or Sender: on behalf
    // of): each must be the From itself or the envelope sender.
    // Every word with an `@` in them ("Bob (bob@…)" names Bob himself).
    let words = |s: &str| {
        s.split(|c: char| c.is_whitespace() || "\"'<>()[],;:".contains(c))
            .filter(|w| w.contains('@'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    for shown in &origin.shown_beside {
        let ws = words(shown);
        // Nothing to compare (an encoded word the gateway cannot read as
        // a client would): it may show any address.
        let other = match ws.iter().find(|s| !same(s, &from) && !same(s, &sender)) {
            Some(other) => other,
            None if ws.is_empty() => shown,
            None => continue,
        };
        return Err(format!(
            "the header section shows \"{other}\" beside the From <{from}>; only the From can be vouched for"
        ));
    }
    if same(&sender, &from) {
        return Ok(from);
    }
    let shared = settings.mailboxes.iter().find(|m| same(&m.address, &from));
    if shared.is_some_and(|m| m.lets_send_as(&sender)) {
        return Ok(from);
    }
    Err(format!(
        "the envelope sender <{sender}> is not the header From <{from}> and may not send as it \
         ([[mailbox]] send_as)"
    ))
}

/// True when `identity` may sign for `address` (an internal address): an
/// organisation-wide identity covers every internal address; one that
/// serves particular mailboxes covers only those of them its certificate
/// names.
pub fn covers(identity: &Identity, address: &str) -> bool {
    identity.is_organisation_wide()
        || (identity.serves(address) && identity.info.emails.iter().any(|e| same(e, address)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::test_settings;

    fn origin(sender: &str, from: &[&str], submission: bool) -> Origin {
        Origin {
            envelope_sender: sender.into(),
            header_from: from.iter().map(|s| s.to_string()).collect(),
            submission,
            shown_beside: Vec::new(),
        }
    }

    /// Settings that sign mail from trusted networks without a submission
    /// path (the operator vouches for the mail server).
    fn trusting(extra: &str) -> crate::config::Settings {
        let mut s = test_settings(extra);
        s.server.sign_without_submission_path = true;
        s
    }

    #[test]
    fn without_a_submission_path_nothing_is_signed_unless_the_operator_says_so() {
        // An outside sender forged as an internal one, relayed back out by
        // an alias, looks exactly like this.
        let o = origin("alice@example-law.dk", &["alice@example-law.dk"], false);
        assert_eq!(
            signable_address(&test_settings(""), &o),
            Err(NO_SUBMISSION_PATH.to_string())
        );
        // Control: vouched for, the same mail is signable.
        assert!(signable_address(&trusting(""), &o).is_ok());
    }

    const SHARED: &str = "[[mailbox]]\naddress = \"sikkermail@example-law.dk\"\n\
                          send_as = [\"alice@example-law.dk\", \"*@staff.example-law.dk\"]\n";

    #[test]
    fn the_sender_signs_for_its_own_address() {
        let s = trusting("");
        let o = origin("alice@Example-Law.dk", &["Alice@example-law.dk"], false);
        assert_eq!(
            signable_address(&s, &o).as_deref(),
            Ok("Alice@example-law.dk")
        );
    }

    #[test]
    fn an_external_or_foreign_header_from_is_never_signed() {
        let s = trusting(SHARED);
        // The signing-oracle attack: internal envelope, someone else's From.
        for (sender, from) in [
            ("nobody@example-law.dk", "dommer@domstol.dk"),
            ("alice@example-law.dk", "bob@example-law.dk"),
            ("bob@example-law.dk", "sikkermail@example-law.dk"),
            ("dommer@domstol.dk", "dommer@domstol.dk"),
            ("", "alice@example-law.dk"),
        ] {
            let o = origin(sender, &[from], true);
            assert!(signable_address(&s, &o).is_err(), "{sender} as {from}");
        }
    }

    #[test]
    fn one_from_address_only() {
        let s = trusting("");
        let o = origin(
            "alice@example-law.dk",
            &["alice@example-law.dk", "bob@example-law.dk"],
            false,
        );
        assert!(signable_address(&s, &o).is_err());
        assert!(signable_address(&s, &origin("alice@example-law.dk", &[], false)).is_err());
    }

    #[test]
    fn nothing_shown_beside_the_from_may_name_someone_else() {
        let s = trusting(SHARED);
        let with = |sender: &str, from: &str, beside: &[&str]| Origin {
            shown_beside: beside.iter().map(|b| b.to_string()).collect(),
            ..origin(sender, &[from], true)
        };
        let bob = "bob@example-law.dk";
        // "ceo@…" <bob@…>, or Sender: ceo@…: refused.
        assert!(signable_address(&s, &with(bob, bob, &["ceo@example-law.dk"])).is_err());
        assert!(signable_address(&s, &with(bob, bob, &[" \"CEO@example-law.dk\" "])).is_err());
        // The From itself, or the sender of a shared mailbox: fine.
        assert!(signable_address(&s, &with(bob, bob, &["\"Bob@Example-Law.dk\""])).is_ok());
        assert!(signable_address(&s, &with(bob, bob, &["Bob (bob@example-law.dk)"])).is_ok());
        let two = with(bob, bob, &["Bob (bob@example-law.dk, ceo@example-law.dk)"]);
        assert!(signable_address(&s, &two).is_err());
        // Shown but unreadable (an encoded word in a charset not decoded).
        let jp = with(bob, bob, &["=?iso-2022-jp?b?Y2VvGyRCIXcbKEJ?="]);
        assert!(signable_address(&s, &jp).is_err());
        let shared = with(
            "alice@example-law.dk",
            "sikkermail@example-law.dk",
            &["alice@example-law.dk"],
        );
        assert_eq!(
            signable_address(&s, &shared).as_deref(),
            Ok("sikkermail@example-law.dk")
        );
    }

    #[test]
    fn send_as_lets_listed_senders_sign_as_the_shared_mailbox() {
        let s = trusting(SHARED);
        for sender in ["alice@example-law.dk", "carl@staff.example-law.dk"] {
            let o = origin(sender, &["sikkermail@example-law.dk"], false);
            assert_eq!(
                signable_address(&s, &o).as_deref(),
                Ok("sikkermail@example-law.dk"),
                "{sender}"
            );
        }
        let o = origin("eve@example-law.dk", &["sikkermail@example-law.dk"], false);
        assert!(signable_address(&s, &o).is_err());
    }

    #[test]
    fn with_a_submission_path_only_its_mail_is_signed() {
        let s = test_settings("");
        let mut s = s;
        s.server.submission_listen =
            vec!["127.0.0.1:10027".parse().unwrap_or_else(|e| panic!("{e}"))];
        let o = origin("alice@example-law.dk", &["alice@example-law.dk"], false);
        assert!(signable_address(&s, &o).is_err());
        let o = origin("alice@example-law.dk", &["alice@example-law.dk"], true);
        assert!(signable_address(&s, &o).is_ok());
    }
}
