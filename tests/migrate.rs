//! Archive migration through the real binary (`smime-gateway migrate`) on
//! a Maildir, an mbox file and a folder of `.eml` files holding mail
//! encrypted by `openssl cms` to the demo OCES2 organisation key (and the
//! real VOCES test certificate when `../shared/fixtures/oces/` is
//! present), OCES3 mail, plain mail, mail for a key nobody holds and a
//! file that is not a message: the dry run reports exactly and changes
//! nothing; the run re-keys exactly the OCES2 mail (flags and dates kept,
//! `openssl cms` opens each new copy with the OCES3 key to the original
//! plaintext) and moves the originals; `kill -9` between a new copy and
//! its original's move, then a re-run, leaves every message exactly once
//! plus its original; bad input gives a clear error.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use common::pki::{self, P7M};
use common::{wait_until, BIN};

const ADDRESS: &str = "sikkermail@example-law.dk";

fn fixtures() -> Option<PathBuf> {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/oces");
    if f.is_dir() {
        Some(f)
    } else {
        eprintln!("NOTE: ../shared/fixtures/oces is absent: the demo PKI only");
        None
    }
}

/// The gateway's configuration: the demo organisation's OCES2 and OCES3
/// keys (and the real VOCES test key when present).
fn config(dir: &Path, extra: &str) -> PathBuf {
    let real = fixtures()
        .map(|f| {
            format!(
                "[[identity]]\npkcs12 = \"{}\"\npassword_env = \"OCES_FIXTURE_PASSWORD\"\nmailboxes = []\n",
                f.join("oces2/VOCES_gyldig.p12").display()
            )
        })
        .unwrap_or_default();
    let text = format!(
        "[server]\nhostname = \"gw.test\"\nlisten = [\"127.0.0.1:{port}\"]\n\
         internal_domains = [\"example-law.dk\"]\n\n[spool]\ndir = \"{spool}\"\n\n\
         [relay]\ninternal = \"127.0.0.1:9\"\nexternal = \"127.0.0.1:9\"\ntls = \"none\"\n\n\
         {o2}{o3}{real}{extra}\n[trust]\nanchors = [\"{anchors}\"]\nrevocation = \"off\"\n\n\
         [[mailbox]]\naddress = \"*@example-law.dk\"\ndeliver = \"plain\"\n",
        port = common::free_port(),
        spool = dir.join("spool").display(),
        o2 = pki::identity("org-oces2", &[]),
        o3 = pki::identity("org-oces3", &[]),
        anchors = pki::demo().join("trust").display(),
    );
    let path = dir.join("gateway.toml");
    fs::write(&path, text).unwrap();
    path
}

/// One stored message of the corpus.
struct Msg {
    name: &'static str,
    folder: &'static str,
    /// As stored (LF line ends).
    bytes: Vec<u8>,
    /// Maildir info letters.
    flags: &'static str,
    date: i64,
    /// The outcome the report must give.
    outcome: &'static str,
    /// The entity a re-keyed copy must decrypt to.
    plaintext: Option<Vec<u8>>,
}

fn lf(b: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(b)
        .replace("\r\n", "\n")
        .into_bytes()
}

fn crlf(b: &[u8]) -> Vec<u8> {
    pki::crlf(b)
}

