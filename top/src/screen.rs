//! The interactive screen: a header (broker, link state, broker clock, keys), the current view
//! as a table, and a footer (sort, filter). Refreshes every `delay`; keys act at once.
//!
//! Keys: `t` tenants, `l` LUNs, `p` paths, `o` topology, Tab the next view; `s`/`S` sort by the
//! next/previous column, `r` reverse it, `n` the broker's order; `/` filter (Enter keeps it,
//! Esc clears it); space refreshes now; `q` or Ctrl-C quits. Colour: yellow for congestion
//! (requests waiting, QUEUE FULL, a missed reservation), red for a failed path, a disconnected
//! tenant or I/O errors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table};

use crate::rows::Mood;
use crate::source::{Connection, ControlSource, RECONNECTED_SHOWN_S, Snapshot};
use crate::table::SortBy;
use crate::{TopOptions, View};

struct App {
    source: ControlSource,
    delay: Duration,
    view: View,
    sort: HashMap<&'static str, SortBy>,
    filter: String,
    /// Some while the user types a filter.
    editing: Option<String>,
    snap: Snapshot,
    connection: Connection,
    started: Instant,
    ever_connected: bool,
}

impl App {
    fn refresh(&mut self) {
        match self.source.fetch() {
            Ok(snap) => {
                let now_s = self.started.elapsed().as_secs_f64();
                let t = |s: &Snapshot| s.sample.as_ref().map(|x| x.t_s);
                // A broker replaced between two refreshes is never unreachable; its clock
                // starting over gives it away.
                let clock_went_back =
                    matches!((t(&self.snap), t(&snap)), (Some(a), Some(b)) if b < a);
                self.connection = match self.connection {
                    Connection::Unreachable { .. } if self.ever_connected => {
                        Connection::Reconnected { at_s: now_s }
                    }
                    _ if clock_went_back => Connection::Reconnected { at_s: now_s },
                    Connection::Reconnected { at_s } if now_s - at_s < RECONNECTED_SHOWN_S => {
                        Connection::Reconnected { at_s }
                    }
                    _ => Connection::Connected,
                };
                self.snap = snap;
                self.ever_connected = true;
            }
            Err(e) => {
                let since_s = match &self.connection {
                    Connection::Unreachable { since_s, .. } => *since_s,
                    _ => self.started.elapsed().as_secs_f64(),
                };
                self.connection = Connection::Unreachable {
                    error: e.to_string(),
                    since_s,
                };
            }
        }
    }

    /// Returns false to quit.
    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        if let Some(text) = &mut self.editing {
            match code {
                KeyCode::Enter => {
                    self.filter = std::mem::take(text);
                    self.editing = None;
                }
                KeyCode::Esc => {
                    self.filter.clear();
                    self.editing = None;
                }
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return true;
        }
        let columns = self.view.table(&Snapshot::default(), "").headers.len();
        let sort = self.sort.get(self.view.name()).copied();
        match code {
            KeyCode::Char('q') => return false,
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return false,
            KeyCode::Char(c) if View::ALL.iter().any(|v| v.key() == c) => {
                if let Some(v) = View::ALL.into_iter().find(|v| v.key() == c) {
                    self.view = v;
                }
            }
            KeyCode::Tab => {
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                self.view = View::ALL[(i + 1) % View::ALL.len()];
            }
            KeyCode::Char('s') | KeyCode::Char('S') => {
                let step = if code == KeyCode::Char('s') {
                    1
                } else {
                    columns.saturating_sub(1)
                };
                let column = sort.map_or(0, |s| (s.column + step) % columns.max(1));
                self.sort.insert(
                    self.view.name(),
                    SortBy {
                        column,
                        // Figures read best largest first; names alphabetically.
                        descending: column > 0,
                    },
                );
            }
            KeyCode::Char('r') => {
                if let Some(s) = sort {
                    self.sort.insert(
                        self.view.name(),
                        SortBy {
                            descending: !s.descending,
                            ..s
                        },
                    );
                }
            }
            KeyCode::Char('n') => {
                self.sort.remove(self.view.name());
            }
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char(' ') => self.refresh(),
            _ => {}
        }
        true
    }

    fn draw(&self, frame: &mut ratatui::Frame) {
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());

