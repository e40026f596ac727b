//! `natter chat`: the full-screen chat on this machine's device session. Keys come
//! from a thread reading the terminal; mailbox deliveries, presence and API answers
//! from the link; everything lands in [`app::App`] and the screen is drawn again.
//! A lost connection is retried with backoff on the same persistent session, so the
//! mailbox catches up; lines already on screen are known by id and not shown twice.

mod app;
mod view;

use std::io::Write;
use std::time::Duration;

use natter_shared::api::{command as cmd, Presence, Request};
use natter_shared::codec::{reason, Properties};
use natter_shared::im;
use ratatui::crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, Event as TermEvent};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use serde_json::Value;
use tokio::sync::mpsc;

pub use app::Conv;
use app::{Action, App, Link as LinkState};

use crate::cli::Global;
use crate::error::Failure;
use crate::link::{Closed, Event, Link};
use crate::session::{self, Target};

/// What finished in the background.
enum Done {
    History(Conv, Result<Value, String>),
    Sent(u64, Option<String>),
    Called(String, Result<Value, String>),
    Friends(Vec<String>, Vec<String>),
    Groups(Vec<String>),
    /// A transfer (by its label) ended: what to say.
    Transferred(String, String),
}

/// Puts the terminal back however the chat ends.
struct Screen;

impl Screen {
    fn enter() -> Result<Screen, Failure> {
        enable_raw_mode().map_err(|e| Failure::Local(format!("this terminal cannot do a full-screen chat: {e}")))?;
        let mut out = std::io::stdout();
        execute!(out, EnterAlternateScreen, EnableMouseCapture)
            .map_err(|e| Failure::Local(format!("cannot take over the terminal: {e}")))?;
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), DisableMouseCapture, LeaveAlternateScreen);
        let _ = disable_raw_mode();
    }
}

pub async fn run(g: &Global, open: Option<Conv>, bell: bool, download: bool) -> Result<(), Failure> {
    let t = session::target(g)?;
    let bell = bell && t.profile.as_ref().is_none_or(|(_, p)| p.bell);
    let notify = bell && t.profile.as_ref().is_none_or(|(_, p)| p.notify);
    let mut app = App::new(&t.user, &t.server, bell);
    // The first connection before the screen changes: a wrong login is one line.
    let first = session::device(&t, g, session::Device::Chat).await?;
    let _screen = Screen::enter()?;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = execute!(std::io::stdout(), DisableMouseCapture, LeaveAlternateScreen);
        let _ = disable_raw_mode();
        hook(info);
    }));
    let mut term = ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))
        .map_err(|e| Failure::Local(e.to_string()))?;
    let (keys_tx, mut keys) = mpsc::channel::<TermEvent>(256);
    std::thread::spawn(move || {
        while let Ok(e) = event::read() {
            if keys_tx.blocking_send(e).is_err() {
                break;
            }
        }
    });
    let (done_tx, mut done) = mpsc::channel::<Done>(256);
    if let Some(c) = open {
        app.ensure(c.clone());
        app.open(c);
    }
    let mut conn = Some(first);
    let mut attempt = 0u32;
    'outer: loop {
        let (link, mut events) = match conn.take() {
            Some(c) => c,
            None => {
                attempt += 1;
                let wait = Duration::from_millis(250 * 2u64.pow(attempt.min(7))).min(Duration::from_secs(30));
                let deadline = tokio::time::Instant::now() + wait;
                // Keys still work while waiting.
                loop {
                    draw(&mut term, &app)?;
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => break,
                        Some(k) = keys.recv() => if on_term(&mut app, &t, k, None, &done_tx) { break 'outer; },
                    }
                }
                match session::device(&t, g, session::Device::Chat).await {
                    Ok(c) => c,
                    Err(e @ (Failure::Login(_) | Failure::NotLoggedIn(_))) => return Err(e),
                    Err(e) => {
                        app.link = LinkState::Reconnecting(attempt, e.to_string());
                        continue;
                    }
                }
            }
        };
        attempt = 0;
        app.link = LinkState::Connected;
        start(&link, &app, &done_tx);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let ended = loop {
            draw(&mut term, &app)?;
            tokio::select! {
                // Progress of transfers shows without other events.
                _ = tick.tick(), if !app.transfers.is_empty() => {}
                Some(k) = keys.recv() => if on_term(&mut app, &t, k, Some(&link), &done_tx) {
                    link.disconnect().await;
                    break 'outer;
                },
                Some(d) = done.recv() => on_done(&mut app, d, &link, &done_tx),
                e = events.recv() => match e {
                    Some(Event::Message(m)) => {
                        if let Some(user) = m.topic.strip_prefix("presence/") {
                            if let Ok(p) = serde_json::from_slice::<Presence>(&m.payload) {
                                if p.user == user {
                                    app.on_presence(p);
                                }
                            }
                        } else {
                            if app.on_message(&m) {
                                let _ = std::io::stdout().write_all(b"\x07");
                                if notify {
                                    desktop_notification(&t.user, &m);
                                }
                            }
                            let ours = crate::format::from_me(&t.user, &m.topic);
                            if let (Some(f), false, true) = (crate::files::file_message(&m), ours, download) {
                                fetch_file(&mut app, &t, g, f, &done_tx);
                            }
                        }
                        // Shown (or known) before the cursor moves past it.
                        link.ack(m.pkid).await;
                        if let Some(user) = new_friend(&m, &t) {
                            subscribe_presence(&link, vec![user], &done_tx);
                        }
                    }
                    Some(Event::Closed(c)) => break c,
                    None => break Closed::Lost("the connection ended".into()),
                },
            }
        };
        if let Closed::ByBroker(code, _) = &ended {
            match *code {
                reason::SESSION_TAKEN_OVER => {
                    return Err(Failure::Local(format!(
                        "{ended}: another natter runs as this device (give it --profile, or stop one)"
                    )))
                }
                reason::ADMINISTRATIVE_ACTION => return Err(Failure::Login(ended.to_string())),
                _ => {}
            }
        }
        app.link = LinkState::Reconnecting(1, ended.to_string());
    }
    Ok(())
}

