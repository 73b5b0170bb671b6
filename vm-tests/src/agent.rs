//! vm-agent: PID 1 of the vm-tests guest (after the initramfs's /init has moved the root
//! into a tmpfs). As root it loads the modules, mounts what rcrun needs, brings up the
//! scratch disk, delegates a cgroup v2 subtree to the test user and starts the registry;
//! then it runs each scenario as that user with its own time limit, writes one JSON event
//! per scenario to the second serial port, and ends QEMU through isa-debug-exit.
//!
//! Built static; it never runs on the host.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm_tests::report::{
    DEBUG_EXIT_PORT, Event, GUEST_FAILED, GUEST_PASSED, GUEST_REPORT_TTY, Verdict, last_lines,
};

/// The test user (uid = gid), with subordinate ranges in /etc/subuid and /etc/subgid.
const USER: &str = "rc";
const USER_ID: u32 = 1000;
/// The registry runs as nobody, out of the scenarios' way.
const REGISTRY_ID: u32 = 65534;
const REGISTRY_ADDR: &str = "127.0.0.1:5000";
/// The ext4 scratch disk: rcrun's storage lives there, because on 6.1 an overlay upper
/// directory on tmpfs cannot remove or rename directories (no user xattrs on tmpfs).
const DISK: &str = "/dev/vda";
const DISK_MOUNT: &str = "/var/lib/vm";
const SCENARIOS: &str = "/vm/scenarios";
const LOGS: &str = "/run/vm/logs";
/// The cgroup v2 subtree delegated to the user; scenarios run in its `scenario` leaf.
const USER_CGROUP: &str = "/sys/fs/cgroup/user";
const OUTPUT_TAIL_LINES: usize = 40;

struct Agent {
    report: Option<File>,
    registry_pid: Option<i32>,
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("probe") {
        // the accelerator probe: the kernel booted and ran us
        debug_exit(GUEST_PASSED);
    }
    let code = match std::panic::catch_unwind(run) {
        Ok(code) => code,
        Err(_) => {
            eprintln!("vm-agent: panicked (see above)");
            GUEST_FAILED
        }
    };
    debug_exit(code);
}

fn run() -> u8 {
    let mount_problems = mount_basics();
    let mut agent = Agent {
        report: open_report(),
        registry_pid: None,
    };
    agent.emit(&Event::Boot {
        kernel: kernel_release(),
        uptime_ms: uptime_ms(),
    });
    for (step, problem) in mount_problems {
        agent.setup_problem(&step, problem);
    }
    agent.load_modules();
    if let Err(e) = Command::new("/bin/busybox")
        .args(["ip", "link", "set", "lo", "up"])
        .status()
    {
        agent.setup_problem("loopback", e.to_string());
    }
    let _ = nix::unistd::sethostname("vm");
    agent.mount_disk();
    agent.delegate_cgroup();
    if Path::new("/srv/registry").is_dir() {
        agent.start_registry();
    }

    let mut scripts: Vec<String> = fs::read_dir(SCENARIOS)
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    scripts.retain(|n| n.ends_with(".sh") && n != vm_tests::scenarios::LIBRARY);
    scripts.sort();
    let mut results = Vec::new();
    for script in scripts {
        let event = agent.run_scenario(&script);
        agent.emit(&event);
        results.push(event);
    }
    let (passed, failed, skipped) = vm_tests::outcome::tally(&results);
    agent.emit(&Event::Done {
        passed: passed as u32,
        failed: failed as u32,
        skipped: skipped as u32,
    });
    unsafe { libc::sync() };
    if failed > 0 {
        GUEST_FAILED
    } else {
        GUEST_PASSED
    }
}

impl Agent {
    fn emit(&mut self, event: &Event) {
        let line = event.to_line();
        print_console(&console_line(event));
        if let Some(tty) = &mut self.report {
            // one write per event: the host reads whole lines
            let _ = tty.write_all(line.as_bytes());
        }
    }

    fn setup_problem(&mut self, step: &str, problem: impl Into<String>) {
        self.emit(&Event::Setup {
            step: step.to_string(),
            problem: problem.into(),
        });
    }

