//! Pull progress on a terminal: one line per layer (bytes downloaded, then
//! unpacking), redrawn in place at most ten times a second. Nothing when stderr is
//! not a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use snapshots::{Digest, Progress};

use crate::db::short_id;
use crate::images::{PullDisplay, UnpackDisplay};

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Downloading { done: u64, total: u64 },
    Downloaded,
    Exists,
    Unpacking,
    Unpacked,
}

struct Lines {
    layers: Vec<(Digest, Phase)>,
    drawn: usize,
    last_draw: Option<Instant>,
}

pub struct TerminalDisplay {
    lines: Mutex<Lines>,
}

/// A display for stderr if it is a terminal.
pub fn for_stderr() -> Option<TerminalDisplay> {
    std::io::stderr().is_terminal().then(|| TerminalDisplay {
        lines: Mutex::new(Lines {
            layers: Vec::new(),
            drawn: 0,
            last_draw: None,
        }),
    })
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl TerminalDisplay {
    fn update(&self, digest: &Digest, phase: impl FnOnce(&Phase) -> Phase, force: bool) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let index = match lines.layers.iter().position(|(d, _)| d == digest) {
            Some(i) => i,
            None => {
                lines.layers.push((digest.clone(), Phase::Downloaded));
                lines.layers.len() - 1
            }
        };
        let next = phase(&lines.layers[index].1);
        lines.layers[index].1 = next;
        let due = lines
            .last_draw
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if force || due {
            draw(&mut lines);
        }
    }

    /// Draws the final state (call when the pull ends).
    pub fn finish(&self) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        draw(&mut lines);
    }
}

fn draw(lines: &mut Lines) {
    let mut err = std::io::stderr().lock();
    if lines.drawn > 0 {
        let _ = write!(err, "\x1b[{}A", lines.drawn);
    }
    for (digest, phase) in &lines.layers {
        let text = match phase {
            Phase::Downloading { done, total } => {
                format!("downloading {} / {}", mb(*done), mb(*total))
            }
            Phase::Downloaded => "downloaded".to_string(),
            Phase::Exists => "already present".to_string(),
            Phase::Unpacking => "unpacking".to_string(),
            Phase::Unpacked => "unpacked".to_string(),
        };
        let _ = writeln!(err, "\x1b[2K{}: {text}", short_id(&digest.to_string()));
    }
    let _ = err.flush();
    lines.drawn = lines.layers.len();
    lines.last_draw = Some(Instant::now());
}

impl Progress for TerminalDisplay {
    fn start(&self, digest: &Digest, total: u64) {
        self.update(digest, |_| Phase::Downloading { done: 0, total }, true);
    }

    fn advance(&self, digest: &Digest, bytes: u64) {
        self.update(
            digest,
            |p| match p {
                Phase::Downloading { done, total } => Phase::Downloading {
                    done: done + bytes,
                    total: *total,
                },
                other => other.clone(),
            },
            false,
        );
    }

    fn done(&self, digest: &Digest, reused: bool) {
        let phase = if reused {
            Phase::Exists
        } else {
            Phase::Downloaded
        };
        self.update(digest, |_| phase, true);
    }
}

impl UnpackDisplay for TerminalDisplay {
    fn unpacking(&self, layer: &Digest) {
        self.update(layer, |_| Phase::Unpacking, true);
    }

    fn unpacked(&self, layer: &Digest) {
        self.update(layer, |_| Phase::Unpacked, true);
    }
}

impl PullDisplay for TerminalDisplay {
    fn as_progress(&self) -> &dyn Progress {
        self
    }

    fn as_unpack(&self) -> &dyn UnpackDisplay {
        self
    }
}
