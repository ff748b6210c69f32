//! `smime-gateway pki demo`: a look-alike test PKI of both generations for
//! the demo configuration and the tests. OCES2-style: TRUST2408-like root
//! and issuing CA, RSA 2048, sha256WithRSA, `O=<org> // CVR:<n>` and a
//! multi-valued `CN + serialNumber=CVR:<n>-RID:<m>`. OCES3-style: Den Danske
//! Stat-like RSA 4096 root and RSA 3072 issuing CA signed with RSASSA-PSS,
//! RSA 3072 leaves, `serialNumber=UI:DK-O:G:<uuid>`,
//! `organizationIdentifier=NTRDK-<n>`. Employees, organisations and a
//! court, expired and revoked variants, a CRL per issuing CA, keys as PEM
//! and as legacy-encrypted PKCS#12. TEST ONLY: every name says so.
//!
//! Why one long file: it is one test-only CA, and its certificate profiles
//! (OCES2 and OCES3 look-alikes, each holder and variant) read best side by
//! side. Nothing in the daemon uses it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Extension, X509NameBuilder, X509};

use crate::ossl::{self, Signature};
use crate::pki::provider;

/// Password of every PKCS#12 file the demo writes.
pub const PASSWORD: &str = "demo-only";
/// CVR number of the demo organisation (Example Law ApS).
pub const ORG_CVR: &str = "12345678";
/// CVR number of the demo court.
pub const COURT_CVR: &str = "87654321";

const DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("OpenSSL: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Provider(#[from] provider::LegacyProviderError),
}

/// Where the demo's revocation information is published (written into the
/// certificates).
#[derive(Debug, Clone)]
pub struct Urls {
    /// Base URL; the CRL of each issuing CA is `<base>/<ca>.crl`.
    pub crl_base: String,
    pub ocsp: String,
}

