//! What the guest agent tells the host: one JSON object per line on the guest's second
//! serial port (/dev/ttyS1), which QEMU writes to a file on the host.

use serde::{Deserialize, Serialize};

/// The guest's second serial port, where the agent writes its events.
pub const GUEST_REPORT_TTY: &str = "/dev/ttyS1";
/// QEMU's isa-debug-exit port: the guest writes `v` there and QEMU exits with `(v << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The value the agent writes to the debug-exit port when every scenario passed…
pub const GUEST_PASSED: u8 = 0;
/// …and when one failed.
pub const GUEST_FAILED: u8 = 1;

/// QEMU's exit code for a value written to the debug-exit port.
pub fn qemu_exit_code(guest_value: u8) -> i32 {
    (i32::from(guest_value) << 1) | 1
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The agent runs: the kernel release and how long the boot took.
    Boot { kernel: String, uptime_ms: u64 },
    /// A step of the guest's setup that went wrong (a module, the disk, cgroups, the
    /// registry). The scenarios still run: those that need the step will fail and say why.
    Setup { step: String, problem: String },
    /// A scenario starts (so a hang inside it can be named).
    Start { scenario: String, timeout_s: u64 },
    /// A scenario ended.
    Scenario {
        scenario: String,
        result: Verdict,
        /// The script's exit code (none when it was killed at its timeout).
        exit_code: Option<i32>,
        millis: u64,
        /// The last lines of the scenario's output.
        output: Vec<String>,
    },
    /// Every scenario ran.
    Done {
        passed: u32,
        failed: u32,
        skipped: u32,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Timeout,
    Skip,
}

impl Verdict {
    /// Scenario exit code 77 means "skipped", as in automake.
    pub const SKIP_EXIT_CODE: i32 = 77;

    pub fn from_exit_code(code: i32) -> Verdict {
        match code {
            0 => Verdict::Pass,
            Self::SKIP_EXIT_CODE => Verdict::Skip,
            _ => Verdict::Fail,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Timeout => "TIMEOUT",
            Verdict::Skip => "SKIP",
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Timeout)
    }
}

impl Event {
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("events always serialize");
        line.push('\n');
        line
    }
}

/// The last `count` lines of `text`.
pub fn last_lines(text: &str, count: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_one_json_line_each() {
        let event = Event::Scenario {
            scenario: "dns-alias".into(),
            result: Verdict::Timeout,
            exit_code: None,
            millis: 1234,
            output: vec!["a \"quoted\" line".into()],
        };
        let line = event.to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert!(line.contains(r#""event":"scenario""#) && line.contains(r#""result":"timeout""#));
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }

    #[test]
    fn exit_codes_map_to_verdicts() {
        assert_eq!(Verdict::from_exit_code(0), Verdict::Pass);
        assert_eq!(Verdict::from_exit_code(77), Verdict::Skip);
        assert_eq!(Verdict::from_exit_code(1), Verdict::Fail);
        assert_eq!(qemu_exit_code(GUEST_PASSED), 1);
        assert_eq!(qemu_exit_code(GUEST_FAILED), 3);
    }
}
