//! The `natterd` binary: account commands with and without a running broker, config
//! errors, `--listen 127.0.0.1:0` logging the chosen address, SIGTERM shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use natter_shared::codec::{self, Connect, Packet, Properties, Protocol};

const BIN: &str = env!("CARGO_BIN_EXE_natterd");
const FAST_ARGON: &str = "[auth]\nargon2_memory_kib = 8\nargon2_iterations = 1\n";

fn natterd(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .arg("--data")
        .arg(dir.join("data"))
        .args(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn natterd");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    wait_with_timeout(child)
}

fn wait_with_timeout(mut child: Child) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("natterd did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.toml"), FAST_ARGON).expect("config");
    dir
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Logs in with the shared codec over a plain socket; returns the CONNACK code.
fn login(addr: SocketAddr, user: &str, password: &str) -> u8 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 10,
        client_id: format!("cli-{user}"),
        will: None,
        username: Some(user.into()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        properties: Properties::default(),
    }))
    .encode(&mut out, Protocol::V311);
    s.write_all(&out).expect("write");
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 256];
    loop {
        if let Some(Packet::ConnAck(a)) = codec::decode(&mut buf, Protocol::V311, 1024).expect("valid") {
            return a.code;
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed before CONNACK");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn user_commands_without_a_broker() {
    let dir = setup();
    let o = natterd(dir.path(), &["user", "add", "alice"], Some("pw-alice\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "created alice");
    let o = natterd(dir.path(), &["user", "add", "root", "--admin"], Some("pw-root\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = natterd(dir.path(), &["user", "add", "alice"], Some("other\n"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let o = natterd(dir.path(), &["user", "add", "Bad Name"], Some("x\n"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid name"), "{}", stderr(&o));
    let o = natterd(dir.path(), &["user", "add", "empty"], Some("\n"));
    assert!(!o.status.success());
    let o = natterd(dir.path(), &["user", "passwd", "nobody"], Some("x\n"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such user"), "{}", stderr(&o));
    let o = natterd(dir.path(), &["user", "list"], None);
    assert_eq!(stdout(&o), "alice\nroot (admin)\n");
    let o = natterd(dir.path(), &["user", "del", "alice"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = natterd(dir.path(), &["user", "list"], None);
    assert_eq!(stdout(&o), "root (admin)\n");
}

#[test]
fn user_commands_reach_a_running_broker() {
    let dir = setup();
    assert!(natterd(dir.path(), &["user", "add", "alice"], Some("pw-alice\n"))
        .status
        .success());
    let mut broker = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn broker");
    let mut lines = BufReader::new(broker.stderr.take().expect("stderr")).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .expect("broker log ended before listening")
            .expect("log line");
        if let Some(rest) = line.split("addr=").nth(1).filter(|_| line.contains("listening")) {
            break rest
                .split_whitespace()
                .next()
                .expect("address")
                .parse()
                .expect("socket address");
        }
    };
    // Keep draining the log so the broker never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    assert_ne!(addr.port(), 0);

    assert_eq!(login(addr, "alice", "pw-alice"), 0);
    assert_eq!(login(addr, "bob", "pw-bob"), 5, "bob does not exist yet");
    let o = natterd(dir.path(), &["user", "add", "bob"], Some("pw-bob\n"));
    assert!(o.status.success(), "add through the control socket: {}", stderr(&o));
    assert_eq!(
        login(addr, "bob", "pw-bob"),
        0,
        "the running broker sees the new account"
    );
    let o = natterd(dir.path(), &["user", "passwd", "bob"], Some("pw-bob-2\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(login(addr, "bob", "pw-bob-2"), 0);
    let o = natterd(dir.path(), &["user", "list"], None);
    assert_eq!(stdout(&o), "alice\nbob\n");
    let o = natterd(dir.path(), &["user", "del", "bob"], None);
    assert!(o.status.success());
    assert_eq!(login(addr, "bob", "pw-bob-2"), 5);

    let status = Command::new("kill")
        .args(["-TERM", &broker.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = broker.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "graceful exit: {exit:?}");
    // The accounts survive the restart.
    let o = natterd(dir.path(), &["user", "list"], None);
    assert_eq!(stdout(&o), "alice\n");
}

#[test]
fn locked_store_without_a_broker_is_a_clear_error() {
    let dir = setup();
    let _held = natterd::store::Store::open(&dir.path().join("data")).expect("open");
    let o = natterd(dir.path(), &["user", "list"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
}

#[test]
fn bad_config_is_refused_with_the_key() {
    let dir = setup();
    std::fs::write(dir.path().join("config.toml"), "[limits]\nmax_conections = 5\n").unwrap();
    let o = natterd(dir.path(), &["--listen", "127.0.0.1:0"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("max_conections"), "{}", stderr(&o));
    std::fs::write(dir.path().join("config.toml"), "[limits]\nmax_packet_size = 0\n").unwrap();
    let o = natterd(dir.path(), &["--listen", "127.0.0.1:0"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("max_packet_size"), "{}", stderr(&o));
    let o = Command::new(BIN)
        .args(["--config", "/nonexistent/natter.toml"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/natter.toml"), "{}", stderr(&o));
}

#[test]
fn token_commands_without_a_broker() {
    let dir = setup();
    assert!(natterd(dir.path(), &["user", "add", "alice"], Some("pw\n"))
        .status
        .success());
    let o = natterd(dir.path(), &["token", "add", "alice", "sensor-1"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_owned();
    assert!(token.starts_with("nt_") && token.len() == 67, "{token}");
    let o = natterd(dir.path(), &["token", "add", "alice", "sensor-1"], None);
    assert!(!o.status.success(), "duplicate name refused");
    let o = natterd(dir.path(), &["token", "add", "nobody", "x"], None);
    assert!(stderr(&o).contains("no such user"), "{}", stderr(&o));
    let o = natterd(dir.path(), &["token", "list"], None);
    assert_eq!(stdout(&o), "alice sensor-1\n");
    assert!(!stdout(&o).contains(&token), "secrets are never listed");
    let o = natterd(dir.path(), &["token", "revoke", "alice", "sensor-1"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = natterd(dir.path(), &["token", "revoke", "alice", "sensor-1"], None);
    assert!(!o.status.success());
    let o = natterd(dir.path(), &["token", "list", "alice"], None);
    assert_eq!(stdout(&o), "");
}
