//! The chat's state and what keys and arrivals do to it. No I/O here: the loop in
//! `chat::run` carries out the [`Action`]s this returns, and `chat::view` draws it.

use std::collections::{HashMap, HashSet};

use natter_shared::api::{Presence, Status};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind};
use ratatui_textarea::TextArea;
use serde_json::Value;

use crate::format::{self, Kind};
use crate::link::Incoming;

/// A conversation: a DM with a user, or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conv {
    Dm(String),
    Group(String),
}

impl Conv {
    /// The `with` of a history request.
    pub fn with(&self) -> String {
        match self {
            Conv::Dm(u) => u.clone(),
            Conv::Group(g) => format!("group:{g}"),
        }
    }

    pub fn title(&self) -> String {
        match self {
            Conv::Dm(u) => u.clone(),
            Conv::Group(g) => format!("#{g}"),
        }
    }
}

/// One line of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The broker's id (none yet for a message of ours on its way).
    pub id: Option<u64>,
    pub from: String,
    /// Milliseconds since 1970.
    pub ts: u64,
    pub text: String,
    /// Ours: whether the broker acknowledged (stored) it.
    pub stored: bool,
    /// Ours and refused: why.
    pub failed: Option<String>,
}

#[derive(Debug, Default)]
pub struct Thread {
    pub lines: Vec<Line>,
    pub unread: usize,
    /// Time of the newest line (ms), for sorting.
    pub last: u64,
    /// History was asked for (once per conversation).
    pub loaded: bool,
    ids: HashSet<u64>,
}

/// Lines a conversation keeps on screen (older ones are in `history`).
const MAX_LINES: usize = 5_000;
/// Sent inputs Up can recall.
const MAX_RECALL: usize = 500;

impl Thread {
    /// Adds a line unless its id is there already (a replay after a reconnect, or a
    /// message that came both live and in the history). Returns whether it was new.
    fn add(&mut self, line: Line) -> bool {
        if let Some(id) = line.id {
            if !self.ids.insert(id) {
                return false;
            }
        }
        self.last = self.last.max(line.ts);
        // In id order (history may come after live lines); ours on the way go last.
        let pos = match line.id {
            Some(id) => self
                .lines
                .iter()
                .position(|l| l.id.is_some_and(|o| o > id))
                .unwrap_or(self.lines.len()),
            None => self.lines.len(),
        };
        self.lines.insert(pos, line);
        // Bounded: the oldest go (and with them their ids).
        if self.lines.len() > MAX_LINES {
            let gone: Vec<Line> = self.lines.drain(..self.lines.len() - MAX_LINES).collect();
            for id in gone.iter().filter_map(|l| l.id) {
                self.ids.remove(&id);
            }
        }
        true
    }
}

/// The connection, as the status bar says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting,
    Connected,
    /// Retrying in a moment (attempt number, why).
    Reconnecting(u32, String),
}

/// What the loop should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish `text` to the conversation; `seq` finds the pending line again.
    Send {
        conv: Conv,
        text: String,
        seq: u64,
    },
    /// Ask for a conversation's history.
    History(Conv),
    /// An API call (a /command): command name and JSON body.
    Call(String, Value),
    /// Send a file to the conversation.
    SendFile {
        conv: Conv,
        path: String,
    },
    Quit,
}

pub const COMMANDS: &[(&str, &str)] = &[
    ("/join", "GROUP: join a group (invited, or open)"),
    ("/invite", "USER: invite a user to this group"),
    ("/kick", "USER: remove a user from this group"),
    ("/leave", ": leave this group"),
    ("/create", "GROUP: create a group"),
    ("/friend", "USER: ask a user to be friends (or accept their request)"),
    ("/accept", "USER: accept a friend request"),
    ("/block", "USER: block a user"),
    ("/status", "online|away|busy [TEXT]: your status"),
    ("/open", "USER|#GROUP: open a conversation"),
    ("/send-file", "PATH: send a file to this conversation"),
    ("/help", ": this list"),
    ("/quit", ": leave natter"),
];

