//! Unit tests of the configuration checks.

use crate::config::load::{from_toml, test_settings};
use crate::config::normal_fingerprint;

const BASE: &str = "[server]\nhostname = \"gw\"\nlisten = [\"127.0.0.1:2525\"]\n\
                    [spool]\ndir = \"/nonexistent\"\n\
                    [relay]\ninternal = \"127.0.0.1:25\"\nexternal = \"127.0.0.1:26\"\ntls = \"required\"\n";

#[test]
fn fingerprints_are_read_in_the_usual_spellings() {
    let hex = "3f".repeat(32);
    let colons = vec!["3F"; 32].join(":");
    assert_eq!(normal_fingerprint(&hex), Some(hex.clone()));
    assert_eq!(normal_fingerprint(&colons), Some(hex.clone()));
    assert_eq!(
        normal_fingerprint(&format!("sha256:{colons}")),
        Some(hex.clone())
    );
    assert_eq!(normal_fingerprint(&"3f".repeat(31)), None);
    assert_eq!(normal_fingerprint(&"zz".repeat(32)), None);
}

#[test]
fn hop_tables_are_checked() {
    let problems = |extra: &str| match from_toml(&format!("{BASE}{extra}")) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.key).collect(),
    };
    assert!(problems(&format!(
        "[relay.external_tls]\nfingerprint = \"{}\"\nname = \"mx.test\"\n",
        "ab".repeat(32)
    ))
    .is_empty());
    assert_eq!(
        problems("[relay.external_tls]\nfingerprint = \"abc\"\n"),
        vec!["relay.external_tls.fingerprint"]
    );
    assert_eq!(
        problems("[relay.internal_tls]\nca = \"/nonexistent/ca.pem\"\n"),
        vec!["relay.internal_tls.ca"]
    );
    assert_eq!(
        problems("tls_ca = \"/nonexistent/ca.pem\"\n"),
        vec!["relay.tls_ca"]
    );
}

#[test]
fn a_hop_table_needs_required_tls() {
    // Under opportunistic TLS a pin was ignored: a path that strips
    // STARTTLS got the mail in plain text.
    let opportunistic = BASE.replace("tls = \"required\"", "tls = \"opportunistic\"");
    let problems = |extra: &str| match from_toml(&format!("{opportunistic}{extra}")) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.key).collect(),
    };
    assert!(problems("").is_empty());
    assert_eq!(
        problems(&format!(
            "[relay.external_tls]\nfingerprint = \"{}\"\n",
            "ab".repeat(32)
        )),
        vec!["relay.external_tls"]
    );
    assert_eq!(
        problems("[relay.internal_tls]\nname = \"mx.test\"\n"),
        vec!["relay.internal_tls"]
    );
}

#[test]
fn one_hop_has_one_tls_table() {
    let same = BASE.replace("127.0.0.1:26", "127.0.0.1:25");
    let e = from_toml(&format!("{same}[relay.internal_tls]\nname = \"mx.test\"\n"));
    assert!(e.is_err_and(|e| e.problems[0].key == "relay.external_tls"));
    let ok = from_toml(&format!(
        "{same}[relay.internal_tls]\nname = \"mx.test\"\n[relay.external_tls]\nname = \"mx.test\"\n"
    ));
    assert!(ok.is_ok());
    let s = ok.unwrap();
    assert_eq!(
        s.relay.hop_tls("127.0.0.1:25").name.as_deref(),
        Some("mx.test")
    );
}

fn problems(extra: &str) -> Vec<String> {
    let text = format!(
        "[server]\nhostname = \"gw.example-law.dk\"\nlisten = [\"127.0.0.1:2525\"]\n\
         [relay]\ninternal = \"127.0.0.1:25\"\nexternal = \"127.0.0.1:26\"\n\
         [spool]\ndir = \"/nonexistent\"\n{extra}"
    );
    match from_toml(&text) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.key).collect(),
    }
}

