//! Framed MQTT I/O over a TCP stream: bytes in, packets out, and packets in, bytes
//! out. Outgoing packets are encoded into one buffer and written with one syscall
//! per wake-up, not one per packet.
//!
//! Idle connections hold no buffers: the socket is awaited for readiness before a
//! read buffer is allocated, and both buffers are released once empty, so thousands
//! of idle devices cost a few hundred bytes each here.

use std::io;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use natter_shared::codec::{self, DecodeError, Packet, Protocol};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Buffer size above which queued output is written before encoding more.
pub const WRITE_HIGH_WATER: usize = 64 * 1024;
/// How long, and how many bytes, a closing connection reads on for the peer to see
/// the close (see [`Connection::close`]).
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;
/// Smallest and largest read buffer reserved at a time.
const MIN_READ: u32 = 512;
const MAX_READ: u32 = 64 * 1024;

#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("connection closed by peer")]
    Closed,
}

/// A TCP stream with a read buffer and a write buffer.
pub struct Connection {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Largest packet accepted from the peer (MQTT's own bound is below 2^28).
    max_packet_size: u32,
    /// Bytes to reserve for the next read; adapts to the traffic.
    read_hint: u32,
}

impl Connection {
    pub fn new(stream: TcpStream, max_packet_size: usize) -> Connection {
        Connection {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            max_packet_size: u32::try_from(max_packet_size).unwrap_or(u32::MAX),
            read_hint: MIN_READ,
        }
    }

    /// Decodes one buffered packet, if a whole one is there.
    ///
    /// # Errors
    /// Malformed input, or a packet over the size limit (seen from its fixed header).
    pub fn next_packet(&mut self, protocol: Protocol) -> Result<Option<Packet>, DecodeError> {
        codec::decode(&mut self.rbuf, protocol, self.max_packet_size as usize)
    }

