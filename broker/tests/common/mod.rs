//! What the tests that run the `natterd` binary share: running a command, and a
//! broker serving on 127.0.0.1:0 (killed when dropped).
#![allow(dead_code, reason = "each test binary uses a part")]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_natterd");
pub const FAST_ARGON: &str = "[auth]\nargon2_memory_kib = 8\nargon2_iterations = 1\n";

/// Runs `natterd --config DIR/config.toml --data DIR/data ARGS` to its end (30 s at most).
pub fn natterd(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
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

pub fn wait_with_timeout(mut child: Child) -> Output {
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

/// A `natterd` serving on 127.0.0.1:0; killed when dropped, so a failing assertion
/// never leaves it running.
pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--data")
            .arg(dir.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn broker");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut broker = Broker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        broker.addr = loop {
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
        assert_ne!(broker.addr.port(), 0);
        broker
    }

    /// SIGKILL: the broker gets no chance to write anything out.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (within 10 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
