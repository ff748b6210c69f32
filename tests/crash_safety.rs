//! Nothing lost: under load from concurrent clients the gateway is killed
//! with SIGKILL several times and restarted; every message that was
//! answered 250 must reach the next hop at least once. Duplicates are
//! allowed (better twice than never) and reported.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::Client;
use common::sink::{Script, Sink};
use common::{wait_until, Gateway, Options};

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 50;
const KILLS: usize = 4;

#[test]
fn kill_9_under_load_loses_nothing_that_got_250() {
    let sink = Sink::start(Script::default());
    let gw = Arc::new(Mutex::new(Gateway::start(Options::new(sink.addr))));
    let addr = gw.lock().unwrap().addr;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(120);

    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let acked = Arc::clone(&acked);
        clients.push(std::thread::spawn(move || {
            let mut i = 0;
            let mut conn: Option<Client> = None;
            while i < PER_CLIENT && Instant::now() < deadline {
                let id = format!("crash-{n}-{i}");
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Client::connect(addr).and_then(|mut c| c.ehlo().map(|_| c)) {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    },
                };
                let body = common::message(&id, &"load line\r\n".repeat(20));
                match c.send("alice@example.org", &["bob@example-law.dk"], &body) {
                    Ok(r) if r.code == 250 => {
                        acked.lock().unwrap().push(format!("<{id}@test>"));
                        i += 1;
                    }
                    // Killed mid-transaction (or refused): send it again.
                    _ => {
                        conn = None;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }));
    }

    // Kill at evenly spread points of the load, while clients are sending.
    let killer = {
        let gw = Arc::clone(&gw);
        let done = Arc::clone(&done);
        let acked = Arc::clone(&acked);
        std::thread::spawn(move || {
            for k in 0..KILLS {
                let at = (k + 1) * CLIENTS * PER_CLIENT / (KILLS + 2);
                while acked.lock().unwrap().len() < at && !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let mut g = gw.lock().unwrap();
                g.kill9();
                std::thread::sleep(Duration::from_millis(100));
                g.spawn();
            }
        })
    };

    for c in clients {
        c.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    killer.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        CLIENTS * PER_CLIENT,
        "clients did not finish in time"
    );
    let all_arrived = wait_until(Duration::from_secs(60), || {
        let seen: std::collections::HashSet<String> = sink
            .received()
            .iter()
            .map(|r| message_id(&r.data))
            .collect();
        acked.iter().all(|id| seen.contains(id))
    });
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        *counts.entry(message_id(&r.data)).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let g = gw.lock().unwrap();
    let restarts = g.log().matches("smime-gateway started").count();
    eprintln!(
        "crash safety: {} acknowledged, {} delivered copies, {} duplicates, {} missing, {} gateway starts",
        acked.len(),
        sink.count(),
        duplicates,
        missing.len(),
        restarts
    );
    assert!(
        all_arrived && missing.is_empty(),
        "lost after 250: {missing:?}"
    );
    assert_eq!(
        restarts,
        KILLS + 1,
        "the gateway was not killed and restarted {KILLS} times"
    );
    assert!(wait_until(Duration::from_secs(10), || g.queued() == 0));
}

fn message_id(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn after_a_restart_only_pending_recipients_are_tried_again() {
    let mut script = Script::default();
    script
        .rcpt_replies
        .insert("later@example-law.dk".into(), "451 4.2.1 try later".into());
    let first = Sink::start(script);
    let mut gw = Gateway::start(Options::new(first.addr));
    let mut c = Client::connect(gw.addr).unwrap();
    c.ehlo().unwrap();
    let body = common::message("partial-1", "one now, one later");
    let r = c
        .send(
            "alice@example.org",
            &["now@example-law.dk", "later@example-law.dk"],
            &body,
        )
        .unwrap();
    assert_eq!(r.code, 250);
    assert!(wait_until(Duration::from_secs(10), || first.count() == 1));
    assert!(wait_until(Duration::from_secs(10), || gw
        .log()
        .contains("event=\"deferred\"")));
    gw.kill9();

    // The next start finds the message half done: the delivered recipient
    // is not sent again, the pending one is.
    let second = Sink::start(Script::default());
    let cfg = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        cfg.replace(&first.addr.to_string(), &second.addr.to_string()),
    )
    .unwrap();
    gw.spawn();
    assert!(
        wait_until(Duration::from_secs(15), || second.count() == 1),
        "pending recipient not retried"
    );
    std::thread::sleep(Duration::from_secs(2));
    let got = second.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].rcpts,
        vec!["later@example-law.dk".to_string()],
        "a delivered recipient was sent again"
    );
    assert_eq!(got[0].data, body);
    assert!(wait_until(Duration::from_secs(5), || gw.queued() == 0));
}
