//! Per-process kernel attributes from the spec: `process.ioPriority`,
//! `process.scheduler` and `linux.personality`. Validated when the spec is loaded,
//! applied in the container's process (init and exec'd ones) before its credentials
//! change, and only when the spec sets them.

use nix::errno::Errno;
use oci_spec::runtime::{
    IOPriorityClass, LinuxPersonalityDomain, LinuxSchedulerFlag, LinuxSchedulerPolicy, Spec,
};

use crate::error::{Error, FailureKind, Result, SetupFailure};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProcessAttrs {
    /// The value for ioprio_set: class << 13 | priority.
    pub io_priority: Option<u16>,
    pub scheduler: Option<SchedAttr>,
    /// The value for personality(2).
    pub personality: Option<u32>,
}

/// The kernel's `struct sched_attr` (SCHED_ATTR_SIZE_VER0, 48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const IOPRIO_CLASS_SHIFT: u16 = 13;
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

fn io_priority(spec: &Spec) -> Result<Option<u16>> {
    let Some(io) = spec
        .process()
        .as_ref()
        .and_then(|p| p.io_priority().as_ref())
    else {
        return Ok(None);
    };
    let class: u16 = match io.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    if !(0..=7).contains(&io.priority()) {
        return Err(invalid(format!(
            "process.ioPriority.priority {} is out of range: use 0 (highest) to 7 (lowest)",
            io.priority()
        )));
    }
    Ok(Some(class << IOPRIO_CLASS_SHIFT | io.priority() as u16))
}

fn scheduler(spec: &Spec) -> Result<Option<SchedAttr>> {
    let Some(s) = spec.process().as_ref().and_then(|p| p.scheduler().as_ref()) else {
        return Ok(None);
    };
    let policy = match s.policy() {
        LinuxSchedulerPolicy::SchedOther => libc::SCHED_OTHER,
        LinuxSchedulerPolicy::SchedFifo => libc::SCHED_FIFO,
        LinuxSchedulerPolicy::SchedRr => libc::SCHED_RR,
        LinuxSchedulerPolicy::SchedBatch => libc::SCHED_BATCH,
        LinuxSchedulerPolicy::SchedIdle => libc::SCHED_IDLE,
        LinuxSchedulerPolicy::SchedDeadline => 6,
        LinuxSchedulerPolicy::SchedIso => {
            return Err(invalid(
                "process.scheduler.policy SCHED_ISO is not implemented by Linux: use SCHED_OTHER, SCHED_BATCH, SCHED_IDLE, SCHED_FIFO, SCHED_RR or SCHED_DEADLINE".into(),
            ));
        }
    };
    let nice = s.nice().unwrap_or(0);
    if !(-20..=19).contains(&nice) {
        return Err(invalid(format!(
            "process.scheduler.nice {nice} is out of range -20..19"
        )));
    }
    let priority = s.priority().unwrap_or(0);
    let realtime = policy == libc::SCHED_FIFO || policy == libc::SCHED_RR;
    if realtime && !(1..=99).contains(&priority) {
        return Err(invalid(format!(
            "process.scheduler.priority {priority} is out of range: {} needs 1..99",
            s.policy()
        )));
    }
    if !realtime && priority != 0 {
        return Err(invalid(format!(
            "process.scheduler.priority must be 0 (or absent) for {}; only SCHED_FIFO and SCHED_RR use it",
            s.policy()
        )));
    }
    let (runtime, deadline, period) = (
        s.runtime().unwrap_or(0),
        s.deadline().unwrap_or(0),
        s.period().unwrap_or(0),
    );
    if policy == 6 {
        let period_or_deadline = if period == 0 { deadline } else { period };
        if runtime == 0 || runtime > deadline || deadline > period_or_deadline {
            return Err(invalid(format!(
                "process.scheduler: SCHED_DEADLINE needs 0 < runtime ({runtime}) <= deadline ({deadline}) <= period ({period}, 0 meaning the deadline)"
            )));
        }
    } else if runtime != 0 || deadline != 0 || period != 0 {
        return Err(invalid(format!(
            "process.scheduler.runtime/deadline/period only apply to SCHED_DEADLINE, not {}",
            s.policy()
        )));
    }
    let mut flags = 0u64;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            LinuxSchedulerFlag::SchedFlagUtilClampMin
            | LinuxSchedulerFlag::SchedFlagUtilClampMax => {
                return Err(invalid(format!(
                    "process.scheduler.flags {f} needs a utilization value, which the runtime spec has no field for; remove it"
                )));
            }
        };
    }
    Ok(Some(SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: policy as u32,
        flags,
        nice,
        priority: priority as u32,
        runtime,
        deadline,
        period,
    }))
}

