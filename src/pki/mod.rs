//! Keys and certificates: the organisation's identities (private keys of
//! both generations, expired and revoked ones included), trust anchors,
//! OCES classification, recipients' certificates (directory, harvest,
//! LDAP) and their validation (chain, CRL, OCSP).

pub mod checked;
pub mod crl_history;
pub mod directory;
pub mod facts;
pub mod identity;
pub mod ldap;
pub mod oces;
pub mod provider;
pub mod resolve;
pub mod revocation;
pub mod signer;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod trust;
pub mod validate;

use openssl::x509::X509;

pub use identity::Identity;

use crate::config::Settings;

/// The organisation's keys and the trust anchors: immutable, loaded with
/// the configuration and swapped with it in one snapshot. What changes
/// while the daemon runs (harvested certificates, revocation found later)
/// lives apart: the certificate directory (which grows by harvest) and
/// [`revocation::RevokedIdentities`]. Beside them, the signer chains found
/// trusted under these anchors (a cache: a new keyring starts empty).
#[derive(Debug, Default)]
pub struct Keyring {
    pub identities: Vec<Identity>,
    pub anchors: Vec<X509>,
    pub signer_chains: std::sync::Arc<checked::SignerChains>,
}

/// What went wrong loading keys and anchors; every problem is listed.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct KeyringError(pub Vec<String>);

impl Keyring {
    /// Loads the identities and trust anchors `settings` name; every
    /// problem is reported, not only the first.
    pub fn load(settings: &Settings) -> Result<Self, KeyringError> {
        let mut problems = Vec::new();
        let mut identities = Vec::new();
        for (i, cfg) in settings.identities.iter().enumerate() {
            match identity::load(i, cfg, settings.smime.strict_permissions) {
                Ok(id) => identities.push(id),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let anchors = match trust::load_anchors(&settings.trust.anchors) {
            Ok(a) => a,
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        if problems.is_empty() {
            Ok(Self {
                identities,
                anchors,
                signer_chains: Default::default(),
            })
        } else {
            Err(KeyringError(problems))
        }
    }

    /// Identities that may open mail for `rcpt` (`decrypt_for`): its own
    /// personal keys first, then the others, in configuration order.
    pub fn candidates<'a>(&'a self, rcpt: &'a str) -> impl Iterator<Item = &'a Identity> + 'a {
        self.candidate_indices(rcpt)
            .into_iter()
            .map(move |i| &self.identities[i])
    }

    /// Positions in `identities` of the candidates for `rcpt`, in order.
    pub fn candidate_indices(&self, rcpt: &str) -> Vec<usize> {
        let ids = &self.identities;
        let own = (0..ids.len()).filter(|&i| ids[i].serves(rcpt) && ids[i].may_open(rcpt));
        let others = (0..ids.len()).filter(|&i| !ids[i].serves(rcpt) && ids[i].may_open(rcpt));
        own.chain(others).collect()
    }

    /// The current OCES3 identity for `rcpt` (valid at `now`, may receive
    /// encrypted mail), newest first: what re-encryption targets.
    pub fn current_oces3<'a>(&'a self, rcpt: &'a str, now: i64) -> Option<&'a Identity> {
        let mut best: Option<&Identity> = None;
        for id in self.candidates(rcpt) {
            let ok = id.info.generation == oces::Generation::Oces3
                && id.info.valid_at(now)
                && id.info.can_encrypt();
            if ok && best.is_none_or(|b| b.info.not_after < id.info.not_after) {
                best = Some(id);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cn: &str, mailboxes: &[&str], decrypt_for: Option<&[&str]>) -> Identity {
        let mut i = testkit::identity(1024, cn).unwrap();
        i.mailboxes = mailboxes.iter().map(|m| m.to_string()).collect();
        i.decrypt_for = decrypt_for.map(|d| d.iter().map(|m| m.to_string()).collect());
        i
    }

    #[test]
    fn what_a_key_is_and_whose_mail_it_opens_are_separate() {
        let keys = Keyring {
            identities: vec![
                // An organisation key that opens only the shared mailbox.
                id("org", &[], Some(&["sikkermail@example-law.dk"])),
                // A personal key, by default for its own address.
                id("alice", &["alice@example-law.dk"], None),
                // A personal key that also opens a team's mail.
                id("bob", &["bob@example-law.dk"], Some(&["*@example-law.dk"])),
                // An organisation key with the default: everyone.
                id("org2", &[], None),
            ],
            anchors: Vec::new(),
            ..Keyring::default()
        };
        assert!(keys.identities[0].is_organisation_wide());
        assert_eq!(
            keys.candidate_indices("sikkermail@example-law.dk"),
            vec![0, 2, 3]
        );
        assert_eq!(
            keys.candidate_indices("Alice@Example-Law.dk"),
            vec![1, 2, 3]
        );
        assert_eq!(keys.candidate_indices("bob@example-law.dk"), vec![2, 3]);
        assert_eq!(keys.candidate_indices("carol@example-law.dk"), vec![2, 3]);
        assert!(!keys.identities[0].may_open("carol@example-law.dk"));
        assert!(!keys.identities[1].may_open("carol@example-law.dk"));
    }
}