fn sha256_hex(b: &[u8]) -> String {
    openssl::sha::sha256(&crlf(b))
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn encrypted(id: &str, cert: &Path, inner: &[u8]) -> Vec<u8> {
    let cms = pki::openssl(
        &[
            "cms",
            "-encrypt",
            "-binary",
            "-aes-256-cbc",
            "-outform",
            "DER",
            cert.to_str().unwrap(),
        ],
        inner,
    );
    lf(&pki::enveloped_message(id, ADDRESS, &cms, P7M))
}

fn real_voces_cert(dir: &Path) -> Option<PathBuf> {
    let f = fixtures()?;
    let pem = pki::run(
        "openssl",
        &[
            "pkcs12",
            "-legacy",
            "-nokeys",
            "-clcerts",
            "-passin",
            "pass:Test1234",
            "-in",
            f.join("oces2/VOCES_gyldig.p12").to_str().unwrap(),
        ],
        b"",
    );
    let p = dir.join("voces.pem");
    fs::write(&p, pem).unwrap();
    Some(p)
}

/// The corpus: two OCES2 messages in INBOX (one signed inside), one in
/// folder Sager, OCES3 mail, plain mail, mail for a stranger's key, a
/// file that is not a message, and real VOCES mail when present.
fn corpus(dir: &Path) -> Vec<Msg> {
    let secret = |n: &str| pki::inner(&format!("Fortroligt: sag {n} (æøå)"));
    let o2 = pki::cert("org-oces2");
    let mut out = Vec::new();
    let p = secret("1");
    out.push(Msg {
        name: "o2-inbox",
        folder: "INBOX",
        bytes: encrypted("o2-inbox", &o2, &p),
        flags: "S",
        date: 1_600_000_000,
        outcome: "migrate",
        plaintext: Some(p),
    });
    let signed = pki::cms_sign(&secret("2"), "alice-oces3");
    out.push(Msg {
        name: "o2-signed",
        folder: "INBOX",
        bytes: encrypted("o2-signed", &o2, &signed),
        flags: "",
        date: 1_650_000_000,
        outcome: "migrate",
        plaintext: Some(signed),
    });
    let p = secret("3");
    out.push(Msg {
        name: "o2-sager",
        folder: "Sager",
        bytes: encrypted("o2-sager", &o2, &p),
        flags: "FRS",
        date: 1_610_000_000,
        outcome: "migrate",
        plaintext: Some(p),
    });
    out.push(Msg {
        name: "o3",
        folder: "INBOX",
        bytes: encrypted("o3", &pki::cert("org-oces3"), &secret("4")),
        flags: "S",
        date: 1_700_000_000,
        outcome: "current",
        plaintext: None,
    });
    out.push(Msg {
        name: "plain",
        folder: "INBOX",
        bytes: b"From: a@example.org\nTo: sikkermail@example-law.dk\nSubject: plain\nMessage-ID: <plain@test>\n\nHej\n".to_vec(),
        flags: "S",
        date: 1_600_000_500,
        outcome: "plain",
        plaintext: None,
    });
    out.push(Msg {
        name: "stranger",
        folder: "Sager",
        bytes: encrypted("stranger", &pki::cert("stranger"), &secret("5")),
        flags: "",
        date: 1_600_000_600,
        outcome: "unopenable",
        plaintext: None,
    });
    out.push(Msg {
        name: "garbage",
        folder: "INBOX",
        bytes: b"\x01\x02 this is no mail message at all\n\x00\xff\n".to_vec(),
        flags: "",
        date: 1_600_000_700,
        outcome: "not-a-message",
        plaintext: None,
    });
    if let Some(cert) = real_voces_cert(dir) {
        let p = secret("6");
        out.push(Msg {
            name: "voces",
            folder: "Sager",
            bytes: encrypted("voces", &cert, &p),
            flags: "S",
            date: 1_620_000_000,
            outcome: "migrate",
            plaintext: Some(p),
        });
    }
    out
}

fn set_mtime(path: &Path, date: i64) {
    let f = fs::File::options().write(true).open(path).unwrap();
    let t = UNIX_EPOCH + Duration::from_secs(date as u64);
    f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
}

fn mtime(path: &Path) -> i64 {
    fs::metadata(path)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn folder_dir(root: &Path, folder: &str) -> PathBuf {
    if folder == "INBOX" {
        root.to_path_buf()
    } else {
        root.join(format!(".{folder}"))
    }
}

fn make_maildir(root: &Path, msgs: &[Msg]) {
    for f in ["INBOX", "Sager"] {
        for s in ["cur", "new", "tmp"] {
            fs::create_dir_all(folder_dir(root, f).join(s)).unwrap();
        }
    }
    for m in msgs {
        let p = folder_dir(root, m.folder)
            .join("cur")
            .join(format!("{}.{}.host:2,{}", m.date, m.name, m.flags));
        fs::write(&p, &m.bytes).unwrap();
        set_mtime(&p, m.date);
    }
}

/// Every file under `root`: relative path → bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn migrate_cmd(config: &Path, source: &[&str], extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("migrate")
        .arg("--config")
        .arg(config)
        .args(source)
        .args(["--mailbox", ADDRESS])
        .args(extra)
        .env("OCES_FIXTURE_PASSWORD", "Test1234")
        .stdin(Stdio::null());
    c
}

fn migrate(config: &Path, source: &[&str], extra: &[&str]) -> Output {
    let out = migrate_cmd(config, source, extra).output().unwrap();
    shown(&format!("migrate {source:?} {extra:?}"), out)
}

/// `out` of a run, after printing it (seen when a test fails).
fn shown(what: &str, out: Output) -> Output {
    eprintln!(
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every line of a JSON report.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The mailboxes a JSON report's `mailbox` lines name, in order.
fn mailbox_heads(lines: &[serde_json::Value]) -> Vec<&str> {
    lines
        .iter()
        .filter(|v| v["type"] == "mailbox")
        .map(|v| v["mailbox"].as_str().unwrap())
        .collect()
}

/// The `folder` lines of a JSON report, by folder.
fn folder_lines(out: &Output) -> BTreeMap<String, serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "folder")
        .map(|v| (v["folder"].as_str().unwrap().to_string(), v))
        .collect()
}

fn expected_outcomes(msgs: &[Msg], folder: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for x in msgs.iter().filter(|x| x.folder == folder) {
        *m.entry(x.outcome.to_string()).or_default() += 1;
    }
    m
}

fn outcomes(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v["outcomes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

/// `openssl cms -decrypt` with the demo OCES3 organisation key (the
/// entity's MIME-Version field aside: a message has it in its header).
fn open_with_oces3(copy: &[u8]) -> Vec<u8> {
    without_mime_version(&pki::cms_decrypt_smime(&crlf(copy), "org-oces3"))
}

fn without_mime_version(b: &[u8]) -> Vec<u8> {
    crlf(b)
        .split_inclusive(|c| *c == b'\n')
        .filter(|l| !l.to_ascii_lowercase().starts_with(b"mime-version:"))
        .flatten()
        .copied()
        .collect()
}

/// The bytes of every message in INBOX and Sager of a Maildir, sorted.
fn both_folders(root: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ["INBOX", "Sager"]
        .iter()
        .flat_map(|f| messages_in(&folder_dir(root, f)))
        .map(|p| fs::read(p).unwrap())
        .collect();
    v.sort();
    v
}

/// The message files of a Maildir folder (cur/ and new/).
fn messages_in(folder: &Path) -> Vec<PathBuf> {
    ["cur", "new"]
        .iter()
        .flat_map(|s| fs::read_dir(folder.join(s)).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect()
}

/// The final state after a complete run with `--originals move`: every
/// OCES2 message exactly once as a checked copy (flags and date kept)
/// and its original once in OCES2-originals; the rest untouched.
fn assert_migrated_maildir(root: &Path, msgs: &[Msg]) {
    for m in msgs {
        let marker = format!("original-sha256={}", sha256_hex(&m.bytes));
        let files = messages_in(&folder_dir(root, m.folder));
        let original = files
            .iter()
            .find(|p| fs::read(p).unwrap() == m.bytes)
            .cloned();
        let copies: Vec<&PathBuf> = files
            .iter()
            .filter(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).contains(&marker))
            .collect();
        match &m.plaintext {
            None => {
                assert!(original.is_some(), "{}: left in place", m.name);
                assert!(copies.is_empty(), "{}: no copy", m.name);
            }
            Some(plain) => {
                assert!(original.is_none(), "{}: original moved away", m.name);
                assert_eq!(copies.len(), 1, "{}: exactly one copy", m.name);
                let copy = copies[0];
                let name = copy.file_name().unwrap().to_string_lossy().to_string();
                let flags = name.rsplit_once(":2,").map(|(_, f)| f).unwrap_or("");
                assert_eq!(flags, m.flags, "{}: flags {name}", m.name);
                assert_eq!(mtime(copy), m.date, "{}: date", m.name);
                let bytes = fs::read(copy).unwrap();
                let text = String::from_utf8_lossy(&bytes).to_string();
                let trace = text.split("\n\n").next().unwrap().replace("\n ", " ");
                assert!(trace.contains("generation=OCES2"), "{trace}");
                assert!(trace.contains("reencrypted-to=\"Example Law"), "{trace}");
                assert!(trace.contains("migrated-at="), "{trace}");
                assert!(text.contains(&format!("Message-ID: <{}@test>", m.name)));
                // The copy does not open with the old key; it opens with
                // the OCES3 key to the original plaintext.
                assert!(
                    pki::cms_decrypt_fails(&crlf(&bytes), "org-oces2"),
                    "{}",
                    m.name
                );
                assert_eq!(
                    open_with_oces3(&bytes),
                    without_mime_version(plain),
                    "{}: plaintext",
                    m.name
                );
                // The original is in the originals folder, unchanged, once.
                let moved = messages_in(&root.join(".OCES2-originals"))
                    .iter()
                    .filter(|p| fs::read(p).unwrap() == m.bytes)
                    .count();
                assert_eq!(moved, 1, "{}: original kept once", m.name);
            }
        }
    }
    let signed = msgs.iter().find(|m| m.name == "o2-signed").unwrap();
    let marker = format!("original-sha256={}", sha256_hex(&signed.bytes));
    let copy = messages_in(root)
        .iter()
        .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).replace("\n ", " "))
        .find(|t| t.contains(&marker))
        .unwrap();
    // Verified as of the message's arrival, not now.
    assert!(copy.contains("checked-at=2022-04-15T05:20:00Z"), "{copy}");
}

#[test]
fn maildir_dry_run_migration_kill_and_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let root = dir.path().join("Maildir");
    let msgs = corpus(dir.path());
    make_maildir(&root, &msgs);
    let src = ["--maildir", root.to_str().unwrap()];
    let before = tree(&root);

    // The dry run reports exactly and changes nothing.
    let out = migrate(&cfg, &src, &["--dry-run", "--format", "json"]);
    assert!(out.status.success());
    let folders = folder_lines(&out);
    assert_eq!(folders.keys().collect::<Vec<_>>(), ["INBOX", "Sager"]);
    for f in ["INBOX", "Sager"] {
        assert_eq!(outcomes(&folders[f]), expected_outcomes(&msgs, f), "{f}");
        let n = msgs.iter().filter(|m| m.folder == f).count() as u64;
        assert_eq!(folders[f]["messages"], n);
    }
    assert!(folders["Sager"]["unopenable"]
        .as_object()
        .unwrap()
        .keys()
        .any(|r| r.contains("no key")));
    assert!(folders["INBOX"]["encrypted_per_key"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.contains("(OCES2, expires")));
    assert_eq!(tree(&root), before, "the dry run changed nothing");
    let table = migrate(&cfg, &src, &["--dry-run"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("DRY RUN") && text.contains("re-encrypted to Example Law"),
        "{text}"
    );

    // A run killed between a new copy and its original's move.
    let mut child = migrate_cmd(&cfg, &src, &["--jobs", "1"])
        .env("SMIMEGW_MIGRATE_TEST_PAUSE_MS", "20000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A copy in place (renamed into cur/, not still in tmp/).
    let copies = || {
        tree(&root)
            .iter()
            .filter(|(p, b)| {
                !p.contains("tmp/") && String::from_utf8_lossy(b).contains("original-sha256=")
            })
            .count()
    };
    // The first batch is INBOX's copies, all written before the pause.
    let first_batch = msgs
        .iter()
        .filter(|m| m.folder == "INBOX" && m.plaintext.is_some())
        .count();
    assert!(first_batch >= 2, "a batch of more than one copy");
    let seen = wait_until(Duration::from_secs(120), || copies() >= first_batch);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(seen, "the first batch was not written before the kill");
    let written = copies();
    assert_eq!(written, first_batch, "the kill came in the pause");
    // In the gap: the copy is there and so is its original.
    let now = tree(&root);
    let still = msgs
        .iter()
        .filter(|m| m.plaintext.is_some())
        .filter(|m| now.values().any(|b| b == &m.bytes))
        .count();
    assert_eq!(still, msgs.iter().filter(|m| m.plaintext.is_some()).count());

    // The re-run finishes the job without a second copy.
    let out = migrate(&cfg, &src, &["--format", "json"]);
    assert!(out.status.success());
    let folders = folder_lines(&out);
    let found: u64 = folders
        .values()
        .map(|f| f["copies_found"].as_u64().unwrap())
        .sum();
    assert_eq!(
        found, written as u64,
        "the killed run's copies were found and checked"
    );
    assert_migrated_maildir(&root, &msgs);

    // A third run changes nothing.
    let after = tree(&root);
    let out = migrate(&cfg, &src, &["--format", "json"]);
    assert!(out.status.success());
    let folders = folder_lines(&out);
    for f in folders.values() {
        assert_eq!(f["migrated"], 0);
        assert_eq!(f["to_migrate"], 0);
    }
    assert_eq!(tree(&root), after);
}

#[test]
fn eml_folder_with_originals_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let root = dir.path().join("eml");
    fs::create_dir_all(&root).unwrap();
    let msgs = corpus(dir.path());
    for m in &msgs {
        let p = root.join(format!("{}.eml", m.name));
        fs::write(&p, crlf(&m.bytes)).unwrap();
        set_mtime(&p, m.date);
    }
    let src = ["--eml", root.to_str().unwrap()];
    let out = migrate(&cfg, &src, &["--originals", "keep", "--format", "json"]);
    assert!(out.status.success());
    let f = &folder_lines(&out)["."];
    let want = msgs.iter().filter(|m| m.plaintext.is_some()).count() as u64;
    assert_eq!(f["migrated"], want);
    // Twice: nothing new.
    let before = tree(&root);
    let out = migrate(&cfg, &src, &["--originals", "keep", "--format", "json"]);
    assert!(out.status.success());
    let f = &folder_lines(&out)["."];
    assert_eq!(
        (f["migrated"].as_u64(), f["copies_found"].as_u64()),
        (Some(0), Some(want))
    );
    assert_eq!(tree(&root), before);
    for m in &msgs {
        // Every original is kept, unchanged.
        assert_eq!(
            fs::read(root.join(format!("{}.eml", m.name))).unwrap(),
            crlf(&m.bytes)
        );
        let marker = format!("original-sha256={}", sha256_hex(&m.bytes));
        let copies: Vec<Vec<u8>> = before
            .values()
            .filter(|b| String::from_utf8_lossy(b).contains(&marker))
            .cloned()
            .collect();
        match &m.plaintext {
            Some(p) => {
                assert_eq!(copies.len(), 1, "{}", m.name);
                assert_eq!(
                    open_with_oces3(&copies[0]),
                    without_mime_version(p),
                    "{}",
                    m.name
                );
            }
            None => assert!(copies.is_empty(), "{}", m.name),
        }
    }
    assert_eq!(before.len(), msgs.len() + want as usize);
}

#[test]
fn bad_input_gives_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Maildir");
    let msgs = corpus(dir.path());
    make_maildir(&root, &msgs);
    let before = tree(&root);
    let src = ["--maildir", root.to_str().unwrap()];
    // Control: the good configuration works on this Maildir.
    let good = config(dir.path(), "");
    assert!(migrate(&good, &src, &["--dry-run"]).status.success());
    // A folder that does not exist.
    let out = migrate(&good, &src, &["--folder", "Nowhere"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("folder \"Nowhere\" does not exist"));
    // A key file that does not open (wrong password).
    let bad_dir = dir.path().join("bad");
    fs::create_dir_all(&bad_dir).unwrap();
    let pass = bad_dir.join("wrong.pass");
    fs::write(&pass, "not the password\n").unwrap();
    let bad_id = format!(
        "[[identity]]\npkcs12 = \"{}\"\npassword_file = \"{}\"\nmailboxes = []\n",
        pki::demo().join("keys/alice-oces2.p12").display(),
        pass.display()
    );
    let bad = config(&bad_dir, &bad_id);
    let out = migrate(&bad, &src, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alice-oces2.p12"), "{err}");
    // Whose mailbox, when the source does not say (and the configuration,
    // which loads, names no mailbox for it).
    let out = Command::new(BIN)
        .args(["migrate", "--config", good.to_str().unwrap()])
        .args(src)
        .env("OCES_FIXTURE_PASSWORD", "Test1234")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mailbox"));
    assert_eq!(tree(&root), before, "nothing changed");
}

/// An mbox entry for `m` (mboxrd quoting, the date in the From line).
fn mbox_entry(m: &Msg) -> Vec<u8> {
    let when = chrono::DateTime::from_timestamp(m.date, 0)
        .unwrap()
        .format("%a %b %e %H:%M:%S %Y");
    let mut out = format!("From sender@example.org {when}\n").into_bytes();
    for line in m.bytes.split_inclusive(|b| *b == b'\n') {
        let q = line.iter().take_while(|b| **b == b'>').count();
        if line[q..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\n");
    out
}

/// The messages of an mbox file as a reader sees them (From line, mbox
/// status fields and quoting taken off).
fn mbox_messages(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap_or_default();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut prev_blank = true;
    let mut in_head = false;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if prev_blank && line.starts_with(b"From ") {
            if let Some(last) = out.last_mut() {
                last.pop(); // the blank line before the separator
            }
            out.push(Vec::new());
            in_head = true;
            prev_blank = false;
            continue;
        }
        prev_blank = line == b"\n";
        let Some(cur) = out.last_mut() else { continue };
        if in_head && line == b"\n" {
            in_head = false;
        }
        if in_head && (line.starts_with(b"Status:") || line.starts_with(b"X-Status:")) {
            continue;
        }
        let q = line.iter().take_while(|b| **b == b'>').count();
        if q > 0 && line[q..].starts_with(b"From ") {
            cur.extend_from_slice(&line[1..]);
        } else {
            cur.extend_from_slice(line);
        }
    }
    if let Some(last) = out.last_mut() {
        if last.ends_with(b"\n\n") {
            last.pop();
        }
    }
    out
}

/// A mailbox's owner plants symbolic links under the names migration
/// writes (the `.eml` copy's temporary file, named by the original's
/// SHA-256; the mbox rewrite's temporary file; the originals' mbox; the
/// originals' Maildir folder), each pointing at a file or folder of the
/// migrating user's: none of them is written through. The `.eml` copy is
/// still made (the planted name is removed, not followed); the mbox run
/// refuses the linked originals' file and keeps every original. The links existing before each run are the
/// control that the names were guessed right (each is gone after the run
/// that removed it).
#[test]
fn planted_links_are_never_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let msgs = messages_only(corpus(dir.path()));
    let victim = dir.path().join("victim");
    fs::write(&victim, b"the migrating user's own file\n").unwrap();
    let victim_bytes = fs::read(&victim).unwrap();
    let is_link = |p: &Path| {
        fs::symlink_metadata(p)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
    };

    // .eml: a link under each copy's temporary name.
    let root = dir.path().join("eml");
    fs::create_dir_all(&root).unwrap();
    for m in &msgs {
        fs::write(root.join(format!("{}.eml", m.name)), crlf(&m.bytes)).unwrap();
    }
    let migrating: Vec<&Msg> = msgs.iter().filter(|m| m.plaintext.is_some()).collect();
    let mut links = Vec::new();
    for m in &migrating {
        let tmp = root.join(format!(".rekeyed-{}.eml.tmp", sha256_hex(&crlf(&m.bytes))));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        links.push(tmp);
    }
    assert!(links.iter().all(|l| is_link(l)));
    let src = ["--eml", root.to_str().unwrap()];
    let out = migrate(&cfg, &src, &["--originals", "keep", "--format", "json"]);
    assert_eq!(
        fs::read(&victim).unwrap(),
        victim_bytes,
        "written through a link"
    );
    assert!(out.status.success());
    assert!(
        links.iter().all(|l| !l.exists() && !is_link(l)),
        "no link left"
    );
    let f = &folder_lines(&out)["."];
    assert_eq!(f["migrated"].as_u64(), Some(migrating.len() as u64));

    // mbox, originals removed: a link under the rewrite's temporary name.
    let victim_said = |out: &Output| {
        assert_eq!(
            fs::read(&victim).unwrap(),
            victim_bytes,
            "written through a link: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let file: Vec<u8> = msgs.iter().flat_map(mbox_entry).collect();
    let path = dir.path().join("inbox");
    fs::write(&path, &file).unwrap();
    let rewrite_tmp = dir.path().join("inbox.migrate-tmp");
    std::os::unix::fs::symlink(&victim, &rewrite_tmp).unwrap();
    assert!(is_link(&rewrite_tmp));
    let src = ["--mbox", path.to_str().unwrap()];
    let out = migrate(&cfg, &src, &["--originals", "delete", "--format", "json"]);
    victim_said(&out);
    assert!(out.status.success());
    assert!(
        !is_link(&rewrite_tmp) && !rewrite_tmp.exists(),
        "no link left"
    );
    let now = mbox_messages(&path);
    for m in &migrating {
        assert!(!now.contains(&m.bytes), "{}: original removed", m.name);
    }

    // mbox, originals moved: a link as the originals' file is refused.
    let path = dir.path().join("inbox2");
    fs::write(&path, &file).unwrap();
    let originals = dir.path().join("OCES2-originals");
    std::os::unix::fs::symlink(&victim, &originals).unwrap();
    assert!(is_link(&originals));
    let src = ["--mbox", path.to_str().unwrap()];
    let out = migrate(&cfg, &src, &["--format", "json"]);
    victim_said(&out);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("a symbolic link: refused")
            || String::from_utf8_lossy(&out.stderr).contains("a symbolic link: refused"),
        "the run says why"
    );
    let now = mbox_messages(&path);
    for m in &msgs {
        assert!(now.contains(&m.bytes), "{}: original kept", m.name);
    }

    // Maildir: the originals' folder is a link to a Maildir elsewhere.
    let root = dir.path().join("Maildir");
    make_maildir(&root, &msgs);
    let elsewhere = dir.path().join("elsewhere");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(elsewhere.join(sub)).unwrap();
    }
    let folder = root.join(".OCES2-originals");
    std::os::unix::fs::symlink(&elsewhere, &folder).unwrap();
    assert!(is_link(&folder));
    let out = migrate(&cfg, &["--maildir", root.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("a symbolic link: refused"),
        "the run says why"
    );
    assert!(
        tree(&elsewhere).is_empty(),
        "nothing written through the link"
    );
    assert_eq!(both_folders(&root).len(), msgs.len() + migrating.len());
}

/// `migrate` with every file it writes limited to `limit` octets
/// (RLIMIT_FSIZE, SIGXFSZ ignored): a write past the limit fails with
/// EFBIG part way, as on a disk that fills up during the write.
fn migrate_limited(config: &Path, source: &[&str], extra: &[&str], limit: u64) -> Output {
    use std::os::unix::process::CommandExt;
    let mut c = migrate_cmd(config, source, extra);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    shown(
        &format!("migrate (files limited to {limit} octets) {source:?} {extra:?}"),
        c.output().unwrap(),
    )
}

/// A write of new copies that fails part way (a file size limit standing
/// in for a full disk): the mbox is cut back to exactly what it was, with
/// every original in place; the `.eml` folder is left exactly as it was
/// (no half copy, no temporary file); the run fails and says why. A run
/// without the limit then migrates everything, finding no copy from the
/// failed run. The error text is the control that the limit did make the
/// writes fail.
#[test]
fn a_write_that_fails_part_way_leaves_no_half_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let msgs = messages_only(corpus(dir.path()));
    let want = msgs.iter().filter(|m| m.plaintext.is_some()).count() as u64;
    let efbig = std::io::Error::from_raw_os_error(libc::EFBIG).to_string();
    let efbig = efbig.split(" (os error").next().unwrap().to_string();
    let said = |out: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // mbox: the batch's one write runs past the limit.
    let path = dir.path().join("inbox");
    let file: Vec<u8> = msgs.iter().flat_map(mbox_entry).collect();
    fs::write(&path, &file).unwrap();
    let src = ["--mbox", path.to_str().unwrap()];
    let out = migrate_limited(&cfg, &src, &["--format", "json"], file.len() as u64 + 1000);
    assert!(!out.status.success());
    assert!(said(&out).contains(&efbig), "{}", said(&out));
    assert!(fs::read(&path).unwrap() == file, "cut back to what it was");
    assert!(mbox_messages(&dir.path().join("OCES2-originals")).is_empty());
    let out = migrate(&cfg, &src, &["--format", "json"]);
    assert!(out.status.success());
    let f = &folder_lines(&out)["inbox"];
    assert_eq!(
        (f["migrated"].as_u64(), f["copies_found"].as_u64()),
        (Some(want), Some(0))
    );

    // .eml: each new file runs past the limit.
    let root = dir.path().join("eml");
    fs::create_dir_all(&root).unwrap();
    for m in &msgs {
        fs::write(root.join(format!("{}.eml", m.name)), crlf(&m.bytes)).unwrap();
    }
    let before = tree(&root);
    let src = ["--eml", root.to_str().unwrap()];
    let keep = ["--originals", "keep", "--format", "json"];
    let out = migrate_limited(&cfg, &src, &keep, 1000);
    assert!(!out.status.success());
    assert!(said(&out).contains(&efbig), "{}", said(&out));
    let after = tree(&root);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "no file added or taken"
    );
    assert!(after == before, "every file as it was");
    let out = migrate(&cfg, &src, &keep);
    assert!(out.status.success());
    let f = &folder_lines(&out)["."];
    assert_eq!(
        (f["migrated"].as_u64(), f["copies_found"].as_u64()),
        (Some(want), Some(0))
    );
    assert_eq!(tree(&root).len(), before.len() + want as usize);
}

#[test]
fn mbox_locked_migrated_killed_and_finished() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let mut msgs = messages_only(corpus(dir.path()));
    // A body line that looks like a separator survives.
    msgs.push(Msg {
        name: "from-line",
        folder: "INBOX",
        bytes: b"From: a@example.org\nSubject: quoting\nMessage-ID: <from-line@test>\n\nFrom the court:\n>From the clerk\n".to_vec(),
        flags: "",
        date: 1_600_000_800,
        outcome: "plain",
        plaintext: None,
    });
    let path = dir.path().join("inbox");
    let file: Vec<u8> = msgs.iter().flat_map(mbox_entry).collect();
    fs::write(&path, &file).unwrap();
    assert_eq!(mbox_messages(&path).len(), msgs.len());
    let src = ["--mbox", path.to_str().unwrap()];

    // Dry run: exact counts, nothing changed.
    let out = migrate(&cfg, &src, &["--dry-run", "--format", "json"]);
    assert!(out.status.success());
    let folders = folder_lines(&out);
    let mut want = BTreeMap::new();
    for m in &msgs {
        *want.entry(m.outcome.to_string()).or_insert(0u64) += 1;
    }
    assert_eq!(outcomes(&folders["inbox"]), want);
    assert_eq!(fs::read(&path).unwrap(), file);

    // Locked by another program (fcntl, as Dovecot and Postfix lock):
    // refused, nothing changed.
    {
        let holder = fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        rustix::fs::fcntl_lock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let out = migrate(&cfg, &src, &[]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("locked by another program"), "{err}");
    }
    assert_eq!(fs::read(&path).unwrap(), file);

    // Killed between a copy and its original's removal.
    let mut child = migrate_cmd(&cfg, &src, &["--jobs", "1"])
        .env("SMIMEGW_MIGRATE_TEST_PAUSE_MS", "20000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The one folder's copies are one batch, written before the pause.
    let first_batch = msgs.iter().filter(|m| m.plaintext.is_some()).count();
    let copies = || {
        String::from_utf8_lossy(&fs::read(&path).unwrap())
            .matches("original-sha256=")
            .count()
    };
    let seen = wait_until(Duration::from_secs(120), || copies() >= first_batch);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen, "the batch was not appended before the kill");
    assert_eq!(copies(), first_batch, "the kill came in the pause");
    assert!(
        dir.path().join("inbox.lock").exists(),
        "the dead run's dot-lock is left"
    );
    // Every original is still there.
    let now = mbox_messages(&path);
    for m in &msgs {
        assert!(now.contains(&m.bytes), "{}", m.name);
    }

    // The re-run takes over the dead run's lock and finishes.
    let out = migrate(&cfg, &src, &["--format", "json"]);
    assert!(out.status.success());
    let f = &folder_lines(&out)["inbox"];
    assert_eq!(f["copies_found"], first_batch as u64);
    let inbox = mbox_messages(&path);
    let originals = mbox_messages(&dir.path().join("OCES2-originals"));
    for m in &msgs {
        let marker = format!("original-sha256={}", sha256_hex(&m.bytes));
        let copies: Vec<&Vec<u8>> = inbox
            .iter()
            .filter(|b| {
                String::from_utf8_lossy(b)
                    .replace("\n ", " ")
                    .contains(&marker)
            })
            .collect();
        match &m.plaintext {
            None => {
                assert!(inbox.contains(&m.bytes), "{}: left in place", m.name);
                assert!(
                    copies.is_empty() && !originals.contains(&m.bytes),
                    "{}",
                    m.name
                );
            }
            Some(p) => {
                assert!(!inbox.contains(&m.bytes), "{}: original moved", m.name);
                assert_eq!(copies.len(), 1, "{}: one copy", m.name);
                assert_eq!(
                    open_with_oces3(copies[0]),
                    without_mime_version(p),
                    "{}",
                    m.name
                );
                let n = originals.iter().filter(|o| **o == m.bytes).count();
                assert_eq!(n, 1, "{}: original kept once", m.name);
            }
        }
    }
    let migrated = msgs.iter().filter(|m| m.plaintext.is_some()).count();
    assert_eq!(inbox.len(), msgs.len());
    assert_eq!(originals.len(), migrated);
    // Flags and date of a copy: Status R (\Seen) and the From line date.
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("From MAILER-DAEMON Sun Sep 13 12:26:40 2020\n"),
        "{text}"
    );
    assert!(!dir.path().join("inbox.lock").exists());
}

