//! Reading what is left of a refused request's body before the answer goes out.
//!
//! A handler that refuses a request early (401 for a missing token, 413 past the upload
//! limit, 400 for a malformed form) leaves the rest of the body unread. hyper then closes the
//! connection with those bytes still in the socket; the kernel answers a client that is still
//! sending with a reset, and the client reports "Send failure: Broken pipe" (curl) or a
//! connection error instead of our answer (hyper issues #2384, #3241; seen here with `curl -F`
//! of a 330 KB WAV without a token). So every request's body is shared with this layer, and
//! when the answer is an error the layer reads and discards what the handler left — at most
//! [`DRAIN_BYTES`] within [`DRAIN_TIME`]; past that the connection closes as before.
//!
//! Not drained: a request that sent `Expect: 100-continue` (its body has not been sent, and
//! reading it would ask the client for it; curl does so over 1 MiB), and bodies already read
//! to the end (every JSON route reads its whole body).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};

/// The most a refused request's leftover body is read for (64 MiB).
pub const DRAIN_BYTES: usize = 64 << 20;
/// The longest a refused request's leftover body is read for.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The middleware: passes the request on with its body shared, and drains that body when
/// the response is a client or server error.
pub async fn drain_refused(req: Request, next: Next) -> Response {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue || req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let shared = SharedBody(Arc::new(Mutex::new(body)));
    let res = next
        .run(Request::from_parts(parts, Body::new(shared.clone())))
        .await;
    if res.status().is_client_error() || res.status().is_server_error() {
        let _ = tokio::time::timeout(DRAIN_TIME, discard(shared)).await;
    }
    res
}

/// Reads `body` to its end or past [`DRAIN_BYTES`], discarding the data; stops at an error.
async fn discard(mut body: SharedBody) {
    let mut read = 0usize;
    while read <= DRAIN_BYTES {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

/// A request body the handler reads and the layer can still read after it.
#[derive(Clone)]
struct SharedBody(Arc<Mutex<Body>>);

impl SharedBody {
    fn inner(&self) -> std::sync::MutexGuard<'_, Body> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut *self.inner()).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner().size_hint()
    }
}