impl Default for Urls {
    fn default() -> Self {
        Self {
            crl_base: "http://127.0.0.1:8088/crl".into(),
            ocsp: "http://127.0.0.1:8089/ocsp".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Gen {
    Oces2,
    Oces3,
}

struct Ca {
    cert: X509,
    key: PKey<Private>,
    scheme: Signature,
    name: &'static str,
    revoked: Vec<(BigNum, i64)>,
}

/// One leaf certificate to issue.
struct Leaf {
    file: &'static str,
    gen: Gen,
    cn: &'static str,
    org: &'static str,
    cvr: &'static str,
    /// OCES2: `RID:n`, `UID:n`; OCES3: `E` (employee) or `O` (organisation).
    holder: &'static str,
    email: &'static str,
    /// Validity relative to now, in days.
    from_days: i64,
    to_days: i64,
    revoked: bool,
    /// Private key kept (identities of the demo organisation) or only the
    /// certificate (recipients).
    with_key: bool,
}

const LEAVES: &[Leaf] = &[
    Leaf {
        file: "org-oces2",
        gen: Gen::Oces2,
        cn: "Example Law ApS - sikkermail",
        org: "Example Law ApS",
        cvr: ORG_CVR,
        holder: "UID:20000001",
        email: "sikkermail@example-law.dk",
        from_days: -700,
        to_days: 400,
        revoked: false,
        with_key: true,
    },
    Leaf {
        file: "alice-oces2",
        gen: Gen::Oces2,
        cn: "Alice Andersen",
        org: "Example Law ApS",
        cvr: ORG_CVR,
        holder: "RID:10000001",
        email: "alice@example-law.dk",
        from_days: -700,
        to_days: 400,
        revoked: false,
        with_key: true,
    },
    Leaf {
        file: "alice-oces2-expired",
        gen: Gen::Oces2,
        cn: "Alice Andersen (expired)",
        org: "Example Law ApS",
        cvr: ORG_CVR,
        holder: "RID:10000002",
        email: "alice@example-law.dk",
        from_days: -1500,
        to_days: -400,
        revoked: false,
        with_key: true,
    },
    Leaf {
        file: "bob-oces2-revoked",
        gen: Gen::Oces2,
        cn: "Bob Bertelsen (revoked)",
        org: "Example Law ApS",
        cvr: ORG_CVR,
        holder: "RID:10000003",
        email: "bob@example-law.dk",
        from_days: -300,
        to_days: 700,
        revoked: true,
        with_key: true,
    },
    Leaf {
        file: "org-oces3",
        gen: Gen::Oces3,
        cn: "Example Law ApS - sikkermail",
        org: "Example Law ApS",
        cvr: ORG_CVR,
        holder: "O",
        email: "sikkermail@example-law.dk",
        from_days: -30,
        to_days: 1065,
        revoked: false,
        with_key: true,
    },
    Leaf {
        file: "alice-oces3",
        gen: Gen::Oces3,
        cn: "Alice Andersen",
        org: "Example Law ApS",
        cvr: ORG_CVR,
        holder: "E",
        email: "alice@example-law.dk",
        from_days: -30,
        to_days: 1065,
        revoked: false,
        with_key: true,
    },
    Leaf {
        file: "org-oces3-expired",
        gen: Gen::Oces3,
        cn: "Example Law ApS - sikkermail (expired)",
        org: "Example Law ApS",
        cvr: ORG_CVR,
        holder: "O",
        email: "sikkermail@example-law.dk",
        from_days: -1200,
        to_days: -100,
        revoked: false,
        with_key: true,
    },
    Leaf {
        file: "court-oces2",
        gen: Gen::Oces2,
        cn: "Demo Court - sikkermail",
        org: "Demo Court",
        cvr: COURT_CVR,
        holder: "UID:30000001",
        email: "post@domstol.dk",
        from_days: -700,
        to_days: 400,
        revoked: false,
        with_key: true,
    },
    Leaf {
        file: "court-oces3",
        gen: Gen::Oces3,
        cn: "Demo Court - sikkermail",
        org: "Demo Court",
        cvr: COURT_CVR,
        holder: "O",
        email: "post@domstol.dk",
        from_days: -30,
        to_days: 1065,
        revoked: false,
        with_key: true,
    },
    // Counterparties with one generation only (certificates, no keys):
    // what the cutoff report is about.
    Leaf {
        file: "partner-oces2",
        gen: Gen::Oces2,
        cn: "Nordby Advokater - sikkermail",
        org: "Nordby Advokater",
        cvr: "11223344",
        holder: "UID:40000001",
        email: "sikkermail@nordby-advokater.dk",
        from_days: -700,
        to_days: 400,
        revoked: false,
        with_key: false,
    },
    Leaf {
        file: "partner-oces3",
        gen: Gen::Oces3,
        cn: "Vestkyst Revision - sikkermail",
        org: "Vestkyst Revision",
        cvr: "55667788",
        holder: "O",
        email: "post@vestkyst-revision.dk",
        from_days: -30,
        to_days: 1065,
        revoked: false,
        with_key: false,
    },
    // An OCES3 certificate that runs out in 200 days, and no other.
    Leaf {
        file: "partner-oces3-expiring",
        gen: Gen::Oces3,
        cn: "Sydhavn Kommune - sikkermail",
        org: "Sydhavn Kommune",
        cvr: "29189900",
        holder: "O",
        email: "post@sydhavn-kommune.dk",
        from_days: -900,
        to_days: 200,
        revoked: false,
        with_key: false,
    },
    Leaf {
        file: "stranger",
        gen: Gen::Oces3,
        cn: "Unknown Sender",
        org: "Nobody ApS",
        cvr: "99999999",
        holder: "O",
        email: "stranger@example.org",
        from_days: -30,
        to_days: 1065,
        revoked: false,
        with_key: true,
    },
];

/// What `generate` wrote, for the command's report.
#[derive(Debug)]
pub struct Written {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Generates the demo PKI into `out` (created when missing), valid from
/// `now` (Unix seconds).
pub fn generate(out: &Path, now: i64, urls: &Urls) -> Result<Written, DemoError> {
    provider::ensure_legacy()?;
    let mut written = Written {
        dir: out.to_path_buf(),
        files: Vec::new(),
    };
    for sub in ["trust", "keys", "certs", "crl"] {
        mkdir(&out.join(sub))?;
    }
    fs::write(
        out.join("README.txt"),
        "TEST ONLY: a generated look-alike OCES2/OCES3 PKI for smime-gateway's demo and tests.\n\
         Never trust these anchors in production. PKCS#12 password: see keys/*.pass.\n",
    )
    .map_err(io(&out.join("README.txt")))?;

    let stranger_root = make_root(Gen::Oces3, now, "Stranger Root CA (TEST ONLY)")?;
    let oces2_root = make_root(Gen::Oces2, now, "TRUST2408 Demo Primary CA (TEST ONLY)")?;
    let oces3_root = make_root(Gen::Oces3, now, "Den Danske Stat OCES rod-CA")?;
    let mut oces2_ca = make_issuing(
        &oces2_root,
        Gen::Oces2,
        now,
        "TRUST2408 Demo CA (TEST ONLY)",
        "oces2-ca",
    )?;
    let mut oces3_ca = make_issuing(
        &oces3_root,
        Gen::Oces3,
        now,
        "Den Danske Stat OCES udstedende-CA 1",
        "oces3-ca",
    )?;
    let mut stranger_ca = make_issuing(
        &stranger_root,
        Gen::Oces3,
        now,
        "Stranger Issuing CA (TEST ONLY)",
        "stranger-ca",
    )?;

    for (file, cert) in [
        ("trust/oces2-root.pem", &oces2_root.cert),
        ("trust/oces2-ca.pem", &oces2_ca.cert),
        ("trust/oces3-root.pem", &oces3_root.cert),
        ("trust/oces3-ca.pem", &oces3_ca.cert),
        ("certs/stranger-root.pem", &stranger_root.cert),
    ] {
        write(&mut written, &out.join(file), &cert.to_pem()?, 0o644)?;
    }

    for leaf in LEAVES {
        let ca = match (leaf.file, leaf.gen) {
            ("stranger", _) => &mut stranger_ca,
            (_, Gen::Oces2) => &mut oces2_ca,
            (_, Gen::Oces3) => &mut oces3_ca,
        };
        let (cert, key) = issue_leaf(leaf, ca, now, urls)?;
        if leaf.revoked {
            let serial = cert.serial_number().to_bn()?;
            ca.revoked.push((serial, now - DAY));
        }
        let mut chain_pem = cert.to_pem()?;
        chain_pem.extend_from_slice(&ca.cert.to_pem()?);
        write(
            &mut written,
            &out.join(format!("certs/{}.pem", leaf.file)),
            &chain_pem,
            0o644,
        )?;
        if leaf.with_key {
            let key_pem = key.private_key_to_pem_pkcs8()?;
            write(
                &mut written,
                &out.join(format!("keys/{}.key.pem", leaf.file)),
                &key_pem,
                0o600,
            )?;
            write(
                &mut written,
                &out.join(format!("keys/{}.crt.pem", leaf.file)),
                &chain_pem,
                0o644,
            )?;
            let mut ca_stack = Stack::new()?;
            ca_stack.push(ca.cert.clone())?;
            let p12 = Pkcs12::builder()
                .name(leaf.cn)
                .pkey(&key)
                .cert(&cert)
                .ca(ca_stack)
                .key_algorithm(Nid::PBE_WITHSHA1AND3_KEY_TRIPLEDES_CBC)
                .cert_algorithm(Nid::PBE_WITHSHA1AND40BITRC2_CBC)
                .mac_md(MessageDigest::sha1())
                .build2(PASSWORD)?;
            write(
                &mut written,
                &out.join(format!("keys/{}.p12", leaf.file)),
                &p12.to_der()?,
                0o600,
            )?;
            write(
                &mut written,
                &out.join(format!("keys/{}.pass", leaf.file)),
                format!("{PASSWORD}\n").as_bytes(),
                0o600,
            )?;
        }
    }

    for ca in [&oces2_ca, &oces3_ca, &stranger_ca] {
        let crl = ossl::make_crl(
            &ca.cert,
            &ca.key,
            ca.scheme,
            now - DAY,
            now + 7 * DAY,
            &ca.revoked,
        )?;
        write(
            &mut written,
            &out.join(format!("crl/{}.crl", ca.name)),
            &crl,
            0o644,
        )?;
        // The issuing CA's key signs OCSP responses in the demo responder.
        write(
            &mut written,
            &out.join(format!("crl/{}.key.pem", ca.name)),
            &ca.key.private_key_to_pem_pkcs8()?,
            0o600,
        )?;
        write(
            &mut written,
            &out.join(format!("crl/{}.pem", ca.name)),
            &ca.cert.to_pem()?,
            0o644,
        )?;
    }
    Ok(written)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn mkdir(dir: &Path) -> Result<(), DemoError> {
    fs::create_dir_all(dir).map_err(io(dir))
}

fn write(w: &mut Written, path: &Path, bytes: &[u8], mode: u32) -> Result<(), DemoError> {
    fs::write(path, bytes).map_err(io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))?;
    w.files.push(path.to_path_buf());
    Ok(())
}

fn rsa(bits: u32) -> Result<PKey<Private>, DemoError> {
    Ok(PKey::from_rsa(Rsa::generate(bits)?)?)
}

fn serial() -> Result<openssl::asn1::Asn1Integer, DemoError> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    Ok(bn.to_asn1_integer()?)
}

/// DER of a tag-length-value with a definite length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// certificatePolicies with the given policy OIDs (comma separated), built
/// as DER: OpenSSL's text form of this extension needs a config database.
fn policies(oids: &str) -> Result<X509Extension, DemoError> {
    let mut infos = Vec::new();
    for oid in oids.split(',') {
        let obj = openssl::asn1::Asn1Object::from_str(oid.trim())?;
        infos.extend(tlv(0x30, &tlv(0x06, obj.as_slice())));
    }
    let der = tlv(0x30, &infos);
    let ext_oid = openssl::asn1::Asn1Object::from_str("2.5.29.32")?;
    let contents = openssl::asn1::Asn1OctetString::new_from_bytes(&der)?;
    Ok(X509Extension::new_from_der(&ext_oid, false, &contents)?)
}

fn base(
    subject: &openssl::x509::X509NameRef,
    issuer: &openssl::x509::X509NameRef,
    key: &PKey<Private>,
    from: i64,
    to: i64,
) -> Result<X509Builder, DemoError> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = serial()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_pubkey(key)?;
    let (from, to) = (
        Asn1Time::from_unix(from as libc::time_t)?,
        Asn1Time::from_unix(to as libc::time_t)?,
    );
    b.set_not_before(&from)?;
    b.set_not_after(&to)?;
    Ok(b)
}

fn ca_name(gen: Gen, cn: &str) -> Result<openssl::x509::X509Name, DemoError> {
    let mut n = X509NameBuilder::new()?;
    n.append_entry_by_text("C", "DK")?;
    match gen {
        Gen::Oces2 => n.append_entry_by_text("O", "TRUST2408")?,
        Gen::Oces3 => {
            n.append_entry_by_text("O", "Den Danske Stat")?;
            n.append_entry_by_text("OU", "Demo - smime-gateway (TEST ONLY)")?;
        }
    }
    n.append_entry_by_text("CN", cn)?;
    Ok(n.build())
}

fn make_root(gen: Gen, now: i64, cn: &str) -> Result<Ca, DemoError> {
    let (key, scheme) = match gen {
        Gen::Oces2 => (rsa(2048)?, Signature::Pkcs1Sha256),
        Gen::Oces3 => (rsa(4096)?, Signature::PssSha512),
    };
    let name = ca_name(gen, cn)?;
    let mut b = base(&name, &name, &key, now - 3650 * DAY, now + 7300 * DAY)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    let cert = b.build();
    ossl::sign_certificate(&cert, &key, scheme)?;
    Ok(Ca {
        cert,
        key,
        scheme,
        name: "root",
        revoked: Vec::new(),
    })
}

fn make_issuing(
    root: &Ca,
    gen: Gen,
    now: i64,
    cn: &str,
    file: &'static str,
) -> Result<Ca, DemoError> {
    let (key, scheme) = match gen {
        Gen::Oces2 => (rsa(2048)?, Signature::Pkcs1Sha256),
        Gen::Oces3 => (rsa(3072)?, Signature::PssSha256),
    };
    let name = ca_name(gen, cn)?;
    let mut b = base(
        &name,
        root.cert.subject_name(),
        &key,
        now - 3000 * DAY,
        now + 5000 * DAY,
    )?;
    b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&root.cert), None))?;
    b.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(&root.cert), None))?;
    b.append_extension(aki)?;
    let cert = b.build();
    ossl::sign_certificate(&cert, &root.key, root.scheme)?;
    Ok(Ca {
        cert,
        key,
        scheme,
        name: file,
        revoked: Vec::new(),
    })
}

