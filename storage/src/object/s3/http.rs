//! One HTTP/1.1 exchange with the S3 endpoint: a signed request goes out on
//! a pooled connection with its body streamed chunk by chunk, the whole
//! answer comes back, all under one timeout.
//!
//! Runs on the shard that owns the [`Pool`]. The timeout is a glommio timer
//! racing the exchange; when it fires the connection is dropped (closed),
//! never reused. Must never block, retry (the caller's policy does), or
//! interpret S3 semantics beyond the status code.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, HOST};
use hyper::{Method, Request, Uri};

use super::pool::Pool;
use crate::object::{body_len, ObjectBody, ObjectError};

/// A request body made of the caller's chunks, sent as they are: the
/// object is never concatenated into one buffer.
pub struct ChunkBody {
    chunks: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl ChunkBody {
    pub fn new(body: ObjectBody) -> ChunkBody {
        let remaining = body_len(&body);
        ChunkBody {
            chunks: body.into_iter(),
            remaining,
        }
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        for chunk in self.chunks.by_ref() {
            if chunk.is_empty() {
                continue;
            }
            self.remaining -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// What to send: a presigned URL (signature in the query string), the
/// headers that are not signed, and the body.
pub struct HttpRequest {
    pub method: Method,
    pub url: url::Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: ObjectBody,
}

impl HttpRequest {
    pub fn new(method: Method, url: url::Url) -> HttpRequest {
        HttpRequest {
            method,
            url,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> HttpRequest {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: ObjectBody) -> HttpRequest {
        self.body = body;
        self
    }
}

/// A whole answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends `req` and reads the whole answer, failing with
/// [`ObjectError::Timeout`] if that takes longer than `timeout` (waiting
/// for a free connection slot does not count).
pub async fn exchange(
    pool: &Pool,
    req: HttpRequest,
    timeout: Duration,
) -> Result<HttpResponse, ObjectError> {
    let request = build(req)?;
    let slot = pool.slot().await?;
    let attempt = async {
        let mut lease = pool.lease(slot).await?;
        let answer = lease
            .sender()
            .send_request(request)
            .await
            .map_err(|e| ObjectError::Io(format!("request failed: {}", chain(&e))))?;
        let (parts, incoming) = answer.into_parts();
        let body = read_body(incoming).await?;
        if !closes(&parts.headers) {
            lease.release();
        }
        Ok(HttpResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    let timer = async {
        glommio::timer::sleep(timeout).await;
        Err(ObjectError::Timeout(timeout.as_millis() as u64))
    };
    futures_lite::future::or(attempt, timer).await
}

/// The hyper request: origin-form target, the `Host` that was signed, an
/// explicit `Content-Length` for bodies (S3 refuses chunked uploads and
/// wants `0` on an empty PUT).
fn build(req: HttpRequest) -> Result<Request<ChunkBody>, ObjectError> {
    let target = &req.url[url::Position::BeforePath..];
    let uri: Uri = target
        .parse()
        .map_err(|e| ObjectError::Invalid(format!("request target {target:?}: {e}")))?;
    let host = match (req.url.host_str(), req.url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(ObjectError::Config(format!("{} has no host", req.url))),
    };
    let sends_body = req.method == Method::PUT || req.method == Method::POST;
    let len = body_len(&req.body);
    let mut request = Request::builder().method(req.method).uri(uri);
    let headers = request
        .headers_mut()
        .ok_or_else(|| ObjectError::Invalid("request builder failed".into()))?;
    headers.insert(HOST, header_value(&host)?);
    if sends_body || len > 0 {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    for (name, value) in &req.headers {
        headers.insert(*name, header_value(value)?);
    }
    request
        .body(ChunkBody::new(req.body))
        .map_err(|e| ObjectError::Invalid(format!("request: {e}")))
}

fn header_value(v: &str) -> Result<HeaderValue, ObjectError> {
    HeaderValue::from_str(v).map_err(|e| ObjectError::Invalid(format!("header value {v:?}: {e}")))
}

/// Reads the answer's body to its end. A body that ends early (connection
/// reset, cut short) is an [`ObjectError::Io`]: worth retrying.
async fn read_body(mut incoming: Incoming) -> Result<Bytes, ObjectError> {
    let mut frames: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut incoming).poll_frame(cx)).await {
        let frame =
            frame.map_err(|e| ObjectError::Io(format!("reading answer body: {}", chain(&e))))?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            frames.push(data);
        }
    }
    if frames.len() <= 1 {
        return Ok(frames.pop().unwrap_or_default());
    }
    // The caller wants one contiguous `Bytes` and hyper hands out the body
    // in read-buffer-sized pieces: one copy is unavoidable here.
    let mut whole = BytesMut::with_capacity(len);
    for f in frames {
        whole.extend_from_slice(&f);
    }
    Ok(whole.freeze())
}

/// The server will close the connection after this answer (moto does
/// after every one).
fn closes(headers: &HeaderMap) -> bool {
    headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.eq_ignore_ascii_case("close")))
}

/// An error with its sources, so "connection reset" is not hidden behind
/// hyper's "error reading a body from connection".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_all(body: &mut ChunkBody) -> Vec<Bytes> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut *body).poll_frame(&mut cx) {
            out.push(frame.into_data().unwrap());
        }
        out
    }

    #[test]
    fn chunk_body_sends_the_chunks_as_they_are() {
        let a = Bytes::from_static(b"hello ");
        let b = Bytes::from_static(b"world");
        let mut body = ChunkBody::new(vec![a.clone(), Bytes::new(), b.clone()]);
        assert_eq!(body.size_hint().exact(), Some(11));
        assert!(!body.is_end_stream());
        let frames = poll_all(&mut body);
        assert_eq!(frames, vec![a.clone(), b]);
        // Same memory, not a copy.
        assert_eq!(frames[0].as_ptr(), a.as_ptr());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[test]
    fn requests_are_origin_form_with_the_signed_host() {
        let url: url::Url = "http://127.0.0.1:9000/b/k%20x?X-Amz-Signature=ab&partNumber=1"
            .parse()
            .unwrap();
        let req = build(
            HttpRequest::new(Method::PUT, url)
                .header("range", "bytes=0-1")
                .body(vec![Bytes::from_static(b"abc")]),
        )
        .unwrap();
        assert_eq!(
            req.uri().to_string(),
            "/b/k%20x?X-Amz-Signature=ab&partNumber=1"
        );
        assert_eq!(req.headers()[HOST], "127.0.0.1:9000");
        assert_eq!(req.headers()[CONTENT_LENGTH], "3");
        assert_eq!(req.headers()["range"], "bytes=0-1");

        let url: url::Url = "https://b.s3.amazonaws.com/k".parse().unwrap();
        let put = build(HttpRequest::new(Method::PUT, url.clone())).unwrap();
        assert_eq!(put.headers()[HOST], "b.s3.amazonaws.com");
        assert_eq!(put.headers()[CONTENT_LENGTH], "0");
        let get = build(HttpRequest::new(Method::GET, url)).unwrap();
        assert!(get.headers().get(CONTENT_LENGTH).is_none());
    }
}
