//! The local API: JSON over HTTP on 127.0.0.1, for the CLI and (later) the
//! web UI. Every request carries the token from node.json; requests whose
//! Host is not a loopback name are refused, so web pages cannot reach the
//! node through DNS rebinding or cross-site requests.
//!
//! `POST /v1/request` takes a `Request` and streams newline-delimited JSON:
//! `{"progress":{"done":N,"total":M}}` lines, then one `{"reply":…}` or
//! `{"error":"…","cancelled":bool}`. A client that disconnects cancels its
//! request. `GET /v1/status` describes the node. `GET /v1/events` is a
//! server-sent event stream of changes (`event: change`: the op — a
//! request's, or `sync` for a peer's update —, the project and its clocks,
//! client id → clock), for views that stay current.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meshstudio_codec::Observer;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::net::fetch::{all_stems, sync_report};
use crate::request::{Context, Request, RequestError, execute};

/// Progress lines buffered per request; a slow client just sees fewer.
const EVENTS_IN_FLIGHT: usize = 64;
/// Change events buffered for slow event-stream readers (they then skip).
const CHANGES_IN_FLIGHT: usize = 256;
/// Hosts a legitimate local client sends.
const LOOPBACK_HOSTS: &[&str] = &["127.0.0.1", "localhost", "[::1]"];

/// What the API handlers share.
pub struct ApiState {
    pub ctx: Arc<Mutex<Context>>,
    pub token: String,
    pub id: String,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub addresses: Vec<SocketAddr>,
    pub started: Instant,
    pub shutting_down: Arc<AtomicBool>,
    /// Turns true when the node stops: long-lived responses (the event
    /// stream, `sync --wait`) end then, or the server would wait for them.
    pub stopping: tokio::sync::watch::Sender<bool>,
    pub changes: tokio::sync::broadcast::Sender<Value>,
    pub hub: Arc<crate::net::hub::Hub>,
}

/// A fresh change channel for `ApiState::changes`.
pub fn change_channel() -> tokio::sync::broadcast::Sender<Value> {
    tokio::sync::broadcast::channel(CHANGES_IN_FLIGHT).0
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/request", post(request))
        .route("/v1/events", get(events))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Refuses foreign Hosts (403) and missing or wrong tokens (401).
async fn guard(State(s): State<Arc<ApiState>>, req: HttpRequest, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        tracing::warn!(host, "API request with a foreign Host refused");
        return (StatusCode::FORBIDDEN, "forbidden host\n").into_response();
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let token = auth.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
    if !same_secret(token.as_bytes(), s.token.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong token\n").into_response();
    }
    next.run(req).await
}

/// Host header without its port is a loopback name.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    LOOPBACK_HOSTS.contains(&name)
}

/// Compares without an early exit, so timing says nothing about the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(s): State<Arc<ApiState>>) -> Json<Value> {
    // Not while a request holds the context: status must answer at once.
    let stems = s.ctx.try_lock().ok().map(|mut ctx| all_stems(&mut ctx));
    let projects = stems.as_ref().map(Vec::len);
    let sync = match stems {
        Some(stems) => Some(sync_report(&s.hub, stems).await),
        None => None,
    };
    Json(json!({
        "id": s.id,
        "pid": std::process::id(),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "data_dir": s.data_dir,
        "api": s.api,
        "addresses": s.addresses,
        "projects": projects,
        "busy": projects.is_none(),
        "peers": s.hub.peer_report(),
        "sync": sync,
        "audio": crate::audio::engine::current(),
    }))
}