pub struct App {
    pub me: String,
    pub server: String,
    pub threads: HashMap<Conv, Thread>,
    /// The conversation list, in its shown order.
    pub order: Vec<Conv>,
    pub selected: usize,
    pub presence: HashMap<String, Presence>,
    pub friends: HashSet<String>,
    /// Friend requests to answer.
    pub requests: Vec<String>,
    pub link: Link,
    /// One line for the status bar (an answer, an error, help).
    pub notice: Option<String>,
    /// Lines scrolled up from the bottom of the message pane.
    pub scroll: usize,
    pub input: TextArea<'static>,
    /// What was sent before, for Up/Down with an empty input.
    pub sent_inputs: Vec<String>,
    recall: Option<usize>,
    next_seq: u64,
    /// Pending lines of ours: seq to conversation.
    pending: HashMap<u64, Conv>,
    pub bell: bool,
    /// Files going up or down: what, and how far (for the status bar).
    pub transfers: Vec<(String, indicatif::ProgressBar)>,
}

impl App {
    pub fn new(me: &str, server: &str, bell: bool) -> App {
        let mut input = TextArea::default();
        input.set_placeholder_text("type a message, /help for commands, Alt+Enter for a new line");
        App {
            me: me.to_owned(),
            server: server.to_owned(),
            threads: HashMap::new(),
            order: Vec::new(),
            selected: 0,
            presence: HashMap::new(),
            friends: HashSet::new(),
            requests: Vec::new(),
            link: Link::Connecting,
            notice: None,
            scroll: 0,
            input,
            sent_inputs: Vec::new(),
            recall: None,
            next_seq: 1,
            pending: HashMap::new(),
            bell,
            transfers: Vec::new(),
        }
    }

    pub fn current(&self) -> Option<&Conv> {
        self.order.get(self.selected)
    }

    /// Adds a conversation to the list (if new); keeps the selection where it is.
    pub fn ensure(&mut self, conv: Conv) {
        self.threads.entry(conv).or_default();
        self.resort();
    }

    /// Sorts the list by last activity, newest first, the selection kept.
    fn resort(&mut self) {
        let current = self.current().cloned();
        let mut order: Vec<Conv> = self.threads.keys().cloned().collect();
        order.sort_by(|a, b| {
            let (ta, tb) = (self.threads[a].last, self.threads[b].last);
            tb.cmp(&ta).then_with(|| a.cmp(b))
        });
        self.order = order;
        if let Some(c) = current {
            self.selected = self.order.iter().position(|o| *o == c).unwrap_or(0);
        }
    }

    /// Opens a conversation: selected, read, its history asked for once.
    pub fn open(&mut self, conv: Conv) -> Option<Action> {
        self.ensure(conv.clone());
        self.selected = self.order.iter().position(|o| *o == conv).unwrap_or(0);
        self.scroll = 0;
        let t = self.threads.get_mut(&conv)?;
        t.unread = 0;
        if t.loaded {
            return None;
        }
        t.loaded = true;
        Some(Action::History(conv))
    }

    /// History arrived for a conversation.
    pub fn on_history(&mut self, conv: &Conv, messages: &Value) {
        let t = self.threads.entry(conv.clone()).or_default();
        for m in messages.as_array().into_iter().flatten() {
            let text = match (m["text"].as_str(), m["data"].as_str()) {
                (Some(t), _) if m["content_type"] == natter_shared::im::FILE_CONTENT_TYPE => {
                    match serde_json::from_str::<natter_shared::api::FileMessage>(t) {
                        Ok(f) => format!("📎 {} ({})", f.name, crate::files::size_text(f.size)),
                        Err(_) => t.to_owned(),
                    }
                }
                (Some(t), _) => t.to_owned(),
                (None, Some(d)) => format!("[binary, {} base64 characters]", d.len()),
                _ => String::new(),
            };
            t.add(Line {
                id: m["id"].as_u64(),
                from: m["from"].as_str().unwrap_or("?").to_owned(),
                ts: m["ts"].as_u64().unwrap_or(0),
                text,
                stored: true,
                failed: None,
            });
        }
        self.resort();
    }