        let (link, link_style) = match &self.connection {
            Connection::Connected => ("connected".to_string(), Style::new().fg(Color::Green)),
            Connection::Reconnected { at_s } => (
                format!(
                    "reconnected {:.0} s ago (the broker restarted)",
                    self.started.elapsed().as_secs_f64() - at_s
                ),
                Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
            ),
            Connection::Unreachable { error, since_s } => (
                format!(
                    "UNREACHABLE for {:.0} s, retrying: {error}{}",
                    self.started.elapsed().as_secs_f64() - since_s,
                    if self.ever_connected {
                        " (showing the last figures)"
                    } else {
                        ""
                    }
                ),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
        };
        let clock = self.snap.sample.as_ref().map_or("-".into(), |s| {
            format!("t={:.0}s interval {:.2}s", s.t_s, s.interval_s)
        });
        let tabs: Vec<Span> = View::ALL
            .iter()
            .flat_map(|v| {
                let style = if *v == self.view {
                    Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
                } else {
                    Style::new()
                };
                [
                    Span::styled(format!("[{}] {}", v.key(), v.name()), style),
                    Span::raw("  "),
                ]
            })
            .collect();
        frame.render_widget(
            Paragraph::new(vec![
                Line::from(vec![
                    Span::styled("weir top  ", Style::new().add_modifier(Modifier::BOLD)),
                    Span::raw(format!("{}  ", self.source.path().display())),
                    Span::styled(link, link_style),
                    Span::raw(format!("  {clock}")),
                ]),
                Line::from(tabs),
            ]),
            head,
        );

        let filter = self.editing.as_deref().unwrap_or(&self.filter);
        let mut table = self.view.table(&self.snap, filter);
        let sort = self.sort.get(self.view.name()).copied();
        if let Some(s) = sort {
            table.sort(s);
        }
        let widths: Vec<Constraint> = table
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let w = table
                    .rows
                    .iter()
                    .map(|(c, _)| c.get(i).map_or(0, |c| c.text().chars().count()))
                    .max()
                    .unwrap_or(0)
                    .max(h.chars().count() + 1);
                Constraint::Length(w as u16)
            })
            .collect();
        let header = Row::new(table.headers.iter().enumerate().map(|(i, h)| {
            let mark = match sort {
                Some(s) if s.column == i && s.descending => "↓",
                Some(s) if s.column == i => "↑",
                _ => "",
            };
            format!("{h}{mark}")
        }))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
        let rows = table.rows.iter().map(|(cells, mood)| {
            let style = match mood {
                Mood::Normal => Style::new(),
                Mood::Congested => Style::new().fg(Color::Yellow),
                Mood::Bad => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            };
            Row::new(cells.iter().map(|c| c.text().to_string())).style(style)
        });
        let empty = table.rows.is_empty();
        frame.render_widget(
            Table::new(rows, widths)
                .header(header)
                .column_spacing(1)
                .block(Block::bordered().title(format!(
                    " {} {}",
                    self.view.name(),
                    if empty && self.snap.sample.is_none() {
                        "(waiting for the broker's first telemetry second) "
                    } else {
                        ""
                    }
                ))),
            body,
        );

        let foot_text = match &self.editing {
            Some(text) => format!("filter: {text}▏ (Enter keeps, Esc clears)"),
            None => format!(
                "t/l/p/o or Tab: view  s/S: sort  r: reverse  n: unsorted  /: filter{}  space: refresh  q: quit",
                if self.filter.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", self.filter)
                }
            ),
        };
        frame.render_widget(
            Paragraph::new(foot_text).style(Style::new().add_modifier(Modifier::DIM)),
            foot,
        );
    }
}

/// Runs the screen until the user quits.
pub fn run(opts: &TopOptions) -> std::io::Result<()> {
    let mut terminal = ratatui::init();
    let result = run_app(&mut terminal, opts);
    ratatui::restore();
    result
}

fn run_app(terminal: &mut DefaultTerminal, opts: &TopOptions) -> std::io::Result<()> {
    let mut app = App {
        source: ControlSource::new(&opts.control),
        delay: opts.delay,
        view: opts.view,
        sort: HashMap::new(),
        filter: String::new(),
        editing: None,
        snap: Snapshot::default(),
        connection: Connection::Connected,
        started: Instant::now(),
        ever_connected: false,
    };
    app.refresh();
    let mut next = Instant::now() + app.delay;
    loop {
        terminal.draw(|f| app.draw(f))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(k) = event::read()? {
                if k.kind == KeyEventKind::Press && !app.key(k.code, k.modifiers) {
                    return Ok(());
                }
            }
            continue;
        }
        app.refresh();
        next = Instant::now() + app.delay;
    }
}
