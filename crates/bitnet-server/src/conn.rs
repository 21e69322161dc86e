//! A connection's socket with a write-stall timeout: a client that stops reading its response
//! (its TCP receive window and our send buffer fill up) gets its connection closed once no byte
//! could be written for [`ServerConfig::write_timeout`](crate::ServerConfig::write_timeout).
//!
//! The clock runs only while a write is *waiting for the socket* (the inner `poll_write` or
//! `poll_flush` returned `Pending`) and restarts whenever bytes go out. A connection with
//! nothing to write (an idle keep-alive, or a stream whose model is slower than the timeout)
//! never trips it; only a peer that does not read does. When it trips, every write returns
//! [`io::ErrorKind::TimedOut`]: hyper fails the connection and drops it, with it the response
//! body, and so the body's engine receiver, which tells the scheduler to free the sequence.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a socket: reads pass through; writes fail once the socket accepted nothing for
/// `timeout` while there was something to write.
pub(crate) struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// The deadline of the write that is waiting, if one is (created on the first wait).
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` is set for the current wait.
    armed: bool,
    /// Set once the timeout fired: the connection is dead for writing.
    fired: bool,
    /// Counts connections cut off this way.
    stalls: Arc<AtomicU64>,
}

impl<S> WriteTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration, stalls: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
            fired: false,
            stalls,
        }
    }

    fn stalled_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading the response (write timeout)",
        )
    }

    /// Handles the inner write operation's result: progress (or an error) disarms the clock;
    /// `Pending` arms it (if not yet) and fails with `TimedOut` once it runs out.
    fn track<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let deadline = Instant::now() + self.timeout;
        let sleep = match &mut self.sleep {
            Some(s) => {
                if !self.armed {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        // Polling the sleep registers the waker, so the task wakes at the deadline even if the
        // socket never becomes writable again.
        ready!(sleep.as_mut().poll(cx));
        self.fired = true;
        self.stalls.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            "closing a connection whose client read nothing for {:?}",
            self.timeout
        );
        Poll::Ready(Err(Self::stalled_error()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.fired {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.fired {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fired {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing must not wait on a peer that does not read either; after a stall, there is
        // nothing left to flush politely.
        let this = self.get_mut();
        if this.fired {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.track(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const TIMEOUT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_reader_that_stops_trips_it_and_an_idle_writer_does_not() {
        let stalls = Arc::new(AtomicU64::new(0));
        let (a, mut b) = duplex(64);
        let mut w = WriteTimeout::new(a, TIMEOUT, stalls.clone());
        // Nothing to write for longer than the timeout: no error.
        tokio::time::sleep(TIMEOUT * 2).await;
        w.write_all(&[1; 64]).await.unwrap();
        // The peer reads: more writes go through even after long pauses between them.
        let mut buf = [0; 64];
        b.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(TIMEOUT * 2).await;
        w.write_all(&[2; 64]).await.unwrap();
        assert_eq!(stalls.load(Ordering::Relaxed), 0);
        // The pipe is full and the peer never reads: the write fails after the timeout.
        let t = Instant::now();
        let e = w.write_all(&[3; 8]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= TIMEOUT, "{:?}", t.elapsed());
        assert!(
            t.elapsed() < TIMEOUT + Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
        // Dead for writing from now on, without waiting again.
        assert!(w.write_all(&[4]).await.is_err());
        assert!(w.flush().await.is_err());
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let stalls = Arc::new(AtomicU64::new(0));
        let (a, mut b) = duplex(16);
        // Reads come every 100 ms, so the 500 ms timeout leaves room for a loaded machine,
        // while the whole transfer (eleven reads) takes over twice the timeout.
        let timeout = Duration::from_millis(500);
        let mut w = WriteTimeout::new(a, timeout, stalls.clone());
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0; 16];
            while got < 176 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                got += b.read(&mut buf).await.unwrap();
            }
        });
        let t = Instant::now();
        w.write_all(&[7; 176]).await.unwrap();
        assert!(t.elapsed() > timeout, "{:?}", t.elapsed());
        reader.await.unwrap();
        assert_eq!(stalls.load(Ordering::Relaxed), 0);
    }
}
