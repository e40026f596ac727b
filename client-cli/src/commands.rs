//! The one-shot commands: each connects, does its work through the public
//! protocol, prints a line (or JSON with `--json`) and disconnects.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use natter_shared::api::{command as cmd, Presence, Request, Response, Status};
use natter_shared::codec::{reason, Properties};
use natter_shared::im;
use serde_json::{json, Value};

use crate::cli::{Command, Friends, Global, Groups, Tokens};
use crate::error::Failure;
use crate::format;
use crate::link::{Event, Link, Options};
use crate::profile::{self, Profile};
use crate::session::{self, Target};

/// Where results go: a line for people, or JSON.
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn show(&self, value: &Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            let line = human();
            if !line.is_empty() {
                println!("{line}");
            }
        }
    }
}

pub async fn run(command: Command, g: &Global) -> Result<(), Failure> {
    let out = Out { json: g.json };
    match command {
        Command::Register => register(g, &out).await,
        Command::Login => login(g, &out, None).await,
        Command::Logout => logout(g, &out).await,
        Command::Passwd { token } => passwd(g, &out, token).await,
        Command::Inbox { follow, no_download } => crate::inbox::run(g, &out, follow, !no_download).await,
        Command::SendFile { words, group } => send_file(g, &out, words, group).await,
        Command::Files { action } => files(g, &out, action).await,
        Command::Chat {
            with,
            group,
            no_bell,
            no_download,
        } => {
            let open = match (group, with) {
                (Some(g), _) => Some(crate::chat::Conv::Group(g)),
                (None, Some(u)) => Some(crate::chat::Conv::Dm(u)),
                (None, None) => None,
            };
            crate::chat::run(g, open, !no_bell, !no_download).await
        }
        command => {
            let t = session::target(g)?;
            let (link, _events) = session::one_shot(&t, g).await?;
            let done = one_shot(command, &t, &link, &out).await;
            link.disconnect().await;
            done
        }
    }
}

