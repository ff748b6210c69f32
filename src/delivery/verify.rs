//! Recipient verification for the inbound server: asks the mailbox server
//! (`relay.internal`) with MAIL FROM:<> and RCPT TO whether an address
//! exists, without sending anything, and remembers the answer for
//! `server.verify_cache_ttl`. Lets the gateway refuse unknown users at RCPT
//! time instead of accepting and bouncing (backscatter).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::client::{connect, describe};
use crate::config::SettingsSource;
use crate::smtp::{RcptCheck, RecipientVerifier};

/// Answers and when they were learnt, by address.
type Cache = HashMap<String, (Instant, RcptCheck)>;

pub struct Verifier {
    settings: Arc<dyn SettingsSource>,
    cache: Mutex<Cache>,
}

impl Verifier {
    pub fn new(settings: Arc<dyn SettingsSource>) -> Self {
        Self {
            settings,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn probe(&self, rcpt: &str) -> RcptCheck {
        let settings = self.settings.settings();
        let hop = settings.relay.internal.as_str();
        let mut conn = match connect(&settings.relay, &settings.server.hostname, hop).await {
            Ok(c) => c,
            Err(e) => return RcptCheck::TryLater(e),
        };
        if let Err(e) = conn.command("MAIL FROM:<>\r\n").await {
            conn.abort().await;
            return RcptCheck::TryLater(describe(&e));
        }
        let path = crate::mail::address::smtp_path(rcpt);
        let answer = match conn.command(format!("RCPT TO:<{path}>\r\n")).await {
            Ok(_) => RcptCheck::Exists,
            Err(e) if e.is_permanent() => RcptCheck::Unknown(describe(&e)),
            Err(e) => RcptCheck::TryLater(describe(&e)),
        };
        let _ = conn.command("RSET\r\n").await;
        let _ = conn.quit().await;
        answer
    }
}

impl RecipientVerifier for Verifier {
    fn check<'a>(
        &'a self,
        rcpt: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = RcptCheck> + Send + 'a>> {
        Box::pin(async move {
            let key = rcpt.to_ascii_lowercase();
            let ttl = self.settings.settings().server.verify_cache_ttl;
            if let Some((at, answer)) = self
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
            {
                if at.elapsed() < ttl {
                    return answer.clone();
                }
            }
            let answer = self.probe(rcpt).await;
            // Only definite answers are remembered.
            if !matches!(answer, RcptCheck::TryLater(_)) {
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, (Instant::now(), answer.clone()));
            }
            answer
        })
    }
}
