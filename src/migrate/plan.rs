//! What to do with one stored message (pure): read what the inbound path
//! reported when it opened the message (its `X-SMIME-Gateway` value, in
//! the grammar the README documents) and decide whether the message is
//! re-keyed or left alone, and why.

use crate::pki::oces::Generation;

/// Which keys' mail is re-keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// Mail opened by a key of one of these generations.
    pub generations: Vec<Generation>,
    /// Also mail opened by any key that expires before the mailbox's
    /// current certificate (an older OCES3 key, say).
    pub older: bool,
}

impl Chosen {
    /// Reads a comma-separated list of `oces2`, `oces3`, `other`, `older`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut chosen = Chosen {
            generations: Vec::new(),
            older: false,
        };
        for word in text.split(',').map(str::trim) {
            match word.to_ascii_lowercase().as_str() {
                "oces2" => chosen.generations.push(Generation::Oces2),
                "oces3" => chosen.generations.push(Generation::Oces3),
                "other" => chosen.generations.push(Generation::Other),
                "older" => chosen.older = true,
                _ => return None,
            }
        }
        Some(chosen)
    }
}

/// A key as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFacts {
    pub subject_cn: String,
    pub generation: Generation,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 fingerprint of the certificate (tells two keys with one
    /// name apart).
    pub fingerprint: String,
}

/// What the trace header of the opened message says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// Keys (their `CN=` names) of the decrypted layers, outermost first.
    pub decrypted: Vec<String>,
    /// Signatures over ciphertext (removed with it).
    pub over_ciphertext: usize,
    /// Signatures in all.
    pub signatures: usize,
    /// Why a layer could not be opened.
    pub undecryptable: Option<String>,
    /// Encrypted parts inside a multipart were not opened.
    pub not_opened: Option<String>,
}

/// The trace field that carries the original's SHA-256 (the marker).
pub const MARKER_FIELD: &str = "original-sha256=";

/// The marker (`original-sha256=…`) a trace value carries as an item of
/// its own. Text inside a quoted value (a signer's name, a detail: what a
/// sender wrote) is never one, or a sender could have their mail taken
/// for a copy migration made and left unmigrated.
pub fn marker_of(value: &str) -> Option<String> {
    items(value)
        .into_iter()
        .find(|i| i.starts_with(MARKER_FIELD) && !i.contains(['"', ' ', '\t']))
}

/// Splits a trace value into its `; `-separated items, honouring quotes.
fn items(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The text inside a quoted value, unescaped.
fn unquote(v: &str) -> String {
    let inner = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

impl Trace {
    /// Reads a trace header value.
    pub fn parse(value: &str) -> Self {
        let mut t = Trace::default();
        let list = items(value);
        let mut reason_for: Option<&str> = None;
        for item in &list {
            let (name, val) = item.split_once('=').unwrap_or((item.as_str(), ""));
            match name {
                "decrypted" => reason_for = None,
                "key" => {
                    let k = unquote(val);
                    t.decrypted
                        .push(k.strip_prefix("CN=").unwrap_or(&k).to_string());
                }
                n if n.starts_with("signature[") => t.signatures += 1,
                "over" if val == "ciphertext" => t.over_ciphertext += 1,
                "undecryptable" => reason_for = Some("undecryptable"),
                "encrypted-parts" if val == "not-opened" => reason_for = Some("not-opened"),
                "reason" => match reason_for {
                    Some("undecryptable") => t.undecryptable = Some(unquote(val)),
                    Some("not-opened") => t.not_opened = Some(unquote(val)),
                    _ => {}
                },
                _ => {}
            }
        }
        if reason_for == Some("undecryptable") && t.undecryptable.is_none() {
            t.undecryptable = Some("undecryptable".into());
        }
        t
    }
}

/// Why a message is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leave {
    /// No encryption anywhere (signed-only mail included).
    Plain,
    /// A copy migration wrote earlier.
    MigratedCopy,
    /// Encrypted to the mailbox's current certificate already.
    Current,
    /// Opened by a key migration was not asked to retire.
    NotChosen(String),
    /// No key opens it, or its encrypted parts are not opened inbound
    /// either.
    Unopenable(String),
    /// Not a mail message at all (no header section).
    NotMessage,
    /// The mailbox has no current OCES3 certificate to re-encrypt to.
    NoTarget,
}

impl Leave {
    /// The word the report counts under.
    pub fn label(&self) -> &'static str {
        match self {
            Leave::Plain => "plain",
            Leave::MigratedCopy => "migrated-copy",
            Leave::Current => "current",
            Leave::NotChosen(_) => "not-chosen",
            Leave::Unopenable(_) => "unopenable",
            Leave::NotMessage => "not-a-message",
            Leave::NoTarget => "no-target",
        }
    }

    /// Why, for the report.
    pub fn reason(&self) -> String {
        match self {
            Leave::Plain => "not encrypted".into(),
            Leave::MigratedCopy => "a copy written by migration".into(),
            Leave::Current => "encrypted to the mailbox's current certificate".into(),
            Leave::NotChosen(k) => format!("opened by {k}, a key not chosen for re-keying"),
            Leave::Unopenable(r) => r.clone(),
            Leave::NotMessage => "not a mail message (no header section)".into(),
            Leave::NoTarget => "the mailbox has no valid OCES3 certificate".into(),
        }
    }
}