/// Commands that need only the API (and `send`).
async fn one_shot(command: Command, t: &Target, link: &Link, out: &Out) -> Result<(), Failure> {
    let user = |u: String| Request {
        user: Some(u),
        ..Request::default()
    };
    let group = |g: String| Request {
        group: Some(g),
        ..Request::default()
    };
    let group_user = |g: String, u: String| Request {
        group: Some(g),
        user: Some(u),
        ..Request::default()
    };
    match command {
        Command::Whoami => {
            let r = link.call(cmd::ACCOUNT_WHOAMI, Request::default()).await?;
            let v = json!({ "user": r["user"], "server": t.server, "admin": r["admin"], "device": t.device });
            out.show(&v, || format!("{} on {}", t.user, t.server));
        }
        Command::Send { words, group } => {
            let (to, words) = match (&group, words.split_first()) {
                (Some(_), _) => (None, &words[..]),
                (None, Some((to, rest))) if !rest.is_empty() => (Some(to.clone()), rest),
                _ => return Err(Failure::Usage("send what to whom? natter send USER TEXT".into())),
            };
            let text = message_text(words)?;
            let (topic, shown) = match (&group, &to) {
                (Some(g), _) => (im::group(g), format!("group {g}")),
                (None, Some(u)) => (im::dm(u), u.clone()),
                (None, None) => return Err(Failure::Usage("send to whom? natter send USER TEXT".into())),
            };
            let acked = link.publish(&topic, Bytes::from(text), Properties::default()).await?;
            if acked.reason >= 0x80 {
                let why = acked
                    .reason_string
                    .unwrap_or_else(|| crate::link::reason_text(acked.reason).to_owned());
                return Err(match acked.reason {
                    reason::UNSPECIFIED_ERROR => {
                        Failure::Local(format!("{shown}: the broker could not store it; send again"))
                    }
                    _ => Failure::Refused(format!("{shown}: {why}")),
                });
            }
            let v = json!({ "ok": true, "to": to, "group": group });
            out.show(&v, || format!("sent to {shown}"));
        }
        Command::History {
            with,
            group,
            limit,
            before,
        } => {
            let with = match (group, with) {
                (Some(g), _) => format!("group:{g}"),
                (None, Some(u)) => u,
                (None, None) => return Err(Failure::Usage("history of what? natter history USER".into())),
            };
            let r = link
                .call(
                    cmd::HISTORY,
                    Request {
                        with: Some(with),
                        limit,
                        before,
                        ..Request::default()
                    },
                )
                .await?;
            if out.json {
                for m in r["messages"].as_array().into_iter().flatten() {
                    println!("{m}");
                }
            } else {
                for m in r["messages"].as_array().into_iter().flatten() {
                    println!("{}", history_line(&t.user, m));
                }
            }
        }
        Command::Friends { action } => {
            let (command, r) = match action.unwrap_or(Friends::List) {
                Friends::List => {
                    let r = link.call(cmd::FRIENDS_LIST, Request::default()).await?;
                    out.show(&r, || friends_text(&r));
                    return Ok(());
                }
                Friends::Add { peer: u } => (cmd::FRIENDS_REQUEST, user(u)),
                Friends::Accept { peer: u } => (cmd::FRIENDS_ACCEPT, user(u)),
                Friends::Decline { peer: u } => (cmd::FRIENDS_DECLINE, user(u)),
                Friends::Remove { peer: u } => (cmd::FRIENDS_REMOVE, user(u)),
            };
            let who = r.user.clone().unwrap_or_default();
            let result = link.call(command, r).await?;
            out.show(&result, || match command {
                cmd::FRIENDS_REQUEST if result["state"] == json!("friends") => format!("{who} and you are friends now"),
                cmd::FRIENDS_REQUEST => format!("asked {who} to be friends"),
                cmd::FRIENDS_ACCEPT => format!("{who} and you are friends now"),
                cmd::FRIENDS_DECLINE => format!("declined {who}"),
                _ => format!("{who} is no longer your friend"),
            });
        }
        Command::Block { peer: u } => {
            let r = link.call(cmd::BLOCK, user(u.clone())).await?;
            out.show(&r, || format!("blocked {u}"));
        }
        Command::Unblock { peer: u } => {
            let r = link.call(cmd::UNBLOCK, user(u.clone())).await?;
            out.show(&r, || format!("unblocked {u}"));
        }
        Command::Groups { action } => {
            let action = action.unwrap_or(Groups::List);
            let (command, r, done): (&str, Request, String) = match action {
                Groups::List => {
                    let r = link.call(cmd::GROUPS_LIST, Request::default()).await?;
                    out.show(&r, || groups_text(&r));
                    return Ok(());
                }
                Groups::Members { group: g } => {
                    let r = link.call(cmd::GROUPS_MEMBERS, group(g)).await?;
                    out.show(&r, || members_text(&r));
                    return Ok(());
                }
                Groups::Create { group: g, open } => {
                    let mut r = group(g.clone());
                    r.open = open.then_some(true);
                    (cmd::GROUPS_CREATE, r, format!("created {g}"))
                }
                Groups::Invite { group: g, peer: u } => (
                    cmd::GROUPS_INVITE,
                    group_user(g.clone(), u.clone()),
                    format!("invited {u} to {g}"),
                ),
                Groups::Join { group: g } => (cmd::GROUPS_JOIN, group(g.clone()), format!("joined {g}")),
                Groups::Leave { group: g } => (cmd::GROUPS_LEAVE, group(g.clone()), format!("left {g}")),
                Groups::Kick { group: g, peer: u } => (
                    cmd::GROUPS_KICK,
                    group_user(g.clone(), u.clone()),
                    format!("removed {u} from {g}"),
                ),
                Groups::Promote { group: g, peer: u } => (
                    cmd::GROUPS_PROMOTE,
                    group_user(g.clone(), u.clone()),
                    format!("{u} is now an admin of {g}"),
                ),
                Groups::Delete { group: g } => (cmd::GROUPS_DELETE, group(g.clone()), format!("deleted {g}")),
            };
            let r = link.call(command, r).await?;
            out.show(&r, || done);
        }
        Command::Who => {
            let friends = link.call(cmd::FRIENDS_LIST, Request::default()).await?;
            let names: Vec<String> = friends["friends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let now = format::now_secs();
            let mut all = Vec::new();
            for name in names {
                let p = link.call(cmd::PRESENCE_GET, user(name)).await?;
                all.push(p);
            }
            if out.json {
                for p in &all {
                    println!("{p}");
                }
            } else if all.is_empty() {
                println!("no friends yet: natter friends add USER");
            } else {
                for p in all {
                    if let Ok(p) = serde_json::from_value::<Presence>(p) {
                        println!("{}", format::presence_line(&p, now));
                    }
                }
            }
        }
        Command::Status { status, text } => {
            let status = match status.as_str() {
                "away" => Status::Away,
                "busy" => Status::Busy,
                _ => Status::Online,
            };
            let text = (!text.is_empty()).then(|| text.join(" "));
            let r = link
                .call(
                    cmd::PRESENCE_SET,
                    Request {
                        status: Some(status),
                        text,
                        ..Request::default()
                    },
                )
                .await?;
            out.show(&r, || match r["text"].as_str() {
                Some(t) => format!("status: {} ({t})", r["status"].as_str().unwrap_or("?")),
                None => format!("status: {}", r["status"].as_str().unwrap_or("?")),
            });
        }
        Command::Tokens { action } => match action.unwrap_or(Tokens::List) {
            Tokens::List => {
                let r = link.call(cmd::TOKENS_LIST, Request::default()).await?;
                let mine = t.profile.as_ref().and_then(|(_, p)| p.token_name.clone());
                out.show(&r, || {
                    let mut lines = Vec::new();
                    for tk in r["tokens"].as_array().into_iter().flatten() {
                        let name = tk["name"].as_str().unwrap_or("?");
                        let when = tk["created_at"].as_u64().map(|s| format::datetime_ms(s * 1000));
                        let this = if mine.as_deref() == Some(name) {
                            "  (this profile)"
                        } else {
                            ""
                        };
                        lines.push(format!("{name}  created {}{this}", when.unwrap_or_default()));
                    }
                    if lines.is_empty() {
                        "no device tokens".into()
                    } else {
                        lines.join("\n")
                    }
                });
            }
            Tokens::Revoke { name } => {
                let r = revoke_token(link, &name).await?;
                out.show(&r, || format!("revoked {name}"));
            }
        },
        // Handled by `run`, before a connection is made.
        Command::Register
        | Command::Login
        | Command::Logout
        | Command::Passwd { .. }
        | Command::Inbox { .. }
        | Command::SendFile { .. }
        | Command::Files { .. }
        | Command::Chat { .. } => {}
    }
    Ok(())
}

/// Revokes one of the caller's device tokens.
async fn revoke_token(link: &Link, name: &str) -> Result<Value, Failure> {
    link.call(
        cmd::TOKENS_REVOKE,
        Request {
            name: Some(name.to_owned()),
            ..Request::default()
        },
    )
    .await
}

/// `natter send-file USER PATH` / `--group G PATH`.
async fn send_file(g: &Global, out: &Out, words: Vec<String>, group: Option<String>) -> Result<(), Failure> {
    let (to, path) = match (group, words.as_slice()) {
        (Some(gr), [path]) => (crate::files::To::Group(gr), path.clone()),
        (None, [user, path]) => (crate::files::To::User(user.clone()), path.clone()),
        _ => return Err(Failure::Usage("natter send-file USER PATH, or --group G PATH".into())),
    };
    let shown = match &to {
        crate::files::To::User(u) => u.clone(),
        crate::files::To::Group(gr) => format!("group {gr}"),
    };
    let t = session::target(g)?;
    let (link, _events) = session::one_shot(&t, g).await?;
    let path = std::path::PathBuf::from(path);
    let bar = crate::files::bar(0, &format!("sending {}", path.display()), out.json);
    let uploads = crate::files::Uploads::for_target(&t)?;
    let sent = crate::files::send(&link, to, &path, &bar, &uploads).await;
    link.disconnect().await;
    let crate::files::Sent { message: sent, resumed } = sent?;
    let mut v = serde_json::to_value(&sent).unwrap_or_default();
    v["resumed_chunks"] = serde_json::json!(resumed);
    out.show(&v, || {
        format!(
            "sent {} ({}) to {shown}; file {}",
            sent.name,
            crate::files::size_text(sent.size),
            sent.file
        )
    });
    Ok(())
}

/// `natter files get|info|limits`.
async fn files(g: &Global, out: &Out, action: crate::cli::FilesCmd) -> Result<(), Failure> {
    use crate::cli::FilesCmd;
    let t = session::target(g)?;
    let (link, mut events) = crate::files::link_for_files(&t, g).await?;
    let done = match action {
        FilesCmd::Limits => link.call(cmd::FILES_LIMITS, Request::default()).await.map(|r| {
            out.show(&r, || {
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                format!(
                    "files up to {}; {} of {} used; unfinished uploads kept {} s, files {} days",
                    crate::files::size_text(n("max_file_bytes")),
                    crate::files::size_text(n("used_bytes")),
                    crate::files::size_text(n("quota_bytes")),
                    n("upload_ttl_secs"),
                    n("file_ttl_days")
                )
            })
        }),
        FilesCmd::Info { id } => link
            .call(
                cmd::FILES_INFO,
                Request {
                    file: Some(id),
                    ..Request::default()
                },
            )
            .await
            .map(|r| {
                out.show(&r, || {
                    format!(
                        "{}  {}  {}  from {}  sha256 {}",
                        r["name"].as_str().unwrap_or("?"),
                        crate::files::size_text(r["size"].as_u64().unwrap_or(0)),
                        r["mime"].as_str().unwrap_or("?"),
                        r["from"].as_str().unwrap_or("?"),
                        r["sha256"].as_str().unwrap_or("?")
                    )
                })
            }),
        FilesCmd::Get { id, out: dir } => {
            let dir = match dir {
                Some(d) => d,
                None => crate::files::downloads_dir(&t)?,
            };
            let bar = crate::files::bar(0, &format!("fetching {id}"), out.json);
            crate::files::fetch(&link, &mut events, &t.user, &id, &dir, &bar)
                .await
                .map(|f| {
                    out.show(&crate::files::fetched_json(&id, &f), || {
                        format!("saved {} ({})", f.path.display(), crate::files::size_text(f.size))
                    })
                })
        }
    };
    link.disconnect().await;
    done
}

/// The text of `natter send`: the words given, or stdin for "-".
fn message_text(words: &[String]) -> Result<String, Failure> {
    if words.len() == 1 && words[0] == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::Local(format!("reading the message from stdin: {e}")))?;
        let s = s.strip_suffix('\n').unwrap_or(&s).to_owned();
        if s.is_empty() {
            return Err(Failure::Usage("nothing to send on stdin".into()));
        }
        return Ok(s);
    }
    Ok(words.join(" "))
}

