//! Recognising Danish OCES certificates: which generation (OCES2 under
//! TRUST2408, OCES3 under Den Danske Stat), which kind of holder, the CVR
//! number that ties a holder's certificates of both generations together,
//! e-mail addresses and validity. Pure: DER in, facts out.

use std::fmt;

use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// Certificate generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generation {
    /// NemID era, TRUST2408 CAs.
    Oces2,
    /// MitID Erhverv era, Den Danske Stat CAs.
    Oces3,
    /// Anything else.
    Other,
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Generation::Oces2 => "OCES2",
            Generation::Oces3 => "OCES3",
            Generation::Other => "other",
        })
    }
}

/// Kind of certificate holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OCES2 POCES: a private person.
    Person,
    /// OCES2 MOCES (medarbejdersignatur).
    Employee,
    /// OCES3 certificate of a person in an organisation (MitID Erhverv user).
    User,
    /// OCES2 VOCES (virksomhedscertifikat).
    Company,
    /// OCES2 FOCES (funktionscertifikat).
    Function,
    /// OCES3 organisation certificate.
    Organisation,
    /// OCES3 system certificate (held by an organisation for a system).
    System,
    /// A CA certificate.
    Authority,
    Unknown,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Person => "person",
            Kind::Employee => "employee",
            Kind::Company => "company",
            Kind::Function => "function",
            Kind::Organisation => "organisation",
            Kind::User => "user",
            Kind::System => "system",
            Kind::Authority => "CA",
            Kind::Unknown => "unknown",
        })
    }
}

/// What a certificate says about itself, for decisions and for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub subject_cn: String,
    pub issuer: String,
    pub serial_hex: String,
    pub generation: Generation,
    pub kind: Kind,
    pub cvr: Option<String>,
    pub emails: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub policies: Vec<String>,
    /// `None` when the certificate has no key usage extension (any use).
    pub key_encipherment: Option<bool>,
    pub digital_signature: Option<bool>,
    /// `None` without an extended key usage extension (any use); else
    /// whether it allows e-mail protection (or any purpose).
    pub email_protection: Option<bool>,
}

impl CertInfo {
    /// True when valid at `now` (Unix seconds).
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// True when the key may be used to receive encrypted mail.
    pub fn can_encrypt(&self) -> bool {
        self.key_encipherment != Some(false)
    }

    /// True when the key may sign.
    pub fn can_sign(&self) -> bool {
        self.digital_signature != Some(false)
    }

    /// The certificate's state at `now` as listings show it: "revoked"
    /// (when `revoked`), "not yet valid", "expired" or "valid".
    pub fn state_at(&self, now: i64, revoked: bool) -> &'static str {
        if revoked {
            "revoked"
        } else if now < self.not_before {
            "not yet valid"
        } else if now > self.not_after {
            "expired"
        } else {
            "valid"
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not an X.509 certificate: {0}")]
pub struct ParseError(String);

const OCES2_PROD_POLICY: &str = "1.2.208.169.1.1.1.";
const OCES2_TEST_POLICY: &str = "1.3.6.1.4.1.31313.2.4.6.";
const OCES3_POLICIES: &[&str] = &["0.4.0.2042.1.1", "1.2.208.169.1.1.1.3.7"];
const OID_ORGANIZATION_IDENTIFIER: &str = "2.5.4.97";
const OID_SERIAL_NUMBER: &str = "2.5.4.5";
const OID_EMAIL_ADDRESS: &str = "1.2.840.113549.1.9.1";

/// Classifies the certificate in `der`.
pub fn classify(der: &[u8]) -> Result<CertInfo, ParseError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| ParseError(e.to_string()))?;
    let subject = &cert.tbs_certificate.subject;
    let issuer = &cert.tbs_certificate.issuer;
    let serial_number = attr(subject, OID_SERIAL_NUMBER).unwrap_or_default();
    let org_id = attr(subject, OID_ORGANIZATION_IDENTIFIER).unwrap_or_default();
    let orgs: Vec<String> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    let issuer_text = issuer.to_string();

    let mut policies = Vec::new();
    let mut emails = Vec::new();
    let mut key_encipherment = None;
    let mut digital_signature = None;
    let mut is_ca = false;
    let mut email_protection = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::CertificatePolicies(ps) => {
                policies.extend(ps.iter().map(|p| p.policy_id.to_id_string()))
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::RFC822Name(e) = name {
                        emails.push(e.to_ascii_lowercase());
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                key_encipherment = Some(ku.key_encipherment());
                digital_signature = Some(ku.digital_signature());
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::ExtendedKeyUsage(eku) => {
                email_protection = Some(eku.email_protection || eku.any)
            }
            _ => {}
        }
    }
    for e in attrs(subject, OID_EMAIL_ADDRESS) {
        let e = e.to_ascii_lowercase();
        if !emails.contains(&e) {
            emails.push(e);
        }
    }

