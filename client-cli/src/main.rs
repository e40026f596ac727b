//! `natter`: Natter's terminal client.
//!
//! This first version has one command, `natter check`, which logs in to a broker
//! and reports whether the credentials are accepted. Messaging, contacts, groups,
//! presence, history, files and end-to-end encryption arrive with the CLI step of
//! the roadmap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand};
use natter_shared::codec::{self, reason, Connect, Packet, Properties, Protocol};

#[derive(Parser)]
#[command(name = "natter", version, about = "Natter's terminal client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log in to a broker and report whether it accepts the credentials.
    #[command(after_help = "Example: echo secret | natter check --server 127.0.0.1:1883 --user alice")]
    Check {
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:1883", env = "NATTER_SERVER")]
        server: String,
        /// User name (password read from stdin).
        #[arg(long, env = "NATTER_USER")]
        user: Option<String>,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("natter: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Check { server, user } => check(&server, user),
    }
}

fn check(server: &str, user: Option<String>) -> Result<()> {
    let password = match &user {
        Some(_) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the password from stdin")?;
            Some(Bytes::from(s.trim_end_matches(['\n', '\r']).to_owned()))
        }
        None => None,
    };
    let mut stream = TcpStream::connect(server).with_context(|| format!("cannot reach {server}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let connect = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: String::new(),
        will: None,
        username: user.clone(),
        password,
        properties: Properties::default(),
    }));
    let mut out = BytesMut::new();
    connect.encode(&mut out, Protocol::V5);
    stream.write_all(&out)?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 1024];
    let ack = loop {
        if let Some(p) = codec::decode(&mut buf, Protocol::V5, 64 * 1024)? {
            break p;
        }
        let n = stream.read(&mut chunk).context("waiting for CONNACK")?;
        if n == 0 {
            bail!("{server} closed the connection without CONNACK");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    match ack {
        Packet::ConnAck(a) if a.code == reason::SUCCESS => {
            let mut out = BytesMut::new();
            Packet::Disconnect(Default::default()).encode(&mut out, Protocol::V5);
            let _ = stream.write_all(&out);
            println!(
                "ok: logged in to {server} as {}",
                user.as_deref().unwrap_or("anonymous")
            );
            Ok(())
        }
        Packet::ConnAck(a) => bail!("refused by {server}: reason code {:#04x}", a.code),
        other => bail!("unexpected {} from {server}", other.name()),
    }
}
