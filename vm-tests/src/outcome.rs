//! How a guest run ended, from what the host saw: the agent's events, the console, QEMU's
//! exit and whether the host had to stop a guest that made no progress.

use crate::report::{Event, GUEST_FAILED, GUEST_PASSED, Verdict, qemu_exit_code};

/// What the host observed of one boot.
#[derive(Debug, Default)]
pub struct Observed<'a> {
    pub events: &'a [Event],
    pub console: &'a str,
    /// QEMU's own messages (its stderr).
    pub qemu_messages: &'a str,
    /// QEMU's exit code; `None` when it was killed.
    pub qemu_exit: Option<i32>,
    /// The host stopped QEMU because the guest made no progress in time.
    pub stalled: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The agent ran every scenario and said so.
    Finished { failed: bool },
    /// The kernel panicked.
    Panic,
    /// The guest stopped making progress; the scenario it was in, if any.
    Hang { in_scenario: Option<String> },
    /// QEMU never started the guest.
    QemuFailed,
    /// The guest stopped (reset, power off, crash of the agent) before finishing.
    Stopped,
}

impl Ending {
    pub fn is_success(&self) -> bool {
        *self == Ending::Finished { failed: false }
    }
}

pub fn classify(seen: &Observed) -> Ending {
    if let Some(Event::Done { failed, .. }) =
        seen.events.iter().find(|e| matches!(e, Event::Done { .. }))
    {
        let any_failed = seen
            .events
            .iter()
            .any(|e| matches!(e, Event::Scenario { result, .. } if result.is_failure()));
        // the agent's exit value must agree with its report
        let exit_agrees = seen.qemu_exit
            == Some(qemu_exit_code(if *failed > 0 {
                GUEST_FAILED
            } else {
                GUEST_PASSED
            }));
        return Ending::Finished {
            failed: *failed > 0 || any_failed || !exit_agrees,
        };
    }
    if seen.console.contains("Kernel panic") {
        return Ending::Panic;
    }
    if seen.stalled {
        return Ending::Hang {
            in_scenario: running_scenario(seen.events),
        };
    }
    let booted = seen.events.iter().any(|e| matches!(e, Event::Boot { .. }))
        || !seen.console.trim().is_empty();
    if !booted && !seen.qemu_messages.trim().is_empty() {
        return Ending::QemuFailed;
    }
    Ending::Stopped
}

/// The scenario that started and never ended.
pub fn running_scenario(events: &[Event]) -> Option<String> {
    let mut running = None;
    for event in events {
        match event {
            Event::Start { scenario, .. } => running = Some(scenario.clone()),
            Event::Scenario { .. } => running = None,
            _ => {}
        }
    }
    running
}

/// Scenarios the host asked for that the guest never reported.
pub fn unreported<'a>(selected: &'a [String], events: &[Event]) -> Vec<&'a str> {
    selected
        .iter()
        .filter(|name| {
            !events
                .iter()
                .any(|e| matches!(e, Event::Scenario { scenario, .. } if scenario == *name))
        })
        .map(String::as_str)
        .collect()
}

/// Counts of pass, fail (timeouts included) and skip.
pub fn tally(events: &[Event]) -> (usize, usize, usize) {
    let results = events.iter().filter_map(|e| match e {
        Event::Scenario { result, .. } => Some(*result),
        _ => None,
    });
    results.fold((0, 0, 0), |(p, f, s), r| match r {
        Verdict::Pass => (p + 1, f, s),
        Verdict::Skip => (p, f, s + 1),
        Verdict::Fail | Verdict::Timeout => (p, f + 1, s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str, result: Verdict) -> Event {
        Event::Scenario {
            scenario: name.into(),
            result,
            exit_code: Some(0),
            millis: 1,
            output: vec![],
        }
    }
    fn boot() -> Event {
        Event::Boot {
            kernel: "6.1.0".into(),
            uptime_ms: 900,
        }
    }
    fn start(name: &str) -> Event {
        Event::Start {
            scenario: name.into(),
            timeout_s: 10,
        }
    }

    #[test]
    fn a_finished_run_passes_only_when_events_and_exit_code_agree() {
        let done = |failed| Event::Done {
            passed: 1,
            failed,
            skipped: 0,
        };
        let events = [boot(), start("a"), scenario("a", Verdict::Pass), done(0)];
        let seen = Observed {
            events: &events,
            qemu_exit: Some(1),
            ..Default::default()
        };
        assert!(classify(&seen).is_success());

        // exit code 3 (the agent said "failed") contradicts a clean report: a failure
        let seen = Observed {
            events: &events,
            qemu_exit: Some(3),
            ..Default::default()
        };
        assert_eq!(classify(&seen), Ending::Finished { failed: true });

        let events = [boot(), start("a"), scenario("a", Verdict::Timeout), done(1)];
        let seen = Observed {
            events: &events,
            qemu_exit: Some(3),
            ..Default::default()
        };
        assert_eq!(classify(&seen), Ending::Finished { failed: true });
    }

    #[test]
    fn panic_hang_qemu_failure_and_early_stop_are_told_apart() {
        let events = [boot(), start("dns-alias")];
        let panic = Observed {
            events: &events,
            console: "[ 3.1] Kernel panic - not syncing: Attempted to kill init!",
            qemu_exit: Some(0),
            ..Default::default()
        };
        assert_eq!(classify(&panic), Ending::Panic);

        let hang = Observed {
            events: &events,
            console: "booting",
            qemu_exit: None,
            stalled: true,
            ..Default::default()
        };
        assert_eq!(
            classify(&hang),
            Ending::Hang {
                in_scenario: Some("dns-alias".into())
            }
        );
        let hang_at_boot = Observed {
            events: &[],
            stalled: true,
            ..Default::default()
        };
        assert_eq!(classify(&hang_at_boot), Ending::Hang { in_scenario: None });

        let no_qemu = Observed {
            events: &[],
            qemu_messages: "qemu-system-x86_64: -kernel /nope: No such file",
            qemu_exit: Some(1),
            ..Default::default()
        };
        assert_eq!(classify(&no_qemu), Ending::QemuFailed);

        let events = [boot(), start("a"), scenario("a", Verdict::Pass)];
        let stopped = Observed {
            events: &events,
            qemu_exit: Some(0),
            ..Default::default()
        };
        assert_eq!(classify(&stopped), Ending::Stopped);
    }

    #[test]
    fn unreported_scenarios_and_tallies() {
        let events = [
            boot(),
            scenario("a", Verdict::Pass),
            scenario("b", Verdict::Skip),
            scenario("c", Verdict::Timeout),
        ];
        let selected = ["a".to_string(), "b".into(), "c".into(), "d".into()];
        assert_eq!(unreported(&selected, &events), ["d"]);
        assert_eq!(tally(&events), (1, 1, 1));
        assert_eq!(running_scenario(&events), None);
    }
}
