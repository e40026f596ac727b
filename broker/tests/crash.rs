//! Crash safety: what natterd acknowledged is on disk. Publishers send QoS 1 and
//! QoS 2 DMs to recipients with persistent sessions (two online, one offline) while
//! the `natterd` binary is SIGKILLed at random moments; after each restart the
//! online recipients reconnect, and at the end every message a publisher saw
//! acknowledged (PUBACK, PUBREC) must have reached its recipient, in order per
//! conversation, checked against the publishers' own records.
//!
//! QoS 2 messages (p2's) must arrive exactly once: the recipients keep their QoS 2
//! packet ids across reconnects, as MQTT clients do, and a repeat is an error. QoS 1
//! repeats (p1's) are allowed and counted.
//!
//! Set `NATTER_CRASH_SEED` to replay a run (the seed is printed on failure).

mod common;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use natter_shared::codec::{
    self, Ack, Connect, Packet, Properties, Protocol, Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{natterd, Broker, FAST_ARGON};

/// Kills under load per run.
const KILLS: usize = 4;
/// QoS 1/2 publishes a publisher keeps unacknowledged.
const WINDOW: usize = 8;

/// A conversation: (publisher, recipient).
type Conv = (String, String);

/// What the publishers saw acknowledged, per conversation, in sending order.
#[derive(Default)]
struct Acked(HashMap<Conv, Vec<u64>>);

/// What a recipient received (first occurrences, in arrival order), and the QoS 2
/// packet ids it holds until their PUBREL, as a client with a persistent session does.
#[derive(Default)]
struct Inbox {
    first: Vec<(String, u64)>,
    seen: HashSet<(String, u64)>,
    qos2_held: HashSet<u16>,
    /// Messages that came again, by sender.
    duplicates: HashMap<String, usize>,
    /// A first message (number 0, sent before the load) arrived.
    probed: bool,
}

/// A minimal MQTT client over the shared codec.
struct Mqtt {
    stream: TcpStream,
    buf: BytesMut,
    protocol: Protocol,
    /// Packets that came while waiting for a SUBACK, for [`Mqtt::recv`] first.
    early: std::collections::VecDeque<Packet>,
}

fn broken(e: impl ToString) -> io::Error {
    io::Error::other(e.to_string())
}

impl Mqtt {
    /// Connects; also returns whether the broker kept a session (Session Present).
    async fn connect(
        addr: SocketAddr,
        user: &str,
        client_id: &str,
        clean: bool,
        protocol: Protocol,
    ) -> io::Result<(Mqtt, bool)> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut m = Mqtt {
            stream,
            buf: BytesMut::new(),
            protocol,
            early: Default::default(),
        };
        let mut properties = Properties::default();
        if protocol == Protocol::V5 && !clean {
            properties.session_expiry_interval = Some(3600);
        }
        m.send(&Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: clean,
            keep_alive: 30,
            client_id: client_id.into(),
            will: None,
            username: Some(user.into()),
            password: Some(Bytes::from(password(user))),
            properties,
        })))
        .await?;
        match m.recv().await? {
            Packet::ConnAck(a) if a.code == 0 => Ok((m, a.session_present)),
            other => Err(broken(format!("{user}: no CONNACK: {other:?}"))),
        }
    }

    async fn send(&mut self, p: &Packet) -> io::Result<()> {
        let mut out = BytesMut::new();
        p.encode(&mut out, self.protocol);
        self.stream.write_all(&out).await
    }

    async fn recv(&mut self) -> io::Result<Packet> {
        if let Some(p) = self.early.pop_front() {
            return Ok(p);
        }
        self.read().await
    }

    async fn read(&mut self) -> io::Result<Packet> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.protocol, 1 << 20).map_err(broken)? {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) -> io::Result<()> {
        self.send(&Packet::Subscribe(Subscribe {
            pkid: 1,
            properties: Properties::default(),
            filters: vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            }],
        }))
        .await?;
        // Deliveries may come before the SUBACK (a resumed session's queue, a replay):
        // they are kept for the recipient loop.
        loop {
            match self.read().await? {
                Packet::SubAck(a) if a.codes.iter().all(|&c| c < 0x80) => return Ok(()),
                p @ (Packet::Publish(_) | Packet::PubRel(_)) => self.early.push_back(p),
                other => return Err(broken(format!("no SUBACK: {other:?}"))),
            }
        }
    }
}

