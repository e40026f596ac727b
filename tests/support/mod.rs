//! Helpers for the end-to-end tests: a real broker on 127.0.0.1:0 with a temporary
//! data dir, rumqttc clients (3.1.1 and 5), and a raw TCP client that speaks the
//! shared codec byte by byte for malformed and hostile input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use natter_shared::codec::{
    self, Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use natterd::accounts::password::PasswordHasherConfig;
use natterd::acl::rules::{Access, Effect, Rule, Who};
use natterd::config::Config;
use natterd::hooks::Hook;
use natterd::router::Router;
use natterd::store::Store;
use natterd::RunningBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// The filter a liveness probe subscribes to: no test publishes there. The plain-MQTT
/// test config opens it (rumqttc 5 treats a refused subscription as a connection
/// error); elsewhere a 3.1.1 probe gets a failure code, which is an answer too.
pub const PROBE: &str = "probe/alive";

/// The accounts every test broker has: (name, password, admin).
pub const USERS: &[(&str, &str, bool)] = &[
    ("alice", "alice-pw", false),
    ("bob", "bob-pw", false),
    ("carol", "carol-pw", false),
    ("root", "root-pw", true),
];

/// Topic prefixes the plain-MQTT tests use, opened to every client by operator rules
/// (the IM namespaces stay under the built-in rules).
const TEST_TOPICS: &[&str] = &[
    "a",
    "broadcast",
    "chat",
    "d",
    "e",
    "f",
    "flood",
    "forbidden",
    "health",
    "jobs",
    "m",
    "mine",
    "o",
    "open",
    "plain",
    "probe",
    "q2",
    "queue",
    "r",
    "secret",
    "sensors",
    "status",
    "t",
    "wills",
    "x",
];

/// The default config with a temp data dir, port 0 and cheap argon2: what a real
/// deployment runs, for the IM tests.
pub fn default_test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default_config();
    c.server.listen = "127.0.0.1:0".parse().expect("literal address");
    c.server.data_dir = dir.to_path_buf();
    c.server.shutdown_grace_ms = 2000;
    c.auth.argon2_memory_kib = 8;
    c.auth.argon2_iterations = 1;
    c.auth.verify_workers = 2.try_into().expect("nonzero");
    c
}

/// [`default_test_config`] plus operator rules opening the plain-MQTT test topics.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = default_test_config(dir);
    c.acl.rules = TEST_TOPICS
        .iter()
        .map(|p| Rule {
            filter: format!("{p}/#"),
            access: Access::ReadWrite,
            effect: Effect::Allow,
            who: Who::All,
            users: Vec::new(),
        })
        .collect();
    c
}