async fn request(State(s): State<Arc<ApiState>>, Json(req): Json<Request>) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(EVENTS_IN_FLIGHT);
    if let Request::SyncWait {
        project,
        timeout_seconds,
    } = req
    {
        let stopping = s.stopping.subscribe();
        tokio::spawn(sync_wait(
            s.hub.clone(),
            project,
            timeout_seconds,
            tx,
            stopping,
        ));
        return ndjson(rx);
    }
    if let Request::Stop = req {
        let stopped = crate::request::record::stop();
        let _ = tx
            .send(line_of(&json!({ "reply": { "stopped": stopped } })))
            .await;
        return ndjson(rx);
    }
    let observer = RemoteObserver {
        tx: tx.clone(),
        done: AtomicU64::new(0),
        stop: s.shutting_down.clone(),
    };
    let ctx = s.ctx.clone();
    let op = op_name(&req);
    let changes = req.is_change().then(|| s.changes.clone());
    tracing::info!(op, "request");
    tokio::task::spawn_blocking(move || {
        // The engine takes the context only to prepare and to commit.
        let result = if req.uses_engine() {
            crate::request::run_engine(&*ctx, req, &observer)
        } else {
            let mut ctx = ctx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            execute(&mut ctx, req, &observer)
        };
        let line = match result {
            Ok(reply) => {
                if let Some(changes) = changes {
                    let mut ctx = ctx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let _ = changes.send(change_event(&mut ctx, &op, &reply));
                }
                json!({ "reply": reply })
            }
            Err(RequestError::Cancelled) => {
                tracing::info!(op, "request cancelled");
                json!({ "error": "cancelled", "cancelled": true })
            }
            Err(e) => {
                tracing::info!(op, error = %e, "request failed");
                json!({ "error": e.to_string(), "cancelled": false })
            }
        };
        let _ = tx.blocking_send(line_of(&line));
    });
    ndjson(rx)
}

/// The event a successful change request announces: its op, project and
/// the project's clocks after it.
fn change_event(ctx: &mut Context, op: &str, reply: &Value) -> Value {
    let project = reply.get("project").or_else(|| reply.get("id"));
    let clocks = project
        .and_then(Value::as_str)
        .and_then(|p| ctx.doc(p).ok())
        .map(|p| p.clocks());
    json!({ "op": op, "project": project, "clocks": clocks })
}

fn ndjson(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// Longest `sync --wait` the API accepts.
const MAX_SYNC_WAIT_SECONDS: f64 = 24.0 * 3600.0;

/// `sync --wait`, run without holding the request context (the sync
/// sessions it waits for need it).
async fn sync_wait(
    hub: Arc<crate::net::hub::Hub>,
    project: String,
    seconds: f64,
    tx: mpsc::Sender<Bytes>,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let timeout = std::time::Duration::from_secs_f64(seconds.clamp(0.0, MAX_SYNC_WAIT_SECONDS));
    let progress = |have: u64, want: u64| {
        let _ = tx.try_send(line_of(
            &json!({ "progress": { "done": have, "total": want } }),
        ));
    };
    let waited = tokio::select! {
        waited = crate::net::wait::synced(hub, project, timeout, progress) => waited,
        () = stopped(stopping) => Err("the node is stopping".to_string()),
    };
    let line = match waited {
        Ok(reply) => json!({ "reply": reply }),
        Err(e) => json!({ "error": e, "cancelled": false }),
    };
    let _ = tx.send(line_of(&line)).await;
}

async fn events(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio_stream::wrappers::{BroadcastStream, WatchStream};
    let changes = BroadcastStream::new(s.changes.subscribe())
        .filter_map(|change| change.ok())
        .map(|change| Some(Event::default().event("change").data(change.to_string())));
    // The stream ends when the node stops (the server waits for open ones).
    let stop = WatchStream::new(s.stopping.subscribe())
        .filter(|stopping| *stopping)
        .map(|_| None);
    let stream = changes
        .merge(stop)
        .take_while(Option::is_some)
        .filter_map(|event| event.map(Ok::<_, Infallible>));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Resolves once the node starts stopping.
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

fn op_name(req: &Request) -> String {
    serde_json::to_value(req)
        .ok()
        .and_then(|v| v["op"].as_str().map(String::from))
        .unwrap_or_default()
}

fn line_of(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).expect("json values serialize");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Progress goes to the client as it happens; a closed connection (the
/// CLI's Ctrl-C) or a node shutting down cancels the request.
struct RemoteObserver {
    tx: mpsc::Sender<Bytes>,
    done: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl Observer for RemoteObserver {
    fn total(&self, frames: Option<u64>) {
        self.done.store(0, Ordering::Relaxed);
        let _ = self.tx.try_send(line_of(
            &json!({ "progress": { "done": 0, "total": frames } }),
        ));
    }

    fn advance(&self, frames: u64) {
        let done = self.done.fetch_add(frames, Ordering::Relaxed) + frames;
        let _ = self
            .tx
            .try_send(line_of(&json!({ "progress": { "done": done } })));
    }

    fn cancelled(&self) -> bool {
        self.tx.is_closed() || self.stop.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass() {
        for ok in [
            "127.0.0.1:7878",
            "localhost:7878",
            "[::1]:7878",
            "localhost",
            "127.0.0.1",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "",
            "localhost.evil:80",
            "10.0.0.1:7878",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"ab"));
    }
}
