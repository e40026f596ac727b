//! One MQTT 5 connection to natterd, on the `shared` crate's codec: CONNECT and
//! CONNACK, then a task that owns the socket. Callers publish and wait for the
//! PUBACK (its reason code and Reason String), subscribe and wait for the SUBACK,
//! call the API (the response is matched by its `id`), and read what arrives as
//! [`Event`]s. A mailbox message is acknowledged only when the caller says it is
//! handled ([`Link::ack`]), so a message printed or shown is the only kind the
//! device's cursor moves past.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use natter_shared::api::{Request, Response};
use natter_shared::codec::{
    self, reason, Ack, Connect, Disconnect, Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use natter_shared::im;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::Failure;

/// Largest packet accepted from the broker (a file chunk plus headers fits).
const MAX_PACKET: usize = 4 * 1024 * 1024;
/// Commands queued to the connection task.
const COMMANDS: usize = 64;
/// Events queued for the caller: the connection stops reading while they wait.
const EVENTS: usize = 256;

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    pub server: String,
    /// `None`: anonymous (registration only).
    pub user: Option<String>,
    /// The password, a device token or a reset token.
    pub secret: Option<String>,
    pub client_id: String,
    /// 0: a clean session that ends with the connection; else kept this many seconds.
    pub session_expiry: u32,
    pub keep_alive: u16,
    /// For connecting and for every answer awaited.
    pub timeout: Duration,
}

/// What arrives.
#[derive(Debug)]
pub enum Event {
    Message(Box<Incoming>),
    /// The connection ended: the broker's reason (DISCONNECT) or what failed.
    Closed(Closed),
}

#[derive(Debug, Clone)]
pub enum Closed {
    /// DISCONNECT from the broker with this reason code and Reason String.
    ByBroker(u8, Option<String>),
    /// The socket closed or failed, or the broker stopped answering.
    Lost(String),
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::ByBroker(code, why) => {
                write!(f, "the broker closed the connection: {}", reason_text(*code))?;
                if let Some(why) = why {
                    write!(f, " ({why})")?;
                }
                Ok(())
            }
            Closed::Lost(why) => write!(f, "connection lost: {why}"),
        }
    }
}

/// A PUBLISH from the broker.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub properties: Properties,
    /// What to acknowledge once handled (0 for QoS 0).
    pub pkid: u16,
}

