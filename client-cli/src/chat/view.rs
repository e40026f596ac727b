//! Drawing the chat: the conversation list, the open conversation, the input and
//! the status bar. Wrapping counts display widths (CJK and emoji take two cells),
//! and the newest line sits at the bottom unless scrolled up.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph};
use ratatui::Frame;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::app::{App, Conv, Line, Link};
use crate::format;

const LIST_WIDTH: u16 = 24;

pub fn draw(f: &mut Frame<'_>, app: &App) {
    let area = f.area();
    let input_rows = (app.input.lines().len() as u16).clamp(1, 5) + 2;
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Min(3),
            Constraint::Length(input_rows),
            Constraint::Length(1),
        ])
        .split(area);
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(LIST_WIDTH.min(area.width / 3)), Constraint::Min(10)])
        .split(rows[0]);
    draw_list(f, app, cols[0]);
    draw_messages(f, app, cols[1]);
    let mut input = app.input.clone();
    input.set_block(Block::default().borders(Borders::ALL).title(match app.current() {
        Some(c) => format!(" to {} ", c.title()),
        None => " /open USER ".into(),
    }));
    f.render_widget(&input, rows[1]);
    draw_status(f, app, rows[2]);
}

fn draw_list(f: &mut Frame<'_>, app: &App, area: Rect) {
    let mut items: Vec<ListItem<'_>> = Vec::new();
    for r in &app.requests {
        items.push(ListItem::new(TextLine::from(vec![
            Span::styled("? ", Style::default().fg(Color::Yellow)),
            Span::raw(format!("{r} asks ^A/^D")),
        ])));
    }
    let offset = items.len();
    for conv in &app.order {
        let t = &app.threads[conv];
        let dot = app.dot(conv);
        let dot_style = match dot {
            "●" => Style::default().fg(Color::Green),
            "◐" => Style::default().fg(Color::Yellow),
            _ => Style::default().fg(Color::DarkGray),
        };
        let mut spans = vec![Span::styled(format!("{dot} "), dot_style), Span::raw(name_of(conv))];
        if t.unread > 0 {
            spans.push(Span::styled(
                format!(" ({})", t.unread),
                Style::default().add_modifier(Modifier::BOLD),
            ));
        }
        items.push(ListItem::new(TextLine::from(spans)));
    }
    let list = List::new(items)
        .block(Block::default().borders(Borders::ALL).title(" chats "))
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default();
    if !app.order.is_empty() {
        state.select(Some(offset + app.selected));
    }
    f.render_stateful_widget(list, area, &mut state);
}

fn name_of(conv: &Conv) -> String {
    conv.title()
}

fn draw_messages(f: &mut Frame<'_>, app: &App, area: Rect) {
    let title = match app.current() {
        None => " no conversation: /open USER or /friend USER ".to_owned(),
        Some(Conv::Dm(u)) => match app.presence.get(u) {
            Some(p) => format!(" {} ", format::presence_line(p, format::now_secs())),
            None => format!(" {u} "),
        },
        Some(c) => format!(" {} ", c.title()),
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let Some(conv) = app.current() else {
        return;
    };
    let width = inner.width.max(1) as usize;
    let mut rows: Vec<TextLine<'_>> = Vec::new();
    let mut day = String::new();
    for l in &app.threads[conv].lines {
        let d = format::day_ms(l.ts);
        if d != day {
            let label = format!(" {d} ");
            let pad = width.saturating_sub(label.width()) / 2;
            rows.push(TextLine::styled(
                format!("{}{label}{}", "─".repeat(pad), "─".repeat(pad)),
                Style::default().fg(Color::DarkGray),
            ));
            day = d;
        }
        rows.extend(message_rows(app, l, width));
    }
    let height = inner.height as usize;
    let scroll = app.scroll.min(rows.len().saturating_sub(height));
    let end = rows.len() - scroll;
    let start = end.saturating_sub(height);
    let shown: Vec<TextLine<'_>> = rows[start..end].to_vec();
    f.render_widget(Paragraph::new(shown), inner);
}

/// A message as rows of at most `width` cells: `17:05 alice: text`, wrapped.
fn message_rows<'a>(app: &App, l: &'a Line, width: usize) -> Vec<TextLine<'a>> {
    let ours = l.from == app.me;
    let who = if ours { "you".to_owned() } else { l.from.clone() };
    let mark = match (ours, l.stored, &l.failed) {
        (false, _, _) => String::new(),
        (true, _, Some(why)) => format!(" ✗ {why}"),
        (true, true, None) => " ✓".into(),
        (true, false, None) => " …".into(),
    };
    let head = format!("{} {who}: ", format::clock_ms(l.ts));
    let name_style = if ours {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default().fg(Color::Magenta).add_modifier(Modifier::BOLD)
    };
    let mut out = Vec::new();
    let text = format!("{}{mark}", l.text);
    let mut first = true;
    for para in text.split('\n') {
        let indent = if first { head.width() } else { 6 };
        let chunks = wrap(para, width.saturating_sub(indent).max(1));
        for (i, chunk) in chunks.into_iter().enumerate() {
            if first && i == 0 {
                out.push(TextLine::from(vec![
                    Span::styled(head.clone(), name_style),
                    Span::raw(chunk),
                ]));
            } else {
                out.push(TextLine::from(vec![
                    Span::raw(" ".repeat(indent.min(6))),
                    Span::raw(chunk),
                ]));
            }
        }
        first = false;
    }
    out
}