/// personality(2) flags by the names of <linux/personality.h>.
const PERSONALITY_FLAGS: &[(&str, u32)] = &[
    ("UNAME26", 0x0020000),
    ("ADDR_NO_RANDOMIZE", 0x0040000),
    ("FDPIC_FUNCPTRS", 0x0080000),
    ("MMAP_PAGE_ZERO", 0x0100000),
    ("ADDR_COMPAT_LAYOUT", 0x0200000),
    ("READ_IMPLIES_EXEC", 0x0400000),
    ("ADDR_LIMIT_32BIT", 0x0800000),
    ("SHORT_INODE", 0x1000000),
    ("WHOLE_SECONDS", 0x2000000),
    ("STICKY_TIMEOUTS", 0x4000000),
    ("ADDR_LIMIT_3GB", 0x8000000),
];

fn personality(spec: &Spec) -> Result<Option<u32>> {
    let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) else {
        return Ok(None);
    };
    let mut value = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    for flag in p.flags().iter().flatten() {
        let bit = PERSONALITY_FLAGS
            .iter()
            .find(|(name, _)| name == flag)
            .map(|(_, bit)| *bit)
            .ok_or_else(|| {
                let known: Vec<&str> = PERSONALITY_FLAGS.iter().map(|(n, _)| *n).collect();
                invalid(format!(
                    "unknown linux.personality flag {flag:?}: use one of {}",
                    known.join(", ")
                ))
            })?;
        value |= bit;
    }
    Ok(Some(value))
}

/// Reads and checks the attributes of a spec's process.
pub(crate) fn from_spec(spec: &Spec) -> Result<ProcessAttrs> {
    Ok(ProcessAttrs {
        io_priority: io_priority(spec)?,
        scheduler: scheduler(spec)?,
        personality: personality(spec)?,
    })
}

fn failure(step: &str, errno: Errno, hint: &str) -> SetupFailure {
    SetupFailure {
        step: step.into(),
        detail: format!("{}{hint}", errno.desc()),
        kind: FailureKind::Setup,
    }
}

/// Applies the attributes to the calling process (inherited by what it execs).
pub(crate) fn apply(attrs: &ProcessAttrs) -> Result<(), SetupFailure> {
    if let Some(p) = attrs.personality {
        // SAFETY: plain syscall.
        Errno::result(unsafe { libc::personality(p as libc::c_ulong) })
            .map_err(|e| failure("set linux.personality", e, ""))?;
    }
    if let Some(prio) = attrs.io_priority {
        // SAFETY: plain syscall.
        let ret =
            unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio as i32) };
        Errno::result(ret).map_err(|e| {
            failure(
                "set process.ioPriority",
                e,
                " (the realtime class IOPRIO_CLASS_RT needs CAP_SYS_ADMIN on the host)",
            )
        })?;
    }
    if let Some(attr) = &attrs.scheduler {
        // SAFETY: `attr` is a valid sched_attr that outlives the call.
        let ret = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0) };
        Errno::result(ret).map_err(|e| {
            failure(
                "set process.scheduler",
                e,
                " (realtime and deadline policies and a negative nice value need CAP_SYS_NICE on the host)",
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = serde_json::to_value(Spec::default()).unwrap();
        for (k, v) in json.as_object().unwrap() {
            for (k2, v2) in v.as_object().unwrap() {
                base[k][k2] = v2.clone();
            }
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn attributes_are_encoded_for_the_kernel() {
        let s = spec(serde_json::json!({
            "process": {
                "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 7},
                "scheduler": {"policy": "SCHED_BATCH", "nice": 5, "flags": ["SCHED_RESET_ON_FORK"]}
            },
            "linux": {"personality": {"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE"]}}
        }));
        let a = from_spec(&s).unwrap();
        assert_eq!(a.io_priority, Some(3 << 13 | 7));
        assert_eq!(a.personality, Some(0x0008 | 0x0040000));
        let sched = a.scheduler.unwrap();
        assert_eq!((sched.policy, sched.nice, sched.flags), (3, 5, 1));
        assert_eq!(sched.size, 48);
        assert_eq!(
            from_spec(&Spec::default()).unwrap(),
            ProcessAttrs::default()
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for bad in [
            serde_json::json!({"process": {"ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 8}}}),
            serde_json::json!({"process": {"scheduler": {"policy": "SCHED_FIFO"}}}),
            serde_json::json!({"process": {"scheduler": {"policy": "SCHED_OTHER", "priority": 3}}}),
            serde_json::json!({"process": {"scheduler": {"policy": "SCHED_OTHER", "nice": 20}}}),
            serde_json::json!({"process": {"scheduler": {"policy": "SCHED_DEADLINE", "runtime": 10, "deadline": 5}}}),
            serde_json::json!({"linux": {"personality": {"domain": "LINUX", "flags": ["NOPE"]}}}),
        ] {
            assert!(from_spec(&spec(bad.clone())).is_err(), "{bad}");
        }
    }
}
