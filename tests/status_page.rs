//! The status page through the real binary, read by a real browser
//! (headless Chromium): identities with generation and days to expiry,
//! queue counts, the cutoff readiness table for OCES2-only, OCES3 and
//! certificate-less counterparties of the demo PKI, the date picker moving
//! a row across the cutoff, a 400 page for a bad date, addresses from a
//! certificate rendered as text, the readiness gauges on /metrics (also
//! after a reload), and no page at all when `[status] listen` is unset.

mod common;

use std::cell::RefCell;
use std::net::TcpStream;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use common::sink::{Script, Sink};
use common::{chromium, free_port, http_get, pki, wait_until, Gateway, Options};

const DAY: i64 = 86_400;

/// One table row as the browser rendered it: (class of the cell, its
/// text as serialised, entities kept).
type Row = Vec<(String, String)>;

/// The rows matching `selector` (e.g. `tr.counterparty`) in `dom`, read
/// with an HTML parser (lol_html).
fn rows(dom: &str, selector: &str) -> Vec<Row> {
    use lol_html::{element, rewrite_str, text, RewriteStrSettings};
    let out: Rc<RefCell<Vec<Row>>> = Rc::new(RefCell::new(Vec::new()));
    let (o1, o2, o3) = (Rc::clone(&out), Rc::clone(&out), Rc::clone(&out));
    let cells = format!("{selector} td");
    let settings = RewriteStrSettings::new()
        .append_element_content_handler(element!(selector, move |_| {
            o1.borrow_mut().push(Vec::new());
            Ok(())
        }))
        .append_element_content_handler(element!(cells, move |el| {
            let class = el.get_attribute("class").unwrap_or_default();
            if let Some(row) = o2.borrow_mut().last_mut() {
                row.push((class, String::new()));
            }
            Ok(())
        }))
        .append_element_content_handler(text!(cells, move |t| {
            if let Some((_, text)) = o3.borrow_mut().last_mut().and_then(|r| r.last_mut()) {
                text.push_str(t.as_str());
            }
            Ok(())
        }));
    rewrite_str(dom, settings).expect("parse the DOM");
    let v = out.borrow().clone();
    v
}

/// The text of the cell whose class starts with `class`.
fn cell<'a>(row: &'a Row, class: &str) -> &'a str {
    row.iter()
        .find(|(c, _)| c.split_whitespace().next() == Some(class))
        .map(|(_, t)| t.trim())
        .unwrap_or_else(|| panic!("no cell {class} in {row:?}"))
}

fn counterparty<'a>(rows: &'a [Row], address: &str) -> &'a Row {
    rows.iter()
        .find(|r| cell(r, "address") == address)
        .unwrap_or_else(|| panic!("no row for {address} in {rows:?}"))
}