fn password(user: &str) -> String {
    format!("pw-{user}")
}

fn payload(from: &str, to: &str, seq: u64) -> String {
    format!("{from}>{to}#{seq}")
}

/// Sends DMs to `to` in turn (`seq` numbers per conversation carry on across
/// restarts) until the connection breaks; records what was acknowledged.
async fn publisher(
    addr: SocketAddr,
    me: &'static str,
    to: [&'static str; 2],
    qos: QoS,
    protocol: Protocol,
    next: Arc<Mutex<HashMap<&'static str, u64>>>,
    acked: Arc<Mutex<Acked>>,
) {
    let Ok((mut m, _)) = Mqtt::connect(addr, me, me, true, protocol).await else {
        return;
    };
    let mut inflight: HashMap<u16, (&str, u64)> = HashMap::new();
    let mut pkid: u16 = 0;
    let mut turn = 0;
    loop {
        while inflight.len() < WINDOW {
            let dest = to[turn % 2];
            turn += 1;
            let seq = {
                let mut next = next.lock().unwrap();
                let n = next.entry(dest).or_insert(1);
                *n += 1;
                *n - 1
            };
            pkid = pkid % u16::MAX + 1;
            inflight.insert(pkid, (dest, seq));
            let p = Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: format!("dm/{dest}").into(),
                pkid,
                properties: Properties::default(),
                payload: Bytes::from(payload(me, dest, seq)),
            });
            if m.send(&p).await.is_err() {
                return;
            }
        }
        let packet = match m.recv().await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{me}: recv: {e}");
                return;
            }
        };
        let (done, acknowledged) = match packet {
            Packet::PubAck(a) => (a.pkid, a.reason < 0x80),
            Packet::PubRec(a) => {
                let ok = a.reason < 0x80;
                if let (true, Some(&(dest, seq))) = (ok, inflight.get(&a.pkid)) {
                    record(&acked, me, dest, seq);
                    if m.send(&Packet::PubRel(Ack::new(a.pkid))).await.is_err() {
                        return;
                    }
                    continue;
                }
                (a.pkid, false)
            }
            Packet::PubComp(a) => {
                inflight.remove(&a.pkid);
                continue;
            }
            _ => continue,
        };
        if let Some((dest, seq)) = inflight.remove(&done) {
            if acknowledged {
                record(&acked, me, dest, seq);
            }
        }
    }
}

fn record(acked: &Mutex<Acked>, from: &str, to: &str, seq: u64) {
    acked
        .lock()
        .unwrap()
        .0
        .entry((from.to_owned(), to.to_owned()))
        .or_default()
        .push(seq);
}