#[test]
fn imap_against_a_private_dovecot() {
    if let Some(why) = common::dovecot::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let msgs = corpus(dir.path());
    let mut dv = common::dovecot::Dovecot::start(&[(ADDRESS, "hemmelig")]);
    let root = dv.maildir(ADDRESS);
    make_maildir(&root, &msgs);
    dv.own_mail();
    let pw = dir.path().join("imap.pass");
    fs::write(&pw, "hemmelig\n").unwrap();
    let bad_pw = dir.path().join("wrong.pass");
    fs::write(&bad_pw, "forkert\n").unwrap();
    let imap = |pw: &Path| plain_imap_args(dv.port, pw);
    let good = imap(&pw);
    let src: Vec<&str> = good.iter().map(String::as_str).collect();
    let before = both_folders(&root);
    assert_eq!(before.len(), msgs.len());

    // Dry run: exact, per folder; nothing changed.
    let out = migrate(&cfg, &src, &["--dry-run", "--format", "json"]);
    assert!(out.status.success(), "{}", dv.log());
    let folders = folder_lines(&out);
    assert_eq!(folders.keys().collect::<Vec<_>>(), ["INBOX", "Sager"]);
    for f in ["INBOX", "Sager"] {
        assert_eq!(outcomes(&folders[f]), expected_outcomes(&msgs, f), "{f}");
    }

    // Bad input: a wrong password, a folder that does not exist.
    let wrong = imap(&bad_pw);
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let out = migrate(&cfg, &wrong, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("login refused"));
    let out = migrate(&cfg, &src, &["--folder", "Nowhere"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("folder \"Nowhere\" does not exist"));
    assert_eq!(both_folders(&root), before, "nothing changed");

    // Killed between APPEND and MOVE.
    let mut child = migrate_cmd(&cfg, &src, &["--jobs", "1"])
        .env("SMIMEGW_MIGRATE_TEST_PAUSE_MS", "20000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // INBOX's copies are one MULTIAPPEND, all there before the pause.
    let first_batch = msgs
        .iter()
        .filter(|m| m.folder == "INBOX" && m.plaintext.is_some())
        .count();
    let copies = |root: &Path| {
        both_folders(root)
            .iter()
            .filter(|b| String::from_utf8_lossy(b).contains("original-sha256="))
            .count()
    };
    let seen = wait_until(Duration::from_secs(120), || copies(&root) >= first_batch);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen,
        "the batch was not appended before the kill: {}",
        dv.log()
    );
    assert_eq!(copies(&root), first_batch, "the kill came in the pause");

    // The re-run searches for the marker, finds the copy, moves the original.
    let out = migrate(&cfg, &src, &["--format", "json"]);
    assert!(out.status.success(), "{}", dv.log());
    let folders = folder_lines(&out);
    let found: u64 = folders
        .values()
        .map(|f| f["copies_found"].as_u64().unwrap())
        .sum();
    assert_eq!(found, first_batch as u64);
    let log = dv.log();
    dv.stop();
    assert!(!log.contains("Error"), "{log}");
    assert_migrated_maildir(&root, &msgs);
}

#[test]
fn imap_tls_is_verified_and_a_master_user_logs_in() {
    if let Some(why) = common::dovecot::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let msgs: Vec<Msg> = corpus(dir.path())
        .into_iter()
        .filter(|m| m.folder == "INBOX" && (m.name == "o2-inbox" || m.name == "plain"))
        .collect();
    let cert = common::sink::NextHopCert::issue(&["localhost"]);
    let other = common::sink::NextHopCert::issue(&["localhost"]);
    const ALICE: &str = "alice@example-law.dk";
    let mut dv = common::dovecot::Dovecot::start_with(
        &[(ADDRESS, "brugerens"), (ALICE, "alices")],
        Some((&cert.cert_pem, &cert.key_pem)),
        &[("admin", "master-hemmelig")],
    );
    let root = dv.maildir(ADDRESS);
    make_maildir(&root, &msgs);
    let alice_root = dv.maildir(ALICE);
    make_maildir(&alice_root, &msgs);
    dv.own_mail();
    let (ca, wrong_ca, pw) = (
        dir.path().join("ca.pem"),
        dir.path().join("other-ca.pem"),
        dir.path().join("master.pass"),
    );
    fs::write(&ca, &cert.ca_pem).unwrap();
    fs::write(&wrong_ca, &other.ca_pem).unwrap();
    fs::write(&pw, "master-hemmelig\n").unwrap();
    let login = format!("{ADDRESS}*admin");
    let args = |port: u16, security: &str, ca: &Path| -> Vec<String> {
        vec![
            "--imap".into(),
            format!("localhost:{port}"),
            "--imap-security".into(),
            security.into(),
            "--imap-ca".into(),
            ca.display().to_string(),
            "--user".into(),
            login.clone(),
            "--password-file".into(),
            pw.display().to_string(),
        ]
    };
    let run = |a: &[String], extra: &[&str]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut c = Command::new(BIN);
        c.arg("migrate")
            .arg("--config")
            .arg(&cfg)
            .args(&a)
            .args(extra)
            .env("OCES_FIXTURE_PASSWORD", "Test1234");
        let out = c.output().unwrap();
        eprintln!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // STARTTLS and IMAPS with the server's CA: the master user logs in to
    // the user's mailbox, whose address is the login before `*`.
    for (port, security) in [(dv.port, "starttls"), (dv.imaps_port, "imaps")] {
        let out = run(
            &args(port, security, &ca),
            &["--dry-run", "--format", "json"],
        );
        assert!(out.status.success(), "{security}: {}", dv.log());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("\"mailbox\":\"{ADDRESS}\"")),
            "{text}"
        );
        assert_eq!(folder_lines(&out)["INBOX"]["to_migrate"], 1);
    }
    // Another CA: the certificate is refused, nothing is read.
    for (port, security) in [(dv.port, "starttls"), (dv.imaps_port, "imaps")] {
        let out = run(&args(port, security, &wrong_ca), &["--dry-run"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("TLS with localhost") && err.contains("certificate"),
            "{err}"
        );
    }
    // The real run over IMAPS as the master user, two mailboxes in one
    // run: each login is mapped to its own address.
    let alice_login = format!("{ALICE}*admin");
    let out = run(
        &args(dv.imaps_port, "imaps", &ca),
        &["--user", &alice_login, "--format", "json"],
    );
    assert!(out.status.success(), "{}", dv.log());
    let lines = json_lines(&out);
    let heads = mailbox_heads(&lines);
    assert_eq!(heads, [ADDRESS, ALICE]);
    for mailbox in [ADDRESS, ALICE] {
        let inbox = lines
            .iter()
            .find(|v| v["type"] == "folder" && v["mailbox"] == mailbox && v["folder"] == "INBOX")
            .unwrap();
        assert_eq!(inbox["migrated"], 1, "{mailbox}");
    }
    dv.stop();
    assert_migrated_maildir_inbox_only(&root, &msgs);
    assert_migrated_maildir_inbox_only(&alice_root, &msgs);
}