impl Incoming {
    /// A user property (`id`, `from`, `ts` on mailbox deliveries).
    pub fn prop(&self, key: &str) -> Option<&str> {
        self.properties
            .user_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to a QoS 1 publish.
#[derive(Debug, Clone)]
pub struct Acked {
    pub reason: u8,
    pub reason_string: Option<String>,
}

enum Cmd {
    Publish {
        publish: Publish,
        done: Option<oneshot::Sender<Acked>>,
    },
    Subscribe {
        filters: Vec<SubscribeFilter>,
        done: oneshot::Sender<Vec<u8>>,
    },
    Call {
        id: String,
        publish: Publish,
        done: oneshot::Sender<Response>,
    },
    Ack(u16),
    Disconnect,
}

/// A live connection; cheap to clone.
#[derive(Clone)]
pub struct Link {
    tx: mpsc::Sender<Cmd>,
    user: Option<String>,
    timeout: Duration,
}

impl Link {
    /// Connects and logs in.
    ///
    /// # Errors
    /// The broker is unreachable, refuses the login, or does not answer in time.
    pub async fn connect(o: &Options) -> Result<(Link, mpsc::Receiver<Event>), Failure> {
        let unreachable = |why: String| Failure::Unreachable {
            server: o.server.clone(),
            why,
        };
        let mut stream = match tokio::time::timeout(o.timeout, TcpStream::connect(&o.server)).await {
            Err(_) => return Err(Failure::Timeout(o.timeout, format!("connecting to {}", o.server))),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let connect = Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: o.session_expiry == 0,
            keep_alive: o.keep_alive,
            client_id: o.client_id.clone(),
            will: None,
            username: o.user.clone(),
            password: o.secret.clone().map(Bytes::from),
            properties: Properties {
                session_expiry_interval: (o.session_expiry > 0).then_some(o.session_expiry),
                maximum_packet_size: Some(MAX_PACKET as u32),
                ..Properties::default()
            },
        }));
        let mut buf = BytesMut::new();
        connect.encode(&mut buf, Protocol::V5);
        stream.write_all(&buf).await.map_err(|e| unreachable(e.to_string()))?;
        let mut inbuf = BytesMut::with_capacity(8 * 1024);
        let ack = tokio::time::timeout(o.timeout, async {
            loop {
                match codec::decode(&mut inbuf, Protocol::V5, MAX_PACKET) {
                    Ok(Some(p)) => return Ok(p),
                    Ok(None) => {}
                    Err(e) => return Err(unreachable(format!("bad answer: {e}"))),
                }
                match stream.read_buf(&mut inbuf).await {
                    Ok(0) => return Err(unreachable("closed before answering the login".into())),
                    Ok(_) => {}
                    Err(e) => return Err(unreachable(e.to_string())),
                }
            }
        })
        .await
        .map_err(|_| Failure::Timeout(o.timeout, "waiting for the login answer".into()))??;
        match ack {
            Packet::ConnAck(a) if a.code == reason::SUCCESS => {}
            Packet::ConnAck(a) => return Err(Failure::login(a.code, a.properties.reason_string)),
            other => return Err(unreachable(format!("answered {} to CONNECT", other.name()))),
        }
        let (tx, rx) = mpsc::channel(COMMANDS);
        let (events_tx, events) = mpsc::channel(EVENTS);
        let io = Io {
            stream,
            inbuf,
            outbuf: BytesMut::new(),
            rx,
            events: events_tx,
            api_prefix: o.user.as_deref().map(|u| format!("{}api/", im::inbox_prefix(u))),
            next_pkid: 0,
            acks: HashMap::new(),
            subacks: HashMap::new(),
            calls: HashMap::new(),
            keep_alive: Duration::from_secs(u64::from(o.keep_alive.max(1))),
        };
        tokio::spawn(io.run());
        Ok((
            Link {
                tx,
                user: o.user.clone(),
                timeout: o.timeout,
            },
            events,
        ))
    }

    async fn send(&self, cmd: Cmd) -> Result<(), Failure> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| Failure::lost("the connection has ended"))
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<T>, what: &str) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(Failure::Timeout(self.timeout, what.to_owned())),
            Ok(Err(_)) => Err(Failure::lost(format!("the connection ended while {what}"))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    ///
    /// # Errors
    /// No answer in time, or the connection ended.
    pub async fn publish(&self, topic: &str, payload: Bytes, properties: Properties) -> Result<Acked, Failure> {
        let (done, rx) = oneshot::channel();
        let publish = publish(topic, QoS::AtLeastOnce, payload, properties);
        self.send(Cmd::Publish {
            publish,
            done: Some(done),
        })
        .await?;
        self.wait(rx, &format!("waiting for the broker to take the message to {topic}"))
            .await
    }

    /// Subscribes at QoS 1; returns the SUBACK's codes, one per filter.
    ///
    /// # Errors
    /// No answer in time, or the connection ended.
    pub async fn subscribe(&self, filters: &[String]) -> Result<Vec<u8>, Failure> {
        let (done, rx) = oneshot::channel();
        let filters = filters
            .iter()
            .map(|f| SubscribeFilter {
                filter: f.clone(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            })
            .collect();
        self.send(Cmd::Subscribe { filters, done }).await?;
        self.wait(rx, "subscribing").await
    }

    /// Calls `api/{command}` and returns its result, or its error as a failure.
    ///
    /// # Errors
    /// The API's refusal, no answer in time, or the connection ended.
    pub async fn call(&self, command: &str, mut req: Request) -> Result<serde_json::Value, Failure> {
        let resp = self.call_raw(command, &mut req).await?;
        match (resp.ok, resp.error) {
            (true, _) => Ok(resp.result.unwrap_or(serde_json::Value::Null)),
            (false, Some(e)) => Err(Failure::Api {
                code: e.code,
                message: e.message,
            }),
            (false, None) => Err(Failure::Local(format!("{command}: refused without a reason"))),
        }
    }

    async fn call_raw(&self, command: &str, req: &mut Request) -> Result<Response, Failure> {
        if self.user.is_none() {
            return Err(Failure::Local("log in first".into()));
        }
        let id = next_id();
        req.id = Some(serde_json::Value::String(id.clone()));
        let body = serde_json::to_vec(&req).map_err(|e| Failure::Local(e.to_string()))?;
        let (done, rx) = oneshot::channel();
        let publish = publish(
            &im::api(command),
            QoS::AtLeastOnce,
            Bytes::from(body),
            Properties::default(),
        );
        self.send(Cmd::Call { id, publish, done }).await?;
        self.wait(rx, &format!("waiting for the answer to {command}")).await
    }

    /// Acknowledges a handled message (the device's cursor moves past it).
    pub async fn ack(&self, pkid: u16) {
        if pkid != 0 {
            let _ = self.send(Cmd::Ack(pkid)).await;
        }
    }

    /// Says goodbye (DISCONNECT) and lets the connection end.
    pub async fn disconnect(&self) {
        let _ = self.send(Cmd::Disconnect).await;
        // The task writes it and closes; wait for the channel to go, briefly.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tx.closed()).await;
    }
}

fn publish(topic: &str, qos: QoS, payload: Bytes, properties: Properties) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid: 0,
        properties,
        payload,
    }
}