/// Connects with the persistent session `me`, subscribes to the mailbox, and takes
/// deliveries until the connection breaks (or `until` says it is done).
async fn recipient(
    addr: SocketAddr,
    me: &'static str,
    protocol: Protocol,
    inbox: Arc<Mutex<Inbox>>,
    until: impl Fn(&Inbox) -> bool,
) {
    let (mut m, present) = match Mqtt::connect(addr, me, me, false, protocol).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{me}: connect: {e}");
            return;
        }
    };
    if !present {
        // The broker kept no session: the client drops its own state (MQTT-3.2.2-4).
        inbox.lock().unwrap().qos2_held.clear();
    }
    if let Err(e) = m.subscribe(&format!("inbox/{me}/#")).await {
        eprintln!("{me}: subscribe: {e}");
        return;
    }
    loop {
        if until(&inbox.lock().unwrap()) {
            return;
        }
        let packet = match m.recv().await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{me}: recv: {e}");
                return;
            }
        };
        let reply = match packet {
            Packet::Publish(p) => {
                let mut ib = inbox.lock().unwrap();
                let fresh = p.qos != QoS::ExactlyOnce || ib.qos2_held.insert(p.pkid);
                if fresh {
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    if let Some((head, seq)) = text.split_once('#') {
                        let from = head.split_once('>').map_or(head, |(f, _)| f).to_owned();
                        let seq: u64 = seq.parse().unwrap_or(0);
                        if seq == 0 {
                            ib.probed = true;
                        } else if ib.seen.insert((from.clone(), seq)) {
                            ib.first.push((from, seq));
                        } else {
                            *ib.duplicates.entry(from).or_default() += 1;
                        }
                    }
                }
                match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(Packet::PubAck(Ack::new(p.pkid))),
                    QoS::ExactlyOnce => Some(Packet::PubRec(Ack::new(p.pkid))),
                }
            }
            Packet::PubRel(a) => {
                inbox.lock().unwrap().qos2_held.remove(&a.pkid);
                Some(Packet::PubComp(Ack::new(a.pkid)))
            }
            _ => None,
        };
        if let Some(r) = reply {
            if m.send(&r).await.is_err() {
                return;
            }
        }
    }
}

