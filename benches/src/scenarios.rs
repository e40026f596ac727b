//! The scenarios: pairs, group, fanin (messaging), connections and storm (connecting).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use natter_shared::codec::{Protocol, QoS};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::{Client, Login};
use crate::traffic::{self, Progress, Sender, Stats};

/// Everything a scenario needs to know about the run.
#[derive(Debug, Clone)]
pub struct Common {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub logins: Arc<Vec<(String, String)>>,
    pub duration: Duration,
    pub qos: QoS,
    /// Total messages per second over all senders; 0 = unpaced.
    pub rate: u64,
    pub window: usize,
    pub payload: usize,
    pub broker_pid: Option<u32>,
    /// Connections opened at once while setting up.
    pub connect_concurrency: usize,
    /// Natter's IM topics (`inbox/{me}/#`, `dm/{peer}`, `group/bench`) instead of plain ones.
    pub im: bool,
}

impl Common {
    /// Login for simulated client `i`: the i-th credential (round robin), or anonymous.
    pub fn login(&self, i: usize) -> Login {
        let client_id = format!("load-{i}");
        match self.logins.get(i % self.logins.len().max(1)) {
            Some((u, p)) if !self.logins.is_empty() => Login {
                client_id,
                username: Some(u.clone()),
                password: Some(p.clone()),
            },
            _ => Login {
                client_id,
                username: None,
                password: None,
            },
        }
    }

    fn user(&self, i: usize) -> String {
        self.login(i).username.unwrap_or_else(|| format!("anon{i}"))
    }
}

/// One client of a messaging scenario: what it subscribes to and what it sends.
struct Plan {
    subscribe: Option<String>,
    sender: Option<Sender>,
}

/// The senders of a scenario share one progress table.
struct Senders {
    progress: Arc<Progress>,
    count: usize,
    fanout: u64,
}

impl Senders {
    fn new(count: usize, fanout: u64) -> Senders {
        Senders {
            progress: Progress::new(count),
            count,
            fanout,
        }
    }

    fn sender(&self, c: &Common, topic: String, id: usize) -> Sender {
        Sender {
            topic: topic.into(),
            id: id as u32,
            qos: c.qos,
            interval: (c.rate > 0).then(|| Duration::from_secs_f64(self.count as f64 / c.rate as f64)),
            window: c.window,
            payload: c.payload,
            fanout: self.fanout,
            progress: self.progress.clone(),
        }
    }
}

/// Connects every planned client (bounded concurrency), then runs them together.
async fn run_traffic(c: &Common, plans: Vec<Plan>, progress: Arc<Progress>) -> Result<(Stats, f64)> {
    let permits = Arc::new(Semaphore::new(c.connect_concurrency));
    let mut connecting = Vec::new();
    for (i, plan) in plans.into_iter().enumerate() {
        let login = c.login(i);
        let (addr, protocol, qos) = (c.addr, c.protocol, c.qos);
        let permits = permits.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut client = Client::connect(addr, protocol, &login, 60).await?;
            if let Some(f) = &plan.subscribe {
                client.subscribe(f, qos).await?;
            }
            anyhow::Ok((client, plan.sender))
        }));
    }
    let mut ready = Vec::new();
    for t in connecting {
        ready.push(t.await??);
    }
    let start = Instant::now();
    let stop = start + c.duration;
    // An upper bound only: a run ends as soon as everything owed has arrived.
    let drain_until = stop + Duration::from_secs(10);
    let tasks: Vec<_> = ready
        .into_iter()
        .map(|(client, sender)| tokio::spawn(traffic::run(client, sender, progress.clone(), start, stop, drain_until)))
        .collect();
    let mut total: Option<Stats> = None;
    for t in tasks {
        let s = t.await??;
        match &mut total {
            Some(tot) => tot.merge(&s),
            None => total = Some(s),
        }
    }
    let Some(total) = total else { bail!("no clients") };
    Ok((total, c.duration.as_secs_f64()))
}