/// Splits `s` into pieces of at most `width` display cells, at spaces where it can.
pub fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    let mut w = 0;
    let flush = |line: &mut String, out: &mut Vec<String>| {
        out.push(line.trim_end_matches(' ').to_owned());
        line.clear();
    };
    for word in s.split_inclusive(' ') {
        // A space at the end of a row may hang past it.
        let core = word.trim_end_matches(' ').width();
        if w + core <= width {
            line.push_str(word);
            w += word.width();
            continue;
        }
        if !line.is_empty() && core <= width {
            flush(&mut line, &mut out);
            line.push_str(word);
            w = word.width();
            continue;
        }
        // A word longer than the row: cut it by cells.
        for c in word.chars() {
            let cw = c.width().unwrap_or(0);
            if w + cw > width && !line.is_empty() {
                flush(&mut line, &mut out);
                w = 0;
            }
            line.push(c);
            w += cw;
        }
    }
    if !line.is_empty() || out.is_empty() {
        flush(&mut line, &mut out);
    }
    out
}

fn draw_status(f: &mut Frame<'_>, app: &App, area: Rect) {
    let (text, style) = match &app.link {
        Link::Connected => ("connected".to_owned(), Style::default().fg(Color::Green)),
        Link::Connecting => ("connecting…".to_owned(), Style::default().fg(Color::Yellow)),
        Link::Reconnecting(n, why) => (
            format!("reconnecting (try {n}): {why}"),
            Style::default().fg(Color::Red),
        ),
    };
    let mut spans = vec![
        Span::raw(format!(" {}@{} · ", app.me, app.server)),
        Span::styled(text, style),
    ];
    for (what, bar) in &app.transfers {
        let pct = (bar.position() * 100)
            .checked_div(bar.length().unwrap_or(0))
            .unwrap_or(0);
        spans.push(Span::styled(
            format!(" · {what} {pct}%"),
            Style::default().fg(Color::Cyan),
        ));
    }
    if let Some(n) = &app.notice {
        spans.push(Span::raw(format!(" · {n}")));
    }
    spans.push(Span::styled(
        "  (Ctrl+N/P switch, PgUp/PgDn scroll, /help, Ctrl+C quit)",
        Style::default().fg(Color::DarkGray),
    ));
    f.render_widget(Paragraph::new(TextLine::from(spans)), area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut s = String::new();
        for y in 0..h {
            let mut row = String::new();
            let mut skip = 0;
            for x in 0..w {
                let sym = buf[(x, y)].symbol();
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                skip = sym.width().saturating_sub(1);
                row.push_str(sym);
            }
            s.push_str(row.trim_end());
            s.push('\n');
        }
        s
    }

    #[test]
    fn wraps_by_display_width() {
        assert_eq!(wrap("hello world", 5), ["hello", "world"]);
        assert_eq!(wrap("a bc def", 4), ["a bc", "def"]);
        assert_eq!(wrap("日本語テキスト", 6), ["日本語", "テキス", "ト"]);
        assert_eq!(wrap("", 5), [""]);
        assert!(wrap("😀😀😀", 4).iter().all(|l| l.width() <= 4));
    }

    #[test]
    fn the_screen_at_80x24_shows_list_messages_input_and_status() {
        let mut app = App::new("bob", "127.0.0.1:1883", false);
        app.link = Link::Connected;
        let alice = Conv::Dm("alice".into());
        app.open(alice.clone());
        app.on_history(
            &alice,
            &serde_json::json!([
                {"id":1,"from":"alice","ts":1_764_000_000_000u64,"text":"こんにちは, bob 👋"},
                {"id":2,"from":"bob","ts":1_764_000_060_000u64,"text":"hi!\nsecond line"}
            ]),
        );
        app.ensure(Conv::Group("team".into()));
        app.requests.push("carol".into());
        let s = screen(&app, 80, 24);
        assert!(s.contains(" chats "), "{s}");
        assert!(s.contains("? carol asks"), "{s}");
        assert!(s.contains("○ alice"), "{s}");
        assert!(s.contains("# #team"), "{s}");
        assert!(s.contains("alice: こんにちは, bob 👋"), "{s}");
        assert!(s.contains("you: hi!"), "{s}");
        assert!(s.contains("second line ✓"), "{s}");
        assert!(s.contains(&format::day_ms(1_764_000_000_000)), "a day separator: {s}");
        assert!(s.contains(" to alice "), "{s}");
        assert!(s.contains("bob@127.0.0.1:1883 · connected"), "{s}");
        // Every row fits the width, wide characters included.
        assert!(s.lines().all(|l| l.width() <= 80), "{s}");
        // A small terminal still draws.
        let small = screen(&app, 40, 10);
        assert!(small.lines().count() == 10);
    }
}
