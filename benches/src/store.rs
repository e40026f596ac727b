//! `natter-store`: what the store costs on disk and at start, with encryption at rest
//! on as natterd runs it. Prints one JSON line per measurement on stdout.
//!
//! ```text
//! natter-store retention --messages 400000 --users 100 --keep 1000   # disk use under steady traffic
//! natter-store startup --messages 1000000 --natterd target/release/natterd   # start-up with a large store
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use natter_shared::codec::{Packet, Protocol, Publish, QoS};
use natterd::config::Config;
use natterd::store::{MailboxEntry, NewMessage, Retention, Store, StoredMessage};
use serde_json::json;

#[allow(dead_code, reason = "the load generator's client: this tool uses a part")]
mod client;

#[derive(Parser)]
#[command(name = "natter-store", about = "Store disk use and start-up, measured")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// DMs between users under mailbox retention: disk bytes as traffic goes on.
    Retention {
        #[arg(long, default_value_t = 400_000)]
        messages: u64,
        #[arg(long, default_value_t = 100)]
        users: u64,
        /// Messages each mailbox keeps.
        #[arg(long, default_value_t = 1000)]
        keep: u64,
    },
    /// A store of N messages, then natterd started on it: time to listening and to
    /// the first DM delivered through a mailbox.
    Startup {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        users: u64,
        #[arg(long, default_value = "target/release/natterd")]
        natterd: String,
    },
}

fn config(dir: &Path) -> Config {
    let mut c = Config::default_config();
    c.server.data_dir = dir.to_path_buf();
    c.auth.argon2_memory_kib = 8;
    c.auth.argon2_iterations = 1;
    c
}

fn open(c: &Config) -> Result<Store> {
    Ok(natterd::datakey::open_store(
        &c.server.data_dir,
        &c.store,
        natterd::server::store_options(&c.store),
    )?)
}