/// A small deterministic generator (xorshift), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn setup(dir: &Path) {
    let store = std::env::var("NATTER_CRASH_STORE").unwrap_or_default();
    // Mailboxes large enough for the whole run: retention dropping the oldest of the
    // offline recipient's messages (with a gap event) is not what is tested here.
    let im = "[im]\nmailbox_max_messages = 1000000\n";
    std::fs::write(dir.join("config.toml"), format!("{FAST_ARGON}{im}{store}")).expect("config");
    for user in ["p1", "p2", "r1", "r2", "r3"] {
        let o = natterd(dir, &["user", "add", user], Some(&format!("{}\n", password(user))));
        assert!(
            o.status.success(),
            "user add {user}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Adds an operator rule to the config: each user may use `devices/{user}/#`.
fn allow_own_devices(dir: &Path) {
    let acl = "[[acl.rules]]\nfilter = \"devices/%u/#\"\naccess = \"readwrite\"\neffect = \"allow\"\nwho = \"all\"\n";
    let config = dir.join("config.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(acl);
    std::fs::write(&config, text).expect("config");
}

const RECIPIENTS: [(&str, Protocol); 3] = [("r1", Protocol::V311), ("r2", Protocol::V5), ("r3", Protocol::V311)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_when_the_broker_is_killed() {
    let seed = std::env::var("NATTER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 0x9E37_79B9 + 1);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let inboxes: HashMap<&str, Arc<Mutex<Inbox>>> = RECIPIENTS.iter().map(|(r, _)| (*r, Arc::default())).collect();

    // Every recipient's device is known (its cursor exists) before the load: each
    // subscribes once and gets a first message.
    {
        let broker = Broker::start(dir.path());
        let (mut p, _) = Mqtt::connect(broker.addr, "p1", "probe", true, Protocol::V311)
            .await
            .expect("probe");
        for (i, (r, protocol)) in RECIPIENTS.iter().enumerate() {
            let inbox = inboxes[r].clone();
            let task = tokio::spawn(recipient(broker.addr, r, *protocol, inbox, |ib| ib.probed));
            // The first message is sent once the subscription is in place.
            let probe = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: format!("dm/{r}").into(),
                pkid: u16::try_from(i + 1).unwrap(),
                properties: Properties::default(),
                payload: Bytes::from(payload("p1", r, 0)),
            });
            let inbox = inboxes[r].clone();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !inbox.lock().unwrap().probed {
                assert!(Instant::now() < deadline, "{r} never got its first message");
                p.send(&probe).await.expect("probe");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            task.abort();
        }
        assert!(broker.terminate().success());
    }

    let acked = Arc::new(Mutex::new(Acked::default()));
    let next: [Arc<Mutex<HashMap<&str, u64>>>; 2] = Default::default();
    for _ in 0..KILLS {
        let broker = Broker::start(dir.path());
        let mut tasks = Vec::new();
        for (r, protocol) in &RECIPIENTS[..2] {
            tasks.push(tokio::spawn(recipient(
                broker.addr,
                r,
                *protocol,
                inboxes[r].clone(),
                |_| false,
            )));
        }
        tasks.push(tokio::spawn(publisher(
            broker.addr,
            "p1",
            ["r1", "r3"],
            QoS::AtLeastOnce,
            Protocol::V311,
            next[0].clone(),
            acked.clone(),
        )));
        tasks.push(tokio::spawn(publisher(
            broker.addr,
            "p2",
            ["r2", "r3"],
            QoS::ExactlyOnce,
            Protocol::V5,
            next[1].clone(),
            acked.clone(),
        )));
        // A random moment under load, then SIGKILL.
        tokio::time::sleep(Duration::from_millis(150 + rng.below(400))).await;
        broker.kill();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    // Back once more: every recipient, the offline one too, catches up.
    let broker = Broker::start(dir.path());
    let acked = std::mem::take(&mut acked.lock().unwrap().0);
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 100, "seed {seed}: the load acknowledged only {total} messages");
    eprintln!("seed {seed}: {total} messages acknowledged over {KILLS} kills");
    let missing = |r: &str, ib: &Inbox| -> Vec<(String, u64)> {
        acked
            .iter()
            .filter(|((_, to), _)| to == r)
            .flat_map(|((from, _), seqs)| seqs.iter().map(move |s| (from.clone(), *s)))
            .filter(|k| !ib.seen.contains(k))
            .collect()
    };
    for (r, protocol) in RECIPIENTS {
        let inbox = inboxes[r].clone();
        let wanted = acked.clone();
        let done = move |ib: &Inbox| {
            wanted
                .iter()
                .filter(|((_, to), _)| to == r)
                .all(|((from, _), seqs)| seqs.iter().all(|s| ib.seen.contains(&(from.clone(), *s))))
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(20),
            recipient(broker.addr, r, protocol, inbox, done),
        )
        .await;
    }
    for (r, _) in RECIPIENTS {
        let ib = inboxes[r].lock().unwrap();
        eprintln!(
            "seed {seed}: {r} got {:?} messages again after a restart",
            ib.duplicates
        );
        assert_eq!(
            ib.duplicates.get("p2"),
            None,
            "seed {seed}: {r} got QoS 2 messages twice"
        );
        let lost = missing(r, &ib);
        assert!(
            lost.is_empty(),
            "seed {seed}: {r} never got {} acknowledged messages, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        // In order per conversation: first occurrences come with increasing numbers.
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (from, seq) in &ib.first {
            let prev = last.insert(from, *seq).unwrap_or(0);
            assert!(*seq > prev, "seed {seed}: {r} got {from}'s #{seq} after #{prev}");
        }
    }
    drop(broker);
}

/// A device is known from its first subscription: killed right after the SUBACK, the
/// broker still resumes it from there (not from the mailbox's head at its return), so
/// what was sent to it meanwhile arrives.
#[tokio::test]
async fn a_device_is_known_from_its_first_subscription_through_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    let broker = Broker::start(dir.path());
    let (mut dev, _) = Mqtt::connect(broker.addr, "r1", "r1-phone", false, Protocol::V311)
        .await
        .expect("device");
    dev.subscribe("inbox/r1/#").await.expect("subscribed");
    broker.kill();

    let broker = Broker::start(dir.path());
    let (mut p, _) = Mqtt::connect(broker.addr, "p1", "p1", true, Protocol::V311)
        .await
        .expect("sender");
    for seq in 1..=3u16 {
        p.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "dm/r1".into(),
            pkid: seq,
            properties: Properties::default(),
            payload: Bytes::from(payload("p1", "r1", u64::from(seq))),
        }))
        .await
        .expect("publish");
        assert!(matches!(p.recv().await, Ok(Packet::PubAck(_))), "acknowledged");
    }
    let (mut dev, present) = Mqtt::connect(broker.addr, "r1", "r1-phone", false, Protocol::V311)
        .await
        .expect("device back");
    if !present {
        dev.subscribe("inbox/r1/#").await.expect("subscribed again");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), dev.recv()).await {
            Ok(Ok(Packet::Publish(m))) => {
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
                dev.send(&Packet::PubAck(Ack::new(m.pkid))).await.expect("puback");
            }
            Ok(Ok(_)) => {}
            other => panic!("the device got {got:?}, then {other:?}"),
        }
    }
    assert_eq!(got, ["p1>r1#1", "p1>r1#2", "p1>r1#3"]);
}

