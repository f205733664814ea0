//! The frame decoder as a connection runs it: a byte stream, read in chunks
//! of a size the fuzzer picks, split into length-prefixed frames, each frame
//! decoded as a request. Checks that no frame passes the maximum, that no
//! frame holds more than arrived, and that nothing panics.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::AsyncRead;
use net::frame::{read_frame, FrameError};

/// Hands the stream out at most `chunk` bytes per read, like a slow peer.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(n))
    }
}

const MAX_FRAME: usize = 64 << 10;

/// One input, as `cargo fuzz` hands it over (and as the corpus replay does).
pub fn run(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut r = Chunked {
        data: stream,
        chunk: usize::from(chunk % 64) + 1,
    };
    let mut consumed = 0usize;
    futures_lite::future::block_on(async {
        loop {
            match read_frame(&mut r, MAX_FRAME).await {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME, "frame over the maximum");
                    consumed += 4 + frame.len();
                    assert!(
                        consumed <= stream.len(),
                        "frame holds bytes that never arrived"
                    );
                    let _ = net::decode_request(frame);
                }
                Ok(None) => {
                    assert_eq!(consumed, stream.len(), "clean close before the end");
                    break;
                }
                Err(FrameError::Io(e)) => panic!("the reader never fails: {e}"),
                Err(_) => break,
            }
        }
    });
}