    let generation = generation(&issuer_text, &serial_number, &org_id, &orgs, &policies);
    let kind = if is_ca {
        Kind::Authority
    } else {
        kind(generation, &serial_number, &policies)
    };
    let cvr = cvr(&serial_number, &org_id, &orgs);
    let subject_cn = subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_string();
    Ok(CertInfo {
        subject: subject.to_string(),
        subject_cn,
        issuer: issuer_text,
        serial_hex: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        generation,
        kind,
        cvr,
        emails,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        policies,
        key_encipherment,
        digital_signature,
        email_protection,
    })
}

fn attrs(name: &X509Name<'_>, oid: &str) -> Vec<String> {
    let Ok(oid) = oid.parse::<Oid>() else {
        return Vec::new();
    };
    name.iter_by_oid(&oid)
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect()
}

fn attr(name: &X509Name<'_>, oid: &str) -> Option<String> {
    attrs(name, oid).into_iter().next()
}

fn generation(
    issuer: &str,
    serial_number: &str,
    org_id: &str,
    orgs: &[String],
    policies: &[String],
) -> Generation {
    if issuer.contains("TRUST2408") {
        return Generation::Oces2;
    }
    if issuer.contains("Den Danske Stat") {
        return Generation::Oces3;
    }
    if serial_number.starts_with("UI:DK-") || org_id.starts_with("NTRDK-") {
        return Generation::Oces3;
    }
    if serial_number.starts_with("CVR:") || orgs.iter().any(|o| o.contains("// CVR:")) {
        return Generation::Oces2;
    }
    if policies
        .iter()
        .any(|p| OCES3_POLICIES.contains(&p.as_str()))
    {
        return Generation::Oces3;
    }
    if policies
        .iter()
        .any(|p| p.starts_with(OCES2_PROD_POLICY) || p.starts_with(OCES2_TEST_POLICY))
    {
        return Generation::Oces2;
    }
    Generation::Other
}

fn kind(generation: Generation, serial_number: &str, policies: &[String]) -> Kind {
    match generation {
        Generation::Oces2 => {
            if serial_number.contains("-RID:") {
                return Kind::Employee;
            }
            if serial_number.contains("-UID:") {
                return Kind::Company;
            }
            if serial_number.contains("-FID:") {
                return Kind::Function;
            }
            if serial_number.starts_with("PID:") {
                return Kind::Person;
            }
            // The policy's component after the prefix: 1 POCES, 2 MOCES, 3 VOCES, 4 FOCES.
            let digit = policies.iter().find_map(|p| {
                p.strip_prefix(OCES2_PROD_POLICY)
                    .or_else(|| p.strip_prefix(OCES2_TEST_POLICY))
                    .and_then(|rest| rest.split('.').next())
            });
            match digit {
                Some("1") => Kind::Person,
                Some("2") => Kind::Employee,
                Some("3") => Kind::Company,
                Some("4") => Kind::Function,
                _ => Kind::Unknown,
            }
        }
        Generation::Oces3 => {
            // An organisation-held certificate whose MitID Erhverv policy has
            // a further arc (1.2.208.169.1.1.1.3.7.x) is a system certificate;
            // seen in the public test certificates, *unconfirmed* in general.
            let system_policy = policies.iter().any(|p| {
                p.strip_prefix("1.2.208.169.1.1.1.3.7.")
                    .is_some_and(|rest| !rest.is_empty())
            });
            if serial_number.starts_with("UI:DK-O:") && system_policy {
                Kind::System
            } else if serial_number.starts_with("UI:DK-O:") {
                Kind::Organisation
            } else if serial_number.starts_with("UI:DK-E:") {
                Kind::User
            } else {
                Kind::Unknown
            }
        }
        Generation::Other => Kind::Unknown,
    }
}

fn cvr(serial_number: &str, org_id: &str, orgs: &[String]) -> Option<String> {
    let digits = |s: &str| -> Option<String> {
        let d: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
        (!d.is_empty()).then_some(d)
    };
    if let Some(rest) = org_id.strip_prefix("NTRDK-") {
        return digits(rest);
    }
    if let Some(rest) = serial_number.strip_prefix("CVR:") {
        return digits(rest);
    }
    orgs.iter().find_map(|o| {
        o.split_once("// CVR:")
            .and_then(|(_, rest)| digits(rest.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_state_is_read_at_a_time() {
        let info = CertInfo {
            subject: "CN=x".into(),
            subject_cn: "x".into(),
            issuer: "CN=ca".into(),
            serial_hex: "01".into(),
            generation: Generation::Oces3,
            kind: Kind::Person,
            cvr: None,
            emails: Vec::new(),
            not_before: 100,
            not_after: 200,
            policies: Vec::new(),
            key_encipherment: None,
            digital_signature: None,
            email_protection: None,
        };
        assert_eq!(info.state_at(99, false), "not yet valid");
        assert_eq!(info.state_at(100, false), "valid");
        assert_eq!(info.state_at(200, false), "valid");
        assert_eq!(info.state_at(201, false), "expired");
        assert_eq!(info.state_at(150, true), "revoked");
        assert_eq!(info.state_at(201, true), "revoked");
    }
}