/// A broker running in this process.
pub struct TestBroker {
    pub addr: SocketAddr,
    broker: Option<RunningBroker>,
    pub dir: tempfile::TempDir,
    config: Config,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}, |_, _| Vec::new()).await
    }

    pub async fn start_config(f: impl FnOnce(&mut Config)) -> TestBroker {
        Self::start_with(f, |_, _| Vec::new()).await
    }

    /// A broker with the default configuration (no operator rules): for IM tests.
    pub async fn start_default(f: impl FnOnce(&mut Config)) -> TestBroker {
        Self::start_with(
            |c| {
                c.acl.rules.clear();
                f(c)
            },
            |_, _| Vec::new(),
        )
        .await
    }

    /// Starts with a modified config and extra plugins (asked before the defaults).
    pub async fn start_with(
        f: impl FnOnce(&mut Config),
        plugins: impl FnOnce(&Router, &Store) -> Vec<Arc<dyn Hook>>,
    ) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        f(&mut config);
        let hasher = PasswordHasherConfig::new(&config.auth).expect("argon2 params");
        // Accounts are created on the broker's own store handle (sled locks the store,
        // so it is opened once).
        let plugins = move |router: &Router, store: &Store| {
            for (name, pw, admin) in USERS {
                natterd::accounts::add(store, &hasher, name, pw.as_bytes(), *admin).expect("add user");
            }
            plugins(router, store)
        };
        let broker = natterd::start_with(config.clone(), plugins)
            .await
            .expect("broker starts");
        TestBroker {
            addr: broker.local_addr(),
            broker: Some(broker),
            dir,
            config,
        }
    }

    pub fn router(&self) -> &Router {
        self.broker.as_ref().expect("running").router()
    }

    pub fn store(&self) -> &Store {
        self.broker.as_ref().expect("running").store()
    }

    /// Waits until every session of `user` is offline: the broker saw the disconnects.
    pub async fn wait_offline(&self, user: &str) {
        self.wait_until(&format!("{user} offline"), || {
            !self.router().sessions_of(user).iter().any(|s| s.is_online())
        })
        .await;
    }

    /// Polls `cond` until it holds; panics naming `what` after [`WAIT`].
    pub async fn wait_until(&self, what: &str, cond: impl Fn() -> bool) {
        wait_for(what, cond).await
    }

    /// Stops the broker and starts a new one on the same data dir and config (a new
    /// port): what survives is what the store kept.
    pub async fn restart(mut self) -> TestBroker {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
        let broker = natterd::start(self.config.clone()).await.expect("broker restarts");
        self.addr = broker.local_addr();
        self.broker = Some(broker);
        self
    }

    /// As [`TestBroker::restart`], on the same address: clients that reconnect by
    /// themselves find it again.
    pub async fn restart_same_port(mut self) -> TestBroker {
        self.config.server.listen = self.addr;
        self.restart().await
    }

    /// Stops the broker and hands back its data dir and config (to look at the files,
    /// or to start it again differently).
    pub async fn stop_keeping(mut self) -> (tempfile::TempDir, Config) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
        let TestBroker { dir, config, .. } = self;
        (dir, config)
    }

    pub async fn stop(mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after [`WAIT`].
pub async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Raises this process's soft limit on open files to at least `want` (within the hard
/// limit): a test holding thousands of sockets (both ends live in this process) must
/// not depend on the shell's `ulimit -n`. Panics when the hard limit is lower.
pub fn raise_open_files(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if lim.rlim_cur >= want as libc::rlim_t {
        return;
    }
    assert!(
        lim.rlim_max >= want as libc::rlim_t,
        "this test needs {want} open files; the hard limit is {}",
        lim.rlim_max
    );
    lim.rlim_cur = want as libc::rlim_t;
    // SAFETY: as above.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(set, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

pub fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|u| u.0 == user)
        .map(|u| u.1)
        .expect("known test user")
}

/// A client that writes and reads MQTT packets directly.
pub struct Raw {
    pub stream: TcpStream,
    pub protocol: Protocol,
    buf: BytesMut,
}

