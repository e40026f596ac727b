//! What the CLI tests share: a person with a HOME of their own, running `natter`.

#![allow(dead_code)]

pub mod pty;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::Value;

/// One person at a terminal (or a script): their own config and downloads.
pub struct Person {
    pub home: tempfile::TempDir,
    pub server: String,
}

/// What a run of `natter` did.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(self) -> Ran {
        assert_eq!(self.code, 0, "natter failed: {self:?}");
        self
    }

    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    }
}

impl Person {
    pub fn new(addr: SocketAddr) -> Person {
        Person {
            home: tempfile::tempdir().expect("temp home"),
            server: addr.to_string(),
        }
    }

    /// Runs `natter ARGS` with `stdin` piped in.
    pub async fn run(&self, args: &[&str], stdin: &str) -> Ran {
        self.run_env(args, stdin, &[]).await
    }

    /// The same with environment variables set.
    pub async fn run_env(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Ran {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let home = self.home.path().to_owned();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_natter"))
                .args(&args)
                .env_clear()
                .env("HOME", &home)
                .env("XDG_CONFIG_HOME", home.join("config"))
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run natter");
            if let Some(mut i) = child.stdin.take() {
                let _ = i.write_all(stdin.as_bytes());
            }
            let out = child.wait_with_output().expect("natter ends");
            Ran {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .expect("natter task")
    }

    pub async fn login(&self, user: &str, password: &str) -> Ran {
        let server = self.server.clone();
        self.run(
            &["login", "--server", &server, "--user", user],
            &format!("{password}\n"),
        )
        .await
    }

    pub fn config(&self) -> std::path::PathBuf {
        self.home.path().join("config").join("natter").join("config.toml")
    }
}

impl Person {
    /// The same person, the broker now at `addr` (after a restart on a new port):
    /// the profile is pointed there, as a person would log in again.
    pub fn moved(self, addr: SocketAddr) -> Person {
        let path = self.config();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace(&self.server, &addr.to_string());
        std::fs::write(&path, text).unwrap();
        Person {
            home: self.home,
            server: addr.to_string(),
        }
    }
}

impl Person {
    /// The environment `natter` runs with for this person.
    pub fn env(&self) -> Vec<(String, String)> {
        let home = self.home.path();
        vec![
            ("HOME".into(), home.display().to_string()),
            ("XDG_CONFIG_HOME".into(), home.join("config").display().to_string()),
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ]
    }
}

/// alice and bob, each logged in at a terminal of their own.
pub async fn alice_and_bob(addr: SocketAddr) -> (Person, Person) {
    let (alice, bob) = (Person::new(addr), Person::new(addr));
    alice.login("alice", "alice-pw").await.ok();
    bob.login("bob", "bob-pw").await.ok();
    (alice, bob)
}

/// The same, and friends.
pub async fn friends(addr: SocketAddr) -> (Person, Person) {
    let (alice, bob) = alice_and_bob(addr).await;
    alice.run(&["friends", "add", "bob"], "").await.ok();
    bob.run(&["friends", "accept", "alice"], "").await.ok();
    (alice, bob)
}

impl Person {
    /// Starts `natter ARGS` in the background (output discarded), to be cut off.
    pub async fn spawn(&self, args: &[&str]) -> std::process::Child {
        let env = self.env();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_natter"))
                .args(&args)
                .env_clear()
                .envs(env)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("natter starts")
        })
        .await
        .expect("spawn task")
    }
}

/// Kills a natter started with [`Person::spawn`] and reaps it.
pub async fn cut_off(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// Polls `cond` every 2 ms; panics with `what` after 20 s.
pub async fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