/// A retained message acknowledged at QoS 1 is there after a kill right after the
/// PUBACK (it is on disk before it), and so is the clearing of another one.
#[tokio::test]
async fn an_acknowledged_retained_message_survives_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    allow_own_devices(dir.path());
    let broker = Broker::start(dir.path());
    let (mut p, _) = Mqtt::connect(broker.addr, "p1", "p1", true, Protocol::V311)
        .await
        .expect("publisher");
    for (pkid, topic, value) in [
        (1, "devices/p1/a", "on"),
        (2, "devices/p1/b", "x"),
        (3, "devices/p1/b", ""),
    ] {
        p.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: topic.into(),
            pkid,
            properties: Properties::default(),
            payload: Bytes::from(value),
        }))
        .await
        .expect("publish");
        assert!(matches!(p.recv().await, Ok(Packet::PubAck(_))), "acknowledged");
    }
    broker.kill();

    let broker = Broker::start(dir.path());
    let (mut s, _) = Mqtt::connect(broker.addr, "p1", "p1-reader", true, Protocol::V311)
        .await
        .expect("reader");
    s.subscribe("devices/p1/#").await.expect("subscribed");
    match tokio::time::timeout(Duration::from_secs(10), s.recv()).await {
        Ok(Ok(Packet::Publish(m))) => {
            assert_eq!(
                (&*m.topic, &m.payload[..], m.retain),
                ("devices/p1/a", &b"on"[..], true)
            );
        }
        other => panic!("no retained message after the kill: {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.recv())
            .await
            .is_err(),
        "devices/p1/b stays cleared"
    );
}

/// Plain QoS 1 messages for an offline persistent session, each acknowledged to its
/// publisher, are there after a kill: acknowledged means on disk for them too.
#[tokio::test]
async fn acknowledged_plain_messages_for_a_persistent_session_survive_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    setup(dir.path());
    allow_own_devices(dir.path());
    let broker = Broker::start(dir.path());
    let (mut s, _) = Mqtt::connect(broker.addr, "p1", "p1-sub", false, Protocol::V311)
        .await
        .expect("subscriber");
    s.subscribe("devices/p1/jobs").await.expect("subscribed");
    s.send(&Packet::Disconnect(Default::default()))
        .await
        .expect("disconnect");
    drop(s);
    let (mut p, _) = Mqtt::connect(broker.addr, "p1", "p1-pub", true, Protocol::V311)
        .await
        .expect("publisher");
    const N: u16 = 20;
    for pkid in 1..=N {
        p.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "devices/p1/jobs".into(),
            pkid,
            properties: Properties::default(),
            payload: Bytes::from(format!("job {pkid}")),
        }))
        .await
        .expect("publish");
        assert!(
            matches!(p.recv().await, Ok(Packet::PubAck(a)) if a.pkid == pkid),
            "acknowledged"
        );
    }
    broker.kill();

    let broker = Broker::start(dir.path());
    let (mut s, present) = Mqtt::connect(broker.addr, "p1", "p1-sub", false, Protocol::V311)
        .await
        .expect("subscriber again");
    assert!(present, "the session is back");
    for n in 1..=N {
        match tokio::time::timeout(Duration::from_secs(10), s.recv()).await {
            Ok(Ok(Packet::Publish(m))) => {
                assert_eq!(&m.payload[..], format!("job {n}").as_bytes(), "in order");
                s.send(&Packet::PubAck(natter_shared::codec::Ack::new(m.pkid)))
                    .await
                    .expect("puback");
            }
            other => panic!("job {n} lost in the kill: {other:?}"),
        }
    }
}
