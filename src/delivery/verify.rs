//! Recipient verification for the inbound server: asks the mailbox server
//! (`relay.internal`) with MAIL FROM:<> and RCPT TO whether an address
//! exists, without sending anything, and remembers the answer for
//! `server.verify_cache_ttl`. Lets the gateway refuse unknown users at RCPT
//! time instead of accepting and bouncing (backscatter).
//!
//! Bounded: the cache keeps at most `server.verify_cache_size` answers
//! (least recently used go first), and at most `server.verify_rate`
//! questions per second reach the mailbox server, of which at most
//! `server.verify_rate_per_client` for one client (network); beyond that a
//! recipient gets a temporary failure rather than a probe, so a client
//! inventing addresses can neither grow the cache, nor flood the mailbox
//! server, nor use up the questions of every other client.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use lru::LruCache;

use super::client::{connect, describe};
use crate::config::SettingsSource;
use crate::smtp::{RcptCheck, RecipientVerifier};

/// Answers and when they were learnt, by address.
type Cache = LruCache<String, (Instant, RcptCheck)>;

pub struct Verifier {
    settings: Arc<dyn SettingsSource>,
    cache: Mutex<Cache>,
    probes: DefaultDirectRateLimiter,
    per_client: DefaultKeyedRateLimiter<std::net::IpAddr>,
}

impl Verifier {
    /// Sized by the settings in force at start (a reload does not resize).
    pub fn new(settings: Arc<dyn SettingsSource>) -> Self {
        let s = settings.settings();
        let size = std::num::NonZeroUsize::new(s.server.verify_cache_size)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let rate = NonZeroU32::new(s.server.verify_rate).unwrap_or(NonZeroU32::MIN);
        let per_client =
            NonZeroU32::new(s.server.verify_rate_per_client).unwrap_or(NonZeroU32::MIN);
        Self {
            settings,
            cache: Mutex::new(LruCache::new(size)),
            probes: RateLimiter::direct(Quota::per_second(rate)),
            per_client: RateLimiter::keyed(Quota::per_second(per_client)),
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
        let answer = match conn.command(&format!("RCPT TO:<{path}>\r\n")).await {
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
        client: std::net::IpAddr,
        rcpt: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = RcptCheck> + Send + 'a>> {
        Box::pin(async move {
            let key = crate::mail::address::key(rcpt);
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
            let settings = self.settings.settings();
            let network = crate::config::limit_key(client, settings.server.ipv6_prefix);
            // Clients seen long ago are forgotten, so the table stays small.
            if self.per_client.len() > 10_000 {
                self.per_client.retain_recent();
            }
            if self.per_client.check_key(&network).is_err() || self.probes.check().is_err() {
                tracing::warn!(event = "verify-rate", recipient = %rcpt,
                               "recipient verification rate exceeded: answered with a temporary failure");
                return RcptCheck::TryLater("too many recipient checks, try again later".into());
            }
            let answer = self.probe(rcpt).await;
            // Only definite answers are remembered.
            if !matches!(answer, RcptCheck::TryLater(_)) {
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .put(key, (Instant::now(), answer.clone()));
            }
            answer
        })
    }
}