fn dm(id: u64, from: &str, to: &str) -> NewMessage {
    let message = Arc::new(StoredMessage {
        from: from.to_owned(),
        ts: 1_700_000_000_000 + id,
        payload: Bytes::from(format!("message {id:>12} from {from} to {to}, some words")),
        user_properties: vec![],
        content_type: None,
    });
    let (a, b) = if from < to { (from, to) } else { (to, from) };
    let mailboxes = vec![
        (
            to.to_owned(),
            MailboxEntry {
                suffix: format!("dm/{from}"),
                qos: 1,
            },
        ),
        (
            from.to_owned(),
            MailboxEntry {
                suffix: format!("sent/dm/{to}"),
                qos: 1,
            },
        ),
    ];
    NewMessage::from_mailboxes(id, message, Some(format!("dm:{a}:{b}")), mailboxes)
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => disk_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// Appends `messages` DMs in batches of 64 (as the writer does), indexing after each.
fn fill(
    store: &Store,
    messages: u64,
    users: u64,
    r: Retention,
    mut every: impl FnMut(u64) -> Result<()>,
) -> Result<()> {
    let mut id = store.next_message_id();
    let mut done = 0;
    while done < messages {
        let n = 64.min(messages - done);
        let batch: Vec<NewMessage> = (0..n)
            .map(|i| {
                let k = done + i;
                let (from, to) = (k % users, (k * 7 + 1) % users);
                let to = if to == from { (to + 1) % users } else { to };
                let m = dm(id, &format!("u{from}"), &format!("u{to}"));
                id = store.next_message_id();
                m
            })
            .collect();
        store.append(&batch)?;
        store.index(r)?;
        done += n;
        every(done)?;
    }
    store.flush()?;
    Ok(())
}

fn retention(messages: u64, users: u64, keep: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let c = config(dir.path());
    let store = open(&c)?;
    let r = Retention {
        max_messages: keep,
        max_bytes: u64::MAX,
        max_age: u64::MAX,
    };
    let step = (messages / 8).max(1);
    let t = Instant::now();
    let mut next = step;
    fill(&store, messages, users, r, |done| {
        if done >= next || done == messages {
            next += step;
            store.flush()?;
            let (chunks, first) = store.journal_extent()?;
            println!(
                "{}",
                json!({
                    "bench": "store-retention",
                    "messages": done,
                    "users": users,
                    "keep_per_mailbox": keep,
                    "disk_bytes": disk_bytes(dir.path()),
                    "journal_chunks": chunks,
                    "journal_first_id": first,
                    "elapsed_s": t.elapsed().as_secs_f64(),
                })
            );
        }
        Ok(())
    })?;
    for (tree, records, bytes) in store.tree_sizes()? {
        println!(
            "{}",
            json!({ "bench": "store-retention-tree", "tree": tree, "records": records, "bytes": bytes })
        );
    }
    // What the live records take: a backup writes them alone into a new store.
    let copy = tempfile::tempdir()?;
    store.backup(copy.path())?;
    println!(
        "{}",
        json!({
            "bench": "store-retention-live",
            "messages": messages,
            "disk_bytes_in_use": disk_bytes(dir.path()),
            "disk_bytes_backup": disk_bytes(copy.path()),
        })
    );
    Ok(())
}

fn startup(messages: u64, users: u64, natterd: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let c = config(dir.path());
    let t = Instant::now();
    {
        let store = open(&c)?;
        let hasher = natterd::accounts::password::PasswordHasherConfig::new(&c.auth)?;
        for u in 0..users.min(2) {
            natterd::accounts::add(&store, &hasher, &format!("u{u}"), b"bench-password", false)?;
        }
        // Retention as the default config: nothing here is over it.
        let r = Retention {
            max_messages: 10_000,
            max_bytes: 64 << 20,
            max_age: u64::MAX,
        };
        fill(&store, messages, users, r, |_| Ok(()))?;
    }
    let built = t.elapsed();
    let config_file = dir.path().join("config.toml");
    std::fs::write(&config_file, "[auth]\nargon2_memory_kib = 8\nargon2_iterations = 1\n")?;
    let start = Instant::now();
    let mut child = Command::new(natterd)
        .arg("--config")
        .arg(&config_file)
        .arg("--data")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {natterd}"))?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let addr: SocketAddr = loop {
        let Some(line) = lines.next() else {
            bail!("natterd ended before listening");
        };
        let line = line?;
        if let Some(rest) = line.split("addr=").nth(1).filter(|_| line.contains("listening")) {
            break rest.split_whitespace().next().context("address")?.parse()?;
        }
    };
    let listening = start.elapsed();
    std::thread::spawn(move || lines.for_each(drop));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let first = rt.block_on(async {
        let login = |u: &str| client::Login {
            client_id: format!("{u}-bench"),
            username: Some(u.to_owned()),
            password: Some("bench-password".into()),
        };
        let mut rx = client::Client::connect(addr, Protocol::V311, &login("u1"), 30).await?;
        rx.subscribe("inbox/u1/#", QoS::AtLeastOnce).await?;
        let mut tx = client::Client::connect(addr, Protocol::V311, &login("u0"), 30).await?;
        tx.queue(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "dm/u1".into(),
            pkid: 1,
            properties: Default::default(),
            payload: Bytes::from_static(b"first after start"),
        }));
        tx.flush().await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), rx.read()).await?? {
                Packet::Publish(p) if &p.payload[..] == b"first after start" => break,
                _ => continue,
            }
        }
        anyhow::Ok(start.elapsed())
    })?;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{}",
        json!({
            "bench": "store-startup",
            "messages": messages,
            "users": users,
            "disk_bytes": disk_bytes(dir.path()),
            "build_s": built.as_secs_f64(),
            "to_listening_ms": listening.as_secs_f64() * 1e3,
            "to_first_delivery_ms": first.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.what {
        What::Retention { messages, users, keep } => retention(messages, users, keep),
        What::Startup {
            messages,
            users,
            natterd,
        } => startup(messages, users, &natterd),
    };
    if let Err(e) = result {
        eprintln!("natter-store: {e:#}");
        std::process::exit(1);
    }
}
