//! `natter-load`: Natter's load generator. Speaks plain MQTT to natterd or any other
//! broker (Mosquitto for comparison), runs one bounded scenario and prints one JSON
//! summary line on stdout.
//!
//! ```text
//! natter-load --addr 127.0.0.1:1883 pairs --pairs 10 --qos 1 --rate 1000 --duration 10
//! natter-load setup --data ./data --users 1000 --out creds.txt   # accounts and tokens for natterd
//! ```

mod client;
mod scenarios;
mod setup;
mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use natter_shared::codec::{Protocol, QoS};
use serde_json::json;

#[derive(Parser)]
#[command(name = "natter-load", about = "IM-shaped MQTT load generator")]
struct Cli {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883", global = true)]
    addr: SocketAddr,
    /// MQTT version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, global = true)]
    protocol: u8,
    /// Credentials file: one "user secret" per line, used round robin; none = anonymous.
    #[arg(long, global = true)]
    credentials: Option<PathBuf>,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10.0, global = true)]
    duration: f64,
    #[arg(long, default_value_t = 1, global = true)]
    qos: u8,
    /// Total messages per second over all senders; 0 = unpaced (window-limited).
    #[arg(long, default_value_t = 0, global = true)]
    rate: u64,
    /// Unacknowledged QoS 1/2 publishes per sender when unpaced.
    #[arg(long, default_value_t = 64, global = true)]
    window: usize,
    /// Payload bytes (at least 20: sender, sequence, send time).
    #[arg(long, default_value_t = 64, global = true)]
    payload: usize,
    /// Broker process id, to read its memory from /proc.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Label for the summary (e.g. the broker's name).
    #[arg(long, default_value = "", global = true)]
    label: String,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64, global = true)]
    connect_concurrency: usize,
    /// Use Natter's IM topics: inbox/{me}/#, dm/{peer}, group/bench (see `setup --group`).
    #[arg(long, global = true)]
    im: bool,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// P pairs of users chatting 1:1.
    Pairs {
        #[arg(long, default_value_t = 10)]
        pairs: usize,
    },
    /// One group of G members, K of them publishing.
    Group {
        #[arg(long, default_value_t = 100)]
        members: usize,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
    },
    /// N publishers to one wildcard subscriber.
    Fanin {
        #[arg(long, default_value_t = 50)]
        publishers: usize,
    },
    /// C idle connections: connects/s and broker RSS per 1,000.
    Connections {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Skip the inbox subscription.
        #[arg(long)]
        no_subscribe: bool,
    },
    /// C clients connecting at once: time until all are connected.
    Storm {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        deadline: u64,
    },
    /// Create natterd accounts (and device tokens) in a stopped broker's data dir and
    /// write a credentials file.
    Setup(setup::SetupArgs),
}

fn main() {
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("natter-load: {e:#}");
            std::process::exit(1);
        }
    }
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Scenario::Setup(args) = &cli.scenario {
        return setup::run(args);
    }
    let protocol = match cli.protocol {
        4 => Protocol::V311,
        5 => Protocol::V5,
        other => bail!("--protocol must be 4 or 5, not {other}"),
    };
    let qos = QoS::from_u8(cli.qos).map_err(|_| anyhow::anyhow!("--qos must be 0, 1 or 2"))?;
    if qos == QoS::AtMostOnce
        && cli.rate == 0
        && !matches!(cli.scenario, Scenario::Connections { .. } | Scenario::Storm { .. })
    {
        bail!("QoS 0 needs a --rate: without acknowledgements there is no window to pace it");
    }
    let logins = match &cli.credentials {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(u, p)| (u.to_owned(), p.trim().to_owned())))
            .collect(),
        None => Vec::new(),
    };
    let common = scenarios::Common {
        addr: cli.addr,
        protocol,
        logins: Arc::new(logins),
        duration: Duration::from_secs_f64(cli.duration),
        qos,
        rate: cli.rate,
        window: cli.window.max(1),
        payload: cli.payload.max(traffic::HEADER),
        broker_pid: cli.broker_pid,
        connect_concurrency: cli.connect_concurrency.max(1),
        im: cli.im,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    let cpu_start = cpu_secs();
    let disk_start = cli.broker_pid.and_then(scenarios::disk_written);
    let wall = std::time::Instant::now();
    let (name, mut summary) = runtime.block_on(async {
        Ok::<_, anyhow::Error>(match cli.scenario {
            Scenario::Pairs { pairs } => ("pairs", scenarios::pairs(&common, pairs).await?),
            Scenario::Group { members, publishers } => ("group", scenarios::group(&common, members, publishers).await?),
            Scenario::Fanin { publishers } => ("fanin", scenarios::fanin(&common, publishers).await?),
            Scenario::Connections { count, no_subscribe } => (
                "connections",
                scenarios::connections(&common, count, !no_subscribe).await?,
            ),
            Scenario::Storm { count, deadline } => (
                "storm",
                scenarios::storm(&common, count, Duration::from_secs(deadline)).await?,
            ),
            Scenario::Setup(_) => unreachable!("handled above"),
        })
    })?;
    let wall = wall.elapsed().as_secs_f64();
    summary.insert("scenario".into(), json!(name));
    summary.insert("label".into(), json!(cli.label));
    summary.insert("qos".into(), json!(cli.qos));
    summary.insert("rate".into(), json!(cli.rate));
    summary.insert("protocol".into(), json!(cli.protocol));
    summary.insert("topics".into(), json!(if cli.im { "im" } else { "plain" }));
    summary.insert("payload".into(), json!(common.payload));
    // What the broker wrote to its disk during the run, and per acknowledged message
    // (the cost of storing them; a broker that stores nothing writes ~0).
    if let (Some(a), Some(b)) = (disk_start, cli.broker_pid.and_then(scenarios::disk_written)) {
        let written = b.saturating_sub(a);
        summary.insert("disk_write_bytes".into(), json!(written));
        if let Some(acked) = summary.get("acked").and_then(|v| v.as_u64()).filter(|&n| n > 0) {
            summary.insert("disk_bytes_per_msg".into(), json!(written as f64 / acked as f64));
        }
    }
    if let (Some(a), Some(b)) = (cpu_start, cpu_secs()) {
        summary.insert("gen_cpu_pct".into(), json!(100.0 * (b - a) / wall));
    }
    println!("{}", serde_json::Value::Object(summary));
    Ok(())
}
