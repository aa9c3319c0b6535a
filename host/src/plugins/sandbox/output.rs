//! Guest stdout/stderr: captured per call into a bounded buffer, then logged (scrubbed).
//!
//! A full buffer silently drops further bytes instead of failing the write: Rust's `println!`
//! panics when stdout errors, and a chatty plugin must not fail its reviews for it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How many bytes of one stream a single call may leave for the log. Enough for a panic message
/// and some debugging output; the rest is counted and dropped.
pub const CAPTURE_BYTES: usize = 8 * 1024;

/// Longer than any token a review can carry (the body limit's default is 64 KiB).
const TOKEN_SLACK: usize = 64 * 1024;

/// What a write may hand over at once (a WASI "permit").
const WRITE_PERMIT: usize = 64 * 1024;

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

/// One call's captured stream. Cloning shares the buffer.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<Mutex<Captured>>,
    /// Bytes kept beyond [`CAPTURE_BYTES`] so that scrubbing sees a token cut by the cap whole.
    limit: usize,
}

impl Capture {
    /// The buffer keeps [`TOKEN_SLACK`] more than it logs, so the scrubber sees whole any token
    /// that starts before the cap, and only then is the text capped.
    pub fn new() -> Self {
        Self { inner: Arc::default(), limit: CAPTURE_BYTES + TOKEN_SLACK }
    }

    /// Takes what was written, and how many bytes were dropped.
    pub fn take(&self) -> (Vec<u8>, usize) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut c.bytes), std::mem::take(&mut c.dropped))
    }

    fn push(&self, data: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.limit.saturating_sub(c.bytes.len());
        let kept = room.min(data.len());
        c.bytes.extend_from_slice(&data[..kept]);
        c.dropped += data.len() - kept;
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_prefix_and_counts_the_rest() {
        let c = Capture::new();
        let mut s = c.clone();
        OutputStream::write(&mut s, Bytes::from(vec![b'a'; CAPTURE_BYTES + 10])).unwrap();
        let (bytes, dropped) = c.take();
        assert_eq!(bytes.len(), CAPTURE_BYTES + 10);
        assert_eq!(dropped, 0);
        // Without a take in between, writes accumulate up to the limit and the rest is counted.
        OutputStream::write(&mut s, Bytes::from(vec![b'a'; TOKEN_SLACK])).unwrap();
        OutputStream::write(&mut s, Bytes::from(vec![b'a'; CAPTURE_BYTES + 10])).unwrap();
        let (bytes, dropped) = c.take();
        assert_eq!(bytes.len(), CAPTURE_BYTES + TOKEN_SLACK);
        assert_eq!(dropped, 10);
        // One oversized write keeps the limit and counts the excess.
        OutputStream::write(&mut s, Bytes::from(vec![b'a'; CAPTURE_BYTES + TOKEN_SLACK + 10])).unwrap();
        assert_eq!(c.take().1, 10);
    }
}
