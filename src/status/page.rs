//! The status page's HTML, from values: pure. Every value is escaped by
//! maud (addresses and subjects come from certificates anybody can make);
//! nothing here is written unescaped but the fixed style sheet. No
//! JavaScript: the date picker is a plain GET form (`?at=YYYY-MM-DD`).

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::dates;

/// One of the organisation's identities.
#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub subject_cn: String,
    /// `OCES2`, `OCES3` or `other`.
    pub generation: String,
    pub kind: String,
    /// Personal key of these addresses; empty: an organisation key.
    pub mailboxes: Vec<String>,
    pub not_after: i64,
    /// `valid`, `expired`, `not yet valid` or `revoked`.
    pub state: &'static str,
}

/// One counterparty in the readiness table.
#[derive(Debug, Clone)]
pub struct ReadinessRow {
    pub address: String,
    /// `oces3`, `oces2-only` or `none`, at the table's date.
    pub readiness: &'static str,
    pub today: String,
    pub at_date: String,
    /// Why the two differ; `None` when they do not.
    pub reason: Option<String>,
    /// Encrypted today, plain at the date.
    pub turns_plain: bool,
    /// Messages to it in the journal's window; `None`: not known.
    pub messages: Option<u64>,
}

/// The readiness table at one moment.
#[derive(Debug, Clone)]
pub struct Table {
    /// The moment the outcomes are "at".
    pub at: i64,
    /// When it was computed.
    pub computed: i64,
    pub rows: Vec<ReadinessRow>,
    /// Why the journal's counterparties are missing, when they are.
    pub journal: Option<String>,
}

/// A count, or why it could not be made.
pub type Count = Result<usize, String>;

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct View {
    pub hostname: String,
    pub now: i64,
    pub cutoff: Option<i64>,
    pub identities: Vec<IdentityRow>,
    pub queue: Count,
    pub quarantine: Count,
    /// The table, and whether it is the configured cutoff's (the default)
    /// or a date someone picked.
    pub table: Table,
    pub picked: bool,
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#eee}.oces3{background:#e3f4e1}.oces2-only{background:#fdf1d6}\
.none{background:#f9dcdc}.plain{font-weight:bold;color:#a00}.muted{color:#666}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dd{margin:0}";

fn count(c: &Count) -> String {
    match c {
        Ok(n) => n.to_string(),
        Err(why) => format!("unknown ({why})"),
    }
}

fn expiry(now: i64, not_after: i64) -> String {
    let days = dates::days_until(now, not_after);
    if days >= 0 {
        format!("{days}")
    } else {
        format!("expired {} days ago", -days)
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            title { (title) }
            style { (PreEscaped(STYLE)) }
        }
    }
}

/// The whole page.
pub fn render(v: &View) -> String {
    let counts = |class: &str| v.table.rows.iter().filter(|r| r.readiness == class).count();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("smime-gateway status: {}", v.hostname)))
            body {
                h1 { "smime-gateway on " (v.hostname) }
                p.muted {
                    "As of " (dates::moment(v.now)) " (Danish time). "
                    "Dates are written day.month.year. This page is read-only."
                }
                h2 { "Identities" }
                table #identities {
                    thead { tr {
                        th { "Subject" } th { "Generation" } th { "Kind" } th { "Key of" }
                        th { "Expires" } th { "Days to expiry" } th { "State" }
                    } }
                    tbody {
                        @for i in &v.identities {
                            tr.identity data-generation=(i.generation) {
                                td.subject { (i.subject_cn) }
                                td.generation { (i.generation) }
                                td { (i.kind) }
                                td { @if i.mailboxes.is_empty() { "the organisation" } @else { (i.mailboxes.join(", ")) } }
                                td { (dates::day(i.not_after)) }
                                td.days { (expiry(v.now, i.not_after)) }
                                td.state { (i.state) }
                            }
                        }
                    }
                }
                h2 { "Queue" }
                dl #counts {
                    dt { "Messages in the queue" } dd #queue-count { (count(&v.queue)) }
                    dt { "Messages in quarantine" } dd #quarantine-count { (count(&v.quarantine)) }
                }
                h2 { "Cutoff readiness" }
                p {
                    @match v.cutoff {
                        Some(c) => { "OCES2 cutoff: " strong #cutoff { (dates::moment(c)) } ". " }
                        None => { "No OCES2 cutoff is configured. " }
                    }
                    "Outcomes of mail to each counterparty (every address in the certificate directory "
                    "and every outside recipient in the journal of the last 90 days) today and at " strong #table-at { (dates::moment(v.table.at)) }
                    @if !v.picked { " (the configured cutoff, or now once it has passed)" }
                    "; computed " (dates::moment(v.table.computed)) "."
                }
                @if let Some(why) = &v.table.journal {
                    p #journal-note { "Only the certificate directory is listed: " (why) }
                }
                form method="get" action="/" {
                    label { "Show the table at " input type="date" name="at" value=(dates::iso_day(v.table.at)) required; }
                    " " button type="submit" { "Show" }
                    @if v.picked { " " a href="/" { "back to the cutoff" } }
                }
                p #summary {
                    "OCES3: " span #count-oces3 { (counts("oces3")) } ", "
                    "OCES2 only: " span #count-oces2-only { (counts("oces2-only")) } ", "
                    "none: " span #count-none { (counts("none")) } "."
                }
                table #readiness {
                    thead { tr {
                        th { "Counterparty" } th { "Mail (90 days)" } th { "Readiness" } th { "Today" }
                        th { "At " (dates::day(v.table.at)) } th { "Why it changes" }
                    } }
                    tbody {
                        @for r in &v.table.rows {
                            tr.counterparty.(r.readiness) data-readiness=(r.readiness) {
                                td.address { (r.address) }
                                td.messages { @if let Some(n) = r.messages { (n) } @else { "?" } }
                                td.readiness { (r.readiness) }
                                td.today { (r.today) }
                                td.at-date.plain[r.turns_plain] { (r.at_date) }
                                td.reason { @if let Some(why) = &r.reason { (why) } }
                            }
                        }
                    }
                }
            }
        }
    };
    markup.into_string()
}