impl Raw {
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Self::wrap(stream, protocol)
    }

    /// Opens from a chosen loopback source address (127.0.0.2, ...), so a test can
    /// tell per-address behaviour from per-user behaviour.
    pub async fn open_from(addr: SocketAddr, source: std::net::Ipv4Addr, protocol: Protocol) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source.into(), 0))
            .expect("bind a loopback source address");
        let stream = socket.connect(addr).await.expect("tcp connect");
        Self::wrap(stream, protocol)
    }

    /// [`Raw::connect`] from a chosen loopback source address.
    pub async fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr, connect: Connect) -> (Raw, codec::ConnAck) {
        let mut raw = Raw::open_from(addr, source, connect.protocol).await;
        raw.send(&Packet::Connect(Box::new(connect))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn wrap(stream: TcpStream, protocol: Protocol) -> Raw {
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            protocol,
            buf: BytesMut::new(),
        }
    }

    /// Opens and sends CONNECT; returns the client and the CONNACK.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Raw, codec::ConnAck) {
        Self::connect_from(addr, std::net::Ipv4Addr::LOCALHOST, connect).await
    }

    /// Connects as a known test user with the given client id; asserts success.
    pub async fn login(addr: SocketAddr, protocol: Protocol, user: &str, client_id: &str) -> Raw {
        let (raw, ack) = Raw::connect(addr, connect_packet(protocol, Some(user), client_id)).await;
        assert_eq!(ack.code, 0, "login of {user} refused");
        raw
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        p.encode(&mut out, self.protocol);
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` when the broker closed the connection. Panics after
    /// [`WAIT`] without either.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("no packet and no close within the wait")
    }

    /// Subscribes to one filter; returns the SUBACK's code (other packets skipped).
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> u8 {
        self.send(&subscribe_packet(filter, qos)).await;
        loop {
            match self.recv().await {
                Some(Packet::SubAck(a)) => return a.codes[0],
                Some(_) => continue,
                None => panic!("closed while subscribing to {filter}"),
            }
        }
    }

    /// The next PUBLISH (other packets skipped); panics on close or after [`WAIT`].
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => return p,
                Some(_) => continue,
                None => panic!("closed while waiting for a publish"),
            }
        }
    }

    /// The next `n` PUBACK/PUBREC as (packet id, reason code), other packets skipped.
    pub async fn acks(&mut self, n: usize) -> Vec<(u16, u8)> {
        let mut acks = Vec::with_capacity(n);
        while acks.len() < n {
            match self.recv().await {
                Some(Packet::PubAck(a) | Packet::PubRec(a)) => acks.push((a.pkid, a.reason)),
                Some(_) => continue,
                None => panic!("closed while waiting for acknowledgements"),
            }
        }
        acks
    }

    /// `Err` on timeout, `Ok(None)` on close.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<Packet>, ()> {
        tokio::time::timeout(wait, async {
            loop {
                if let Some(p) = codec::decode(&mut self.buf, self.protocol, codec::MAX_PACKET_SIZE)
                    .expect("broker sent a valid packet")
                {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .map_err(|_| ())
    }

    /// Reads until the broker closes; returns the packets seen before (e.g. DISCONNECT).
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv().await {
            seen.push(p);
        }
        seen
    }
}

/// A PUBLISH for raw clients.
pub fn publish_packet(topic: &str, qos: QoS, pkid: u16, payload: impl Into<bytes::Bytes>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        properties: Properties::default(),
        payload: payload.into(),
    })
}

/// A SUBSCRIBE of one filter for raw clients.
pub fn subscribe_packet(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid: 1,
        properties: Properties::default(),
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
    })
}

/// A CONNECT for a known test user (or anonymous with `None`), clean start, keepalive 30.
pub fn connect_packet(protocol: Protocol, user: Option<&str>, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: user.map(Into::into),
        password: user.map(|u| bytes::Bytes::from_static(password(u).as_bytes())),
        properties: Properties::default(),
    }
}

pub mod v3 {
    //! rumqttc 3.1.1 helpers.
    use super::*;
    pub use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
    use tokio::sync::mpsc;

    pub fn options(addr: SocketAddr, client_id: &str, user: Option<&str>) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        if let Some(u) = user {
            o.set_credentials(u, password(u));
        }
        o
    }

    /// A connected client whose incoming packets arrive on `rx`.
    pub struct Client {
        pub client: AsyncClient,
        pub rx: mpsc::UnboundedReceiver<Packet>,
        pub session_present: bool,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Connects; returns the CONNACK refusal as an error.
    pub async fn connect(opts: MqttOptions) -> Result<Client, ConnectionError> {
        let (client, mut ev) = AsyncClient::new(opts, 100);
        let session_present = loop {
            match tokio::time::timeout(WAIT, ev.poll())
                .await
                .expect("connect timed out")?
            {
                Event::Incoming(Packet::ConnAck(a)) => break a.session_present,
                _ => continue,
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(e) = ev.poll().await {
                if let Event::Incoming(p) = e {
                    if tx.send(p).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Client {
            client,
            rx,
            session_present,
            task,
        })
    }

    impl Client {
        /// Next PUBLISH received.
        pub async fn publish(&mut self) -> rumqttc::Publish {
            loop {
                match tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("no publish in time")
                {
                    Some(Packet::Publish(p)) => return p,
                    Some(_) => continue,
                    None => panic!("connection ended"),
                }
            }
        }

        /// Next SUBACK received.
        pub async fn suback(&mut self) -> rumqttc::SubAck {
            loop {
                match tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("no suback in time")
                {
                    Some(Packet::SubAck(a)) => return a,
                    Some(_) => continue,
                    None => panic!("connection ended"),
                }
            }
        }

        /// Waits for a packet matching `f`.
        pub async fn expect(&mut self, mut f: impl FnMut(&Packet) -> bool) -> Packet {
            loop {
                match tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("expected packet not received")
                {
                    Some(p) if f(&p) => return p,
                    Some(_) => continue,
                    None => panic!("connection ended"),
                }
            }
        }

        /// Asserts that no PUBLISH arrives within `d` and that the connection is still
        /// up afterwards: a closed connection is a failure, not silence.
        pub async fn no_publish(&mut self, d: Duration) {
            let end = tokio::time::Instant::now() + d;
            loop {
                match tokio::time::timeout_at(end, self.rx.recv()).await {
                    Err(_) => break,
                    Ok(None) => panic!("connection ended while it should have stayed quiet"),
                    Ok(Some(Packet::Publish(p))) => panic!("unexpected publish on {}", p.topic),
                    Ok(Some(_)) => continue,
                }
            }
            self.alive().await;
        }

        /// Asserts that the connection is up: a SUBSCRIBE to [`PROBE`] gets its SUBACK
        /// (a failure code is an answer too). A PUBLISH arriving meanwhile fails.
        pub async fn alive(&mut self) {
            self.client
                .subscribe(PROBE, QoS::AtMostOnce)
                .await
                .expect("probe subscribe queued");
            loop {
                match tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("no answer to the liveness probe")
                {
                    Some(Packet::SubAck(_)) => return,
                    Some(Packet::Publish(p)) => panic!("unexpected publish on {}", p.topic),
                    Some(_) => continue,
                    None => panic!("connection ended"),
                }
            }
        }
    }
}

pub mod v5 {
    //! rumqttc 5 helpers.
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, Publish};
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
    use tokio::sync::mpsc;

    pub fn options(addr: SocketAddr, client_id: &str, user: Option<&str>) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        if let Some(u) = user {
            o.set_credentials(u, password(u));
        }
        o
    }

    pub struct Client {
        pub client: AsyncClient,
        pub rx: mpsc::UnboundedReceiver<Packet>,
        pub connack: rumqttc::v5::mqttbytes::v5::ConnAck,
        /// What [`Client::alive`] subscribes to: [`PROBE`], or a filter in the
        /// user's own mailbox for IM clients.
        pub probe: String,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn connect(opts: MqttOptions) -> Result<Client, ConnectionError> {
        let (client, mut ev) = AsyncClient::new(opts, 100);
        let connack = loop {
            match tokio::time::timeout(WAIT, ev.poll())
                .await
                .expect("connect timed out")?
            {
                Event::Incoming(Packet::ConnAck(a)) => break a,
                _ => continue,
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(e) = ev.poll().await {
                if let Event::Incoming(p) = e {
                    if tx.send(p).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Client {
            client,
            rx,
            connack,
            probe: PROBE.to_owned(),
            task,
        })
    }

    impl Client {
        pub async fn publish(&mut self) -> Publish {
            loop {
                match tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("no publish in time")
                {
                    Some(Packet::Publish(p)) => return p,
                    Some(_) => continue,
                    None => panic!("connection ended"),
                }
            }
        }

        pub async fn expect(&mut self, mut f: impl FnMut(&Packet) -> bool) -> Packet {
            loop {
                match tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("expected packet not received")
                {
                    Some(p) if f(&p) => return p,
                    Some(_) => continue,
                    None => panic!("connection ended"),
                }
            }
        }

        /// Asserts that no PUBLISH arrives within `d` and that the connection is still
        /// up afterwards.
        pub async fn no_publish(&mut self, d: Duration) {
            let end = tokio::time::Instant::now() + d;
            loop {
                match tokio::time::timeout_at(end, self.rx.recv()).await {
                    Err(_) => break,
                    Ok(None) => panic!("connection ended while it should have stayed quiet"),
                    Ok(Some(Packet::Publish(p))) => panic!("unexpected publish on {:?}", p.topic),
                    Ok(Some(_)) => continue,
                }
            }
            self.alive().await;
        }

        /// Asserts that the connection is up: a SUBSCRIBE to `self.probe` (an allowed
        /// filter nothing is published to) gets its SUBACK.
        pub async fn alive(&mut self) {
            self.client
                .subscribe(self.probe.clone(), QoS::AtMostOnce)
                .await
                .expect("probe subscribe queued");
            loop {
                match tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("no answer to the liveness probe")
                {
                    Some(Packet::SubAck(_)) => return,
                    Some(Packet::Publish(p)) => panic!("unexpected publish on {:?}", p.topic),
                    Some(_) => continue,
                    None => panic!("connection ended"),
                }
            }
        }
    }
}

pub mod im {
    //! An IM client over rumqttc 5: subscribes to its mailbox, calls the API, and keeps
    //! what arrives while it waits for an answer.

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};

    use rumqttc::v5::mqttbytes::v5::ConnectProperties;
    use serde_json::{json, Value};

    use super::*;
    use crate::v5;

    static NEXT_ID: AtomicU64 = AtomicU64::new(1);

    /// A message from the mailbox.
    #[derive(Debug, Clone)]
    pub struct Got {
        pub topic: String,
        pub payload: bytes::Bytes,
        pub props: Vec<(String, String)>,
        pub qos: v5::QoS,
    }

    impl Got {
        pub fn prop(&self, k: &str) -> Option<&str> {
            self.props.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
        }

        pub fn text(&self) -> &str {
            std::str::from_utf8(&self.payload).unwrap_or("<binary>")
        }

        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.payload).expect("JSON payload")
        }
    }

    pub struct ImClient {
        pub c: v5::Client,
        pub user: String,
        backlog: VecDeque<Got>,
    }

    fn got(p: v5::Publish) -> Got {
        Got {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            props: p.properties.map(|p| p.user_properties).unwrap_or_default(),
            qos: p.qos,
        }
    }

    impl ImClient {
        /// A clean-start client subscribed to its whole mailbox.
        pub async fn connect(addr: SocketAddr, user: &str, client_id: &str) -> ImClient {
            Self::open(v5::options(addr, client_id, Some(user)), user).await
        }

        /// A device with a persistent session (expiry one hour), subscribed to its mailbox.
        pub async fn persistent(addr: SocketAddr, user: &str, client_id: &str) -> ImClient {
            let mut o = v5::options(addr, client_id, Some(user));
            o.set_clean_start(false);
            let mut props = ConnectProperties::new();
            props.session_expiry_interval = Some(3600);
            o.set_connect_properties(props);
            Self::open(o, user).await
        }

        /// A client with these options (a token login, say), subscribed to its mailbox.
        pub async fn with_options(o: rumqttc::v5::MqttOptions, user: &str) -> ImClient {
            Self::open(o, user).await
        }

        async fn open(o: rumqttc::v5::MqttOptions, user: &str) -> ImClient {
            let mut c = v5::connect(o).await.expect("IM login");
            c.probe = format!("{}probe/alive", natter_shared::im::inbox_prefix(user));
            c.client
                .subscribe(natter_shared::im::inbox_all(user), v5::QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            // A resumed session may receive its mailbox before the SUBACK: keep it.
            let mut backlog = VecDeque::new();
            loop {
                match tokio::time::timeout(WAIT, c.rx.recv())
                    .await
                    .expect("no SUBACK in time")
                {
                    Some(v5::Packet::SubAck(_)) => break,
                    Some(v5::Packet::Publish(p)) => backlog.push_back(got(p)),
                    Some(_) => {}
                    None => panic!("connection ended"),
                }
            }
            ImClient {
                c,
                user: user.to_owned(),
                backlog,
            }
        }

        async fn next_raw(&mut self) -> Got {
            got(self.c.publish().await)
        }

        /// The next message (in arrival order). Nothing is skipped: an API response
        /// that [`ImClient::call`] did not ask for is returned like any other message,
        /// so a misrouted answer shows.
        pub async fn next(&mut self) -> Got {
            if let Some(g) = self.backlog.pop_front() {
                return g;
            }
            self.next_raw().await
        }

        /// The next message on `topic`, keeping the others for later.
        pub async fn next_on(&mut self, topic: &str) -> Got {
            if let Some(i) = self.backlog.iter().position(|g| g.topic == topic) {
                return self.backlog.remove(i).expect("present");
            }
            loop {
                let g = self.next_raw().await;
                if g.topic == topic {
                    return g;
                }
                self.backlog.push_back(g);
            }
        }

        /// Nothing more arrives within `d`, and the connection is still up afterwards.
        pub async fn quiet(&mut self, d: std::time::Duration) {
            assert!(self.backlog.is_empty(), "unexpected {:?}", self.backlog);
            let end = tokio::time::Instant::now() + d;
            loop {
                match tokio::time::timeout_at(end, self.c.rx.recv()).await {
                    Err(_) => break,
                    Ok(None) => panic!("connection ended while it should have stayed quiet"),
                    Ok(Some(v5::Packet::Publish(p))) => panic!("unexpected {:?}", got(p)),
                    Ok(Some(_)) => {}
                }
            }
            self.c.alive().await;
        }

        pub async fn publish(&self, topic: &str, qos: v5::QoS, payload: &str) {
            self.c
                .client
                .publish(topic, qos, false, payload.to_owned())
                .await
                .expect("publish");
        }

        /// Calls `api/{command}` and returns the whole response.
        pub async fn call(&mut self, command: &str, mut body: Value) -> Value {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed).to_string();
            body["id"] = json!(id);
            self.publish(
                &natter_shared::im::api(command),
                v5::QoS::AtLeastOnce,
                &body.to_string(),
            )
            .await;
            let topic = natter_shared::im::inbox_api(&self.user, command);
            loop {
                let g = self.next_raw().await;
                if g.topic == topic && g.json()["id"] == json!(id) {
                    return g.json();
                }
                self.backlog.push_back(g);
            }
        }

        /// Calls and asserts success; returns the result.
        pub async fn ok(&mut self, command: &str, body: Value) -> Value {
            let v = self.call(command, body).await;
            assert_eq!(v["ok"], json!(true), "{command}: {v}");
            v["result"].clone()
        }

        /// Calls and asserts the error code.
        pub async fn fails(&mut self, command: &str, body: Value, code: &str) {
            let v = self.call(command, body).await;
            assert_eq!(v["ok"], json!(false), "{command} should fail: {v}");
            assert_eq!(v["error"]["code"], json!(code), "{command}: {v}");
        }
    }

    /// Makes two users friends through the API.
    pub async fn befriend(a: &mut ImClient, b: &mut ImClient) {
        a.ok("friends.request", json!({ "user": b.user })).await;
        b.next_on(&natter_shared::im::inbox_event(&b.user, "friend_request"))
            .await;
        b.ok("friends.accept", json!({ "user": a.user })).await;
        a.next_on(&natter_shared::im::inbox_event(&a.user, "friend_accepted"))
            .await;
        b.next_on(&natter_shared::im::inbox_event(&b.user, "friend_accepted"))
            .await;
    }
}