/// The decision for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Re-keyed: it was opened by `from` (the outermost decryption).
    Migrate {
        from: KeyFacts,
        /// Signatures over the ciphertext that cannot survive re-keying.
        lost_signatures: usize,
    },
    Leave(Leave),
}

/// What is known of a message before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Before {
    /// It has a header section.
    pub is_message: bool,
    /// Its trace header carries a migration marker.
    pub marked: bool,
    /// Encryption somewhere inside (`smime::scan`).
    pub encrypted: bool,
}

/// Decided without opening the message, when that is enough.
pub fn before_opening(b: Before) -> Option<Decision> {
    if !b.is_message {
        Some(Decision::Leave(Leave::NotMessage))
    } else if b.marked {
        Some(Decision::Leave(Leave::MigratedCopy))
    } else if !b.encrypted {
        Some(Decision::Leave(Leave::Plain))
    } else {
        None
    }
}

/// Decided from what opening said: `trace` is the inbound path's report,
/// `used` the key it names first (looked up among the identities),
/// `target` the mailbox's current certificate.
pub fn after_opening(
    trace: &Trace,
    used: Option<&KeyFacts>,
    target: Option<&KeyFacts>,
    chosen: &Chosen,
) -> Decision {
    if let Some(reason) = &trace.undecryptable {
        return Decision::Leave(Leave::Unopenable(reason.clone()));
    }
    let Some(used) = used else {
        return Decision::Leave(match (&trace.not_opened, trace.decrypted.first()) {
            (Some(r), _) => Leave::Unopenable(format!("encrypted parts not opened: {r}")),
            (None, Some(k)) => Leave::Unopenable(format!("opened by {k}, a key no longer held")),
            (None, None) => Leave::Plain,
        });
    };
    let Some(target) = target else {
        return Decision::Leave(Leave::NoTarget);
    };
    if used.fingerprint == target.fingerprint {
        return Decision::Leave(Leave::Current);
    }
    let wanted = chosen.generations.contains(&used.generation)
        || (chosen.older && used.not_after < target.not_after);
    if !wanted {
        return Decision::Leave(Leave::NotChosen(used.subject_cn.clone()));
    }
    Decision::Migrate {
        from: used.clone(),
        lost_signatures: trace.over_ciphertext,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cn: &str, generation: Generation, not_after: i64) -> KeyFacts {
        KeyFacts {
            subject_cn: cn.into(),
            generation,
            not_after,
            fingerprint: format!("fp-{cn}"),
        }
    }

    fn oces2_only() -> Chosen {
        Chosen::parse("oces2").unwrap()
    }

    #[test]
    fn the_trace_grammar_is_read() {
        let t = Trace::parse(
            "signature[1]=valid; signer=\"CN=Alice; \\\"x\\\"\"; from=exact; over=ciphertext; \
             decrypted; key=\"CN=Example Law ApS - sikkermail\"; generation=OCES2; \
             signature[2]=valid; signer=\"CN=Bob\"; from=exact",
        );
        assert_eq!(t.decrypted, vec!["Example Law ApS - sikkermail"]);
        assert_eq!((t.signatures, t.over_ciphertext), (2, 1));
        assert_eq!(t.undecryptable, None);
        let t = Trace::parse("undecryptable; reason=\"no key held for the recipient(s): x\"");
        assert_eq!(
            t.undecryptable.as_deref(),
            Some("no key held for the recipient(s): x")
        );
        let t = Trace::parse(
            "encrypted-parts=not-opened; reason=\"inside multipart/mixed next to other parts\"",
        );
        assert_eq!(
            t.not_opened.as_deref(),
            Some("inside multipart/mixed next to other parts")
        );
        assert!(t.undecryptable.is_none());
    }

    #[test]
    fn cheap_cases_are_decided_before_opening() {
        let b = Before {
            is_message: true,
            marked: false,
            encrypted: true,
        };
        assert_eq!(before_opening(b), None);
        assert_eq!(
            before_opening(Before {
                encrypted: false,
                ..b
            }),
            Some(Decision::Leave(Leave::Plain))
        );
        assert_eq!(
            before_opening(Before { marked: true, ..b }),
            Some(Decision::Leave(Leave::MigratedCopy))
        );
        assert_eq!(
            before_opening(Before {
                is_message: false,
                marked: true,
                ..b
            }),
            Some(Decision::Leave(Leave::NotMessage))
        );
    }

    #[test]
    fn only_chosen_keys_are_retired() {
        let old = key("Org OCES2", Generation::Oces2, 100);
        let older3 = key("Org OCES3 2023", Generation::Oces3, 200);
        let current = key("Org OCES3", Generation::Oces3, 300);
        let trace = Trace::parse("decrypted; key=\"CN=Org OCES2\"; generation=OCES2");
        assert_eq!(
            after_opening(&trace, Some(&old), Some(&current), &oces2_only()),
            Decision::Migrate {
                from: old.clone(),
                lost_signatures: 0
            }
        );
        // Already current.
        assert_eq!(
            after_opening(&trace, Some(&current), Some(&current), &oces2_only()),
            Decision::Leave(Leave::Current)
        );
        // An older OCES3 key: only with `older`.
        assert!(matches!(
            after_opening(&trace, Some(&older3), Some(&current), &oces2_only()),
            Decision::Leave(Leave::NotChosen(_))
        ));
        assert!(matches!(
            after_opening(
                &trace,
                Some(&older3),
                Some(&current),
                &Chosen::parse("oces2,older").unwrap()
            ),
            Decision::Migrate { .. }
        ));
        // No certificate to re-encrypt to.
        assert_eq!(
            after_opening(&trace, Some(&old), None, &oces2_only()),
            Decision::Leave(Leave::NoTarget)
        );
    }

    #[test]
    fn unopenable_mail_is_left_with_its_reason() {
        let current = key("Org OCES3", Generation::Oces3, 300);
        let t =
            Trace::parse("undecryptable; reason=\"no key held for the recipient(s): issuer=x\"");
        assert_eq!(
            after_opening(&t, None, Some(&current), &oces2_only()),
            Decision::Leave(Leave::Unopenable(
                "no key held for the recipient(s): issuer=x".into()
            ))
        );
        let t = Trace::parse("encrypted-parts=not-opened; reason=\"inside multipart/alternative next to other parts\"");
        assert!(matches!(
            after_opening(&t, None, Some(&current), &oces2_only()),
            Decision::Leave(Leave::Unopenable(r)) if r.contains("multipart/alternative")
        ));
        // Signed only: plain.
        let t = Trace::parse("signature[1]=valid; signer=\"CN=A\"; from=exact");
        assert_eq!(
            after_opening(&t, None, Some(&current), &oces2_only()),
            Decision::Leave(Leave::Plain)
        );
    }

    #[test]
    fn a_signature_over_the_ciphertext_is_counted_as_lost() {
        let old = key("Org OCES2", Generation::Oces2, 100);
        let current = key("Org OCES3", Generation::Oces3, 300);
        let t = Trace::parse(
            "signature[1]=valid; signer=\"CN=A\"; from=exact; over=ciphertext; decrypted; key=\"CN=Org OCES2\"; generation=OCES2",
        );
        assert_eq!(
            after_opening(&t, Some(&old), Some(&current), &oces2_only()),
            Decision::Migrate {
                from: old,
                lost_signatures: 1
            }
        );
    }

    #[test]
    fn a_marker_is_an_item_of_its_own_never_text_inside_quotes() {
        let own = "decrypted; key=\"CN=A\"; generation=OCES2; original-sha256=abcd; migrated-at=x";
        assert_eq!(marker_of(own).as_deref(), Some("original-sha256=abcd"));
        // A signer's name or a detail a sender chose.
        for forged in [
            "decrypted; signature[1]=untrusted; signer=\"CN=original-sha256=abab\"; from=differs",
            "signature[1]=invalid; detail=\"x; original-sha256=abab\"",
            "signature[1]=invalid; signer-id=\"issuer=\\\"original-sha256=ab\\\"\"",
        ] {
            assert_eq!(marker_of(forged), None, "{forged}");
        }
        // The gateway's own marker after a forged one is still found.
        assert_eq!(
            marker_of("signer=\"CN=original-sha256=abab\"; original-sha256=cdef").as_deref(),
            Some("original-sha256=cdef")
        );
    }
}