fn traffic_summary(c: &Common, s: &Stats, secs: f64, deliveries_per_message: u64) -> Map<String, Value> {
    let basis = if c.qos == QoS::AtMostOnce { s.sent } else { s.acked };
    let expected = basis * deliveries_per_message;
    let unique = s.received - s.dups;
    let h = &s.latency_us;
    let mut m = Map::new();
    m.insert("sent".into(), json!(s.sent));
    m.insert("acked".into(), json!(s.acked));
    m.insert("delivered".into(), json!(unique));
    m.insert("expected".into(), json!(expected));
    m.insert("lost".into(), json!(expected.saturating_sub(unique)));
    m.insert("dup".into(), json!(s.dups));
    m.insert("msgs_per_sec".into(), json!(s.sent as f64 / secs));
    m.insert("deliveries_per_sec".into(), json!(unique as f64 / secs));
    m.insert("p50_us".into(), json!(h.value_at_quantile(0.50)));
    m.insert("p99_us".into(), json!(h.value_at_quantile(0.99)));
    m.insert("p999_us".into(), json!(h.value_at_quantile(0.999)));
    m.insert("max_us".into(), json!(h.max()));
    m
}

/// P pairs chatting 1:1: each client subscribes to its own inbox and sends to its peer's.
pub async fn pairs(c: &Common, pairs: usize) -> Result<Map<String, Value>> {
    let n = pairs * 2;
    let senders = Senders::new(n, 1);
    let plans = (0..n)
        .map(|i| {
            let peer = i ^ 1;
            let (subscribe, to) = if c.im {
                (format!("inbox/{}/#", c.user(i)), format!("dm/{}", c.user(peer)))
            } else {
                (
                    format!("bench/inbox/{}/{i}", c.user(i)),
                    format!("bench/inbox/{}/{peer}", c.user(peer)),
                )
            };
            Plan {
                subscribe: Some(subscribe),
                sender: Some(senders.sender(c, to, i)),
            }
        })
        .collect();
    let (s, secs) = run_traffic(c, plans, senders.progress.clone()).await?;
    let mut m = traffic_summary(c, &s, secs, 1);
    m.insert("pairs".into(), json!(pairs));
    Ok(m)
}

/// One group of G members (all subscribed), the first K of whom publish to it.
pub async fn group(c: &Common, members: usize, publishers: usize) -> Result<Map<String, Value>> {
    // With IM topics the sender's own session is not sent its message back.
    let fanout = if c.im { members as u64 - 1 } else { members as u64 };
    let senders = Senders::new(publishers, fanout);
    let plans = (0..members)
        .map(|i| {
            let (subscribe, topic) = if c.im {
                (format!("inbox/{}/#", c.user(i)), "group/bench".to_string())
            } else {
                ("bench/group/g1".to_string(), "bench/group/g1".to_string())
            };
            Plan {
                subscribe: Some(subscribe),
                sender: (i < publishers).then(|| senders.sender(c, topic, i)),
            }
        })
        .collect();
    let (s, secs) = run_traffic(c, plans, senders.progress.clone()).await?;
    let mut m = traffic_summary(c, &s, secs, fanout);
    m.insert("members".into(), json!(members));
    m.insert("publishers".into(), json!(publishers));
    Ok(m)
}

/// N publishers, one subscriber on a wildcard.
pub async fn fanin(c: &Common, publishers: usize) -> Result<Map<String, Value>> {
    let senders = Senders::new(publishers, 1);
    let mut plans = vec![Plan {
        subscribe: Some("bench/fanin/#".into()),
        sender: None,
    }];
    plans.extend((0..publishers).map(|i| Plan {
        subscribe: None,
        sender: Some(senders.sender(c, format!("bench/fanin/{i}"), i)),
    }));
    let (s, secs) = run_traffic(c, plans, senders.progress.clone()).await?;
    let mut m = traffic_summary(c, &s, secs, 1);
    m.insert("publishers".into(), json!(publishers));
    Ok(m)
}

/// Bytes a process caused to be written to storage (`write_bytes` in /proc/PID/io).
pub fn disk_written(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resident memory once it has stopped moving: sampled every 250 ms until the last
/// 2 s of samples are within 1% of each other (at most 20 s). The allocator returns
/// what a burst of connections used only some time after it.
async fn settled_rss_kib(pid: u32) -> Option<u64> {
    let mut window = std::collections::VecDeque::from([rss_kib(pid)?]);
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        window.push_back(rss_kib(pid)?);
        if window.len() > 8 {
            window.pop_front();
            let (lo, hi) = (window.iter().min()?, window.iter().max()?);
            if (hi - lo) * 100 <= *lo {
                break;
            }
        }
    }
    window.back().copied()
}

