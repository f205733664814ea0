//! Length-prefixed framing: a big-endian `i32` size, then that many bytes.
//!
//! Runs on the shard that owns the connection. A frame's buffer is
//! allocated at its full length up front, in one piece that later becomes
//! the request's `Bytes` without a copy, while the shard's frames being read
//! hold less than `AHEAD_BUDGET` that has not arrived yet. Past that budget
//! the buffer grows with the bytes that actually arrive, so a crowd of peers
//! that claim 100 MiB and send nothing costs the budget plus `FIRST_CHUNK`
//! each, and one that dribbles a frame holds at most twice what it sent.

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};

/// First buffer size for a frame body; it doubles as bytes arrive. Small,
/// because a slow or hostile peer holds it for as long as it likes.
const FIRST_CHUNK: usize = 8 * 1024;

/// Bytes a shard may allocate for frames ahead of their arrival (per
/// thread, so per shard: the connection loop runs on its shard).
const AHEAD_BUDGET: usize = 64 << 20;

thread_local! {
    /// Bytes allocated ahead for frames being read on this thread now.
    static AHEAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A claim on `AHEAD_BUDGET` for one frame being read; gives it back when
/// the frame is read (or its read is abandoned).
struct Ahead(usize);

impl Ahead {
    /// Claims `len` bytes if the budget still has them.
    fn claim(len: usize) -> Option<Ahead> {
        AHEAD.with(|a| {
            let used = a.get();
            (used + len <= AHEAD_BUDGET).then(|| {
                a.set(used + len);
                Ahead(len)
            })
        })
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // A read dropped while the thread itself is exiting has nothing to
        // give back to.
        let _ = AHEAD.try_with(|a| a.set(a.get() - self.0));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is negative")]
    Negative(i32),
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a frame's size prefix against `max`.
pub fn check_length(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = i32::from_be_bytes(prefix);
    if len < 0 {
        return Err(FrameError::Negative(len));
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads one frame body. `Ok(None)` on a clean close between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    Ok(read_frame_timed(r, max).await?.map(|(frame, _)| frame))
}

/// `read_frame`, also telling how long the frame took to arrive once its
/// length prefix was read (time spent waiting for the prefix is the
/// client's, not the request's).
pub async fn read_frame_timed<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<(Bytes, std::time::Duration)>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return match got {
                0 => Ok(None),
                _ => Err(FrameError::Truncated { got, want: 4 }),
            };
        }
        got += n;
    }
    let len = check_length(prefix, max)?;
    let started = std::time::Instant::now();
    if let Some(_claim) = Ahead::claim(len) {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let n = r.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(FrameError::Truncated {
                    got: filled,
                    want: len,
                });
            }
            filled += n;
        }
        return Ok(Some((Bytes::from(buf), started.elapsed())));
    }
    let mut buf = BytesMut::new();
    while buf.len() < len {
        let start = buf.len();
        buf.resize(grown_size(start, len), 0);
        let n = r.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(FrameError::Truncated {
                got: start,
                want: len,
            });
        }
    }
    Ok(Some((buf.freeze(), started.elapsed())))
}