fn draw(
    term: &mut ratatui::Terminal<ratatui::backend::CrosstermBackend<std::io::Stdout>>,
    app: &App,
) -> Result<(), Failure> {
    term.draw(|f| view::draw(f, app))
        .map(|_| ())
        .map_err(|e| Failure::Local(format!("drawing the screen: {e}")))
}

/// A desktop notification for a message, where a desktop is (a display and
/// `notify-send` on the PATH); nothing otherwise. Fire and forget.
fn desktop_notification(me: &str, m: &crate::link::Incoming) {
    let desktop = std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !desktop {
        return;
    }
    let title = match crate::format::kind(me, &m.topic) {
        crate::format::Kind::Dm { from } => format!("natter: {from}"),
        crate::format::Kind::Group { group, from } => format!("natter: {from} in {group}"),
        _ => return,
    };
    let mut body: String = crate::format::text(&m.payload).chars().take(200).collect();
    if crate::files::file_message(m).is_some() {
        body = "sent a file".into();
    }
    let _ = std::process::Command::new("notify-send")
        .args(["--app-name=natter", &title, &body])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|mut c| std::thread::spawn(move || c.wait()));
}

/// A friend accepted: their presence becomes visible.
fn new_friend(m: &crate::link::Incoming, t: &Target) -> Option<String> {
    if m.topic != im::inbox_event(&t.user, "friend_accepted") {
        return None;
    }
    let body: Value = serde_json::from_slice(&m.payload).ok()?;
    body["user"].as_str().map(str::to_owned)
}