/// A request id unique within this process.
fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("c{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The socket's owner.
struct Io {
    stream: TcpStream,
    inbuf: BytesMut,
    outbuf: BytesMut,
    rx: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<Event>,
    /// `inbox/{me}/api/`: API responses, handed to their callers.
    api_prefix: Option<String>,
    next_pkid: u16,
    acks: HashMap<u16, Option<oneshot::Sender<Acked>>>,
    subacks: HashMap<u16, oneshot::Sender<Vec<u8>>>,
    calls: HashMap<String, oneshot::Sender<Response>>,
    keep_alive: Duration,
}

impl Io {
    async fn run(mut self) {
        let closed = self.serve().await;
        let _ = self.events.send(Event::Closed(closed)).await;
    }

    async fn serve(&mut self) -> Closed {
        let mut ping = tokio::time::interval(self.keep_alive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            // Packets already read first.
            loop {
                match codec::decode(&mut self.inbuf, Protocol::V5, MAX_PACKET) {
                    Ok(Some(p)) => {
                        if let Some(end) = self.on_packet(p).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Closed::Lost(format!("undecodable packet from the broker: {e}")),
                }
            }
            if !self.outbuf.is_empty() {
                if let Err(e) = self.stream.write_all(&self.outbuf).await {
                    return Closed::Lost(e.to_string());
                }
                self.outbuf.clear();
            }
            tokio::select! {
                read = self.stream.read_buf(&mut self.inbuf) => match read {
                    Ok(0) => return Closed::Lost("the broker closed the connection".into()),
                    Ok(_) => last_heard = tokio::time::Instant::now(),
                    Err(e) => return Closed::Lost(e.to_string()),
                },
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Disconnect) | None => {
                        Packet::Disconnect(Disconnect::default()).encode(&mut self.outbuf, Protocol::V5);
                        let _ = self.stream.write_all(&self.outbuf).await;
                        let _ = self.stream.shutdown().await;
                        return Closed::Lost("disconnected".into());
                    }
                    Some(cmd) => self.on_cmd(cmd),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > self.keep_alive * 2 {
                        return Closed::Lost("the broker stopped answering".into());
                    }
                    Packet::PingReq.encode(&mut self.outbuf, Protocol::V5);
                }
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.acks.contains_key(&self.next_pkid) && !self.subacks.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Publish { mut publish, done } => {
                if publish.qos != QoS::AtMostOnce {
                    publish.pkid = self.pkid();
                    self.acks.insert(publish.pkid, done);
                }
                Packet::Publish(publish).encode(&mut self.outbuf, Protocol::V5);
            }
            Cmd::Call { id, mut publish, done } => {
                publish.pkid = self.pkid();
                self.acks.insert(publish.pkid, None);
                self.calls.insert(id, done);
                Packet::Publish(publish).encode(&mut self.outbuf, Protocol::V5);
            }
            Cmd::Subscribe { filters, done } => {
                let pkid = self.pkid();
                self.subacks.insert(pkid, done);
                Packet::Subscribe(Subscribe {
                    pkid,
                    properties: Properties::default(),
                    filters,
                })
                .encode(&mut self.outbuf, Protocol::V5);
            }
            Cmd::Ack(pkid) => Packet::PubAck(Ack::new(pkid)).encode(&mut self.outbuf, Protocol::V5),
            Cmd::Disconnect => {}
        }
    }

    async fn on_packet(&mut self, p: Packet) -> Option<Closed> {
        match p {
            Packet::Publish(p) => return self.on_publish(p).await,
            Packet::PubAck(a) => {
                if let Some(Some(done)) = self.acks.remove(&a.pkid) {
                    let _ = done.send(Acked {
                        reason: a.reason,
                        reason_string: a.properties.reason_string,
                    });
                }
            }
            Packet::SubAck(a) => {
                if let Some(done) = self.subacks.remove(&a.pkid) {
                    let _ = done.send(a.codes);
                }
            }
            // We subscribe at QoS 1 at most; a QoS 2 flow is completed all the same.
            Packet::PubRel(a) => Packet::PubComp(Ack::new(a.pkid)).encode(&mut self.outbuf, Protocol::V5),
            Packet::Disconnect(d) => return Some(Closed::ByBroker(d.reason, d.properties.reason_string)),
            _ => {}
        }
        None
    }

    async fn on_publish(&mut self, p: Publish) -> Option<Closed> {
        if let Some(prefix) = &self.api_prefix {
            if p.topic.starts_with(prefix.as_str()) {
                // An API answer: for its caller, acknowledged at once.
                self.ack_now(&p);
                if let Ok(resp) = serde_json::from_slice::<Response>(&p.payload) {
                    let id = resp.id.as_ref().and_then(|v| v.as_str()).unwrap_or("").to_owned();
                    if let Some(done) = self.calls.remove(&id) {
                        let _ = done.send(resp);
                    }
                }
                return None;
            }
        }
        let pkid = match p.qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => p.pkid,
            // Not asked for; acknowledged here so the flow completes.
            QoS::ExactlyOnce => {
                Packet::PubRec(Ack::new(p.pkid)).encode(&mut self.outbuf, Protocol::V5);
                0
            }
        };
        let incoming = Incoming {
            topic: p.topic.to_string(),
            payload: p.payload,
            properties: p.properties,
            pkid,
        };
        // Waiting here stops reading the socket: the broker holds the rest.
        if !self.outbuf.is_empty() {
            if let Err(e) = self.stream.write_all(&self.outbuf).await {
                return Some(Closed::Lost(e.to_string()));
            }
            self.outbuf.clear();
        }
        if self.events.send(Event::Message(Box::new(incoming))).await.is_err() {
            // Nobody reads any more: acknowledge nothing, the mailbox keeps it.
            return Some(Closed::Lost("the reader stopped".into()));
        }
        None
    }

    fn ack_now(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => Packet::PubAck(Ack::new(p.pkid)).encode(&mut self.outbuf, Protocol::V5),
            QoS::ExactlyOnce => Packet::PubRec(Ack::new(p.pkid)).encode(&mut self.outbuf, Protocol::V5),
        }
    }
}

/// A reason code for people.
pub fn reason_text(code: u8) -> &'static str {
    match code {
        reason::SUCCESS => "success",
        reason::UNSPECIFIED_ERROR => "the broker could not store it",
        reason::NOT_AUTHORIZED => "not authorized",
        reason::BAD_USERNAME_OR_PASSWORD => "wrong user name or password",
        reason::SERVER_UNAVAILABLE => "server unavailable",
        reason::SERVER_BUSY => "server busy",
        reason::BANNED => "banned",
        reason::SERVER_SHUTTING_DOWN => "the broker is shutting down",
        reason::KEEP_ALIVE_TIMEOUT => "keepalive timeout",
        reason::SESSION_TAKEN_OVER => "another connection took over this device's session",
        reason::PACKET_TOO_LARGE => "too large",
        reason::QUOTA_EXCEEDED => "quota exceeded (too slow to keep up)",
        reason::ADMINISTRATIVE_ACTION => "closed by an administrator, or the login was revoked",
        reason::CONNECTION_RATE_EXCEEDED => "too many attempts: try again later",
        _ => "refused",
    }
}