/// A folder holding copies of the named demo certificates.
fn recipients(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::fs::copy(pki::cert(n), dir.path().join(format!("{n}.pem"))).unwrap();
    }
    dir
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `YYYY-MM-DD` of `unix` in UTC (what a person picks; the page reads it
/// as that day in Danish time).
fn iso(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// The demo organisation's two keys, the demo trust anchors, `certs` as
/// the certificate directory, an OCES2 cutoff at `cutoff` and one rule:
/// encryption required, either generation, bounce without a certificate.
fn extra(certs: &Path, cutoff: i64, status: &str) -> String {
    format!(
        "{}{}\n[trust]\nanchors = [\"{}\"]\nrevocation = \"off\"\n\n\
         [certificates]\ndirs = [\"{}\"]\nharvest = false\n\n\
         [policy]\noces2_cutoff = \"{}\"\n\n\
         [[rule]]\nname = \"partners\"\nmatch = [\"*\"]\ngeneration = \"any\"\n\
         encrypt = \"required\"\nsign = false\non_missing_certificate = \"bounce\"\n\n{status}",
        pki::identity("org-oces2", &[]),
        pki::identity("org-oces3", &[]),
        pki::demo().join("trust").display(),
        certs.display(),
        rfc3339(cutoff),
    )
}

fn metric(metrics: &str, class: &str) -> Option<u64> {
    let name = format!("smimegw_cutoff_readiness_counterparties{{readiness=\"{class}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&name))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn the_status_page_in_a_browser() {
    let sink = Sink::start(Script::default());
    let certs = recipients(&[
        "partner-oces2",
        "partner-oces3",
        "partner-oces3-expiring",
        "court-oces2",
        "court-oces3",
    ]);
    let cutoff = now() + 100 * DAY;
    let (status, metrics) = (free_port(), free_port());
    let mut opts = Options::new(sink.addr);
    opts.extra = extra(
        certs.path(),
        cutoff,
        &format!(
            "[status]\nlisten = {status}\nrefresh = \"1h\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        ),
    );
    let gw = Gateway::start(opts);
    let page = format!("http://127.0.0.1:{status}/");
    assert!(
        wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", status)).is_ok()
        }),
        "status page not served; log:\n{}",
        gw.log()
    );

    // The page at the cutoff, as the browser renders it.
    let dom = chromium::dump_dom(&page);
    assert!(dom.contains("<h1>smime-gateway on gw.test</h1>"), "{dom}");
    assert!(!dom.contains("<script"), "{dom}");
    let ids = rows(&dom, "tr.identity");
    assert_eq!(ids.len(), 2, "{ids:?}");
    for (generation, days) in [("OCES2", 400), ("OCES3", 1065)] {
        let row = ids
            .iter()
            .find(|r| cell(r, "generation") == generation)
            .unwrap_or_else(|| panic!("no {generation} identity in {ids:?}"));
        assert_eq!(cell(row, "subject"), "Example Law ApS - sikkermail");
        let left: i64 = cell(row, "days").parse().unwrap();
        assert!(
            (days - 2..=days).contains(&left),
            "{generation}: {left} days"
        );
        assert_eq!(cell(row, "state"), "valid");
    }
    assert!(dom.contains("<dd id=\"queue-count\">0</dd>"), "{dom}");
    assert!(dom.contains("<dd id=\"quarantine-count\">0</dd>"), "{dom}");
    // Danish dates: the cutoff's day as dd.mm.yyyy.
    let cutoff_day = chrono::DateTime::from_timestamp(cutoff, 0)
        .unwrap()
        .with_timezone(&chrono_tz::Europe::Copenhagen)
        .format("%d.%m.%Y")
        .to_string();
    assert!(dom.contains(&cutoff_day), "{cutoff_day} not in {dom}");

    let table = rows(&dom, "tr.counterparty");
    let addresses: Vec<&str> = table.iter().map(|r| cell(r, "address")).collect();
    assert_eq!(
        addresses,
        [
            "post@domstol.dk",
            "post@sydhavn-kommune.dk",
            "post@vestkyst-revision.dk",
            "sikkermail@nordby-advokater.dk"
        ],
        "every external address of the directory, once, sorted"
    );
    let nordby = counterparty(&table, "sikkermail@nordby-advokater.dk");
    assert_eq!(cell(nordby, "readiness"), "oces2-only");
    assert_eq!(cell(nordby, "today"), "encrypted-oces2");
    assert_eq!(cell(nordby, "at-date"), "bounce");
    assert!(!cell(nordby, "reason").is_empty(), "{nordby:?}");
    for oces3 in [
        "post@vestkyst-revision.dk",
        "post@domstol.dk",
        "post@sydhavn-kommune.dk",
    ] {
        let row = counterparty(&table, oces3);
        assert_eq!(cell(row, "readiness"), "oces3", "{row:?}");
        assert_eq!(cell(row, "at-date"), "encrypted-oces3", "{row:?}");
    }

    // The date picker: ten days before the cutoff the OCES2-only
    // counterparty still gets encrypted mail.
    let before = chromium::dump_dom(&format!("{page}?at={}", iso(cutoff - 10 * DAY)));
    let table = rows(&before, "tr.counterparty");
    let nordby = counterparty(&table, "sikkermail@nordby-advokater.dk");
    assert_eq!(cell(nordby, "at-date"), "encrypted-oces2", "{nordby:?}");
    assert!(before.contains(&format!("value=\"{}\"", iso(cutoff - 10 * DAY))));
    // 300 days on, the expiring OCES3 certificate has run out: no
    // certificate at all, and mail bounces.
    let later = chromium::dump_dom(&format!("{page}?at={}", iso(now() + 300 * DAY)));
    let table = rows(&later, "tr.counterparty");
    let sydhavn = counterparty(&table, "post@sydhavn-kommune.dk");
    assert_eq!(cell(sydhavn, "readiness"), "none", "{sydhavn:?}");
    assert_eq!(cell(sydhavn, "today"), "encrypted-oces3");
    assert_eq!(cell(sydhavn, "at-date"), "bounce");
    assert_eq!(
        cell(
            counterparty(&table, "post@vestkyst-revision.dk"),
            "readiness"
        ),
        "oces3"
    );

    // A screenshot for people, kept under target/ (not committed).
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium::screenshot(&page, &shot);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    // A bad date: a clear 400 page, and the daemon still answers.
    for bad in ["31.06.2027", "2027-02-30", "%3Cb%3Ebold%3C%2Fb%3E"] {
        let (code, body) = http_get(&format!("{page}?at={bad}"));
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains("is not a date"), "{body}");
        assert!(!body.contains("<b>bold"), "{body}");
    }
    let (code, _) = http_get(&page);
    assert_eq!(code, 200);
    let (code, body) = http_get(&format!("{page}queue"));
    assert_eq!(code, 404, "{body}");

    // The gauges: one OCES2-only, three OCES3, none without.
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let mut last = String::new();
    let counted = wait_until(Duration::from_secs(30), || {
        last = http_get(&url).1;
        metric(&last, "oces3") == Some(3)
            && metric(&last, "oces2-only") == Some(1)
            && metric(&last, "none") == Some(0)
    });
    assert!(counted, "readiness gauges:\n{last}");
    // Making the tables looked up certificates; those are not traffic.
    assert!(
        !last.contains("smimegw_certificate_lookups_total"),
        "{last}"
    );
    // Mail to an OCES2-only counterparty and to one without any
    // certificate (bounced by the rule) goes into the journal ...
    let r = common::submit(
        &gw,
        "alice@example-law.dk",
        &["sikkermail@nordby-advokater.dk", "nobody@plain-partner.dk"],
        &common::message("journal-1", "Bilag vedlagt."),
    );
    assert_eq!(r.code, 250, "{r:?}");
    let journal = gw.spool().join("journal/journal.db");
    assert!(
        wait_until(Duration::from_secs(60), || journal_rows(&journal) == 2),
        "journal rows: {}; log:\n{}",
        journal_rows(&journal),
        gw.log()
    );
    // ... and a new certificate in the directory, from a CA the gateway
    // does not trust (no usable certificate). A reload counts again at
    // once (the timer is an hour).
    std::fs::copy(pki::cert("stranger"), certs.path().join("stranger.pem")).unwrap();
    gw.signal("HUP");
    let recounted = wait_until(Duration::from_secs(30), || {
        last = http_get(&url).1;
        metric(&last, "none") == Some(2)
    });
    assert!(recounted, "after the reload:\n{last}");
    assert_eq!(metric(&last, "oces2-only"), Some(1));
    assert_eq!(metric(&last, "oces3"), Some(3));
    // The one lookup the delivery made is counted (the OCES2-only
    // counterparty's certificate); the tables' lookups are not.
    assert!(
        last.contains("smimegw_certificate_lookups_total{source=\"local\"} 1\n"),
        "{last}"
    );
    let dom = chromium::dump_dom(&page);
    let table = rows(&dom, "tr.counterparty");
    let nobody = counterparty(&table, "nobody@plain-partner.dk");
    assert_eq!(cell(nobody, "readiness"), "none", "{nobody:?}");
    assert_eq!(cell(nobody, "messages"), "1", "{nobody:?}");
    assert_eq!(cell(nobody, "at-date"), "bounce", "{nobody:?}");
    let nordby = counterparty(&table, "sikkermail@nordby-advokater.dk");
    assert_eq!(cell(nordby, "messages"), "1", "{nordby:?}");
    assert_eq!(cell(nordby, "readiness"), "oces2-only");
    let court = counterparty(&table, "post@domstol.dk");
    assert_eq!(cell(court, "messages"), "0", "{court:?}");
    assert_eq!(
        cell(counterparty(&table, "stranger@example.org"), "readiness"),
        "none"
    );
}

/// Outbound rows in the journal's SQLite file (0 while there is none).
fn journal_rows(path: &Path) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    conn.query_row("SELECT count(*) FROM outbound", [], |r| r.get(0))
        .unwrap_or(0)
}

