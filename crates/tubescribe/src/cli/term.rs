//! The terminal under the CLI: how progress is shown ([`Output`]: a live block on a terminal,
//! plain lines otherwise, nothing), text made safe and fitted to a width in columns
//! (unicode-width aware: escape sequences removed, control characters blanked, a cut ends in
//! `…`), and the live block itself ([`Live`]).
//!
//! The live block is a few lines at the bottom of the terminal (stderr), each at most one
//! column narrower than the terminal so it never wraps. A redraw writes only the lines that
//! changed (cursor up, rewrite, clear to the end of the line), so the output stays small, and
//! a shorter block clears what is left below it. Log lines go through [`log_writer`], which
//! erases the block first; the next redraw puts it back under them. Nothing here decides what
//! the lines say (that is `watch.rs`).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use unicode_width::UnicodeWidthChar;

/// How progress is reported on stderr while tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// stderr is a terminal: one live line per task, redrawn in place; colour unless
    /// `NO_COLOR` is set.
    Live {
        /// Whether to colour the marks.
        color: bool,
    },
    /// stderr is a file or a pipe (or `TERM=dumb`): one plain line per event, no escape codes.
    Plain,
    /// Nothing (`--json`).
    Quiet,
}

impl Output {
    /// The mode for this process: [`Output::Quiet`] when `quiet`, else live on a terminal and
    /// plain otherwise.
    pub fn detect(quiet: bool) -> Output {
        if quiet {
            return Output::Quiet;
        }
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        if !std::io::stderr().is_terminal() || dumb {
            return Output::Plain;
        }
        Output::Live {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

/// The size of the terminal on `fd` in columns and rows, `None` when it is not a terminal or
/// does not say.
fn size_of(fd: i32) -> Option<(usize, usize)> {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own; nothing else is touched.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// The columns of stdout when it is a terminal (results are fitted to it), else `None`.
pub fn stdout_columns() -> Option<usize> {
    columns(&std::io::stdout(), libc::STDOUT_FILENO)
}

/// The columns of stderr when it is a terminal, else `None`.
pub fn stderr_columns() -> Option<usize> {
    columns(&std::io::stderr(), libc::STDERR_FILENO)
}

fn columns(stream: &impl IsTerminal, fd: i32) -> Option<usize> {
    stream
        .is_terminal()
        .then(|| size_of(fd).map(|(c, _)| c))
        .flatten()
}

/// `s` safe to print on one line: escape sequences (CSI, OSC and two-byte ones) removed,
/// bidi controls dropped, other control characters (line breaks, tabs) as one space.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters up to a final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ST (ESC \).
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' => {}
            c if c.is_control() => {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Columns `s` takes on a terminal (`s` cleaned: no escape sequences or controls).
pub fn width(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// `s` (cleaned) cut to at most `cols` columns; a cut ends in `…`.
pub fn fit(s: &str, cols: usize) -> String {
    Line::new().push(s, Tone::Plain).render(cols, false)
}

/// `s` (cleaned) cut to `cols` columns ([`fit`]) and padded with spaces to exactly `cols`.
pub fn pad(s: &str, cols: usize) -> String {
    let f = fit(s, cols);
    let w = width(&f);
    format!("{f}{:1$}", "", cols.saturating_sub(w))
}

/// How a piece of a [`Line`] looks when colour is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// As is.
    Plain,
    /// Faint (queued tasks, details).
    Dim,
    /// Bold (the stage).
    Bold,
    /// Green (done).
    Good,
    /// Red (failed).
    Bad,
    /// Yellow (warnings, retries).
    Warn,
    /// Cyan (running).
    Busy,
}

impl Tone {
    fn sgr(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Dim => Some("2"),
            Tone::Bold => Some("1"),
            Tone::Good => Some("32"),
            Tone::Bad => Some("31"),
            Tone::Warn => Some("33"),
            Tone::Busy => Some("36"),
        }
    }
}

/// One line of pieces of text with a [`Tone`] each; rendered fitted to a width.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Line(Vec<(String, Tone)>);

impl Line {
    /// An empty line.
    pub fn new() -> Line {
        Line(Vec::new())
    }

    /// Appends `text` ([`clean`]ed) in `tone`.
    pub fn push(mut self, text: &str, tone: Tone) -> Line {
        let text = clean(text);
        if !text.is_empty() {
            self.0.push((text, tone));
        }
        self
    }

    /// The text without styling and without cutting.
    pub fn text(&self) -> String {
        self.0.iter().map(|(t, _)| t.as_str()).collect()
    }

    /// The line cut to at most `cols` columns (a cut ends in `…`, trailing spaces dropped)
    /// with SGR colour codes around the pieces when `color`.
    pub fn render(&self, cols: usize, color: bool) -> String {
        let total: usize = self.0.iter().map(|(t, _)| width(t)).sum();
        let (budget, cut) = if total <= cols {
            (cols, false)
        } else {
            (cols.saturating_sub(1), true)
        };
        let mut pieces: Vec<(String, Tone)> = Vec::new();
        let mut used = 0;
        'pieces: for (t, tone) in &self.0 {
            let mut s = String::new();
            for c in t.chars() {
                let w = c.width().unwrap_or(0);
                if used + w > budget {
                    pieces.push((s, *tone));
                    break 'pieces;
                }
                used += w;
                s.push(c);
            }
            pieces.push((s, *tone));
        }
        if cut && cols > 0 {
            // Drop trailing blanks before the ellipsis, across pieces.
            while let Some((s, _)) = pieces.last_mut() {
                let kept = s.trim_end().len();
                s.truncate(kept);
                if !s.is_empty() {
                    break;
                }
                pieces.pop();
            }
            let tone = pieces.last().map_or(Tone::Plain, |(_, t)| *t);
            pieces.push(("…".to_string(), tone));
        }
        let mut out = String::new();
        for (s, tone) in pieces.iter().filter(|(s, _)| !s.is_empty()) {
            match tone.sgr().filter(|_| color) {
                Some(code) => out.push_str(&format!("\u{1b}[{code}m{s}\u{1b}[0m")),
                None => out.push_str(s),
            }
        }
        out
    }
}

/// What the live block shows on the terminal now: the rendered lines (empty: no block) and
/// the width they were fitted to. Shared with [`log_writer`], which erases the block.
struct Shown {
    lines: Vec<String>,
    cols: usize,
}

static SHOWN: Mutex<Shown> = Mutex::new(Shown {
    lines: Vec::new(),
    cols: 0,
});

fn shown() -> std::sync::MutexGuard<'static, Shown> {
    SHOWN.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shown {
    /// Escape codes that erase the block (the cursor is on the line below it) and forget it.
    fn erase(&mut self) -> String {
        let n = self.lines.len();
        self.lines.clear();
        match n {
            0 => String::new(),
            n => format!("\r\u{1b}[{n}A\u{1b}[J"),
        }
    }

    /// Escape codes that turn the block into `next` (already fitted to `cols`), rewriting
    /// only the lines that changed; the cursor ends on the line below the block.
    fn update(&mut self, next: Vec<String>, cols: usize) -> String {
        let mut out = String::new();
        if cols != self.cols {
            // A resized terminal may have rewrapped the old lines: start over.
            out.push_str(&self.erase());
            self.cols = cols;
        }
        let (old, n) = (&self.lines, self.lines.len());
        if old.len() == next.len() {
            let mut row = n;
            for (i, l) in next.iter().enumerate().filter(|(i, l)| old[*i] != **l) {
                out.push_str(&move_rows(row, i));
                out.push_str(&format!("{l}\u{1b}[K"));
                row = i;
            }
            out.push_str(&move_rows(row, n));
        } else {
            let first = old.iter().zip(&next).take_while(|(a, b)| a == b).count();
            if n > first {
                out.push_str(&format!("\r\u{1b}[{}A", n - first));
            }
            for l in &next[first..] {
                out.push_str(l);
                out.push_str("\u{1b}[K\n");
            }
            if next.len() < n {
                out.push_str("\u{1b}[J");
            }
        }
        self.lines = next;
        out
    }
}

/// Escape codes moving the cursor from row `from` to the start of row `to` (rows of the
/// block, 0 at its top); nothing when they are the same.
fn move_rows(from: usize, to: usize) -> String {
    match from.cmp(&to) {
        std::cmp::Ordering::Greater => format!("\r\u{1b}[{}A", from - to),
        std::cmp::Ordering::Less => format!("\r\u{1b}[{}B", to - from),
        std::cmp::Ordering::Equal => String::new(),
    }
}

fn write_stderr(s: &str) {
    if !s.is_empty() {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(s.as_bytes());
        let _ = e.flush();
    }
}

/// The live block at the bottom of the terminal (stderr); erased when dropped.
pub struct Live {
    color: bool,
}

impl Live {
    /// A block (nothing drawn yet) that colours its lines when `color`.
    pub fn new(color: bool) -> Live {
        Live { color }
    }

    /// The terminal's columns and rows (80×24 when it does not say).
    pub fn size(&self) -> (usize, usize) {
        size_of(libc::STDERR_FILENO).unwrap_or((80, 24))
    }

    /// Shows `lines`, each fitted to one column less than the terminal is wide, writing only
    /// what changed since the last draw (nothing when nothing did).
    pub fn draw(&self, lines: &[Line]) {
        let cols = self.size().0.saturating_sub(1).max(1);
        let next = lines.iter().map(|l| l.render(cols, self.color)).collect();
        let mut s = shown();
        let out = s.update(next, cols);
        write_stderr(&out);
    }

    /// Prints `text` above the block (the block comes back with the next draw).
    pub fn note(&self, text: &str) {
        let mut s = shown();
        let out = s.erase();
        write_stderr(&format!("{out}{}\n", clean(text)));
    }

    /// Erases the block.
    pub fn clear(&self) {
        let out = shown().erase();
        write_stderr(&out);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Writes log records to stderr, erasing the live block first (if one is shown) so that a
/// record never lands inside it.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut s = shown();
        let erase = s.erase();
        let mut e = std::io::stderr().lock();
        e.write_all(erase.as_bytes())?;
        e.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The writer for log records (`tracing_subscriber`'s `with_writer`): stderr, around the live
/// block.
pub fn log_writer() -> LogWriter {
    LogWriter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_escapes_and_controls() {
        assert_eq!(clean("\u{1b}[31mred\u{1b}[0m text"), "red text");
        assert_eq!(clean("a\nb\tc\r\n"), "a b c ");
        assert_eq!(
            clean("x\u{1b}]8;;http://e\u{7}link\u{1b}]8;;\u{1b}\\"),
            "xlink"
        );
        assert_eq!(clean("ab\u{202e}cd"), "abcd");
    }

    #[test]
    fn render_fits_wide_text_to_columns() {
        let l = Line::new()
            .push("✔ 日本語のタイトル", Tone::Good)
            .push("  done", Tone::Plain);
        assert_eq!(width(&l.text()), 24);
        let r = l.render(10, false);
        assert!(width(&r) <= 10, "{r}");
        assert!(r.ends_with('…'), "{r}");
        assert_eq!(l.render(24, false), l.text());
        // A wide character never straddles the edge.
        assert_eq!(fit("日本語", 4), "日…");
        assert_eq!(pad("ab", 4), "ab  ");
        let colored = l.render(80, true);
        assert!(colored.starts_with("\u{1b}[32m✔"), "{colored:?}");
    }

    #[test]
    fn update_rewrites_only_changed_lines() {
        let mut s = Shown {
            lines: Vec::new(),
            cols: 0,
        };
        let first = s.update(vec!["a".into(), "b".into(), "c".into()], 40);
        assert_eq!(first, "a\u{1b}[K\nb\u{1b}[K\nc\u{1b}[K\n");
        let same = s.update(vec!["a".into(), "b".into(), "c".into()], 40);
        assert_eq!(same, "");
        let one = s.update(vec!["a".into(), "B".into(), "c".into()], 40);
        assert_eq!(one, "\r\u{1b}[2AB\u{1b}[K\r\u{1b}[2B");
        let two = s.update(vec!["A".into(), "B".into(), "C".into()], 40);
        assert_eq!(two, "\r\u{1b}[3AA\u{1b}[K\r\u{1b}[2BC\u{1b}[K\r\u{1b}[1B");
        let shorter = s.update(vec!["A".into()], 40);
        assert_eq!(shorter, "\r\u{1b}[2A\u{1b}[J");
        assert_eq!(s.erase(), "\r\u{1b}[1A\u{1b}[J");
    }
}