    /// A mailbox delivery. Returns whether to ring the bell.
    pub fn on_message(&mut self, m: &Incoming) -> bool {
        let id = m.prop("id").and_then(|v| v.parse().ok());
        let ts = m.prop("ts").and_then(|v| v.parse().ok()).unwrap_or(0);
        let text = match crate::files::file_message(m) {
            Some(f) => format!("📎 {} ({})", f.name, crate::files::size_text(f.size)),
            None => format::text(&m.payload),
        };
        let (conv, from) = match format::kind(&self.me, &m.topic) {
            Kind::Dm { from } => (Conv::Dm(from.clone()), from),
            Kind::Sent { to } => (Conv::Dm(to), self.me.clone()),
            Kind::Group { group, from } => (Conv::Group(group), from),
            Kind::Event { kind } => {
                let body: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                self.on_event(&kind, &body);
                return false;
            }
            Kind::Other => return false,
        };
        let ours = from == self.me;
        let t = self.threads.entry(conv.clone()).or_default();
        // Our own line, sent from here and now coming back (a replay): it is the same.
        if ours {
            if let Some(l) = t
                .lines
                .iter_mut()
                .find(|l| l.id.is_none() && l.from == from && l.text == text)
            {
                l.id = id;
                l.stored = true;
                if let Some(id) = id {
                    t.ids.insert(id);
                }
                return false;
            }
        }
        let added = t.add(Line {
            id,
            from,
            ts,
            text,
            stored: true,
            failed: None,
        });
        let on_screen = self.current() == Some(&conv);
        if added && !ours && !on_screen {
            if let Some(t) = self.threads.get_mut(&conv) {
                t.unread += 1;
            }
        }
        self.resort();
        added && !ours && !on_screen && self.bell
    }

    fn on_event(&mut self, kind: &str, body: &Value) {
        let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        match kind {
            "friend_request" => {
                let u = s("user");
                if !self.requests.contains(&u) {
                    self.requests.push(u);
                }
            }
            "friend_accepted" => {
                let u = s("user");
                self.requests.retain(|r| *r != u);
                self.friends.insert(u.clone());
                self.ensure(Conv::Dm(u));
            }
            "friend_removed" => {
                self.friends.remove(&s("user"));
            }
            "group_joined" if s("user") == self.me => self.ensure(Conv::Group(s("group"))),
            "group_deleted" => {
                let g = Conv::Group(s("group"));
                self.threads.remove(&g);
                self.resort();
            }
            _ => {}
        }
        self.notice = Some(format::event_line(kind, body));
    }

    pub fn on_presence(&mut self, p: Presence) {
        self.presence.insert(p.user.clone(), p);
    }

    /// The broker took (or refused) a message of ours.
    pub fn on_sent(&mut self, seq: u64, refused: Option<String>) {
        let Some(conv) = self.pending.remove(&seq) else {
            return;
        };
        let Some(t) = self.threads.get_mut(&conv) else {
            return;
        };
        let me = self.me.clone();
        // The seq-th pending line of ours: the oldest not yet settled.
        if let Some(l) = t
            .lines
            .iter_mut()
            .find(|l| l.from == me && l.id.is_none() && !l.stored && l.failed.is_none())
        {
            match refused {
                None => l.stored = true,
                Some(why) => l.failed = Some(why),
            }
        }
    }