/// [`assert_migrated_maildir`] for a corpus without the signed message.
fn assert_migrated_maildir_inbox_only(root: &Path, msgs: &[Msg]) {
    for m in msgs {
        let marker = format!("original-sha256={}", sha256_hex(&m.bytes));
        let files = messages_in(root);
        let copies: Vec<&PathBuf> = files
            .iter()
            .filter(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).contains(&marker))
            .collect();
        let original = files.iter().any(|p| fs::read(p).unwrap() == m.bytes);
        match &m.plaintext {
            Some(p) => {
                assert!(!original && copies.len() == 1, "{}", m.name);
                let bytes = fs::read(copies[0]).unwrap();
                assert_eq!(open_with_oces3(&bytes), without_mime_version(p));
            }
            None => assert!(original && copies.is_empty(), "{}", m.name),
        }
    }
}

/// The re-keyed copies (marked) in a Maildir's INBOX.
fn marked_copies(root: &Path) -> Vec<Vec<u8>> {
    messages_in(root)
        .iter()
        .map(|p| fs::read(p).unwrap())
        .filter(|b| String::from_utf8_lossy(b).contains("original-sha256="))
        .collect()
}

/// `openssl cms -decrypt` with demo key `name`: the plaintext, or `None`
/// when that key does not open it.
fn try_open(copy: &[u8], name: &str) -> Option<Vec<u8>> {
    pki::cms_try_decrypt(&crlf(copy), name).map(|b| without_mime_version(&b))
}

