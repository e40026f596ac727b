//! Who and where: the profile, overridden by flags and `NATTER_*` variables, and the
//! two kinds of connection the commands use.
//!
//! - A one-shot connection: a clean session under a random client id, subscribed
//!   to the API answers only. It reads nothing from the mailbox, so a `send` or a
//!   `friends add` never moves a cursor.
//! - The device connection: this machine's persistent session (the profile's
//!   `device`), subscribed to the whole mailbox; what it acknowledges counts as read.

use std::io::{BufRead, IsTerminal};

use natter_shared::codec::reason;
use natter_shared::im;
use tokio::sync::mpsc;

use crate::cli::Global;
use crate::error::Failure;
use crate::link::{Event, Link, Options};
use crate::profile::{self, Profile};

/// How long the broker keeps this machine's session while it is away: a week
/// (natterd's default cap).
pub const DEVICE_SESSION_SECS: u32 = 7 * 24 * 3600;
const KEEP_ALIVE: u16 = 30;

/// The account and broker a command works on.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub user: String,
    pub secret: String,
    pub device: String,
    /// The profile it came from, if any.
    pub profile: Option<(String, Profile)>,
}

/// Reads a secret: from the terminal without echo, else one line of stdin.
///
/// # Errors
/// Nothing to read.
pub fn read_secret(prompt: &str) -> Result<String, Failure> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).map_err(|e| Failure::Local(format!("reading the password: {e}")));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::Local(format!("reading the password from stdin: {e}")))?;
    let line = line.trim_end_matches(['\n', '\r']).to_owned();
    if line.is_empty() {
        return Err(Failure::Usage("no password given on stdin".into()));
    }
    Ok(line)
}

/// Resolves the target: flags and environment over the profile. Without a token or
/// password anywhere, asks for the password on a terminal.
///
/// # Errors
/// Nothing says which server or user, or no secret can be had.
pub fn target(g: &Global) -> Result<Target, Failure> {
    let file = profile::File::load(&profile::config_path()?)?;
    let picked = file.pick(g.profile.as_deref()).map(|(n, p)| (n.to_owned(), p.clone()));
    if let (Some(name), None) = (&g.profile, &picked) {
        return Err(Failure::NotLoggedIn(format!(
            "no profile named {name}: natter login --profile {name} --server HOST:PORT --user NAME"
        )));
    }
    let server = g
        .server
        .clone()
        .or_else(|| picked.as_ref().map(|(_, p)| p.server.clone()))
        .ok_or_else(|| Failure::NotLoggedIn("not logged in: natter login --server HOST:PORT --user NAME".into()))?;
    let user = g
        .user
        .clone()
        .or_else(|| picked.as_ref().map(|(_, p)| p.user.clone()))
        .ok_or_else(|| Failure::NotLoggedIn("no user: give --user NAME, or natter login".into()))?;
    // The profile's token only for the profile's own account and server.
    let same = picked.as_ref().filter(|(_, p)| p.user == user && p.server == server);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let secret = match (
        env("NATTER_TOKEN"),
        env("NATTER_PASSWORD"),
        same.and_then(|(_, p)| p.token.clone()),
    ) {
        (Some(t), _, _) => t,
        (None, Some(p), _) => p,
        (None, None, Some(t)) => t,
        (None, None, None) if std::io::stdin().is_terminal() => read_secret(&format!("password for {user}: "))?,
        _ => {
            return Err(Failure::NotLoggedIn(format!(
                "not logged in as {user}: natter login --server {server} --user {user}, or set NATTER_TOKEN"
            )))
        }
    };
    let device = same
        .map(|(_, p)| p.device.clone())
        .or_else(|| env("NATTER_DEVICE"))
        .unwrap_or_else(|| format!("natter-{user}-script"));
    Ok(Target {
        server,
        user,
        secret,
        device,
        profile: same.cloned(),
    })
}

fn options(t: &Target, g: &Global, client_id: String, session_expiry: u32) -> Options {
    Options {
        server: t.server.clone(),
        user: Some(t.user.clone()),
        secret: Some(t.secret.clone()),
        client_id,
        session_expiry,
        keep_alive: KEEP_ALIVE,
        timeout: g.timeout,
    }
}

/// A one-shot connection, subscribed to its API answers.
///
/// # Errors
/// Connection and login failures.
pub async fn one_shot(t: &Target, g: &Global) -> Result<(Link, mpsc::Receiver<Event>), Failure> {
    let id = format!("natter-{}", profile::random_hex(8));
    let (link, events) = Link::connect(&options(t, g, id, 0)).await?;
    let codes = link.subscribe(&[format!("{}api/#", im::inbox_prefix(&t.user))]).await?;
    expect_granted(&codes)?;
    Ok((link, events))
}

/// Which of this machine's two devices: `natter inbox`'s, or the chat's (its own
/// session and cursor, so an `inbox` in another terminal never takes the chat's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Inbox,
    Chat,
}

impl Target {
    pub fn client_id(&self, d: Device) -> String {
        match d {
            Device::Inbox => self.device.clone(),
            Device::Chat => format!("{}-chat", self.device),
        }
    }
}

/// This machine's persistent session, subscribed to the whole mailbox.
///
/// # Errors
/// Connection and login failures.
pub async fn device(t: &Target, g: &Global, d: Device) -> Result<(Link, mpsc::Receiver<Event>), Failure> {
    let (link, events) = Link::connect(&options(t, g, t.client_id(d), DEVICE_SESSION_SECS)).await?;
    let codes = link.subscribe(&[im::inbox_all(&t.user)]).await?;
    expect_granted(&codes)?;
    Ok((link, events))
}

fn expect_granted(codes: &[u8]) -> Result<(), Failure> {
    match codes.iter().find(|c| **c >= 0x80) {
        Some(&c) if c == reason::NOT_AUTHORIZED => Err(Failure::Refused(
            "the broker refused the mailbox subscription (a restricted login?)".into(),
        )),
        Some(&c) => Err(Failure::Refused(format!(
            "the broker refused the subscription ({})",
            crate::link::reason_text(c)
        ))),
        None => Ok(()),
    }
}