    /// A presence dot for a conversation.
    pub fn dot(&self, conv: &Conv) -> &'static str {
        match conv {
            Conv::Group(_) => "#",
            Conv::Dm(u) => match self.presence.get(u).map(|p| p.status) {
                Some(Status::Online) => "●",
                Some(Status::Away) | Some(Status::Busy) => "◐",
                _ => "○",
            },
        }
    }

    /// A key. Returns what to do.
    pub fn on_key(&mut self, k: KeyEvent) -> Vec<Action> {
        if k.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let alt = k.modifiers.contains(KeyModifiers::ALT);
        match k.code {
            KeyCode::Char('c') | KeyCode::Char('q') if ctrl => return vec![Action::Quit],
            // The first friend request in the list: accept or decline it.
            KeyCode::Char('a') | KeyCode::Char('d') if ctrl && !self.requests.is_empty() => {
                let who = self.requests.remove(0);
                let command = if k.code == KeyCode::Char('a') {
                    "friends.accept"
                } else {
                    "friends.decline"
                };
                return vec![Action::Call(command.into(), serde_json::json!({ "user": who }))];
            }
            KeyCode::Enter if alt || k.modifiers.contains(KeyModifiers::SHIFT) => {
                self.input.insert_newline();
                return Vec::new();
            }
            KeyCode::Enter => return self.submit(),
            KeyCode::Tab => {
                self.complete();
                return Vec::new();
            }
            KeyCode::PageUp => {
                self.scroll = self.scroll.saturating_add(10);
                return Vec::new();
            }
            KeyCode::PageDown => {
                self.scroll = self.scroll.saturating_sub(10);
                return Vec::new();
            }
            // Conversations: Alt+Up/Down or Ctrl+N/P.
            KeyCode::Up if alt => return self.select(-1),
            KeyCode::Down if alt => return self.select(1),
            KeyCode::Char('p') if ctrl => return self.select(-1),
            KeyCode::Char('n') if ctrl => return self.select(1),
            KeyCode::Up if self.input_text().is_empty() || self.recall.is_some() => {
                self.recall_input(-1);
                return Vec::new();
            }
            KeyCode::Down if self.recall.is_some() => {
                self.recall_input(1);
                return Vec::new();
            }
            _ => {}
        }
        self.recall = None;
        self.input.input(k);
        Vec::new()
    }

    pub fn on_mouse(&mut self, kind: MouseEventKind) {
        match kind {
            MouseEventKind::ScrollUp => self.scroll = self.scroll.saturating_add(3),
            MouseEventKind::ScrollDown => self.scroll = self.scroll.saturating_sub(3),
            _ => {}
        }
    }

    fn select(&mut self, by: isize) -> Vec<Action> {
        if self.order.is_empty() {
            return Vec::new();
        }
        let n = self.order.len() as isize;
        let next = (self.selected as isize + by).rem_euclid(n) as usize;
        let conv = self.order[next].clone();
        self.open(conv).into_iter().collect()
    }

    pub fn input_text(&self) -> String {
        self.input.lines().join("\n")
    }

    fn set_input(&mut self, text: &str) {
        let mut t = TextArea::new(text.lines().map(str::to_owned).collect());
        t.set_placeholder_text("type a message, /help for commands, Alt+Enter for a new line");
        t.move_cursor(ratatui_textarea::CursorMove::Bottom);
        t.move_cursor(ratatui_textarea::CursorMove::End);
        self.input = t;
    }

    fn recall_input(&mut self, by: isize) {
        if self.sent_inputs.is_empty() {
            return;
        }
        let n = self.sent_inputs.len() as isize;
        let i = match self.recall {
            None => n - 1,
            Some(i) => (i as isize + by).clamp(0, n),
        };
        if i >= n {
            self.recall = None;
            self.set_input("");
            return;
        }
        self.recall = Some(i as usize);
        let text = self.sent_inputs[i as usize].clone();
        self.set_input(&text);
    }

    /// Tab: completes a /command, or a user or group name after one.
    fn complete(&mut self) {
        let text = self.input_text();
        if !text.starts_with('/') || text.contains('\n') {
            return;
        }
        let words: Vec<&str> = text.split(' ').collect();
        let candidates: Vec<String> = if words.len() == 1 {
            COMMANDS.iter().map(|(c, _)| (*c).to_owned()).collect()
        } else {
            let mut names: Vec<String> = self.friends.iter().cloned().collect();
            names.extend(self.requests.iter().cloned());
            names.extend(self.threads.keys().map(|c| match c {
                Conv::Dm(u) => u.clone(),
                Conv::Group(g) => g.clone(),
            }));
            names.sort();
            names.dedup();
            names
        };
        let last = words.last().copied().unwrap_or("");
        let matches: Vec<&String> = candidates.iter().filter(|c| c.starts_with(last)).collect();
        match matches.as_slice() {
            [] => {}
            [one] => {
                let mut w: Vec<String> = words.iter().map(|s| (*s).to_owned()).collect();
                if let Some(l) = w.last_mut() {
                    *l = (*one).clone();
                }
                self.set_input(&format!("{} ", w.join(" ")));
            }
            many => {
                self.notice = Some(many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("  "));
            }
        }
    }

    /// Enter: a /command, or a message to the open conversation.
    fn submit(&mut self) -> Vec<Action> {
        let text = self.input_text();
        if text.trim().is_empty() {
            return Vec::new();
        }
        self.sent_inputs.push(text.clone());
        if self.sent_inputs.len() > MAX_RECALL {
            self.sent_inputs.remove(0);
        }
        self.recall = None;
        self.set_input("");
        if let Some(cmd) = text.strip_prefix('/') {
            return self.command(cmd.trim());
        }
        let Some(conv) = self.current().cloned() else {
            self.notice = Some("no conversation open: /open USER, or /friend USER first".into());
            return Vec::new();
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(seq, conv.clone());
        let now = format::now_ms();
        if let Some(t) = self.threads.get_mut(&conv) {
            t.add(Line {
                id: None,
                from: self.me.clone(),
                ts: now,
                text: text.clone(),
                stored: false,
                failed: None,
            });
        }
        self.scroll = 0;
        self.resort();
        vec![Action::Send { conv, text, seq }]
    }

    fn command(&mut self, line: &str) -> Vec<Action> {
        let mut parts = line.splitn(2, ' ');
        let name = parts.next().unwrap_or("");
        let arg = parts.next().unwrap_or("").trim().to_owned();
        let group = match self.current() {
            Some(Conv::Group(g)) => Some(g.clone()),
            _ => None,
        };
        let need = |what: &str| Some(format!("/{name} needs {what}"));
        let call = |c: &str, v: Value| vec![Action::Call(c.to_owned(), v)];
        use serde_json::json;
        let (actions, notice) = match (name, arg.as_str(), group) {
            ("quit" | "q", _, _) => (vec![Action::Quit], None),
            ("help", _, _) => {
                let help: Vec<String> = COMMANDS.iter().map(|(c, h)| format!("{c} {h}")).collect();
                (Vec::new(), Some(help.join(" · ")))
            }
            ("open", "", _) => (Vec::new(), need("a user or #group")),
            ("open", a, _) => {
                let conv = match a.strip_prefix('#') {
                    Some(g) => Conv::Group(g.to_owned()),
                    None => Conv::Dm(a.to_owned()),
                };
                (self.open(conv).into_iter().collect(), None)
            }
            ("join", "", _) => (Vec::new(), need("a group")),
            ("join", g, _) => {
                self.ensure(Conv::Group(g.to_owned()));
                (call("groups.join", json!({ "group": g })), None)
            }
            ("create", "", _) => (Vec::new(), need("a group name")),
            ("create", g, _) => {
                self.ensure(Conv::Group(g.to_owned()));
                (call("groups.create", json!({ "group": g })), None)
            }
            ("invite" | "kick", _, None) => (Vec::new(), Some(format!("/{name} works in a group"))),
            ("invite" | "kick", "", _) => (Vec::new(), need("a user")),
            ("invite", u, Some(g)) => (call("groups.invite", json!({ "group": g, "user": u })), None),
            ("kick", u, Some(g)) => (call("groups.kick", json!({ "group": g, "user": u })), None),
            ("leave", _, None) => (Vec::new(), Some("/leave works in a group".into())),
            ("leave", _, Some(g)) => (call("groups.leave", json!({ "group": g })), None),
            ("friend" | "accept" | "block", "", _) => (Vec::new(), need("a user")),
            ("friend", u, _) => (call("friends.request", json!({ "user": u })), None),
            ("accept", u, _) => {
                self.requests.retain(|r| r != u);
                (call("friends.accept", json!({ "user": u })), None)
            }
            ("block", u, _) => (call("block", json!({ "user": u })), None),
            ("status", a, _) => {
                let mut w = a.splitn(2, ' ');
                let status = w.next().unwrap_or("");
                let text = w.next().map(str::to_owned);
                if !["online", "away", "busy"].contains(&status) {
                    (Vec::new(), Some("/status online|away|busy [TEXT]".into()))
                } else {
                    (call("presence.set", json!({ "status": status, "text": text })), None)
                }
            }
            ("send-file", "", _) => (Vec::new(), need("a file's path")),
            ("send-file", p, _) => match self.current().cloned() {
                Some(conv) => (
                    vec![Action::SendFile {
                        conv,
                        path: p.to_owned(),
                    }],
                    None,
                ),
                None => (Vec::new(), Some("open a conversation first".into())),
            },
            (other, _, _) => (Vec::new(), Some(format!("unknown command /{other}: /help lists them"))),
        };
        if notice.is_some() {
            self.notice = notice;
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use natter_shared::codec::Properties;

    fn delivered(topic: &str, id: u64, text: &str) -> Incoming {
        Incoming {
            topic: topic.into(),
            payload: Bytes::from(text.to_owned()),
            properties: Properties {
                user_properties: vec![("id".into(), id.to_string()), ("ts".into(), "1000".into())],
                ..Properties::default()
            },
            pkid: 1,
        }
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(app: &mut App, s: &str) {
        for c in s.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    #[test]
    fn a_message_counts_unread_until_opened_and_is_never_shown_twice() {
        let mut app = App::new("bob", "s", true);
        assert!(app.on_message(&delivered("inbox/bob/dm/alice", 5, "hi")), "bell");
        assert!(!app.on_message(&delivered("inbox/bob/dm/alice", 5, "hi")), "a replay");
        let alice = Conv::Dm("alice".into());
        assert_eq!(app.threads[&alice].unread, 1);
        assert_eq!(app.open(alice.clone()), Some(Action::History(alice.clone())));
        assert_eq!(app.threads[&alice].unread, 0);
        app.on_history(&alice, &serde_json::json!([{"id":3,"from":"alice","ts":900,"text":"earlier"},{"id":5,"from":"alice","ts":1000,"text":"hi"}]));
        let texts: Vec<&str> = app.threads[&alice].lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["earlier", "hi"]);
        assert!(
            !app.on_message(&delivered("inbox/bob/dm/alice", 6, "on screen")),
            "no bell when open"
        );
    }

    #[test]
    fn a_conversation_keeps_its_newest_lines_only() {
        let mut t = Thread::default();
        for id in 1..=(MAX_LINES as u64 + 10) {
            t.add(Line {
                id: Some(id),
                from: "a".into(),
                ts: id,
                text: String::new(),
                stored: true,
                failed: None,
            });
        }
        assert_eq!(t.lines.len(), MAX_LINES);
        assert_eq!(t.lines[0].id, Some(11), "the oldest went");
        assert_eq!(t.ids.len(), MAX_LINES, "and their ids with them");
    }

    #[test]
    fn sending_marks_the_line_stored_and_a_replayed_copy_is_the_same_line() {
        let mut app = App::new("bob", "s", false);
        app.open(Conv::Dm("alice".into()));
        typed(&mut app, "hello");
        let actions = app.on_key(key(KeyCode::Enter));
        let Some(Action::Send { seq, text, .. }) = actions.first().cloned() else {
            panic!("{actions:?}")
        };
        assert_eq!(text, "hello");
        let alice = Conv::Dm("alice".into());
        assert!(!app.threads[&alice].lines[0].stored);
        app.on_sent(seq, None);
        assert!(app.threads[&alice].lines[0].stored);
        app.on_message(&delivered("inbox/bob/sent/dm/alice", 9, "hello"));
        assert_eq!(app.threads[&alice].lines.len(), 1);
        assert_eq!(app.threads[&alice].lines[0].id, Some(9));
    }

    #[test]
    fn commands_complete_and_act_on_the_open_group() {
        let mut app = App::new("bob", "s", false);
        app.friends.insert("carol".into());
        typed(&mut app, "/inv");
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.input_text(), "/invite ");
        typed(&mut app, "ca");
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.input_text(), "/invite carol ");
        let none = app.on_key(key(KeyCode::Enter));
        assert!(none.is_empty() && app.notice.as_deref() == Some("/invite works in a group"));
        app.open(Conv::Group("team".into()));
        typed(&mut app, "/invite carol");
        let a = app.on_key(key(KeyCode::Enter));
        assert_eq!(
            a,
            vec![Action::Call(
                "groups.invite".into(),
                serde_json::json!({"group":"team","user":"carol"})
            )]
        );
        // Up recalls what was sent.
        app.on_key(key(KeyCode::Up));
        assert_eq!(app.input_text(), "/invite carol");
        typed(&mut app, "");
        let mut alt = key(KeyCode::Enter);
        alt.modifiers = KeyModifiers::ALT;
        app.set_input("two");
        app.on_key(alt);
        typed(&mut app, "lines");
        assert_eq!(app.input_text(), "two\nlines");
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            vec![Action::Quit]
        );
    }
}