#[test]
fn extra_recipients_can_open_every_new_copy() {
    let dir = tempfile::tempdir().unwrap();
    let msgs: Vec<Msg> = corpus(dir.path())
        .into_iter()
        .filter(|m| m.name == "o2-inbox" || m.name == "plain")
        .collect();
    let plaintext = msgs[0].plaintext.clone().unwrap();
    // The court's certificate (post@domstol.dk) and Alice's expired one
    // in the gateway's certificate folder.
    let certs = dir.path().join("certs");
    fs::create_dir_all(&certs).unwrap();
    for c in ["court-oces3", "alice-oces2-expired"] {
        fs::copy(pki::cert(c), certs.join(format!("{c}.pem"))).unwrap();
    }
    let setting = |who: &str| {
        format!(
            "[certificates]\ndirs = [\"{}\"]\n\n[migrate]\nextra_recipients = [\"{who}\"]\n",
            certs.display()
        )
    };
    let run_on = |name: &str, extra: &str| -> (PathBuf, Output) {
        let d = dir.path().join(name);
        fs::create_dir_all(&d).unwrap();
        let cfg = config(&d, extra);
        let root = d.join("Maildir");
        make_maildir(&root, &msgs);
        let out = migrate(
            &cfg,
            &["--maildir", root.to_str().unwrap()],
            &["--format", "json"],
        );
        (root, out)
    };

    // With the court as an extra recipient: the copy opens with the
    // mailbox's OCES3 key and with the court's key, to the same plaintext.
    let (root, out) = run_on("with", &setting("post@domstol.dk"));
    assert!(out.status.success());
    assert_eq!(folder_lines(&out)["INBOX"]["migrated"], 1);
    let copies = marked_copies(&root);
    assert_eq!(copies.len(), 1);
    assert_eq!(
        open_with_oces3(&copies[0]),
        without_mime_version(&plaintext)
    );
    assert_eq!(
        try_open(&copies[0], "court-oces3"),
        Some(without_mime_version(&plaintext)),
        "the extra recipient opens the copy"
    );
    assert!(String::from_utf8_lossy(&copies[0])
        .replace("\r\n ", " ")
        .replace("\n ", " ")
        .contains("also-encrypted-to=post@domstol.dk"));

    // Control: without the setting the court's key does not open it.
    let (root, out) = run_on("without", "");
    assert!(out.status.success());
    let copies = marked_copies(&root);
    assert_eq!(copies.len(), 1);
    assert_eq!(
        open_with_oces3(&copies[0]),
        without_mime_version(&plaintext)
    );
    assert_eq!(try_open(&copies[0], "court-oces3"), None);

    // An extra recipient whose only certificate fails the checks (expired):
    // the run stops before anything is written.
    let d = dir.path().join("expired");
    fs::create_dir_all(&d).unwrap();
    let cfg = config(&d, &setting("alice@example-law.dk"));
    let root = d.join("Maildir");
    make_maildir(&root, &msgs);
    let before = tree(&root);
    let out = migrate(&cfg, &["--maildir", root.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alice@example-law.dk has no usable certificate") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(tree(&root), before, "nothing changed");
}

/// Every copy of the archive would be readable by an extra recipient, so
/// only a certificate the operator put in the folders is taken: the
/// court's certificate harvested from its own signed mail (a binding good
/// enough to encrypt one message to the court) stops the run. Control:
/// `extra_recipients_can_open_every_new_copy`, the same certificate in the
/// folder.
#[test]
fn an_extra_recipient_is_never_a_harvested_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // The daemon harvests the court's certificate from its signed mail.
    let sink = common::sink::Sink::start(common::sink::Script::default());
    let mut opts = common::Options::new(sink.addr);
    opts.spool_dir = Some(spool.clone());
    opts.extra = format!(
        "[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n",
        pki::demo().join("trust").display()
    );
    let gw = common::Gateway::start(opts);
    let mut m = b"From: Domstol <post@domstol.dk>\r\nTo: <bob@example-law.dk>\r\nSubject: signed\r\nMessage-ID: <court-h@test>\r\n".to_vec();
    m.extend_from_slice(&pki::crlf(&pki::cms_sign(
        &pki::inner("from the court"),
        "court-oces3",
    )));
    let mut c = common::client::Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    assert_eq!(
        c.send("post@domstol.dk", &["bob@example-law.dk"], &m)
            .unwrap()
            .code,
        250
    );
    assert!(
        wait_until(Duration::from_secs(20), || gw
            .log()
            .contains("event=\"harvested\"")),
        "{}",
        gw.log()
    );
    drop(gw);

    let cfg = config(
        dir.path(),
        "[migrate]\nextra_recipients = [\"post@domstol.dk\"]\n",
    );
    let root = dir.path().join("Maildir");
    let msgs: Vec<Msg> = corpus(dir.path())
        .into_iter()
        .filter(|m| m.name == "o2-inbox")
        .collect();
    make_maildir(&root, &msgs);
    let before = tree(&root);
    let out = migrate_cmd(&cfg, &["--maildir", root.to_str().unwrap()], &[])
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("post@domstol.dk") && text.contains("not taken: harvested"),
        "{text}"
    );
    assert_eq!(tree(&root), before, "nothing written: {text}");
}