    /// /etc/vm/modules: `NAME<TAB>FILE<TAB>required|optional`, dependencies first.
    fn load_modules(&mut self) {
        let list = fs::read_to_string("/etc/vm/modules").unwrap_or_default();
        for line in list.lines() {
            let mut fields = line.split('\t');
            let (Some(name), Some(file), Some(need)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if let Err(problem) = finit_module(file) {
                if need == "required" {
                    self.setup_problem(&format!("module {name}"), problem);
                } else {
                    print_console(&format!(
                        "vm-agent: optional module {name} not loaded: {problem}\n"
                    ));
                }
            }
        }
    }

    fn mount_disk(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut pause = Duration::from_millis(5);
        while !Path::new(DISK).exists() {
            if Instant::now() > deadline {
                self.setup_problem(
                    "disk",
                    format!("{DISK} did not appear in 20 s (virtio_blk loaded?)"),
                );
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        let _ = fs::create_dir_all(DISK_MOUNT);
        if let Err(e) = mount(DISK, DISK_MOUNT, "ext4", 0, "") {
            self.setup_problem("disk", format!("mount {DISK} on {DISK_MOUNT}: {e}"));
            return;
        }
        let home = format!("{DISK_MOUNT}/home");
        if let Err(e) = fs::create_dir_all(&home).and_then(|_| chown(&home, USER_ID)) {
            self.setup_problem("disk", format!("{home}: {e}"));
        }
    }

    /// cgroup2 with every controller enabled below the root, and a subtree the user owns
    /// (its directory and the files a delegate may write, as systemd delegates).
    fn delegate_cgroup(&mut self) {
        let root = "/sys/fs/cgroup";
        if let Err(e) = mount("cgroup2", root, "cgroup2", 0, "nsdelegate") {
            self.setup_problem("cgroup2", format!("mount cgroup2 on {root}: {e}"));
            return;
        }
        let controllers =
            fs::read_to_string(format!("{root}/cgroup.controllers")).unwrap_or_default();
        for controller in controllers.split_whitespace() {
            if let Err(e) = fs::write(
                format!("{root}/cgroup.subtree_control"),
                format!("+{controller}"),
            ) {
                self.setup_problem(
                    "cgroup2",
                    format!("enable the {controller} controller: {e}"),
                );
            }
        }
        for dir in [USER_CGROUP.to_string(), format!("{USER_CGROUP}/scenario")] {
            let result = fs::create_dir_all(&dir).and_then(|_| {
                chown(&dir, USER_ID)?;
                for file in ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
                    chown(&format!("{dir}/{file}"), USER_ID)?;
                }
                Ok(())
            });
            if let Err(e) = result {
                self.setup_problem("cgroup2", format!("delegate {dir} to {USER}: {e}"));
            }
        }
    }

    fn start_registry(&mut self) {
        let _ = fs::create_dir_all(LOGS);
        let log = match File::create(format!("{LOGS}/registry.log")) {
            Ok(log) => log,
            Err(e) => return self.setup_problem("registry", e.to_string()),
        };
        let child = Command::new("/usr/bin/docker-registry")
            .args(["serve", "/etc/vm/registry.yml"])
            .env_clear()
            .env("HOME", "/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map(Stdio::from).unwrap_or(Stdio::null()))
            .stderr(Stdio::from(log))
            .uid(REGISTRY_ID)
            .gid(REGISTRY_ID)
            .spawn();
        match child {
            Ok(child) => self.registry_pid = Some(child.id() as i32),
            Err(e) => {
                return self
                    .setup_problem("registry", format!("start /usr/bin/docker-registry: {e}"));
            }
        }
        // Go under TCG takes its time to start
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut pause = Duration::from_millis(10);
        while std::net::TcpStream::connect(REGISTRY_ADDR).is_err() {
            reap_orphans(None);
            if Instant::now() > deadline {
                let log = fs::read_to_string(format!("{LOGS}/registry.log")).unwrap_or_default();
                return self.setup_problem(
                    "registry",
                    format!(
                        "not listening on {REGISTRY_ADDR} after 90 s: {}",
                        last_lines(&log, 5).join(" | ")
                    ),
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn run_scenario(&mut self, script: &str) -> Event {
        let name = script.trim_end_matches(".sh").to_string();
        let path = format!("{SCENARIOS}/{script}");
        // the host checked the header; a script it cannot read fails below
        let timeout_s = vm_tests::scenarios::parse(&name, Path::new(&path))
            .map_or(vm_tests::scenarios::DEFAULT_TIMEOUT_S, |s| s.timeout_s);
        self.emit(&Event::Start {
            scenario: name.clone(),
            timeout_s,
        });
        let started = Instant::now();
        let (exit_code, timed_out, setup_error) =
            match self.spawn_and_wait(&name, &path, Duration::from_secs(timeout_s)) {
                Ok((code, timed_out)) => (code, timed_out, None),
                Err(e) => (None, false, Some(e)),
            };
        let millis = started.elapsed().as_millis() as u64;
        self.clean_up_after_scenario();
        let log = fs::read(format!("{LOGS}/{name}.log")).unwrap_or_default();
        let mut output = last_lines(&String::from_utf8_lossy(&log), OUTPUT_TAIL_LINES);
        if let Some(e) = setup_error {
            output.push(format!("vm-agent: could not run the scenario: {e}"));
        }
        if timed_out {
            output.push(format!(
                "vm-agent: killed after its time limit of {timeout_s} s"
            ));
        }
        let result = match (timed_out, exit_code) {
            (true, _) => Verdict::Timeout,
            (false, Some(code)) => Verdict::from_exit_code(code),
            (false, None) => Verdict::Fail,
        };
        Event::Scenario {
            scenario: name,
            result,
            exit_code,
            millis,
            output,
        }
    }

    /// Runs the script as the user in a fresh session, home and runtime directory, inside
    /// the delegated cgroup, reaping every orphan meanwhile (PID 1's duty: an unreaped
    /// monitor would look alive to rcrun). Returns the exit code (None if killed by a
    /// signal) and whether the time limit was hit.
    fn spawn_and_wait(
        &mut self,
        name: &str,
        path: &str,
        limit: Duration,
    ) -> std::io::Result<(Option<i32>, bool)> {
        let home = format!("{DISK_MOUNT}/home/{name}");
        let runtime = format!("/run/user/{USER_ID}/{name}");
        for (dir, mode) in [
            (home.as_str(), 0o700),
            (&format!("/run/user/{USER_ID}"), 0o700),
            (runtime.as_str(), 0o700),
        ] {
            fs::create_dir_all(dir)?;
            chown(dir, USER_ID)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
        }
        fs::create_dir_all(LOGS)?;
        let log = File::create(format!("{LOGS}/{name}.log"))?;
        let cgroup_procs =
            std::ffi::CString::new(format!("{USER_CGROUP}/scenario/cgroup.procs")).unwrap();
        let mut command = Command::new("/bin/sh");
        command
            .arg("-e")
            .arg(path)
            .env_clear()
            .envs([
                ("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
                ("HOME", home.as_str()),
                ("USER", USER),
                ("LOGNAME", USER),
                ("LANG", "C.UTF-8"),
                ("XDG_RUNTIME_DIR", runtime.as_str()),
                // dnsd forwards nowhere: the guest has no upstream
                ("RCRUN_DNS_UPSTREAMS", ""),
                ("VM_SCENARIOS", SCENARIOS),
                ("VM_IMAGES", "/vm/images"),
                ("VM_CGROUP", USER_CGROUP),
            ])
            .current_dir(&home)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if self.registry_pid.is_some() {
            command.env("VM_REGISTRY", REGISTRY_ADDR);
        }
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // into the user's cgroup while still root: moving there needs write
                // access to the common ancestor's cgroup.procs
                let fd = libc::open(cgroup_procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
                if libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setgid(USER_ID) < 0
                    || libc::setuid(USER_ID) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let pid = child.id() as i32;
        drop(child); // waited for below with waitpid, together with the orphans
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(status) = reap_orphans(Some(pid)) {
                return Ok((status, false));
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                while reap_orphans(Some(pid)).is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Ok((None, true));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Ends every process the scenario left (monitors, infra, containers: all non-root,
    /// but the registry), so the next scenario starts from nothing.
    fn clean_up_after_scenario(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<i32> = user_processes()
                .into_iter()
                .filter(|pid| Some(*pid) != self.registry_pid)
                .collect();
            if left.is_empty() {
                return;
            }
            for pid in &left {
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            reap_orphans(None);
            if Instant::now() > deadline {
                print_console(&format!("vm-agent: processes left after 10 s: {left:?}\n"));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reaps every exited child. Returns `Some(exit code or None for a signal)` once `pid`
/// itself has been reaped.
fn reap_orphans(pid: Option<i32>) -> Option<Option<i32>> {
    loop {
        let mut status = 0;
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped <= 0 {
            return None;
        }
        if Some(reaped) == pid {
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            return Some(code);
        }
    }
}

/// Live processes not owned by root (the user's, and those of its subordinate ids).
fn user_processes() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != 1)
        .filter(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok());
            !zombie && uid.is_some_and(|u| u != 0)
        })
        .collect()
}

/// What the console shows of an event (the host gets the details on the report port).
fn console_line(event: &Event) -> String {
    match event {
        Event::Boot { kernel, uptime_ms } => {
            format!("vm-agent: {kernel} up after {uptime_ms} ms\n")
        }
        Event::Setup { step, problem } => format!("vm-agent: setup: {step}: {problem}\n"),
        Event::Start { scenario, .. } => format!("vm-agent: {scenario}: started\n"),
        Event::Scenario {
            scenario,
            result,
            exit_code,
            ..
        } => {
            let code = exit_code.map_or("killed".to_string(), |c| format!("exit {c}"));
            format!("vm-agent: {scenario}: {} ({code})\n", result.label())
        }
        Event::Done {
            passed,
            failed,
            skipped,
        } => format!("vm-agent: done: {passed} passed, {failed} failed, {skipped} skipped\n"),
    }
}

fn mount_basics() -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (source, target, fstype, flags, data, mode) in [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, "", 0o555),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, "", 0o555),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            "mode=0755",
            0o755,
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "gid=5,mode=0620,ptmxmode=0666",
            0o755,
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
            0o1777,
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
            0o1777,
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
            0o755,
        ),
    ] {
        let _ = fs::create_dir_all(target);
        let _ = fs::set_permissions(target, fs::Permissions::from_mode(mode));
        if let Err(e) = mount(source, target, fstype, flags, data) {
            problems.push((format!("mount {target}"), e.to_string()));
        }
    }
    problems
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (source, target, fstype, data) = (c(source), c(target), c(fstype), c(data));
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn chown(path: &str, id: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(id), Some(id))
}

fn finit_module(path: &str) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    match rc {
        0 => Ok(()),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                Ok(())
            } else {
                Err(e.to_string())
            }
        }
    }
}

/// The report channel, raw (no \n → \r\n), or none (the host then sees no events and says so).
fn open_report() -> Option<File> {
    let tty = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(GUEST_REPORT_TTY)
        .map_err(|e| print_console(&format!("vm-agent: cannot open {GUEST_REPORT_TTY}: {e}\n")))
        .ok()?;
    if let Ok(mut termios) = nix::sys::termios::tcgetattr(&tty) {
        nix::sys::termios::cfmakeraw(&mut termios);
        let _ = nix::sys::termios::tcsetattr(&tty, nix::sys::termios::SetArg::TCSANOW, &termios);
    }
    Some(tty)
}

fn print_console(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn uptime_ms() -> u64 {
    let mut text = String::new();
    let _ = File::open("/proc/uptime").and_then(|mut f| f.read_to_string(&mut text));
    let seconds: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    (seconds * 1000.0) as u64
}

/// Ends QEMU with exit code `(value << 1) | 1` through its isa-debug-exit device; powers
/// off if there is none. PID 1 must never return.
fn debug_exit(value: u8) -> ! {
    unsafe { libc::sync() };
    #[cfg(target_arch = "x86_64")]
    unsafe {
        if libc::ioperm(u64::from(DEBUG_EXIT_PORT), 4, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") value, options(nomem, nostack, preserves_flags));
        }
    }
    print_console("vm-agent: no isa-debug-exit device; powering off\n");
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