fn history_line(me: &str, m: &Value) -> String {
    let ts = m["ts"].as_u64().unwrap_or(0);
    let from = m["from"].as_str().unwrap_or("?");
    let who = if from == me { "you" } else { from };
    let text = match (m["text"].as_str(), m["data"].as_str()) {
        (Some(t), _) if m["content_type"] == im::FILE_CONTENT_TYPE => file_text(t),
        (Some(t), _) => t.to_owned(),
        (None, Some(d)) => format!("[binary, {} base64 characters]", d.len()),
        _ => String::new(),
    };
    format!("{}  {who}: {text}", format::datetime_ms(ts))
}

/// A file message's text for people: `📎 name (size), file ID`.
pub fn file_text(json: &str) -> String {
    match serde_json::from_str::<natter_shared::api::FileMessage>(json) {
        Ok(f) => format!("📎 {} ({}), file {}", f.name, crate::files::size_text(f.size), f.file),
        Err(_) => json.to_owned(),
    }
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fn friends_text(r: &Value) -> String {
    let (friends, incoming, outgoing) = (names(&r["friends"]), names(&r["incoming"]), names(&r["outgoing"]));
    let mut lines = Vec::new();
    if friends.is_empty() {
        lines.push("no friends yet: natter friends add USER".to_owned());
    } else {
        lines.push(format!("friends: {}", friends.join(", ")));
    }
    for u in incoming {
        lines.push(format!("{u} asked to be friends: natter friends accept {u}"));
    }
    if !outgoing.is_empty() {
        lines.push(format!("waiting for: {}", outgoing.join(", ")));
    }
    lines.join("\n")
}

fn groups_text(r: &Value) -> String {
    let groups: Vec<String> = r["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            format!(
                "{}  ({})",
                g["group"].as_str().unwrap_or("?"),
                g["role"].as_str().unwrap_or("member")
            )
        })
        .collect();
    if groups.is_empty() {
        "no groups yet: natter groups create NAME".into()
    } else {
        groups.join("\n")
    }
}