#[test]
fn several_mailboxes_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let msgs = corpus(dir.path());
    let (a, b) = (dir.path().join("arkiv-a"), dir.path().join("arkiv-b"));
    make_maildir(&a, &msgs);
    make_maildir(&b, &msgs);
    let out = Command::new(BIN)
        .arg("migrate")
        .arg("--config")
        .arg(&cfg)
        .args(["--maildir", a.to_str().unwrap()])
        .args(["--maildir", b.to_str().unwrap()])
        .args(["--mailbox", &format!("arkiv-a={ADDRESS}")])
        .args(["--mailbox", "arkiv-b=alice@example-law.dk"])
        .args(["--format", "json"])
        .env("OCES_FIXTURE_PASSWORD", "Test1234")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    let lines = json_lines(&out);
    // One mailbox line per source, then its folders, per mailbox.
    let heads = mailbox_heads(&lines);
    assert_eq!(heads, [ADDRESS, "alice@example-law.dk"]);
    for mailbox in [ADDRESS, "alice@example-law.dk"] {
        let folders: BTreeMap<&str, &serde_json::Value> = lines
            .iter()
            .filter(|v| v["type"] == "folder" && v["mailbox"] == mailbox)
            .map(|v| (v["folder"].as_str().unwrap(), v))
            .collect();
        assert_eq!(
            folders.keys().copied().collect::<Vec<_>>(),
            ["INBOX", "Sager"]
        );
        for f in ["INBOX", "Sager"] {
            assert_eq!(
                outcomes(folders[f]),
                expected_outcomes(&msgs, f),
                "{mailbox} {f}"
            );
        }
    }
    // Both archives are done, each completely.
    assert_migrated_maildir(&a, &msgs);
    assert_migrated_maildir(&b, &msgs);

    // A source nobody is named for stops the run before any is touched.
    let c = dir.path().join("arkiv-c");
    make_maildir(&c, &msgs);
    let before = tree(&c);
    let out = Command::new(BIN)
        .arg("migrate")
        .arg("--config")
        .arg(&cfg)
        .args(["--maildir", c.to_str().unwrap()])
        .args(["--maildir", dir.path().join("unnamed").to_str().unwrap()])
        .args(["--mailbox", &format!("arkiv-c={ADDRESS}")])
        .env("OCES_FIXTURE_PASSWORD", "Test1234")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("whose mailbox is"), "{err}");
    assert_eq!(tree(&c), before, "nothing changed");
}

/// The commands a client sent whose name (after the tag, and after `UID`)
/// is `verb`, from Dovecot's rawlog (each line after its time stamp).
fn sent(dv: &common::dovecot::Dovecot, verb: &str) -> Vec<String> {
    dv.client_lines()
        .into_iter()
        .map(|l| match l.split_once(' ') {
            Some((t, rest)) if t.parse::<f64>().is_ok() => rest.to_string(),
            _ => l,
        })
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().take(3).collect();
            match w.as_slice() {
                [_, "UID", v, ..] => v.eq_ignore_ascii_case(verb),
                [_, v, ..] => v.eq_ignore_ascii_case(verb),
                _ => false,
            }
        })
        .collect()
}

