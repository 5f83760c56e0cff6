//! The admin listener (`[admin] listen`): plain HTTP/1.1 with hyper, for the operator's tools.
//!
//! - `GET /metrics`: every metric in the Prometheus text format;
//! - `GET /healthz`: 200 while the process serves at all;
//! - `GET /readyz`: 200 when new mail can be taken — plugins loaded and the upstream answering —
//!   503 with the reason otherwise (also while shutting down);
//! - `POST /reload`: reloads the configuration and answers when it is done, 200 with the new
//!   generation or 500 with why it failed (`wasmtp reload` uses it).
//!
//! Connections are few and bounded: 16 at once, 10 s to send the request head, 60 s in all.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::ReloadRequest;
use super::generation::Generation;
use crate::metrics::{self, Metrics};
use crate::shutdown::ShutdownSignal;

const MAX_CONNECTIONS: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_BOUND: Duration = Duration::from_secs(60);
/// How long `POST /reload` waits for the reload (plugins may have to be compiled).
const RELOAD_WAIT: Duration = Duration::from_secs(50);

/// What the endpoints read.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub current: watch::Receiver<Arc<Generation>>,
    pub reloads: mpsc::Sender<ReloadRequest>,
    pub shutdown: ShutdownSignal,
}

/// Serves the admin endpoints on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: too many admin connections
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(request, &state).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_BOUND, connection).await;
            drop(slot);
        });
    }
}

async fn handle(request: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            state.current.borrow().clone().report(&state.metrics);
            let mut response = text(StatusCode::OK, state.metrics.encode());
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(metrics::CONTENT_TYPE));
            response
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") => {
            if state.shutdown.is_draining() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
            }
            let ready = state.current.borrow().clone().ready();
            match ready {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            }
        }
        (&Method::POST, "/reload") => {
            let (done, result) = oneshot::channel();
            if state.reloads.send(ReloadRequest { done: Some(done) }).await.is_err() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
            }
            match tokio::time::timeout(RELOAD_WAIT, result).await {
                Ok(Ok(Ok(generation))) => text(StatusCode::OK, format!("reloaded: generation {generation}\n")),
                Ok(Ok(Err(why))) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed: {why}\n")),
                Ok(Err(_)) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
                Err(_) => text(StatusCode::ACCEPTED, "reload still in progress; the log will say how it went\n".into()),
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz or POST /reload\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// `POST /reload` to a running proxy's admin listener: its answer, or an error when the
/// reload failed or the proxy cannot be reached.
pub async fn request_reload(addr: SocketAddr) -> anyhow::Result<String> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request =
            Request::post("/reload").header(hyper::header::HOST, addr.to_string()).body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body).trim_end().to_string();
        if status.is_success() { Ok(body) } else { anyhow::bail!("{body}") }
    };
    tokio::time::timeout(CONNECTION_BOUND, exchange).await.context("no answer from the admin listener")?
}