/// The body buffer's next size once its first `filled` bytes of `len` have
/// arrived: doubled, so a large frame costs few reads and copies, but never
/// more than twice what the peer has sent (or `FIRST_CHUNK`).
fn grown_size(filled: usize, len: usize) -> usize {
    filled + (len - filled).min(FIRST_CHUNK.max(filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_grows_with_what_arrived_not_with_the_claim() {
        let claim = 100 << 20;
        assert_eq!(grown_size(0, claim), FIRST_CHUNK);
        assert_eq!(grown_size(0, 10), 10);
        let mut filled = 0;
        while filled < claim {
            let next = grown_size(filled, claim);
            assert!(next > filled && next <= claim);
            assert!(next <= FIRST_CHUNK.max(2 * filled), "{filled} -> {next}");
            filled = next;
        }
    }

    /// Hands out one byte per read, like a peer sending a byte a second.
    struct Dribble(std::vec::IntoIter<u8>);

    impl AsyncRead for Dribble {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = match (buf.first_mut(), self.0.next()) {
                (Some(slot), Some(b)) => {
                    *slot = b;
                    1
                }
                _ => 0,
            };
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn a_frame_dribbled_a_byte_at_a_time_arrives_whole() {
        let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let mut data = (body.len() as i32).to_be_bytes().to_vec();
        data.extend_from_slice(&body);
        let mut r = Dribble(data.into_iter());
        let frame = run(read_frame(&mut r, 1 << 20)).unwrap().unwrap();
        assert_eq!(&frame[..], &body[..]);
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(f)
    }

    #[test]
    fn reads_frames_in_sequence() {
        let mut data = Vec::new();
        for body in [&b"abc"[..], b"", b"hello world"] {
            data.extend_from_slice(&(body.len() as i32).to_be_bytes());
            data.extend_from_slice(body);
        }
        let mut r = futures_lite::io::Cursor::new(data);
        assert_eq!(&run(read_frame(&mut r, 100)).unwrap().unwrap()[..], b"abc");
        assert_eq!(&run(read_frame(&mut r, 100)).unwrap().unwrap()[..], b"");
        assert_eq!(
            &run(read_frame(&mut r, 100)).unwrap().unwrap()[..],
            b"hello world"
        );
        assert!(run(read_frame(&mut r, 100)).unwrap().is_none());
    }

    #[test]
    fn refuses_negative_and_huge_lengths() {
        let mut r = futures_lite::io::Cursor::new((-5i32).to_be_bytes().to_vec());
        assert!(matches!(
            run(read_frame(&mut r, 100)),
            Err(FrameError::Negative(-5))
        ));
        let mut r = futures_lite::io::Cursor::new(i32::MAX.to_be_bytes().to_vec());
        assert!(matches!(
            run(read_frame(&mut r, 100)),
            Err(FrameError::TooLarge { .. })
        ));
    }

    fn ahead_in_use() -> usize {
        AHEAD.with(|a| a.get())
    }

    #[test]
    fn the_ahead_budget_is_given_back_and_past_it_buffers_grow() {
        let mut data = 20_000i32.to_be_bytes().to_vec();
        data.extend_from_slice(&[5u8; 20_000]);
        // Within the budget: read whole, and the claim is returned.
        let mut r = futures_lite::io::Cursor::new(data.clone());
        assert_eq!(
            run(read_frame(&mut r, 1 << 20)).unwrap().unwrap().len(),
            20_000
        );
        assert_eq!(ahead_in_use(), 0);
        // A truncated frame returns its claim too.
        let mut r = futures_lite::io::Cursor::new(data[..100].to_vec());
        assert!(run(read_frame(&mut r, 1 << 20)).is_err());
        assert_eq!(ahead_in_use(), 0);
        // With the budget used up (by frames other peers are sending), the
        // frame still arrives, in a buffer that grows.
        let hog = Ahead::claim(AHEAD_BUDGET).unwrap();
        assert!(Ahead::claim(1).is_none());
        let mut r = Dribble(data.clone().into_iter());
        let frame = run(read_frame(&mut r, 1 << 20)).unwrap().unwrap();
        assert_eq!(&frame[..], &data[4..]);
        drop(hog);
        assert_eq!(ahead_in_use(), 0);
    }

    #[test]
    fn truncated_body_is_an_error() {
        let mut data = 100i32.to_be_bytes().to_vec();
        data.extend_from_slice(&[1u8; 10]);
        let mut r = futures_lite::io::Cursor::new(data);
        assert!(matches!(
            run(read_frame(&mut r, 1000)),
            Err(FrameError::Truncated { got: 10, want: 100 })
        ));
    }
}