/// On (re)connecting: the friends and groups, and the open conversation's history.
fn start(link: &Link, app: &App, done: &mpsc::Sender<Done>) {
    let (l, d) = (link.clone(), done.clone());
    tokio::spawn(async move {
        if let Ok(r) = l.call(cmd::FRIENDS_LIST, Request::default()).await {
            let names = |k: &str| -> Vec<String> {
                r[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            let _ = d.send(Done::Friends(names("friends"), names("incoming"))).await;
        }
        if let Ok(r) = l.call(cmd::GROUPS_LIST, Request::default()).await {
            let groups = r["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g["group"].as_str().map(str::to_owned))
                .collect();
            let _ = d.send(Done::Groups(groups)).await;
        }
    });
    if let Some(c) = app.current() {
        if app.threads.get(c).is_some_and(|t| t.loaded) {
            history(link, c.clone(), done);
        }
    }
}

fn history(link: &Link, conv: Conv, done: &mpsc::Sender<Done>) {
    let (l, d) = (link.clone(), done.clone());
    tokio::spawn(async move {
        let r = l
            .call(
                cmd::HISTORY,
                Request {
                    with: Some(conv.with()),
                    limit: Some(200),
                    ..Request::default()
                },
            )
            .await
            .map_err(|e| e.to_string());
        let _ = d.send(Done::History(conv, r)).await;
    });
}

fn subscribe_presence(link: &Link, users: Vec<String>, _done: &mpsc::Sender<Done>) {
    if users.is_empty() {
        return;
    }
    let l = link.clone();
    tokio::spawn(async move {
        let filters: Vec<String> = users.iter().map(|u| im::presence(u)).collect();
        let _ = l.subscribe(&filters).await;
    });
}

/// A key, the mouse, or a resize. Returns true to quit.
fn on_term(app: &mut App, t: &Target, e: TermEvent, link: Option<&Link>, done: &mpsc::Sender<Done>) -> bool {
    let actions = match e {
        TermEvent::Key(k) => app.on_key(k),
        TermEvent::Mouse(m) => {
            app.on_mouse(m.kind);
            Vec::new()
        }
        _ => Vec::new(),
    };
    for a in actions {
        match a {
            Action::Quit => return true,
            Action::SendFile { conv, path } => match link {
                Some(l) => send_file(app, t, l, conv, path, done),
                None => app.notice = Some("not connected: send it once the connection is back".into()),
            },
            a => match link {
                Some(l) => act(l, a, done),
                None => app.notice = Some("not connected: it goes once the connection is back".into()),
            },
        }
    }
    false
}

/// Sends a file to a conversation, its progress in the status bar.
fn send_file(app: &mut App, t: &Target, link: &Link, conv: Conv, path: String, done: &mpsc::Sender<Done>) {
    let path = std::path::PathBuf::from(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let label = format!("↑ {name}");
    let bar = indicatif::ProgressBar::hidden();
    app.transfers.push((label.clone(), bar.clone()));
    let (l, d, t) = (link.clone(), done.clone(), t.clone());
    tokio::spawn(async move {
        let to = match &conv {
            Conv::Dm(u) => crate::files::To::User(u.clone()),
            Conv::Group(g) => crate::files::To::Group(g.clone()),
        };
        let sent = match crate::files::Uploads::for_target(&t) {
            Ok(uploads) => crate::files::send(&l, to, &path, &bar, &uploads).await,
            Err(e) => Err(e),
        };
        let said = match sent {
            Ok(s) => format!(
                "sent {} ({}) to {}",
                s.message.name,
                crate::files::size_text(s.message.size),
                conv.title()
            ),
            Err(e) => format!("{name} not sent: {e}"),
        };
        let _ = d.send(Done::Transferred(label, said)).await;
    });
}

fn act(link: &Link, a: Action, done: &mpsc::Sender<Done>) {
    let (l, d) = (link.clone(), done.clone());
    match a {
        Action::History(c) => history(link, c, done),
        Action::Send { conv, text, seq } => {
            tokio::spawn(async move {
                let topic = match &conv {
                    Conv::Dm(u) => im::dm(u),
                    Conv::Group(g) => im::group(g),
                };
                let refused = match l.publish(&topic, bytes::Bytes::from(text), Properties::default()).await {
                    Ok(a) if a.reason < 0x80 => None,
                    Ok(a) => Some(
                        a.reason_string
                            .unwrap_or_else(|| crate::link::reason_text(a.reason).to_owned()),
                    ),
                    Err(e) => Some(e.to_string()),
                };
                let _ = d.send(Done::Sent(seq, refused)).await;
            });
        }
        Action::Call(command, body) => {
            tokio::spawn(async move {
                let req: Result<Request, _> = serde_json::from_value(body);
                let r = match req {
                    Ok(req) => l.call(&command, req).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = d.send(Done::Called(command, r)).await;
            });
        }
        Action::Quit | Action::SendFile { .. } => {}
    }
}

/// Downloads a file that arrived, its progress in the status bar.
fn fetch_file(app: &mut App, t: &Target, g: &Global, f: natter_shared::api::FileMessage, done: &mpsc::Sender<Done>) {
    let label = format!("↓ {}", f.name);
    let bar = indicatif::ProgressBar::hidden();
    bar.set_length(f.size);
    app.transfers.push((label.clone(), bar.clone()));
    let (t, g, d) = (t.clone(), g.clone(), done.clone());
    tokio::spawn(async move {
        let r = async {
            let dir = crate::files::downloads_dir(&t)?;
            let (link, mut events) = crate::files::link_for_files(&t, &g).await?;
            let r = crate::files::fetch(&link, &mut events, &t.user, &f.file, &dir, &bar).await;
            link.disconnect().await;
            r
        }
        .await;
        let said = match r {
            Ok(got) => format!("saved {}", got.path.display()),
            Err(e) => format!("{} not downloaded: {e}", f.name),
        };
        let _ = d.send(Done::Transferred(label, said)).await;
    });
}

fn on_done(app: &mut App, d: Done, link: &Link, done: &mpsc::Sender<Done>) {
    match d {
        Done::Transferred(label, said) => {
            app.transfers.retain(|(l, _)| *l != label);
            app.notice = Some(said);
        }
        Done::History(conv, Ok(r)) => app.on_history(&conv, &r["messages"]),
        Done::History(conv, Err(e)) => app.notice = Some(format!("history of {}: {e}", conv.title())),
        Done::Sent(seq, refused) => app.on_sent(seq, refused),
        Done::Called(command, Ok(r)) => {
            if command == cmd::FRIENDS_ACCEPT || command == cmd::FRIENDS_REQUEST {
                if let Some(u) = r["user"].as_str() {
                    if r["state"] == "friends" {
                        app.friends.insert(u.to_owned());
                        app.ensure(Conv::Dm(u.to_owned()));
                        subscribe_presence(link, vec![u.to_owned()], done);
                    }
                }
            }
            app.notice = Some(format!("{command}: done"));
        }
        Done::Called(command, Err(e)) => app.notice = Some(format!("{command}: {e}")),
        Done::Friends(friends, incoming) => {
            for f in &friends {
                app.friends.insert(f.clone());
                app.ensure(Conv::Dm(f.clone()));
            }
            for r in incoming {
                if !app.requests.contains(&r) {
                    app.requests.push(r);
                }
            }
            subscribe_presence(link, friends, done);
        }
        Done::Groups(groups) => {
            for g in groups {
                app.ensure(Conv::Group(g));
            }
        }
    }
}