/// Addresses and names from a certificate anyone can make are text on
/// the page, never markup; such a certificate (self-signed) gives a
/// counterparty without a usable certificate.
#[test]
fn addresses_from_certificates_are_text() {
    let sink = Sink::start(Script::default());
    let certs = recipients(&["partner-oces3"]);
    let evil = "<script>document.title=1</script>@evil.example";
    let key = certs.path().join("evil.key");
    pki::openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            certs.path().join("evil.pem").to_str().unwrap(),
            "-subj",
            "/CN=<img src=x onerror=alert(2)>",
            "-addext",
            &format!("subjectAltName=email:{evil}"),
        ],
        b"",
    );
    std::fs::remove_file(&key).unwrap();
    let status = free_port();
    let mut opts = Options::new(sink.addr);
    opts.extra = extra(
        certs.path(),
        now() + 100 * DAY,
        &format!("[status]\nlisten = \"127.0.0.1:{status}\"\n"),
    );
    let gw = Gateway::start(opts);
    assert!(wait_until(Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", status)).is_ok()
    }));
    let dom = chromium::dump_dom(&format!("http://127.0.0.1:{status}/"));
    // Nothing of the address became an element, nor ran.
    assert!(!dom.contains("<script"), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    assert!(
        dom.contains("<title>smime-gateway status: gw.test</title>"),
        "{dom}"
    );
    // Positive control: the row is there, the address shown as text.
    let table = rows(&dom, "tr.counterparty");
    let row = counterparty(
        &table,
        "&lt;script&gt;document.title=1&lt;/script&gt;@evil.example",
    );
    assert_eq!(cell(row, "readiness"), "none", "{row:?}");
    assert_eq!(cell(row, "at-date"), "bounce", "{row:?}");
    assert_eq!(
        cell(
            counterparty(&table, "post@vestkyst-revision.dk"),
            "readiness"
        ),
        "oces3"
    );
    drop(gw);
}

