//! The `natterd` binary: account commands with and without a running broker, config
//! errors, `--listen 127.0.0.1:0` logging the chosen address, SIGTERM shutdown.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use natter_shared::codec::{self, Connect, Packet, Properties, Protocol};

mod common;
use common::{natterd, wait_with_timeout, Broker, BIN, FAST_ARGON};

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.toml"), FAST_ARGON).expect("config");
    dir
}

/// Asserts a clean refusal: exit status 1 (a panic exits 101) and a message on stderr
/// naming the cause.
fn refused(o: &Output, cause: &str) {
    assert_eq!(o.status.code(), Some(1), "exit status; stderr: {}", stderr(o));
    assert!(stderr(o).contains(cause), "expected {cause:?} in: {}", stderr(o));
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Logs in with the shared codec over a plain socket; returns the CONNACK code.
fn login(addr: SocketAddr, user: &str, password: &str) -> u8 {
    connack(&mut TcpStream::connect(addr).expect("connect"), user, password)
}

/// Logs in and keeps the connection; asserts success.
fn connect(addr: SocketAddr, user: &str, password: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    assert_eq!(connack(&mut s, user, password), 0, "login of {user}");
    s
}

fn connack(s: &mut TcpStream, user: &str, password: &str) -> u8 {
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
    refused(&o, "already exists");
    let o = natterd(dir.path(), &["user", "add", "Bad Name"], Some("x\n"));
    refused(&o, "invalid name");
    let o = natterd(dir.path(), &["user", "add", "empty"], Some("\n"));
    refused(&o, "empty password");
    let o = natterd(dir.path(), &["user", "passwd", "nobody"], Some("x\n"));
    refused(&o, "no such user");
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
    let broker = Broker::start(dir.path());
    let addr = broker.addr;

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
    assert_eq!(login(addr, "bob", "pw-bob"), 5, "the old password stopped working");
    let o = natterd(dir.path(), &["user", "list"], None);
    assert_eq!(stdout(&o), "alice\nbob\n");
    let o = natterd(dir.path(), &["user", "add", "bob"], Some("again\n"));
    refused(&o, "already exists");
    let o = natterd(dir.path(), &["user", "del", "bob"], None);
    assert!(o.status.success());
    assert_eq!(login(addr, "bob", "pw-bob-2"), 5);

    // A reset token from the running broker logs in (for resetting) until used.
    let o = natterd(dir.path(), &["user", "reset", "alice"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_owned();
    assert!(token.starts_with("nr_"), "{token}");
    assert_eq!(login(addr, "alice", &token), 0, "the reset token is accepted");
    assert_eq!(login(addr, "alice", "pw-alice"), 0, "the password still works");
    let o = natterd(dir.path(), &["user", "reset", "nobody"], None);
    refused(&o, "no such user");

    assert!(broker.terminate().success(), "graceful exit");
    // The accounts survive the restart.
    let o = natterd(dir.path(), &["user", "list"], None);
    assert_eq!(stdout(&o), "alice\n");
}

#[test]
fn token_commands_reach_a_running_broker() {
    let dir = setup();
    assert!(natterd(dir.path(), &["user", "add", "alice"], Some("pw\n"))
        .status
        .success());
    let broker = Broker::start(dir.path());
    let o = natterd(dir.path(), &["token", "add", "alice", "sensor-1"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_owned();
    assert_eq!(login(broker.addr, "alice", &token), 0, "the new token logs in");
    let o = natterd(dir.path(), &["token", "list", "alice"], None);
    assert_eq!(stdout(&o), "alice sensor-1\n");
    // A connection made with the token is closed when it is revoked.
    let mut open = connect(broker.addr, "alice", &token);
    let o = natterd(dir.path(), &["token", "revoke", "alice", "sensor-1"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    open.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut rest = Vec::new();
    let closed = open.read_to_end(&mut rest);
    assert!(closed.is_ok(), "closed by the broker, not timed out: {closed:?}");
    assert_eq!(login(broker.addr, "alice", &token), 5, "a revoked token is refused");
    let o = natterd(dir.path(), &["token", "revoke", "alice", "sensor-1"], None);
    refused(&o, "no token named sensor-1");
}

#[test]
fn config_toml_in_the_working_directory_is_picked_up() {
    let dir = setup();
    std::fs::write(
        dir.path().join("config.toml"),
        format!("{FAST_ARGON}[server]\ndata_dir = \"from-cwd\"\n"),
    )
    .unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(BIN)
            .current_dir(dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn natterd");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        wait_with_timeout(child)
    };
    let o = run(&["user", "add", "alice"], "pw\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        dir.path().join("from-cwd").is_dir(),
        "the store went where ./config.toml said"
    );
    assert!(!dir.path().join("data").exists(), "not the built-in default");
    assert_eq!(stdout(&run(&["user", "list"], "")), "alice\n");
}

#[test]
fn locked_store_without_a_broker_is_a_clear_error() {
    let dir = setup();
    let _held = natterd::store::Store::open(&dir.path().join("data")).expect("open");
    let o = natterd(dir.path(), &["user", "list"], None);
    refused(&o, "locked");
}

#[test]
fn bad_config_is_refused_with_the_key() {
    let dir = setup();
    std::fs::write(dir.path().join("config.toml"), "[limits]\nmax_conections = 5\n").unwrap();
    let o = natterd(dir.path(), &["--listen", "127.0.0.1:0"], None);
    refused(&o, "max_conections");
    std::fs::write(dir.path().join("config.toml"), "[limits]\nmax_packet_size = 0\n").unwrap();
    let o = natterd(dir.path(), &["--listen", "127.0.0.1:0"], None);
    refused(&o, "max_packet_size");
    let o = Command::new(BIN)
        .args(["--config", "/nonexistent/natter.toml"])
        .output()
        .unwrap();
    refused(&o, "/nonexistent/natter.toml");
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
    refused(&o, "already has a token named sensor-1");
    let o = natterd(dir.path(), &["token", "add", "nobody", "x"], None);
    refused(&o, "no such user");
    let o = natterd(dir.path(), &["token", "list"], None);
    assert_eq!(stdout(&o), "alice sensor-1\n");
    assert!(!stdout(&o).contains(&token), "secrets are never listed");
    let o = natterd(dir.path(), &["token", "revoke", "alice", "sensor-1"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = natterd(dir.path(), &["token", "revoke", "alice", "sensor-1"], None);
    refused(&o, "no token named sensor-1");
    let o = natterd(dir.path(), &["token", "list", "alice"], None);
    assert_eq!(stdout(&o), "");
}