/// C idle connections (each subscribed to its inbox unless `subscribe` is false):
/// connects per second and broker memory per 1,000 connections.
///
/// The memory is what the second half of the connections added, measured once the
/// broker has settled after each half: a freshly started broker still holds memory
/// it has freed but not yet returned (argon2's 19 MiB among it), which a difference
/// from its start would count against, or in favour of, the connections.
pub async fn connections(c: &Common, count: usize, subscribe: bool) -> Result<Map<String, Value>> {
    let rss_before = c.broker_pid.and_then(rss_kib);
    let permits = Arc::new(Semaphore::new(c.connect_concurrency));
    let half = count / 2;
    let mut clients = Vec::with_capacity(count);
    let mut secs = 0.0;
    let mut rss_half = None;
    for range in [0..half, half..count] {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in range {
            let login = c.login(i);
            let filter = if c.im {
                format!("inbox/{}/#", c.user(i))
            } else {
                format!("bench/inbox/{}/{i}", c.user(i))
            };
            let (addr, protocol, qos, permits) = (c.addr, c.protocol, c.qos, permits.clone());
            tasks.push(tokio::spawn(async move {
                let _p = permits.acquire_owned().await?;
                let mut client = Client::connect(addr, protocol, &login, 600).await?;
                if subscribe {
                    client.subscribe(&filter, qos).await?;
                }
                anyhow::Ok(client)
            }));
        }
        for t in tasks {
            clients.push(t.await?.context("connecting")?);
        }
        secs += start.elapsed().as_secs_f64();
        if clients.len() < count {
            rss_half = match c.broker_pid {
                Some(pid) => settled_rss_kib(pid).await,
                None => None,
            };
        }
    }
    let rss_after = match c.broker_pid {
        Some(pid) => settled_rss_kib(pid).await,
        None => None,
    };
    let mut m = Map::new();
    m.insert("connections".into(), json!(count));
    m.insert("connect_secs".into(), json!(secs));
    m.insert("connects_per_sec".into(), json!(count as f64 / secs));
    if let (Some(before), Some(mid), Some(after)) = (rss_before, rss_half, rss_after) {
        m.insert("rss_before_kib".into(), json!(before));
        m.insert("rss_half_kib".into(), json!(mid));
        m.insert("rss_after_kib".into(), json!(after));
        m.insert(
            "rss_per_1000_kib".into(),
            json!(after.saturating_sub(mid) as f64 * 1000.0 / (count - half) as f64),
        );
    }
    drop(clients);
    Ok(m)
}

/// C clients connecting all at once (as after a broker restart), retrying refused or
/// failed attempts: the time until every one is connected.
pub async fn storm(c: &Common, count: usize, deadline: Duration) -> Result<Map<String, Value>> {
    let start = Instant::now();
    let give_up = start + deadline;
    let mut tasks = Vec::new();
    for i in 0..count {
        let login = c.login(i);
        let (addr, protocol) = (c.addr, c.protocol);
        tasks.push(tokio::spawn(async move {
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                match Client::connect(addr, protocol, &login, 600).await {
                    Ok(client) => return Ok((client, attempts, start.elapsed())),
                    Err(e) if Instant::now() < give_up => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20 * u64::from(attempts.min(10)))).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }));
    }
    let mut clients = Vec::with_capacity(count);
    let mut retries = 0u64;
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (client, attempts, at) = t.await?.context("storm client never connected")?;
        retries += u64::from(attempts - 1);
        slowest = slowest.max(at);
        clients.push(client);
    }
    let mut m = Map::new();
    m.insert("connections".into(), json!(count));
    m.insert("all_connected_secs".into(), json!(slowest.as_secs_f64()));
    m.insert("connects_per_sec".into(), json!(count as f64 / slowest.as_secs_f64()));
    m.insert("retries".into(), json!(retries));
    drop(clients);
    Ok(m)
}