fn issue_leaf(
    leaf: &Leaf,
    ca: &Ca,
    now: i64,
    urls: &Urls,
) -> Result<(X509, PKey<Private>), DemoError> {
    let key = match leaf.gen {
        Gen::Oces2 => rsa(2048)?,
        Gen::Oces3 => rsa(3072)?,
    };
    let mut n = X509NameBuilder::new()?;
    match leaf.gen {
        Gen::Oces2 => {
            n.append_entry_by_text("C", "DK")?;
            n.append_entry_by_text("O", &format!("{} // CVR:{}", leaf.org, leaf.cvr))?;
            n.append_entry_by_text("CN", leaf.cn)?;
        }
        Gen::Oces3 => {
            n.append_entry_by_text("CN", leaf.cn)?;
            let uuid = uuid::Uuid::new_v4();
            n.append_entry_by_text("serialNumber", &format!("UI:DK-{}:G:{uuid}", leaf.holder))?;
            n.append_entry_by_text("O", leaf.org)?;
            n.append_entry_by_text("organizationIdentifier", &format!("NTRDK-{}", leaf.cvr))?;
            n.append_entry_by_text("C", "DK")?;
        }
    }
    let name = n.build();
    if leaf.gen == Gen::Oces2 {
        ossl::add_to_last_rdn(
            &name,
            "serialNumber",
            &format!("CVR:{}-{}", leaf.cvr, leaf.holder),
        )?;
    }
    let mut b = base(
        &name,
        ca.cert.subject_name(),
        &key,
        now + leaf.from_days * DAY,
        now + leaf.to_days * DAY,
    )?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    let employee = leaf.holder.starts_with("RID:") || leaf.holder == "E";
    let mut ku = KeyUsage::new();
    ku.critical().digital_signature().key_encipherment();
    if employee {
        ku.non_repudiation();
    }
    if leaf.gen == Gen::Oces2 {
        ku.data_encipherment().key_agreement();
    }
    b.append_extension(ku.build()?)?;
    b.append_extension(
        SubjectAlternativeName::new()
            .email(leaf.email)
            .build(&b.x509v3_context(Some(&ca.cert), None))?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&ca.cert), None))?;
    b.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(&ca.cert), None))?;
    b.append_extension(aki)?;
    let policy = match (leaf.gen, leaf.holder.split(':').next()) {
        (Gen::Oces2, Some("RID")) => "1.3.6.1.4.1.31313.2.4.6.2.5",
        (Gen::Oces2, _) => "1.3.6.1.4.1.31313.2.4.6.3.4",
        (Gen::Oces3, _) => "0.4.0.2042.1.1,1.2.208.169.1.1.1.3.7",
    };
    b.append_extension(policies(policy)?)?;
    #[allow(deprecated)]
    let crl = X509Extension::new_nid(
        None,
        None,
        Nid::CRL_DISTRIBUTION_POINTS,
        &format!("URI:{}/{}.crl", urls.crl_base, ca.name),
    )?;
    b.append_extension(crl)?;
    #[allow(deprecated)]
    let aia = X509Extension::new_nid(
        None,
        None,
        Nid::INFO_ACCESS,
        &format!("OCSP;URI:{}", urls.ocsp),
    )?;
    b.append_extension(aia)?;
    let cert = b.build();
    let scheme = match leaf.gen {
        Gen::Oces2 => Signature::Pkcs1Sha256,
        Gen::Oces3 => Signature::PssSha256,
    };
    ossl::sign_certificate(&cert, &ca.key, scheme)?;
    Ok((cert, key))
}
