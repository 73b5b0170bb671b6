//! Booting the guest: the accelerator, QEMU's command line, and watching the agent's
//! events while the guest runs, with a deadline that moves with its progress.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::report::{DEBUG_EXIT_PORT, Event, GUEST_PASSED, qemu_exit_code};

pub const QEMU: &str = "qemu-system-x86_64";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if the CPU has vmx/svm and a probe boot works, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct AccelChoice {
    pub accel: &'static str,
    pub cpu: &'static str,
    pub why: String,
}

impl AccelChoice {
    pub fn kvm(why: impl Into<String>) -> Self {
        AccelChoice {
            accel: "kvm",
            cpu: "host",
            why: why.into(),
        }
    }
    /// qemu64: under TCG, `max` was slower here (glibc picks emulated AVX paths).
    pub fn tcg(why: impl Into<String>) -> Self {
        AccelChoice {
            accel: "tcg",
            cpu: "qemu64",
            why: why.into(),
        }
    }
}

/// KVM only when it really works: a writable /dev/kvm, a CPU with vmx or svm (a /dev/kvm
/// without them was seen emulating the guest until it failed), and a probe boot that
/// reaches the agent.
pub fn choose_accel(wanted: Accel, probe: impl FnOnce() -> Result<bool>) -> Result<AccelChoice> {
    match wanted {
        Accel::Kvm => return Ok(AccelChoice::kvm("asked for")),
        Accel::Tcg => return Ok(AccelChoice::tcg("asked for")),
        Accel::Auto => {}
    }
    let writable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !writable {
        return Ok(AccelChoice::tcg("/dev/kvm is missing or not writable"));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !virt {
        return Ok(AccelChoice::tcg(
            "the CPU shows no vmx/svm, so KVM cannot run the guest natively",
        ));
    }
    if probe()? {
        Ok(AccelChoice::kvm("a probe boot with KVM worked"))
    } else {
        Ok(AccelChoice::tcg("a probe boot with KVM failed"))
    }
}

pub struct Machine<'a> {
    pub boot_image: &'a Path,
    pub initrd: &'a Path,
    pub disk: Option<&'a Path>,
    pub accel: &'a AccelChoice,
    pub memory_mb: u32,
    pub cpus: u32,
    pub run_dir: &'a Path,
}

/// What a boot left behind.
pub struct Boot {
    pub events: Vec<Event>,
    pub qemu_exit: Option<i32>,
    pub stalled: bool,
    pub stalled_after: Duration,
    pub console_log: PathBuf,
    pub qemu_log: PathBuf,
    pub elapsed: Duration,
}

/// How long the guest may go without reporting anything, given its last event.
pub fn allowance(last: Option<&Event>) -> Duration {
    Duration::from_secs(match last {
        // TCG, a loaded machine, and a 60 MB initramfs to unpack
        None => 240,
        // setup, including the registry's start
        Some(Event::Boot { .. } | Event::Setup { .. }) => 180,
        Some(Event::Start { timeout_s, .. }) => timeout_s + 60,
        // the agent cleans up, then starts the next one
        Some(Event::Scenario { .. }) => 120,
        Some(Event::Done { .. }) => 60,
    })
}

/// Boots the machine and follows its events, calling `on_event` for each as it arrives.
pub fn run(machine: &Machine, mut on_event: impl FnMut(&Event)) -> Result<Boot> {
    let dir = machine.run_dir;
    let console_log = dir.join("console.log");
    let events_log = dir.join("events.jsonl");
    let qemu_log = dir.join("qemu.log");
    for file in [&console_log, &events_log] {
        File::create(file).with_context(|| format!("create {}", file.display()))?;
    }
    let mut command = base_command(
        machine.accel,
        machine.cpus,
        machine.memory_mb,
        machine.boot_image,
        machine.initrd,
        "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init",
    );
    command
        .arg("-serial")
        .arg(format!("file:{}", console_log.display()))
        .arg("-serial")
        .arg(format!("file:{}", events_log.display()));
    if let Some(disk) = machine.disk {
        command.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            disk.display()
        ));
    }
    let log = File::create(&qemu_log)?;
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {QEMU} (Debian: apt install qemu-system-x86)"))?;

    let mut reader = EventReader::new(&events_log)?;
    let mut events: Vec<Event> = Vec::new();
    let mut last_progress = Instant::now();
    let mut pause = Duration::from_millis(10);
    let (qemu_exit, stalled) = loop {
        let fresh = reader.read_new()?;
        if !fresh.is_empty() {
            last_progress = Instant::now();
            pause = Duration::from_millis(10);
        }
        for event in fresh {
            on_event(&event);
            events.push(event);
        }
        if let Some(status) = child.try_wait()? {
            for event in reader.read_new()? {
                on_event(&event);
                events.push(event);
            }
            break (status.code(), false);
        }
        if last_progress.elapsed() > allowance(events.last()) {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    };
    Ok(Boot {
        stalled_after: allowance(events.last()),
        events,
        qemu_exit,
        stalled,
        console_log,
        qemu_log,
        elapsed: started.elapsed(),
    })
}

/// The accelerator probe: boots `initrd` (the agent as /init) with `probe`, which ends
/// QEMU at once through isa-debug-exit.
pub fn probe_boots(
    boot_image: &Path,
    initrd: &Path,
    accel: &AccelChoice,
    run_dir: &Path,
) -> Result<bool> {
    let mut command = base_command(
        accel,
        1,
        256,
        boot_image,
        initrd,
        "panic=-1 quiet rdinit=/init -- probe",
    );
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(run_dir.join("probe.log"))?);
    let mut child = command
        .spawn()
        .with_context(|| format!("start {QEMU} (Debian: apt install qemu-system-x86)"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code() == Some(qemu_exit_code(GUEST_PASSED)));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// QEMU with the kernel and initramfs, no devices but the debug-exit port, and no reboot
/// (a guest that resets or panics ends QEMU).
fn base_command(
    accel: &AccelChoice,
    cpus: u32,
    memory_mb: u32,
    boot_image: &Path,
    initrd: &Path,
    append: &str,
) -> Command {
    let mut command = Command::new(QEMU);
    command
        .args(["-accel", accel.accel, "-cpu", accel.cpu])
        .args(["-smp", &cpus.to_string(), "-m", &memory_mb.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(boot_image)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        .arg("-device")
        .arg(format!(
            "isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"
        ));
    command
}

/// Reads whole JSON lines appended to the events file; other lines (noise on the port)
/// are skipped.
struct EventReader {
    file: File,
    offset: u64,
    partial: Vec<u8>,
}

impl EventReader {
    fn new(path: &Path) -> Result<Self> {
        Ok(EventReader {
            file: File::open(path)?,
            offset: 0,
            partial: Vec::new(),
        })
    }

    fn read_new(&mut self) -> Result<Vec<Event>> {
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        self.offset += self.file.read_to_end(&mut fresh)? as u64;
        self.partial.extend(fresh);
        let mut events = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            if let Ok(event) = serde_json::from_str(text.trim()) {
                events.push(event);
            }
        }
        Ok(events)
    }
}

/// The last `lines` lines of a log file, without carriage returns.
pub fn tail_of(path: &Path, lines: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).replace('\r', "");
    crate::report::last_lines(&text, lines)
}