/// A page for a request that cannot be answered (a bad `at`).
pub fn problem(title: &str, detail: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                h1 { (title) }
                p #problem { (detail) }
                p { a href="/" { "Back to the status page" } }
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(address: &str, subject: &str) -> View {
        View {
            hostname: "gw.test".into(),
            now: 1_800_000_000,
            cutoff: Some(1_814_306_400),
            identities: vec![IdentityRow {
                subject_cn: subject.into(),
                generation: "OCES3".into(),
                kind: "organisation".into(),
                mailboxes: vec![],
                not_after: 1_800_000_000 + 10 * 86_400,
                state: "valid",
            }],
            queue: Ok(3),
            quarantine: Err("spool unreadable".into()),
            table: Table {
                at: 1_814_306_400,
                computed: 1_800_000_000,
                rows: vec![ReadinessRow {
                    address: address.into(),
                    readiness: "oces2-only",
                    today: "encrypted-oces2".into(),
                    at_date: "plain".into(),
                    reason: Some("only OCES2 certificate".into()),
                    turns_plain: true,
                    messages: Some(7),
                }],
                journal: Some("<no journal>".into()),
            },
            picked: false,
        }
    }

    #[test]
    fn values_are_text_never_markup() {
        let html = render(&view(
            "<script>alert(1)</script>@evil.example",
            "\"><img src=x onerror=alert(2)>",
        ));
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;@evil.example"));
        assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"));
        // Positive control: the page's own markup is there.
        assert!(html.contains("<table id=\"readiness\">"));
    }

    #[test]
    fn the_page_says_what_it_shows() {
        let html = render(&view("post@nordby.dk", "Example Law ApS"));
        assert!(html.contains("<td class=\"days\">10</td>"), "{html}");
        assert!(html.contains("<dd id=\"queue-count\">3</dd>"));
        assert!(html.contains("unknown (spool unreadable)"));
        assert!(html.contains("<strong id=\"cutoff\">30.06.2027</strong>"));
        assert!(html.contains("name=\"at\" value=\"2027-06-30\""));
        assert!(html.contains("<span id=\"count-oces2-only\">1</span>"));
        assert!(html.contains("<td class=\"at-date plain\">plain</td>"));
        assert!(html.contains("<td class=\"messages\">7</td>"));
        assert!(html.contains("listed: &lt;no journal&gt;"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn a_problem_page_escapes_its_detail() {
        let p = problem("Bad date", "\"<b>\" is not a date");
        assert!(p.contains("&quot;&lt;b&gt;&quot; is not a date"));
        assert!(!p.contains("<b>"));
    }
}