    /// Reads more bytes from the socket. Cancel-safe.
    ///
    /// # Errors
    /// As [`Connection::poll_fill`].
    pub async fn fill(&mut self) -> Result<(), ConnectionError> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads more bytes from the socket once it is readable; the waiting keeps no
    /// state but the socket's own (an idle connection's task stays small).
    ///
    /// # Errors
    /// [`ConnectionError::Closed`] on end of stream, I/O errors.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            if self.rbuf.capacity() - self.rbuf.len() < MIN_READ as usize / 2 {
                self.rbuf.reserve(self.read_hint as usize);
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Poll::Ready(Err(ConnectionError::Closed)),
                Ok(n) => {
                    // Read sizes follow the traffic: a full buffer doubles the next one,
                    // small reads shrink it, so chatty connections make few syscalls and
                    // quiet ones never hold large buffers.
                    if n == spare {
                        self.read_hint = (self.read_hint * 2).min(MAX_READ);
                    } else if n < self.read_hint as usize / 4 {
                        self.read_hint = (self.read_hint / 2).max(MIN_READ);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The readiness was stale (it is cleared only by a read that
                    // would block): do not keep a buffer reserved while waiting.
                    self.release_idle();
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Frees the read buffer when it holds no partial packet.
    pub fn release_idle(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    /// Reads until a whole packet is buffered.
    ///
    /// # Errors
    /// As [`Connection::fill`] and [`Connection::next_packet`].
    pub async fn read_packet(&mut self, protocol: Protocol) -> Result<Packet, ConnectionError> {
        loop {
            if let Some(p) = self.next_packet(protocol)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// Reads the first packet, refusing at its first byte anything but a CONNECT
    /// (MQTT-3.1.0-1), so a stray protocol (HTTP, TLS) is closed at once rather than
    /// waited on.
    ///
    /// # Errors
    /// As [`Connection::read_packet`]; a first byte other than CONNECT's is
    /// [`DecodeError::Protocol`].
    pub async fn read_connect(&mut self) -> Result<Packet, ConnectionError> {
        loop {
            if self.rbuf.first().is_some_and(|&b| b != 0x10) {
                return Err(DecodeError::Protocol("first packet is not CONNECT (MQTT-3.1.0-1)").into());
            }
            if let Some(p) = self.next_packet(Protocol::V311)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// Encodes a packet into the write buffer.
    pub fn queue(&mut self, packet: &Packet, protocol: Protocol) {
        packet.encode(&mut self.wbuf, protocol);
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes the buffer out. Cancel-safe: what was not written stays queued, so the
    /// packets on the wire are always whole ones followed by what comes next.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Writes as much of the buffer as the socket takes, and frees the buffer once it
    /// is all written; the waiting keeps no state but the socket's own.
    ///
    /// # Errors
    /// I/O errors; a socket that accepts nothing is [`io::ErrorKind::WriteZero`].
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Closes: [`Connection::half_close`], then [`Connection::linger`].
    pub async fn close(&mut self) {
        self.half_close().await;
        self.linger().await;
    }

    /// Writes what is buffered, then shuts the write side down (FIN).
    pub async fn half_close(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// After [`Connection::half_close`]: reads and discards what the peer still sends
    /// until it closes too, for at most [`LINGER`] and [`LINGER_BYTES`]. A socket
    /// closed with unread input, or written to after it closed, is answered with RST,
    /// and a peer that gets RST may fail before it reads the packet that said why (a
    /// DISCONNECT reason, a refusing CONNACK).
    pub async fn linger(&mut self) {
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut left = LINGER_BYTES;
        let mut sink = [0u8; 1024];
        while left > 0 {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
        self.rbuf = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connection on one end of a loopback socket pair, and the raw other end.
    async fn pair(max: usize) -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Connection::new(accepted.unwrap().0, max), client.unwrap())
    }

    fn bytes(packets: &[Packet], protocol: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        for p in packets {
            p.encode(&mut out, protocol);
        }
        out.to_vec()
    }

    #[tokio::test]
    async fn a_connection_waiting_for_input_holds_no_read_buffer() {
        let (mut conn, mut peer) = pair(1024).await;
        peer.write_all(&bytes(&[Packet::PingReq], Protocol::V5)).await.unwrap();
        assert_eq!(conn.read_packet(Protocol::V5).await.unwrap(), Packet::PingReq);
        // The socket still looks readable after that read; the next wait finds out it
        // is not, and must not keep the buffer it reserved for it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(conn.poll_fill(&mut cx).is_pending());
        assert_eq!(conn.rbuf.capacity(), 0, "a waiting connection holds no read buffer");
    }

    #[tokio::test]
    async fn packets_split_across_reads_come_out_whole_and_in_order() {
        let (mut conn, mut peer) = pair(1024).await;
        let sent = [
            Packet::PingReq,
            Packet::Disconnect(Default::default()),
            Packet::PingResp,
        ];
        let wire = bytes(&sent, Protocol::V5);
        // One byte at a time, each write its own segment as far as the reader knows.
        let writer = tokio::spawn(async move {
            for b in wire {
                peer.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            peer
        });
        for expected in &sent {
            assert_eq!(&conn.read_packet(Protocol::V5).await.unwrap(), expected);
        }
        drop(writer.await.unwrap());
        assert!(matches!(
            conn.read_packet(Protocol::V5).await,
            Err(ConnectionError::Closed)
        ));
        conn.release_idle();
        assert_eq!(conn.rbuf.capacity(), 0, "an idle connection holds no read buffer");
    }

    #[tokio::test]
    async fn the_first_packet_must_be_connect() {
        let (mut conn, mut peer) = pair(1024).await;
        peer.write_all(&bytes(&[Packet::PingReq], Protocol::V311))
            .await
            .unwrap();
        assert!(matches!(
            conn.read_connect().await,
            Err(ConnectionError::Decode(DecodeError::Protocol(_)))
        ));
    }

    #[tokio::test]
    async fn a_packet_over_the_limit_is_refused_from_its_header() {
        let (mut conn, mut peer) = pair(64).await;
        // A PUBLISH header announcing 10 MB; no body follows.
        peer.write_all(&[0x30, 0x80, 0xad, 0xe2, 0x04]).await.unwrap();
        assert!(matches!(
            conn.read_packet(Protocol::V311).await,
            Err(ConnectionError::Decode(DecodeError::PacketTooLarge { max: 64, .. }))
        ));
    }

    #[tokio::test]
    async fn queued_packets_go_out_in_one_flush_and_the_buffer_is_released() {
        let (mut conn, mut peer) = pair(1024).await;
        conn.queue(&Packet::PingResp, Protocol::V311);
        conn.queue(&Packet::PingResp, Protocol::V311);
        assert_eq!(conn.pending(), 4);
        conn.flush().await.unwrap();
        assert_eq!(conn.pending(), 0);
        assert_eq!(conn.wbuf.capacity(), 0, "released once written");
        conn.close().await;
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, bytes(&[Packet::PingResp, Packet::PingResp], Protocol::V311));
    }
}
