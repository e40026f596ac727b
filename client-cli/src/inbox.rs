//! `natter inbox`: what arrived on this machine's device session since it last
//! looked, each message printed before it is acknowledged (so a message counts as
//! read only once it is on the screen or in the pipe). The backlog is read when the
//! newest id `mailbox.status` named has come, or when nothing more comes and the
//! device's cursor stopped moving. With `-f` it stays and reconnects with backoff.

use std::io::Write;
use std::time::Duration;

use natter_shared::api::{command as cmd, Request};
use natter_shared::codec::reason;
use natter_shared::im;
use tokio::sync::mpsc;

use crate::cli::Global;
use crate::commands::{Out, SETTLE};
use crate::error::Failure;
use crate::files;
use crate::format;
use crate::link::{Closed, Event, Link};
use crate::session::{self, Target};

pub async fn run(g: &Global, out: &Out, follow: bool, download: bool) -> Result<(), Failure> {
    let t = session::target(g)?;
    let mut backoff = Duration::from_millis(250);
    loop {
        match session::device(&t, g, session::Device::Inbox).await {
            Ok((link, events)) => {
                backoff = Duration::from_millis(250);
                match read(&t, g, &link, events, out, follow, download).await {
                    Ok(()) => {
                        link.disconnect().await;
                        return Ok(());
                    }
                    Err(e) if follow && reconnectable(&e) => {
                        eprintln!("natter: {e}; reconnecting");
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) if follow && reconnectable(&e) => eprintln!("natter: {e}; retrying in {} s", backoff.as_secs_f32()),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Worth trying again after: the network or the broker, not the login.
fn reconnectable(e: &Failure) -> bool {
    matches!(e, Failure::Unreachable { .. } | Failure::Lost(_) | Failure::Timeout(..))
}

async fn read(
    t: &Target,
    g: &Global,
    link: &Link,
    mut events: mpsc::Receiver<Event>,
    out: &Out,
    follow: bool,
    download: bool,
) -> Result<(), Failure> {
    let status = link.call(cmd::MAILBOX_STATUS, Request::default()).await?;
    let last_id = status["last_id"].as_u64().unwrap_or(0);
    let mut cursor = status["cursor"].as_u64().unwrap_or(0);
    let mut shown = 0u64;
    if !follow && cursor >= last_id {
        return done(out, shown);
    }
    let api = format!("{}api/", im::inbox_prefix(&t.user));
    let mailbox = im::inbox_prefix(&t.user);
    loop {
        let next = tokio::time::timeout(SETTLE, events.recv()).await;
        let event = match next {
            Ok(Some(e)) => e,
            Ok(None) => return Err(Failure::lost("the connection ended")),
            Err(_) if follow => continue,
            Err(_) => {
                // Quiet: caught up, unless the cursor is still moving.
                let now = link.call(cmd::MAILBOX_STATUS, Request::default()).await?;
                let c = now["cursor"].as_u64().unwrap_or(0);
                if c >= last_id || c == cursor {
                    return done(out, shown);
                }
                cursor = c;
                continue;
            }
        };
        match event {
            // API answers, and what is not the mailbox (the presence a chat on this
            // device subscribed to) are not shown here.
            Event::Message(m) if m.topic.starts_with(&api) || !m.topic.starts_with(&mailbox) => link.ack(m.pkid).await,
            Event::Message(m) => {
                let file = files::file_message(&m);
                match (&file, out.json) {
                    (Some(f), true) => {
                        let mut v = format::message_json(&t.user, &m);
                        v["type"] = serde_json::json!("file");
                        v["file"] = serde_json::to_value(f).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            o.remove("text");
                        }
                        println!("{v}");
                    }
                    (Some(f), false) => println!("{}", file_line(&t.user, &m, f)),
                    (None, true) => println!("{}", format::message_json(&t.user, &m)),
                    (None, false) => println!("{}", format::message_line(&t.user, &m)),
                }
                // Files sent to us come down now, unless asked not to.
                let ours = format::from_me(&t.user, &m.topic);
                if let (Some(f), true, false) = (&file, download, ours) {
                    let _ = std::io::stdout().flush();
                    fetch(t, g, out, &f.file).await;
                }
                // On the screen (or in the pipe) before the cursor moves past it.
                let _ = std::io::stdout().flush();
                link.ack(m.pkid).await;
                shown += 1;
                let id = m.prop("id").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                if !follow && id >= last_id {
                    return done(out, shown);
                }
            }
            Event::Closed(closed @ Closed::ByBroker(code, _)) => {
                return Err(match code {
                    // Another natter took this device's session: no tug of war.
                    reason::SESSION_TAKEN_OVER => Failure::Local(format!(
                        "{closed}: another natter runs as this device (give it --profile, or stop one)"
                    )),
                    reason::ADMINISTRATIVE_ACTION | reason::NOT_AUTHORIZED => Failure::Login(closed.to_string()),
                    _ => Failure::lost(closed.to_string()),
                });
            }
            Event::Closed(c) => return Err(Failure::lost(c.to_string())),
        }
    }
}

/// `2026-12-03 17:05  ann sent a file: notes.pdf (1.2 MiB)  natter files get ID`.
fn file_line(me: &str, m: &crate::link::Incoming, f: &natter_shared::api::FileMessage) -> String {
    let when = format::datetime_ms(m.prop("ts").and_then(|t| t.parse().ok()).unwrap_or(0));
    let who = match format::kind(me, &m.topic) {
        format::Kind::Dm { from } => from,
        format::Kind::Group { group, from } => format!("[{group}] {from}"),
        format::Kind::Sent { to } => format!("you to {to}"),
        _ => "?".into(),
    };
    format!(
        "{when}  {who} sent a file: {} ({})  natter files get {}",
        f.name,
        files::size_text(f.size),
        f.file
    )
}

/// Downloads a file that arrived; says where it went (or why not) and goes on.
async fn fetch(t: &Target, g: &Global, out: &Out, id: &str) {
    let result = async {
        let dir = files::downloads_dir(t)?;
        let (link, mut events) = files::link_for_files(t, g).await?;
        let bar = files::bar(0, &format!("fetching {id}"), out.json);
        let r = files::fetch(&link, &mut events, &t.user, id, &dir, &bar).await;
        link.disconnect().await;
        r
    }
    .await;
    match result {
        Ok(f) if out.json => println!("{}", files::fetched_json(id, &f)),
        Ok(f) => println!("    saved {}", f.path.display()),
        Err(e) => eprintln!("natter: file {id} not downloaded: {e} (natter files get {id})"),
    }
}

fn done(out: &Out, shown: u64) -> Result<(), Failure> {
    if shown == 0 && !out.json {
        eprintln!("nothing new");
    }
    Ok(())
}