#[test]
fn return_path_and_decrypt_for_are_checked() {
    let s = test_settings("");
    assert_eq!(
        s.return_path("0001"),
        "smimegw-bounce+0001@gw.example-law.dk"
    );
    assert_eq!(
        s.return_path_tag("SMIMEGW-BOUNCE+0001@gw.example-law.dk"),
        Some("0001")
    );
    assert!(problems("[smime]\nreturn_path = \"bounce+x\"\n")
        .contains(&"smime.return_path".to_string()));
    assert!(problems("[smime]\nreturn_path = \"gw-bounce\"\n").is_empty());
    let id = "[[identity]]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n";
    let p = problems(&format!(
        "{id}decrypt_for = [\"*@example-law.dk\", \"bob\", \"*x@y\"]\n"
    ));
    assert!(
        p.contains(&"identity[0].decrypt_for[1]".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(&"identity[0].decrypt_for[2]".to_string()),
        "{p:?}"
    );
    assert!(
        !p.contains(&"identity[0].decrypt_for[0]".to_string()),
        "{p:?}"
    );
}

#[test]
fn the_status_page_listens_on_loopback_unless_told_otherwise() {
    assert_eq!(test_settings("").status.listen, None);
    for written in ["9326", "\"9326\""] {
        let s = test_settings(&format!("[status]\nlisten = {written}\n"));
        assert_eq!(s.status.listen, Some("127.0.0.1:9326".parse().unwrap()));
    }
    let s = test_settings("[status]\nlisten = \"[::1]:9326\"\n");
    assert_eq!(s.status.listen, Some("[::1]:9326".parse().unwrap()));
    assert_eq!(s.status.refresh, std::time::Duration::from_secs(300));
    let problems = |extra: &str| match from_toml(&format!("{BASE}{extra}")) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.key).collect(),
    };
    assert!(problems("[status]\nlisten = \"127.0.0.1:9326\"\n").is_empty());
    assert_eq!(
        problems("[status]\nlisten = \"localhost\"\n"),
        vec!["status.listen"]
    );
    assert_eq!(
        problems("[status]\nrefresh = \"0s\"\n"),
        vec!["status.refresh"]
    );
}

#[test]
fn each_http_listener_has_an_address_of_its_own() {
    let s = test_settings("[metrics]\nhealth_listen = 9327\n");
    assert_eq!(
        s.metrics.health_listen,
        Some("127.0.0.1:9327".parse().unwrap())
    );
    assert!(problems(
        "[metrics]\nlisten = \"127.0.0.1:9325\"\nhealth_listen = \"127.0.0.1:9327\"\n\
         [status]\nlisten = \"127.0.0.1:9326\"\n"
    )
    .is_empty());
    assert_eq!(
        problems("[metrics]\nlisten = \"127.0.0.1:9325\"\nhealth_listen = 9325\n"),
        vec!["metrics.health_listen"]
    );
    assert_eq!(
        problems("[metrics]\nhealth_listen = 9326\n[status]\nlisten = 9326\n"),
        vec!["status.listen"]
    );
}

#[test]
fn token_files_must_hold_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let short = dir.path().join("short");
    std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
    std::fs::write(&short, "letmein\n").unwrap();
    let with = |section: &str, file: &std::path::Path| {
        problems(&format!(
            "[{section}]\nlisten = \"127.0.0.1:9\"\ntoken_file = \"{}\"\n",
            file.display()
        ))
    };
    assert!(with("metrics", &good).is_empty());
    assert!(with("status", &good).is_empty());
    assert_eq!(with("metrics", &short), vec!["metrics.token_file"]);
    assert_eq!(with("status", &short), vec!["status.token_file"]);
    assert_eq!(
        with("metrics", &dir.path().join("missing")),
        vec!["metrics.token_file"]
    );
}

#[test]
fn journal_database_and_keep_are_checked() {
    let s = test_settings("");
    assert!(s.journal.enabled && s.journal.database.is_none());
    assert_eq!(s.journal.keep, std::time::Duration::from_secs(400 * 86_400));
    let pg = test_settings(
        "[journal]\ndatabase = \"postgres://gw@127.0.0.1:5432/journal\"\nkeep = \"90d\"\n",
    );
    assert!(pg.journal.is_postgres());
    assert!(
        problems("[journal]\ndatabase = \"mysql://x\"\n").contains(&"journal.database".to_string())
    );
    assert!(problems("[journal]\ndatabase = \" \"\n").contains(&"journal.database".to_string()));
    assert!(problems("[journal]\nkeep = \"0s\"\n").contains(&"journal.keep".to_string()));
    assert!(problems("[journal]\ndatabase = \"/var/lib/gw/journal.db\"\n").is_empty());
    // A CA file only for PostgreSQL, and one that exists.
    let ca = tempfile::NamedTempFile::new().unwrap();
    let ca = ca.path().display();
    assert!(problems(&format!("[journal]\ntls_ca = \"{ca}\"\n"))
        .contains(&"journal.tls_ca".to_string()));
    let pg = "[journal]\ndatabase = \"postgres://gw@db/j?sslmode=require\"\n";
    assert!(problems(&format!("{pg}tls_ca = \"/nonexistent.pem\"\n"))
        .contains(&"journal.tls_ca".to_string()));
    assert!(problems(&format!("{pg}tls_ca = \"{ca}\"\n")).is_empty());
}
