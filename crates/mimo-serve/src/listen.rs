//! The HTTP/1 accept loop. `axum::serve` has no connection cap and no header-read timeout (it sets no hyper
//! timer), so half-sent requests hold sockets forever; this loop is `axum::serve` plus both, and a shutdown
//! that stops waiting for connections after a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ListenLimits {
    /// Most open connections; one more is answered 503 and closed.
    pub max_connections: usize,
    /// A client must send a request's headers within this time (also bounds idle keep-alive connections).
    pub header_read_timeout: Duration,
}

impl Default for ListenLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: application/json\r\n\
content-length: 96\r\n\r\n{\"error\":{\"message\":\"too many open connections\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish for up to
/// `drain` before returning.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "refusing {peer}: {} connections open",
                limits.max_connections
            );
            tokio::spawn(async move {
                // Answer, then drain what the client sent before closing: closing a socket with unread
                // input sends a reset that can destroy the answer in flight.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    stream.write_all(OVERLOADED).await?;
                    stream.shutdown().await?;
                    let mut sink = [0u8; 4096];
                    while stream.read(&mut sink).await? > 0 {}
                    Ok::<_, std::io::Error>(())
                })
                .await;
            });
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut router = app.clone();
            async move { router.call(req.map(Body::new)).await }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection {peer}: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}; closing them");
    }
}