fn members_text(r: &Value) -> String {
    r["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{}  {}",
                m["user"].as_str().unwrap_or("?"),
                m["role"].as_str().unwrap_or("member")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `natter register`: an anonymous connection asks for the account, then logs in.
async fn register(g: &Global, out: &Out) -> Result<(), Failure> {
    let (server, user) = server_and_user(g)?;
    let password = session::read_secret(&format!("new password for {user}: "))?;
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) && session::read_secret("again: ")? != password {
        return Err(Failure::Usage("the two passwords differ".into()));
    }
    let reply = format!("natter-reg-{}", profile::random_hex(6));
    let o = Options {
        server: server.clone(),
        user: None,
        secret: None,
        client_id: reply.clone(),
        session_expiry: 0,
        keep_alive: 30,
        timeout: g.timeout,
    };
    let (link, mut events) = Link::connect(&o).await?;
    let topic = im::register_reply(&reply);
    link.subscribe(std::slice::from_ref(&topic)).await?;
    let req = Request {
        id: Some(json!("register")),
        user: Some(user.clone()),
        password: Some(password.clone()),
        reply: Some(reply),
        ..Request::default()
    };
    let body = serde_json::to_vec(&req).map_err(|e| Failure::Local(e.to_string()))?;
    link.publish(
        &im::api(cmd::ACCOUNT_REGISTER),
        Bytes::from(body),
        Properties::default(),
    )
    .await?;
    let resp = tokio::time::timeout(g.timeout, async {
        while let Some(e) = events.recv().await {
            match e {
                Event::Message(m) if m.topic == topic => {
                    link.ack(m.pkid).await;
                    return serde_json::from_slice::<Response>(&m.payload)
                        .map_err(|e| Failure::Local(format!("unreadable answer: {e}")));
                }
                Event::Message(m) => link.ack(m.pkid).await,
                Event::Closed(c) => return Err(Failure::lost(c.to_string())),
            }
        }
        Err(Failure::lost("the connection ended"))
    })
    .await
    .map_err(|_| Failure::Timeout(g.timeout, "waiting for the registration".into()))??;
    link.disconnect().await;
    if !resp.ok {
        let e = resp
            .error
            .ok_or_else(|| Failure::Local("registration refused".into()))?;
        return Err(Failure::Api {
            code: e.code,
            message: e.message,
        });
    }
    if !out.json {
        println!("registered {user} on {server}");
    }
    login(g, out, Some(password)).await
}

fn server_and_user(g: &Global) -> Result<(String, String), Failure> {
    let file = profile::File::load(&profile::config_path()?)?;
    let picked = file.pick(g.profile.as_deref()).map(|(_, p)| p.clone());
    let server = g
        .server
        .clone()
        .or_else(|| picked.as_ref().map(|p| p.server.clone()))
        .ok_or_else(|| Failure::Usage("which broker? give --server HOST:PORT".into()))?;
    let user = g
        .user
        .clone()
        .or_else(|| picked.as_ref().map(|p| p.user.clone()))
        .ok_or_else(|| Failure::Usage("which user? give --user NAME".into()))?;
    if !natter_shared::names::is_valid_name(&user) {
        return Err(Failure::Usage(format!(
            "{user:?} is not a valid user name: 1 to 32 of a-z, 0-9, _ . - (first a letter or digit)"
        )));
    }
    Ok((server, user))
}

/// `natter login`: logs in with the password, creates a device token for this
/// machine and keeps it in the profile.
async fn login(g: &Global, out: &Out, password: Option<String>) -> Result<(), Failure> {
    let (server, user) = server_and_user(g)?;
    let password = match password {
        Some(p) => p,
        None => session::read_secret(&format!("password for {user}: "))?,
    };
    let path = profile::config_path()?;
    let mut file = profile::File::load(&path)?;
    let name = g.profile.clone().unwrap_or_else(|| "default".into());
    let old = file.profiles.get(&name).cloned();
    let t = Target {
        server: server.clone(),
        user: user.clone(),
        secret: password.clone(),
        device: String::new(),
        profile: None,
    };
    let (link, _events) = session::one_shot(&t, g).await?;
    let host = profile::new_device("x");
    let token_name = format!("cli-{}", host.trim_start_matches("natter-x-"));
    let made = link
        .call(
            cmd::TOKENS_CREATE,
            Request {
                name: Some(token_name.clone()),
                password: Some(password),
                ..Request::default()
            },
        )
        .await;
    let made = match made {
        Ok(m) => m,
        Err(e) => {
            link.disconnect().await;
            return Err(e);
        }
    };
    // A login again on the same profile replaces its token.
    if let Some(old) = old.as_ref().filter(|o| o.user == user && o.server == server) {
        if let Some(n) = &old.token_name {
            let _ = revoke_token(&link, n).await;
        }
    }
    link.disconnect().await;
    let token = made["token"]
        .as_str()
        .ok_or_else(|| Failure::Local("the broker sent no token".into()))?
        .to_owned();
    let device = old
        .as_ref()
        .filter(|o| o.user == user && o.server == server)
        .map(|o| o.device.clone())
        .unwrap_or_else(|| profile::new_device(&user));
    let keep = old.clone().unwrap_or(Profile {
        server: server.clone(),
        user: user.clone(),
        token: None,
        token_name: None,
        device: device.clone(),
        downloads: None,
        bell: true,
        notify: true,
    });
    file.profiles.insert(
        name.clone(),
        Profile {
            server: server.clone(),
            user: user.clone(),
            token: Some(token),
            token_name: Some(token_name.clone()),
            device,
            ..keep
        },
    );
    file.default = Some(name.clone());
    file.save(&path)?;
    // The device's session starts now: what arrives from here on is in its inbox
    // (a device the broker has not seen starts at the present).
    if let Some(p) = file.profiles.get(&name) {
        let t = Target {
            server: p.server.clone(),
            user: p.user.clone(),
            secret: p.token.clone().unwrap_or_default(),
            device: p.device.clone(),
            profile: None,
        };
        for d in [session::Device::Inbox, session::Device::Chat] {
            let (link, _events) = session::device(&t, g, d).await?;
            link.disconnect().await;
        }
    }
    let v = json!({ "user": user, "server": server, "profile": name, "token_name": token_name });
    out.show(&v, || format!("logged in as {user} on {server} (profile {name})"));
    Ok(())
}

/// `natter logout`: revokes the profile's token and forgets the profile.
async fn logout(g: &Global, out: &Out) -> Result<(), Failure> {
    let path = profile::config_path()?;
    let mut file = profile::File::load(&path)?;
    let Some((name, p)) = file.pick(g.profile.as_deref()).map(|(n, p)| (n.to_owned(), p.clone())) else {
        return Err(Failure::NotLoggedIn("not logged in".into()));
    };
    let mut revoked = false;
    if let (Some(token), Some(token_name)) = (&p.token, &p.token_name) {
        let t = Target {
            server: p.server.clone(),
            user: p.user.clone(),
            secret: token.clone(),
            device: p.device.clone(),
            profile: None,
        };
        match session::one_shot(&t, g).await {
            Ok((link, _events)) => {
                let r = revoke_token(&link, token_name).await;
                link.disconnect().await;
                match r {
                    Ok(_) => revoked = true,
                    Err(e) => eprintln!("natter: the token was not revoked on the broker: {e}"),
                }
            }
            // Revoked already, or the account is gone: nothing left to revoke.
            Err(Failure::Login(_)) => revoked = true,
            Err(e) => eprintln!("natter: the token was not revoked on the broker: {e}"),
        }
    }
    file.profiles.remove(&name);
    if file.default.as_deref() == Some(name.as_str()) {
        file.default = None;
    }
    file.save(&path)?;
    let v = json!({ "profile": name, "revoked": revoked });
    out.show(&v, || {
        if revoked {
            format!("logged out of {} on {}", p.user, p.server)
        } else {
            format!("forgot profile {name}; revoke its token later with natter tokens revoke")
        }
    });
    Ok(())
}

/// `natter passwd`: changes the password (or sets one with a reset token).
async fn passwd(g: &Global, out: &Out, reset: Option<String>) -> Result<(), Failure> {
    let (t, current) = match &reset {
        Some(token) => {
            let (server, user) = server_and_user(g)?;
            let t = Target {
                server,
                user,
                secret: token.clone(),
                device: String::new(),
                profile: None,
            };
            (t, None)
        }
        None => {
            let t = session::target(g)?;
            let current = session::read_secret("current password: ")?;
            (t, Some(current))
        }
    };
    let new = session::read_secret("new password: ")?;
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) && session::read_secret("again: ")? != new {
        return Err(Failure::Usage("the two passwords differ".into()));
    }
    let (link, _events) = session::one_shot(&t, g).await?;
    let req = match (&reset, current) {
        (Some(token), _) => (
            cmd::ACCOUNT_RESET,
            Request {
                token: Some(token.clone()),
                new_password: Some(new),
                ..Request::default()
            },
        ),
        (None, current) => (
            cmd::ACCOUNT_PASSWD,
            Request {
                password: current,
                new_password: Some(new),
                ..Request::default()
            },
        ),
    };
    let r = link.call(req.0, req.1).await;
    link.disconnect().await;
    let r = r?;
    out.show(&r, || format!("password changed for {}", t.user));
    Ok(())
}

/// How long `inbox` waits, once the backlog seems read, before checking it is.
pub const SETTLE: Duration = Duration::from_millis(400);
