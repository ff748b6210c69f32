//! The status page's routes on the gateway's HTTP stack
//! (`http_stack::serve`): `GET /` the page at the configured cutoff,
//! `GET /?at=YYYY-MM-DD` the readiness table at another day; a bad date
//! is a 400 page, other paths 404, other methods 405. Served to this host,
//! or to whoever presents `status.token_file`'s token (`http_access`).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::board::{now, Board};
use super::dates;
use super::page::{self, IdentityRow, View};
use crate::config::SettingsSource;
use crate::spool::Store;
use crate::{http_stack, observe};

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
    /// The page at the configured cutoff.
    Default,
    /// The page with the table at this moment (a picked day).
    At(i64),
}

/// Reads the query: no `at` (or an empty one) is the default page.
pub fn ask(query: Option<&str>) -> Result<Ask, dates::BadDate> {
    let at = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "at")
            .map(|(_, v)| v.into_owned())
    });
    match at {
        None => Ok(Ask::Default),
        Some(v) if v.trim().is_empty() => Ok(Ask::Default),
        Some(v) => dates::parse_day(&v).map(Ask::At),
    }
}

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Everything but the table, read now.
async fn view(board: &Board, store: &Arc<Store>, table: page::Table, picked: bool) -> View {
    let live = board.live();
    let snapshot = live.current();
    let now = now();
    let revoked = live.revoked.current();
    let identities = snapshot
        .keys
        .identities
        .iter()
        .map(|id| {
            let i = &id.info;
            IdentityRow {
                subject_cn: i.subject_cn.clone(),
                generation: i.generation.to_string(),
                kind: i.kind.to_string(),
                mailboxes: id.mailboxes.clone(),
                not_after: i.not_after,
                state: i.state_at(now, revoked.contains(&id.fingerprint())),
            }
        })
        .collect();
    let store2 = Arc::clone(store);
    let counts = tokio::task::spawn_blocking(move || {
        (
            store2.list().map(|l| l.len()).map_err(|e| e.to_string()),
            store2.quarantine_count().map_err(|e| e.to_string()),
        )
    })
    .await;
    let (queue, quarantine) = counts.unwrap_or_else(|e| (Err(e.to_string()), Err(e.to_string())));
    View {
        hostname: snapshot.settings.server.hostname.clone(),
        now,
        cutoff: snapshot.settings.policy.oces2_cutoff.map(|c| c.unix),
        identities,
        queue,
        quarantine,
        table,
        picked,
    }
}

async fn answer(
    board: &Arc<Board>,
    store: &Arc<Store>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/" {
        return html(
            StatusCode::NOT_FOUND,
            page::problem("Not found", "The status page is at /."),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = html(
            StatusCode::METHOD_NOT_ALLOWED,
            page::problem(
                "Method not allowed",
                "The status page is read-only: GET only.",
            ),
        );
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match ask(req.uri().query()) {
        Err(e) => html(
            StatusCode::BAD_REQUEST,
            page::problem("Not a date", &e.to_string()),
        ),
        Ok(Ask::Default) => {
            let table = (*board.current().await).clone();
            html(
                StatusCode::OK,
                page::render(&view(board, store, table, false).await),
            )
        }
        Ok(Ask::At(at)) => match board.at(at).await {
            Ok(table) => html(
                StatusCode::OK,
                page::render(&view(board, store, (*table).clone(), true).await),
            ),
            Err(busy) => {
                let mut r = html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    page::problem("Busy", &busy.to_string()),
                );
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("10"));
                r
            }
        },
    }
}

/// Serves the status page until shutdown.
pub async fn serve(
    listener: TcpListener,
    board: Arc<Board>,
    store: Arc<Store>,
    shutdown: watch::Receiver<bool>,
) {
    http_stack::serve(listener, "status page", shutdown, move |req, peer| {
        let (board, store) = (Arc::clone(&board), Arc::clone(&store));
        async move {
            let token = board.live().settings().status.token_file.clone();
            match observe::refused(&req, peer, token.as_deref(), "status.token_file") {
                Some(no) => no,
                None => answer(&board, &store, req).await,
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_a_day_or_nothing() {
        assert_eq!(ask(None), Ok(Ask::Default));
        assert_eq!(ask(Some("")), Ok(Ask::Default));
        assert_eq!(ask(Some("at=")), Ok(Ask::Default));
        assert_eq!(ask(Some("x=1")), Ok(Ask::Default));
        assert_eq!(ask(Some("at=2027-06-30")), Ok(Ask::At(1_814_306_400)));
        assert_eq!(
            ask(Some("x=1&at=2027%2D06%2D30")),
            Ok(Ask::At(1_814_306_400))
        );
        for bad in [
            "at=30.06.2027",
            "at=%3Cscript%3E",
            "at=2027-13-01",
            "at=%FF%FE",
        ] {
            assert!(ask(Some(bad)).is_err(), "{bad}");
        }
    }
}