/// Without `[status] listen` nothing listens for the page; the same
/// configuration with it serves the page on that port (the control). The
/// readiness gauges are kept all the same, refreshed on the timer.
#[test]
fn no_page_unless_configured() {
    let sink = Sink::start(Script::default());
    let certs = recipients(&["partner-oces3"]);
    let (status, metrics) = (free_port(), free_port());
    let cutoff = now() + 100 * DAY;
    let mut with = Options::new(sink.addr);
    with.extra = extra(
        certs.path(),
        cutoff,
        &format!("[status]\nlisten = \"127.0.0.1:{status}\"\n"),
    );
    let gw = Gateway::start(with);
    let page = format!("http://127.0.0.1:{status}/");
    assert!(wait_until(Duration::from_secs(30), || http_get(&page).0 == 200));
    drop(gw);
    assert!(wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", status)).is_err()
    }));

    let mut without = Options::new(sink.addr);
    without.extra = extra(
        certs.path(),
        cutoff,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n[status]\nrefresh = \"1s\"\n"),
    );
    let gw = Gateway::start(without);
    // The HTTP stack is up (metrics answer, readiness counted) ...
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    assert!(
        wait_until(Duration::from_secs(30), || metric(
            &http_get(&url).1,
            "oces3"
        ) == Some(1)),
        "{}",
        gw.log()
    );
    // ... and the page's port refuses connections.
    let refused = TcpStream::connect(("127.0.0.1", status)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!gw.log().contains("status page listening"), "{}", gw.log());

    // The gauges follow the journal on the timer, without a reload: mail
    // to a counterparty without a certificate makes it counted.
    assert_eq!(metric(&http_get(&url).1, "none"), Some(0));
    let r = common::submit(
        &gw,
        "alice@example-law.dk",
        &["nobody@plain-partner.dk"],
        &common::message("timer-1", "Hej."),
    );
    assert_eq!(r.code, 250, "{r:?}");
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            last = http_get(&url).1;
            metric(&last, "none") == Some(1)
        }),
        "{last}"
    );
    assert!(!gw.log().contains("reloading"), "{}", gw.log());
}