/// `migrate`'s arguments for plain IMAP to 127.0.0.1:`port` as the test
/// mailbox, the password in `pw`.
fn plain_imap_args(port: u16, pw: &Path) -> Vec<String> {
    [
        "--imap",
        &format!("127.0.0.1:{port}"),
        "--imap-security",
        "plain",
        "--user",
        ADDRESS,
        "--password-file",
        pw.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A private Dovecot that offers only `capabilities` after login, the
/// corpus in its Maildir, and the migration's IMAP arguments.
fn dovecot_offering(
    dir: &Path,
    capabilities: &str,
    msgs: &[Msg],
) -> (common::dovecot::Dovecot, Vec<String>) {
    let dv = common::dovecot::Dovecot::start_configured(
        &[(ADDRESS, "hemmelig")],
        None,
        &[],
        &format!("imap_capability = {capabilities}"),
    );
    make_maildir(&dv.maildir(ADDRESS), msgs);
    dv.own_mail();
    let pw = dir.join("imap.pass");
    fs::write(&pw, "hemmelig\n").unwrap();
    let args = plain_imap_args(dv.port, &pw);
    (dv, args)
}

/// Servers that offer less than Dovecot: without MULTIAPPEND (as
/// Exchange Online) one APPEND per copy, each copy's UID from APPENDUID
/// (no search per copy); without LITERAL+ synchronising literals; without
/// MOVE `UID COPY` + `UID EXPUNGE` of exactly the originals; with neither
/// MOVE nor UIDPLUS the move (and the removal) is refused before anything
/// is written and `--originals keep` still works. What the client sent is read from Dovecot's rawlog; Dovecot
/// with everything is the control that the counts tell the ways apart.
#[test]
fn imap_servers_offering_less_get_what_they_understand() {
    if let Some(why) = common::dovecot::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let base = "IMAP4rev1 SASL-IR ID ENABLE IDLE NAMESPACE CHILDREN";
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let msgs = corpus(dir.path());
    let copies = msgs.iter().filter(|m| m.plaintext.is_some()).count();
    let folders = 2;
    assert!(
        copies > folders,
        "the corpus tells one APPEND per folder from one per copy"
    );
    let run = |args: &[String], extra: &[&str]| {
        let src: Vec<&str> = args.iter().map(String::as_str).collect();
        migrate(&cfg, &src, extra)
    };

    // (what is offered, APPEND commands expected, LITERAL+ used, MOVE used).
    let cases = [
        // Control: everything offered: one MULTIAPPEND per folder, UID MOVE.
        ("MULTIAPPEND LITERAL+ UIDPLUS MOVE", folders, true, true),
        // As Exchange Online: no MULTIAPPEND. One APPEND per copy,
        // pipelined with LITERAL+, UIDs from APPENDUID.
        ("LITERAL+ UIDPLUS MOVE", copies, true, true),
        // MULTIAPPEND and UIDPLUS, but neither LITERAL+ nor MOVE: UID COPY
        // and UID EXPUNGE.
        ("MULTIAPPEND UIDPLUS", folders, false, false),
    ];
    for (offered, appends_expected, plus, moves) in cases {
        let (mut dv, args) = dovecot_offering(dir.path(), &format!("{base} {offered}"), &msgs);
        assert!(run(&args, &[]).status.success(), "{offered}: {}", dv.log());
        let appends = sent(&dv, "APPEND");
        assert_eq!(appends.len(), appends_expected, "{offered}: {appends:?}");
        assert!(
            appends
                .iter()
                .all(|c| c.ends_with('}') && c.ends_with("+}") == plus),
            "{offered}: {appends:?}"
        );
        // The marker searches of the folders are seen; none per copy (the
        // UIDs come from APPENDUID).
        let searches = sent(&dv, "SEARCH");
        assert_eq!(searches.len(), folders, "{offered}: {searches:?}");
        assert_eq!(!sent(&dv, "MOVE").is_empty(), moves, "{offered}");
        let expunges = sent(&dv, "EXPUNGE");
        assert_eq!(expunges.is_empty(), moves, "{offered}");
        assert!(
            expunges
                .iter()
                .all(|c| c.split_whitespace().nth(1) == Some("UID")),
            "never a bare EXPUNGE: {expunges:?}"
        );
        dv.stop();
        assert_migrated_maildir(&dv.maildir(ADDRESS), &msgs);
    }

    // Plain IMAP4rev1: moving and removing originals is refused before
    // anything is written; keeping them works.
    let (mut dv, args) = dovecot_offering(dir.path(), base, &msgs);
    let root = dv.maildir(ADDRESS);
    let before = both_folders(&root);
    assert_eq!(before.len(), msgs.len());
    for (extra, why) in [
        (&[][..], "neither MOVE nor UIDPLUS"),
        (&["--originals", "delete"][..], "does not offer UIDPLUS"),
    ] {
        let out = run(&args, extra);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{why}");
    }
    assert!(sent(&dv, "APPEND").is_empty());
    assert_eq!(both_folders(&root), before, "nothing written");
    let out = run(&args, &["--originals", "keep", "--format", "json"]);
    assert!(out.status.success(), "{}", dv.log());
    let appends = sent(&dv, "APPEND");
    assert_eq!(appends.len(), copies, "{appends:?}");
    assert!(appends.iter().all(|c| !c.ends_with("+}")), "{appends:?}");
    assert!(sent(&dv, "EXPUNGE").is_empty() && sent(&dv, "MOVE").is_empty());
    // A re-run finds every copy and writes nothing.
    let out = run(&args, &["--originals", "keep", "--format", "json"]);
    assert!(out.status.success());
    let found: u64 = folder_lines(&out)
        .values()
        .map(|f| f["copies_found"].as_u64().unwrap())
        .sum();
    assert_eq!(found, copies as u64);
    assert_eq!(sent(&dv, "APPEND").len(), copies, "no second copy");
    dv.stop();
    for m in &msgs {
        let files = messages_in(&folder_dir(&root, m.folder));
        let original = files
            .iter()
            .filter(|p| fs::read(p).unwrap() == m.bytes)
            .count();
        assert_eq!(original, 1, "{}: original kept", m.name);
        let marker = format!("original-sha256={}", sha256_hex(&m.bytes));
        let copy: Vec<Vec<u8>> = files
            .iter()
            .map(|p| fs::read(p).unwrap())
            .filter(|b| String::from_utf8_lossy(b).contains(&marker))
            .collect();
        match &m.plaintext {
            Some(p) => {
                assert_eq!(copy.len(), 1, "{}", m.name);
                assert_eq!(open_with_oces3(&copy[0]), without_mime_version(p));
            }
            None => assert!(copy.is_empty(), "{}", m.name),
        }
    }
}

/// The corpus without the file that is not a message (mbox cannot hold it).
fn messages_only(corpus: Vec<Msg>) -> Vec<Msg> {
    corpus.into_iter().filter(|m| m.name != "garbage").collect()
}

/// Every message of a folder: at least once (original or copy), never two
/// copies of one original. What must hold at any moment of a run.
fn nothing_lost_nothing_doubled(root: &Path, msgs: &[Msg]) {
    for m in msgs {
        let marker = format!("original-sha256={}", sha256_hex(&m.bytes));
        let mut files = messages_in(&folder_dir(root, m.folder));
        files.extend(messages_in(&root.join(".OCES2-originals")));
        let bodies: Vec<Vec<u8>> = files.iter().map(|p| fs::read(p).unwrap()).collect();
        let originals = bodies.iter().filter(|b| **b == m.bytes).count();
        let copies = bodies
            .iter()
            .filter(|b| String::from_utf8_lossy(b).contains(&marker))
            .count();
        assert!(copies <= 1, "{}: {copies} copies", m.name);
        assert!(originals + copies >= 1, "{}: lost", m.name);
    }
}

/// A server that takes the connection and never greets: the run gives up
/// after `[migrate] imap_timeout` with a clear error, having changed
/// nothing. Control: the listener did take the connection (so the wait was
/// for the greeting, not for a refused connect).
#[test]
fn an_imap_server_that_never_greets_is_given_up_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[migrate]\nimap_timeout = \"2s\"\n");
    let silent = common::Silent::start();
    let pw = dir.path().join("imap.pass");
    fs::write(&pw, "hemmelig\n").unwrap();
    let args = plain_imap_args(silent.port, &pw);
    let src: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = migrate_cmd(&cfg, &src, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Far above the 2 s bound, far below the default 2 minutes.
    let ended = wait_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(ended, "the run waited past [migrate] imap_timeout");
    assert!(silent.taken() > 0, "the listener took the connection");
    assert!(!out.status.success());
    assert!(stderr.contains("no answer within 2s"), "{stderr}");
}

/// The connection to the IMAP server goes away in the middle of a batch
/// of pipelined APPENDs (a server without MULTIAPPEND, as Exchange
/// Online): see [`broken_in_the_middle_of_a_batch`].
#[test]
fn an_imap_connection_cut_in_the_middle_of_a_batch_loses_nothing() {
    broken_in_the_middle_of_a_batch(common::cutter::Then::Close);
}

/// The IMAP server stops answering in the middle of a batch (the
/// connection stays open): `[migrate] imap_timeout` (3 s here) ends the
/// wait, then as [`broken_in_the_middle_of_a_batch`]. The run ending
/// long before the default bound (2 minutes) is the control that the
/// setting is what ended the wait.
#[test]
fn an_imap_server_that_stalls_in_the_middle_of_a_batch_loses_nothing() {
    broken_in_the_middle_of_a_batch(common::cutter::Then::Stall);
}

/// The copies the server took before the break are not lost track of,
/// the rest of the run goes on over a new connection, no original goes
/// before its copy is in, and a re-run finds the copies already there and
/// finishes without a second copy of anything. The relay between them
/// breaks the connection after the second APPEND's first bytes; that it
/// did, and that the first run left work undone, are the controls that
/// the break came in the middle of the batch.
fn broken_in_the_middle_of_a_batch(then: common::cutter::Then) {
    if let Some(why) = common::dovecot::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[migrate]\nimap_timeout = \"3s\"\n");
    let msgs = corpus(dir.path());
    let inbox_copies = msgs
        .iter()
        .filter(|m| m.folder == "INBOX" && m.plaintext.is_some())
        .count();
    assert!(inbox_copies >= 2, "a batch of at least two copies in INBOX");
    let base = "IMAP4rev1 SASL-IR ID ENABLE IDLE NAMESPACE CHILDREN";
    let (mut dv, mut args) =
        dovecot_offering(dir.path(), &format!("{base} LITERAL+ UIDPLUS MOVE"), &msgs);
    let root = dv.maildir(ADDRESS);
    // Through the relay: cut 40 bytes into the second APPEND command.
    let cutter = common::cutter::Cutter::start(
        dv.port,
        then,
        Box::new(|sent: &[u8]| {
            let at: Vec<usize> = sent
                .windows(8)
                .enumerate()
                .filter(|(_, w)| *w == b" APPEND ")
                .map(|(i, _)| i)
                .collect();
            at.get(1).map(|i| i + 40)
        }),
    );
    args[1] = format!("127.0.0.1:{}", cutter.port);
    let src: Vec<&str> = args.iter().map(String::as_str).collect();

    let child = migrate_cmd(&cfg, &src, &["--jobs", "1", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ended = Arc::new(AtomicBool::new(false));
    let watch = {
        let ended = ended.clone();
        std::thread::spawn(move || {
            // Far above the 3 s bound, far below the default 2 minutes.
            let ok = wait_until(Duration::from_secs(60), || ended.load(Ordering::SeqCst));
            if !ok {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            ok
        })
    };
    let out = shown("migrate (broken)", child.wait_with_output().unwrap());
    ended.store(true, Ordering::SeqCst);
    assert!(
        watch.join().unwrap(),
        "the run waited past [migrate] imap_timeout"
    );
    assert!(
        cutter.has_cut(),
        "the relay cut the connection: {}",
        dv.log()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the cut is reported: {stderr}");
    nothing_lost_nothing_doubled(&root, &msgs);
    // Originals still in place, and how many of them have a copy already
    // (what the server took before the cut).
    let in_place: Vec<&Msg> = msgs
        .iter()
        .filter(|m| m.plaintext.is_some())
        .filter(|m| {
            messages_in(&folder_dir(&root, m.folder))
                .iter()
                .any(|p| fs::read(p).unwrap() == m.bytes)
        })
        .collect();
    assert!(!in_place.is_empty(), "the cut left work for the re-run");
    let copies_before = in_place
        .iter()
        .filter(|m| {
            let marker = format!("original-sha256={}", sha256_hex(&m.bytes));
            messages_in(&folder_dir(&root, m.folder))
                .iter()
                .any(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).contains(&marker))
        })
        .count();
    // The folder after the cut was served over a new connection.
    let sager = msgs
        .iter()
        .filter(|m| m.folder == "Sager" && m.plaintext.is_some());
    for m in sager {
        assert!(
            !messages_in(&folder_dir(&root, m.folder))
                .iter()
                .any(|p| fs::read(p).unwrap() == m.bytes),
            "{}: migrated after the cut: {stderr}",
            m.name
        );
    }

    // The re-run (no cut) finds what the server took before the cut.
    cutter.disarm();
    let out = migrate(&cfg, &src, &["--format", "json"]);
    assert!(out.status.success(), "{}", dv.log());
    let found: u64 = folder_lines(&out)
        .values()
        .map(|f| f["copies_found"].as_u64().unwrap())
        .sum();
    assert_eq!(
        found as usize, copies_before,
        "copies made before the cut were found"
    );
    dv.stop();
    assert_migrated_maildir(&root, &msgs);
}

/// A signature inside old mail by a signer whose certificate neither the
/// message nor the gateway holds is looked up in LDAP for the From address,
/// as the daemon does, and the copy's trace header says it is valid;
/// control: the same signature under a From the directory does not know
/// stays `unknown-signer`.
#[test]
fn a_signer_nobody_holds_is_asked_of_ldap_as_the_daemon_does() {
    let demo = pki::demo();
    let ldap = common::ldap_entries::EntriesSlapd::start(&[(
        "post@domstol.dk",
        &demo.join("certs/court-oces3.pem"),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[certificates.ldap]]\nurl = \"ldap://127.0.0.1:{}\"\nbase = \"c=DK\"\ntimeout = \"5s\"\n",
            ldap.port
        ),
    );
    let bare = pki::cms_sign_bare(&pki::inner("Kendelse uden certifikater"), "court-oces3");
    let o2 = pki::cert("org-oces2");
    // Arrived after the signing (the demo certificates are young).
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Old mail, each encrypted to the OCES2 key around `bare`, from the
    // address given, arriving `first` and a second apart after.
    let old_mail = |froms: &[(&'static str, &str)], first: i64| -> Vec<Msg> {
        froms
            .iter()
            .enumerate()
            .map(|(i, (name, from))| Msg {
                name,
                folder: "INBOX",
                bytes: String::from_utf8(encrypted(name, &o2, &bare))
                    .unwrap()
                    .replace(
                        "From: Sender <sender@example.org>",
                        &format!("From: <{from}>"),
                    )
                    .into_bytes(),
                flags: "",
                date: first + i as i64,
                outcome: "migrate",
                plaintext: Some(bare.clone()),
            })
            .collect()
    };
    let msgs = old_mail(
        &[
            ("ldap-found", "post@domstol.dk"),
            ("ldap-none", "registry@domstol.dk"),
        ],
        now + 5,
    );
    let root = dir.path().join("Maildir");
    make_maildir(&root, &msgs);
    let out = migrate(
        &cfg,
        &["--maildir", root.to_str().unwrap()],
        &["--format", "json"],
    );
    assert!(out.status.success());
    let trace_of = |name: &str| -> String {
        let copy = marked_copies(&root)
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).replace("\n ", " "))
            .find(|t| t.contains(&format!("Message-ID: <{name}@test>")))
            .unwrap_or_else(|| panic!("no copy of {name}"));
        copy.lines()
            .find(|l| l.starts_with("X-SMIME-Gateway:"))
            .unwrap()
            .to_string()
    };
    let found = trace_of("ldap-found");
    assert!(
        found.contains("signature[1]=valid; signer=\"CN=Demo Court")
            && found.contains("from=exact"),
        "{found}"
    );
    let none = trace_of("ldap-none");
    assert!(none.contains("signature[1]=unknown-signer"), "{none}");
    assert_migrated_maildir_inbox_only(&root, &msgs);

    // Two directories, one that accepts and never answers: that one is
    // asked three times, then not again in this run; the other is still
    // asked (the last message's signer is found there); every message is
    // migrated.
    let silent = common::Silent::start();
    let port = silent.port;
    let cfg = config(
        dir.path(),
        &format!(
            "[[certificates.ldap]]\nurl = \"ldap://127.0.0.1:{port}\"\nbase = \"c=DK\"\ntimeout = \"1s\"\n\
             [[certificates.ldap]]\nurl = \"ldap://127.0.0.1:{}\"\nbase = \"c=DK\"\ntimeout = \"5s\"\n",
            ldap.port
        ),
    );
    let froms = [
        ("gone-1", "gone-1@domstol.dk"),
        ("gone-2", "gone-2@domstol.dk"),
        ("gone-3", "gone-3@domstol.dk"),
        ("gone-4", "gone-4@domstol.dk"),
        ("gone-5", "gone-5@domstol.dk"),
        ("found-last", "post@domstol.dk"),
    ];
    let msgs = old_mail(&froms, now + 10);
    let root = dir.path().join("Maildir-silent");
    make_maildir(&root, &msgs);
    let out = migrate(
        &cfg,
        &["--maildir", root.to_str().unwrap()],
        &["--jobs", "1"],
    );
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("certificate lookup failed").count(),
        3,
        "asked until it failed three times in a row, not once per message: {log}"
    );
    assert!(
        log.contains("not looked up there for the rest of this run"),
        "{log}"
    );
    let copy = marked_copies(&root)
        .into_iter()
        .map(|b| String::from_utf8_lossy(&b).replace("\n ", " "))
        .find(|t| t.contains("Message-ID: <found-last@test>"))
        .unwrap();
    assert!(
        copy.contains("signature[1]=valid; signer=\"CN=Demo Court"),
        "{copy}"
    );
    assert_migrated_maildir_inbox_only(&root, &msgs);
}

#[test]
fn a_marker_written_by_a_sender_does_not_pass_for_a_migrated_copy() {
    // The daemon writes a signer's name into the stored mail's trace
    // header: a sender who names their certificate "original-sha256=…"
    // had their mail taken for a copy migration made, left on the old key
    // and reported as done.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let root = dir.path().join("eml");
    fs::create_dir_all(&root).unwrap();
    let o2 = pki::cert("org-oces2");
    let stored = |id: &str, trace: &str| {
        let mut m = format!("X-SMIME-Gateway: {trace}\n").into_bytes();
        m.extend(encrypted(id, &o2, &pki::inner(&format!("sag {id}"))));
        m
    };
    let fake = "a".repeat(64);
    let forged = stored(
        "forged",
        &format!(
            "decrypted; key=\"CN=Example Law ApS - sikkermail\"; generation=OCES2;\n \
             signature[1]=untrusted; signer=\"CN=original-sha256={fake}\"; from=differs"
        ),
    );
    // Control: a copy migration really made (its marker an item of its own).
    let copy = stored(
        "copy",
        &format!("decrypted; key=\"CN=Example Law ApS - sikkermail\"; original-sha256={fake}"),
    );
    fs::write(root.join("forged.eml"), crlf(&forged)).unwrap();
    fs::write(root.join("copy.eml"), crlf(&copy)).unwrap();
    let out = migrate(
        &cfg,
        &["--eml", root.to_str().unwrap()],
        &["--originals", "keep", "--format", "json"],
    );
    assert!(out.status.success(), "{}", common::output_text(&out));
    let f = &folder_lines(&out)["."];
    assert_eq!(f["migrated"], 1, "{f}");
    let marker = format!("original-sha256={}", sha256_hex(&forged));
    let new: Vec<Vec<u8>> = tree(&root)
        .into_values()
        .filter(|b| String::from_utf8_lossy(b).contains(&marker))
        .collect();
    assert_eq!(new.len(), 1, "the forged one was not migrated");
    assert!(String::from_utf8_lossy(&open_with_oces3(&new[0])).contains("sag forged"));
}

#[test]
fn plain_imap_goes_to_this_host_only() {
    // Plain IMAP sends the (master user's) password in clear and lets
    // whoever is on the path fake the copies read back before originals
    // are removed: refused for another host before anything is sent
    // (192.0.2.1 is a documentation address: nothing answers there).
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let pw = dir.path().join("pw");
    fs::write(&pw, "secret\n").unwrap();
    let mut args = plain_imap_args(143, &pw);
    args[1] = "192.0.2.1:143".into();
    let src: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = migrate(&cfg, &src, &[]);
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("plain to 192.0.2.1:143, not this host"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it tried to connect"
    );
}
