//! Connections that wait on their client too long are closed, as
//! PostgreSQL's `idle_session_timeout` does. A connection waits on its
//! client once the server has answered everything it was sent: a statement
//! or request still running, or an answer still being sent, is not
//! idleness, however long it takes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection of the HTTP server: its reads and writes keep the time of
/// the last bytes each way; a read that would wait on the client past the
/// limit ends the connection with an error, which closes it.
pub struct IdleIo<S> {
    inner: S,
    limit: Option<Duration>,
    /// The last bytes from the client.
    last_read: Instant,
    /// The last bytes to the client.
    last_write: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// The task waiting to read while a request was running: woken when
    /// the answer starts, so that its wait on the client is timed.
    reader: Option<Waker>,
}

impl<S> IdleIo<S> {
    /// `inner`, closed after waiting `limit` on its client (never with
    /// `None`).
    pub fn new(inner: S, limit: Option<Duration>) -> IdleIo<S> {
        let now = Instant::now();
        IdleIo {
            inner,
            limit,
            last_read: now,
            last_write: now,
            timer: None,
            reader: None,
        }
    }

    /// `n` bytes went to the client: from now the connection may wait on
    /// it, and a read already waiting is told to time that wait.
    fn wrote(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.last_write = Instant::now();
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }

    /// When the connection counts as idle, if it waits on its client.
    fn idle_at(&self) -> Option<Instant> {
        let limit = self.limit?;
        (self.last_write >= self.last_read).then(|| self.last_write + limit)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_read = Instant::now();
                    self.timer = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(at) = self.idle_at() else {
                    self.timer = None;
                    self.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                };
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle connection closed",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote(n);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection of the PostgreSQL server, watched from the kernel's
/// account of its socket (the protocol library owns the socket itself):
/// when it last sent and received data; with the count of its running
/// statements, since a statement sends its row description long before
/// its rows.
pub struct IdleWatch {
    /// The same socket (a duplicated descriptor).
    socket: std::net::TcpStream,
    limit: Duration,
}

impl IdleWatch {
    /// A watch over `socket`, idle after `limit`.
    pub fn new(socket: &tokio::net::TcpStream, limit: Duration) -> io::Result<IdleWatch> {
        use std::os::fd::AsFd;
        let socket = std::net::TcpStream::from(socket.as_fd().try_clone_to_owned()?);
        Ok(IdleWatch { socket, limit })
    }

    /// Resolves once the connection has waited on its client for the
    /// limit; never where the kernel does not tell. `running` tells whether
    /// a statement is running (its first rows may have been sent already).
    pub async fn idle(&self, running: impl Fn() -> bool) {
        loop {
            let Some((sent, received)) = last_data(&self.socket) else {
                return std::future::pending().await;
            };
            // The server spoke last and runs nothing: it waits on the client.
            let wait = if sent <= received && !running() {
                match self.limit.checked_sub(sent) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            } else {
                self.limit
            };
            tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
        }
    }

    /// Tell the client why (as PostgreSQL does, SQLSTATE 57P05) unless the
    /// connection is encrypted, then close the connection.
    pub fn close(self, plain: bool) {
        use std::io::Write;
        if plain {
            let _ = (&self.socket).write(&idle_error());
        }
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// PostgreSQL's FATAL ErrorResponse for an idle session.
fn idle_error() -> Vec<u8> {
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "57P05"),
        (b'M', "terminating connection due to idle-session timeout"),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    message
}

/// How long ago the socket last sent and last received data.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn last_data(socket: &std::net::TcpStream) -> Option<(Duration, Duration)> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is a plain C struct, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open for as long as `socket` lives; `info`
    // and `len` are valid for writes and `len` is the size of `info`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        (
            Duration::from_millis(info.tcpi_last_data_sent.into()),
            Duration::from_millis(info.tcpi_last_data_recv.into()),
        )
    })
}

#[cfg(not(target_os = "linux"))]
fn last_data(_socket: &std::net::TcpStream) -> Option<(Duration, Duration)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message as PostgreSQL frames it: type, length, fields.
    #[test]
    fn the_idle_error_is_framed() {
        let m = idle_error();
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len, m.len() - 1);
        assert_eq!(*m.last().unwrap(), 0);
        let text = String::from_utf8_lossy(&m[5..]);
        assert!(text.contains("C57P05\0"), "{text}");
    }
}
