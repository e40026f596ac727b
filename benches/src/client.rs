//! A lean MQTT client on the shared codec: one task per connection, writes batched
//! per wake-up, so the generator costs little next to the broker it measures.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use natter_shared::codec::{
    self, Connect, Packet, Properties, Protocol, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Who a simulated client logs in as.
#[derive(Debug, Clone)]
pub struct Login {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub struct Client {
    stream: TcpStream,
    pub protocol: Protocol,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

const MAX_IN: usize = 16 * 1024 * 1024;

impl Client {
    /// Connects and waits for a successful CONNACK.
    ///
    /// # Errors
    /// Connection failures and refusals.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, login: &Login, keep_alive: u16) -> Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            protocol,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::new(),
        };
        c.queue(&Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: true,
            keep_alive,
            client_id: login.client_id.clone(),
            will: None,
            username: login.username.clone(),
            password: login.password.clone().map(Bytes::from),
            properties: Properties {
                receive_maximum: Some(u16::MAX),
                ..Default::default()
            },
        })));
        c.flush().await?;
        match c.read().await? {
            Packet::ConnAck(a) if a.code == 0 => Ok(c),
            Packet::ConnAck(a) => bail!("{} refused with {:#04x}", login.client_id, a.code),
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    /// Subscribes and waits for the SUBACK.
    ///
    /// # Errors
    /// I/O errors and refusals.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        self.queue(&Packet::Subscribe(Subscribe {
            pkid: 1,
            properties: Properties::default(),
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
        }));
        self.flush().await?;
        loop {
            match self.read().await? {
                Packet::SubAck(a) if a.codes.iter().all(|&c| c < 0x80) => return Ok(()),
                Packet::SubAck(a) => bail!("subscription to {filter} refused: {:?}", a.codes),
                _ => continue,
            }
        }
    }

    pub fn queue(&mut self, p: &Packet) {
        p.encode(&mut self.wbuf, self.protocol);
    }

    /// # Errors
    /// I/O errors.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// A packet already buffered, if any.
    ///
    /// # Errors
    /// Malformed input from the broker.
    pub fn buffered(&mut self) -> Result<Option<Packet>> {
        codec::decode(&mut self.rbuf, self.protocol, MAX_IN).map_err(|e| anyhow!("bad packet from broker: {e}"))
    }

    /// Reads more bytes (cancel-safe). Errors when the broker closed the connection.
    ///
    /// # Errors
    /// I/O errors and end of stream.
    pub async fn fill(&mut self) -> Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(8192);
        }
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            bail!("broker closed the connection");
        }
        Ok(())
    }

    /// # Errors
    /// I/O errors, end of stream, malformed input, 10 s without a packet.
    pub async fn read(&mut self) -> Result<Packet> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(p) = self.buffered()? {
                    return Ok(p);
                }
                self.fill().await?;
            }
        })
        .await
        .map_err(|_| anyhow!("no packet from the broker within 10 s"))?
    }
}
