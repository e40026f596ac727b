//! The real `natter` binary in a pseudo-terminal: what it draws goes through a
//! terminal emulator (vt100), so a test reads the screen a person would see and
//! types as a person would.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Pty {
    master: std::fs::File,
    pub child: Child,
    parser: Arc<Mutex<vt100::Parser>>,
}

impl Pty {
    /// Starts `natter ARGS` on a terminal of `rows` x `cols`.
    pub fn spawn(args: &[&str], env: &[(String, String)], rows: u16, cols: u16) -> Pty {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two fds into the ints we own; the winsize is read.
        let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened and are owned here alone.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter"));
        cmd.args(args)
            .env_clear()
            .envs(env.iter().cloned())
            .env("TERM", "xterm-256color")
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("natter in a pty");
        drop(slave);
        let master = std::fs::File::from(master);
        let parser = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let mut reader = master.try_clone().expect("dup master");
        let p = parser.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                p.lock().unwrap_or_else(|e| e.into_inner()).process(&buf[..n]);
            }
        });
        Pty { master, child, parser }
    }

    /// What the screen shows now.
    pub fn screen(&self) -> String {
        self.parser
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .screen()
            .contents()
    }

    /// Types bytes as keys (`\r` is Enter, `\x03` Ctrl+C, `\x1b\r` Alt+Enter).
    pub fn keys(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).expect("type");
        self.master.flush().expect("flush");
    }

    /// Polls the screen until it shows `text`; panics with the screen after `within`.
    pub async fn wait_for(&self, text: &str, within: Duration) -> String {
        self.wait_for_any(&[text], within).await
    }

    /// Polls the screen until it shows one of `texts`.
    pub async fn wait_for_any(&self, texts: &[&str], within: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if texts.iter().any(|t| s.contains(t)) {
                return s;
            }
            if start.elapsed() > within {
                panic!("the screen never showed any of {texts:?}; it shows:\n{s}");
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    /// Waits for the program to end; its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                panic!("natter did not end; the screen:\n{}", self.screen());
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
