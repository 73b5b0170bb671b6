//! vm-tests: runs rcrun's end-to-end scenarios inside a QEMU guest on a Debian kernel.
//!
//! `cargo run -p vm-tests -- [--kernel cloud|generic|PACKAGE|DEB|VMLINUZ]… [--filter PATTERN]`
//!
//! Exit status: 0 every scenario passed; 1 a scenario failed or timed out; 2 the guest
//! failed (kernel panic, hang, QEMU could not start, stopped before finishing); 125 bad
//! arguments or a host-side setup problem.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use vm_tests::initramfs::{GuestTools, Images};
use vm_tests::kernel::{self, Kernel};
use vm_tests::outcome::{self, Ending, Observed};
use vm_tests::qemu::{self, Accel, AccelChoice, Machine};
use vm_tests::report::{Event, Verdict};
use vm_tests::scenarios::{self, Scenario};
use vm_tests::{cpio, elf, modules};

#[derive(Parser, Debug)]
#[command(
    name = "vm-tests",
    about = "Boot a Debian kernel under QEMU and run rcrun's end-to-end scenarios inside as an unprivileged user"
)]
struct Cli {
    /// The guest kernel: `cloud` (the default) or `generic` for Debian's
    /// linux-image-cloud-amd64 / linux-image-amd64 fetched with apt, any other apt package
    /// name, a linux-image-*.deb, or a vmlinuz. Repeat to run on several kernels.
    #[arg(long = "kernel", value_name = "DEB|VMLINUZ|PACKAGE")]
    kernels: Vec<String>,
    /// The modules directory for a bare vmlinuz (default: beside it, or /lib/modules/RELEASE).
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Run only the scenarios whose names match: a substring or a glob (`*`, `?`);
    /// several separated by commas.
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// Another directory of scenarios (`*.sh`), beside vm-tests/scenarios.
    #[arg(long = "scenarios", value_name = "DIR")]
    extra_scenarios: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1536)]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// List the scenarios (after --filter) and exit.
    #[arg(long)]
    list: bool,
    /// Use this static rcrun instead of building one.
    #[arg(long, value_name = "FILE", requires = "agent")]
    rcrun: Option<PathBuf>,
    /// Use this static vm-agent instead of building one.
    #[arg(long, value_name = "FILE", requires = "rcrun")]
    agent: Option<PathBuf>,
    /// Show every scenario's output, not only failing ones'.
    #[arg(long)]
    verbose: bool,
}

/// Lines of the guest console shown after a failure.
const CONSOLE_TAIL: usize = 40;
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_PROFILE: &str = "vm-guest";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vm-tests: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vm-tests sits in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn run(cli: &Cli) -> Result<u8> {
    let ws = workspace();
    let scenario_dir = ws.join("vm-tests/scenarios");
    let mut dirs = vec![scenario_dir.clone()];
    dirs.extend(cli.extra_scenarios.iter().cloned());
    let mut selected = scenarios::discover(&dirs)?;
    if let Some(pattern) = &cli.filter {
        selected.retain(|s| scenarios::matches(pattern, &s.name));
        if selected.is_empty() {
            let all: Vec<String> = scenarios::discover(&dirs)?
                .into_iter()
                .map(|s| s.name)
                .collect();
            bail!(
                "--filter {pattern} matches no scenario; there are: {}",
                all.join(", ")
            );
        }
    }
    let kernels = if cli.kernels.is_empty() {
        vec!["cloud".to_string()]
    } else {
        cli.kernels.clone()
    };
    for kernel in &kernels {
        kernel::check_arg(kernel)?;
    }
    if cli.list {
        for s in &selected {
            println!("{}\t{} s\t{}", s.name, s.timeout_s, s.script.display());
        }
        return Ok(0);
    }
    let needs_registry = selected
        .iter()
        .any(|s| s.needs.iter().any(|n| n == "registry"));

    let work = target_dir().join("vm-tests");
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    for tool in [qemu::QEMU, "ldd", "dpkg-deb"] {
        find_program(tool).with_context(|| format!("{tool} is missing: run `sudo scripts/setup --deps-only` (Debian packages qemu-system-x86, libc-bin, dpkg)"))?;
    }
    let tools = guest_tools(cli, needs_registry)?;
    let images = Images {
        layouts: vec![
            ("busybox", fixture_layout("busybox")?),
            ("layers", fixture_layout("layers")?),
        ],
        registry: needs_registry.then_some(("busybox", "busybox", "1.35")),
    };

    let mut worst = 0;
    let mut accel: Option<AccelChoice> = None;
    for name in &kernels {
        let kernel = kernel::prepare(name, cli.modules.as_deref(), &work.join("kernels"))
            .with_context(|| format!("the kernel {name}"))?;
        let run_dir = work.join("runs").join(&kernel.release);
        std::fs::create_dir_all(&run_dir)?;
        let accel = match &accel {
            Some(choice) => choice.clone(),
            None => {
                let choice =
                    qemu::choose_accel(cli.accel, || probe_kvm(&kernel, &tools, &run_dir))?;
                accel.insert(choice).clone()
            }
        };
        let code = run_on_kernel(
            cli,
            &kernel,
            &tools,
            &images,
            &selected,
            &scenario_dir,
            &accel,
            &run_dir,
        )?;
        worst = worst.max(code);
    }
    Ok(worst)
}

#[allow(clippy::too_many_arguments)]
fn run_on_kernel(
    cli: &Cli,
    kernel: &Kernel,
    tools: &GuestTools,
    images: &Images,
    selected: &[Scenario],
    scenario_dir: &Path,
    accel: &AccelChoice,
    run_dir: &Path,
) -> Result<u8> {
    let prepare = Instant::now();
    let modules = match &kernel.modules_dir {
        Some(dir) => {
            let resolved = modules::resolve(dir, modules::GUEST_MODULES)?;
            if !resolved.missing.is_empty() {
                eprintln!(
                    "vm-tests: {}: neither modules nor built in: {} (the scenarios that need them will fail)",
                    kernel.release,
                    resolved.missing.join(", ")
                );
            }
            resolved.load_order
        }
        None => {
            eprintln!(
                "vm-tests: {}: no modules directory: only what is built into the kernel is available",
                kernel.release
            );
            Vec::new()
        }
    };
    let initrd = run_dir.join("initrd.cpio");
    vm_tests::initramfs::build(
        &initrd,
        tools,
        &modules,
        selected,
        &scenario_dir.join(scenarios::LIBRARY),
        images,
    )?;
    let disk = run_dir.join("disk.img");
    make_scratch_disk(&disk)?;
    println!(
        "vm-tests: {} ({}), {} scenario(s), accel {} ({}), guest ready in {:.1} s; logs in {}",
        kernel.release,
        kernel.boot_image.display(),
        selected.len(),
        accel.accel,
        accel.why,
        prepare.elapsed().as_secs_f64(),
        run_dir.display()
    );
    let machine = Machine {
        boot_image: &kernel.boot_image,
        initrd: &initrd,
        disk: Some(&disk),
        accel,
        memory_mb: cli.memory,
        cpus: cli.cpus,
        run_dir,
    };
    let boot = qemu::run(&machine, |event| print_event(event, cli.verbose))?;

    let console = std::fs::read_to_string(&boot.console_log).unwrap_or_default();
    let qemu_messages = std::fs::read_to_string(&boot.qemu_log).unwrap_or_default();
    let ending = outcome::classify(&Observed {
        events: &boot.events,
        console: &console,
        qemu_messages: &qemu_messages,
        qemu_exit: boot.qemu_exit,
        stalled: boot.stalled,
    });
    let names: Vec<String> = selected.iter().map(|s| s.name.clone()).collect();
    let (passed, failed, skipped) = outcome::tally(&boot.events);
    let unreported = outcome::unreported(&names, &boot.events);
    let release = &kernel.release;
    let seconds = boot.elapsed.as_secs_f64();
    let code = match &ending {
        Ending::Finished { failed: false } if unreported.is_empty() => {
            println!(
                "vm-tests: {release}: all passed ({passed} passed, {skipped} skipped) in {seconds:.1} s"
            );
            return Ok(0);
        }
        Ending::Finished { .. } => {
            let failing: Vec<&str> = boot
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::Scenario {
                        scenario, result, ..
                    } if result.is_failure() => Some(scenario.as_str()),
                    _ => None,
                })
                .chain(unreported.iter().copied())
                .collect();
            println!(
                "vm-tests: {release}: FAILED: {} ({passed} passed, {failed} failed, {skipped} skipped) in {seconds:.1} s",
                failing.join(", ")
            );
            if !unreported.is_empty() {
                println!(
                    "vm-tests: {release}: never reported: {}",
                    unreported.join(", ")
                );
            }
            if boot.qemu_exit
                != Some(vm_tests::report::qemu_exit_code(
                    vm_tests::report::GUEST_FAILED,
                ))
                && failed == 0
            {
                println!(
                    "vm-tests: {release}: QEMU exited {:?}, which disagrees with the agent's report",
                    boot.qemu_exit
                );
            }
            1
        }
        Ending::Panic => {
            println!(
                "vm-tests: {release}: KERNEL PANIC {}",
                whereabouts(&boot.events)
            );
            2
        }
        Ending::Hang { in_scenario } => {
            let place = in_scenario
                .as_ref()
                .map(|s| format!("in scenario {s}"))
                .unwrap_or_else(|| whereabouts(&boot.events));
            println!(
                "vm-tests: {release}: the guest HUNG {place}: nothing reported for {} s, so it was stopped",
                boot.stalled_after.as_secs()
            );
            2
        }
        Ending::QemuFailed => {
            println!(
                "vm-tests: {release}: QEMU FAILED TO START (exit {:?}):",
                boot.qemu_exit
            );
            for line in qemu_messages.lines() {
                println!("  qemu| {line}");
            }
            return Ok(2);
        }
        Ending::Stopped => {
            println!(
                "vm-tests: {release}: the guest STOPPED before finishing (QEMU exit {:?}) {}",
                boot.qemu_exit,
                whereabouts(&boot.events)
            );
            2
        }
    };
    println!(
        "vm-tests: {release}: guest console, last {CONSOLE_TAIL} lines ({}):",
        boot.console_log.display()
    );
    for line in qemu::tail_of(&boot.console_log, CONSOLE_TAIL) {
        println!("  console| {line}");
    }
    for line in qemu_messages.lines() {
        println!("  qemu| {line}");
    }
    Ok(code)
}

/// Where the guest was: in a scenario, or before any.
fn whereabouts(events: &[Event]) -> String {
    match outcome::running_scenario(events) {
        Some(s) => format!("in scenario {s}"),
        None if events.iter().any(|e| matches!(e, Event::Boot { .. })) => {
            "between scenarios or in the guest's setup".into()
        }
        None => "while booting (the agent never reported)".into(),
    }
}

fn print_event(event: &Event, verbose: bool) {
    match event {
        Event::Boot { kernel, uptime_ms } => println!(
            "  guest {kernel} up after {:.1} s",
            *uptime_ms as f64 / 1000.0
        ),
        Event::Setup { step, problem } => println!("  guest setup: {step}: {problem}"),
        Event::Start { scenario, .. } if verbose => println!("  … {scenario}"),
        Event::Start { .. } | Event::Done { .. } => {}
        Event::Scenario {
            scenario,
            result,
            exit_code,
            millis,
            output,
        } => {
            let code = match (result, exit_code) {
                (Verdict::Fail, Some(code)) => format!(", exit {code}"),
                _ => String::new(),
            };
            println!(
                "{:<7} {scenario} ({:.1} s{code})",
                result.label(),
                *millis as f64 / 1000.0
            );
            if result.is_failure() || verbose {
                for line in output {
                    println!("    {scenario}| {line}");
                }
            }
        }
    }
}

/// The guest's static binaries and the host programs it borrows.
fn guest_tools(cli: &Cli, needs_registry: bool) -> Result<GuestTools> {
    let (rcrun, agent) = match (&cli.rcrun, &cli.agent) {
        (Some(rcrun), Some(agent)) => (rcrun.clone(), agent.clone()),
        _ => build_static_binaries()?,
    };
    for binary in [&rcrun, &agent] {
        let bytes = std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
        if !elf::is_static(&bytes) {
            bail!(
                "{} is not a static executable; build it with RUSTFLAGS='-C target-feature=+crt-static' and --target {STATIC_TARGET}",
                binary.display()
            );
        }
    }
    let busybox =
        find_program("busybox").context("busybox is missing: apt install busybox-static")?;
    if !elf::is_static(&std::fs::read(&busybox)?) {
        bail!(
            "{} is not static: apt install busybox-static (the guest has no libraries before it)",
            busybox.display()
        );
    }
    let registry = if needs_registry {
        Some(
            find_program("docker-registry")
                .context("docker-registry is missing: apt install docker-registry")?,
        )
    } else {
        None
    };
    Ok(GuestTools {
        busybox,
        newuidmap: find_program("newuidmap").context("newuidmap is missing: apt install uidmap")?,
        newgidmap: find_program("newgidmap").context("newgidmap is missing: apt install uidmap")?,
        registry,
        agent,
        rcrun,
    })
}

/// `cargo build` of rcrun and the agent, statically linked (crt-static needs an explicit
/// --target, so that build scripts and proc-macros stay dynamic).
fn build_static_binaries() -> Result<(PathBuf, PathBuf)> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!(
        "vm-tests: building static rcrun and vm-agent (cargo build --profile {GUEST_PROFILE} --target {STATIC_TARGET})"
    );
    let status = Command::new(cargo)
        .args([
            "build",
            "--profile",
            GUEST_PROFILE,
            "--target",
            STATIC_TARGET,
        ])
        .args([
            "-p", "rcrun", "-p", "vm-tests", "--bin", "rcrun", "--bin", "vm-agent",
        ])
        .env(
            format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                STATIC_TARGET.to_uppercase().replace('-', "_")
            ),
            "-C target-feature=+crt-static",
        )
        // libseccomp-sys links libseccomp.so unless told otherwise (libseccomp-dev).
        .env("LIBSECCOMP_LINK_TYPE", "static")
        .env("LIBSECCOMP_LIB_PATH", libseccomp_dir())
        .current_dir(workspace())
        .status()
        .context("run cargo")?;
    if !status.success() {
        bail!("building the static guest binaries failed ({status})");
    }
    let out = target_dir().join(STATIC_TARGET).join(GUEST_PROFILE);
    Ok((out.join("rcrun"), out.join("vm-agent")))
}

/// Where libseccomp.a is: Debian's multiarch directory for the static target.
fn libseccomp_dir() -> PathBuf {
    let arch = STATIC_TARGET.split('-').next().unwrap_or("x86_64");
    PathBuf::from(format!("/usr/lib/{arch}-linux-gnu"))
}

fn probe_kvm(kernel: &Kernel, tools: &GuestTools, run_dir: &Path) -> Result<bool> {
    let initrd = run_dir.join("probe.cpio");
    let mut archive = cpio::Archive::new(std::fs::File::create(&initrd)?);
    archive.file_from("init", 0o755, &tools.agent)?;
    archive.finish()?;
    qemu::probe_boots(
        &kernel.boot_image,
        &initrd,
        &AccelChoice::kvm("probe"),
        run_dir,
    )
}

/// The fixture image NAME's OCI layout, built by `scripts/setup --deps-only`.
fn fixture_layout(name: &str) -> Result<PathBuf> {
    let out = Command::new(workspace().join("scripts/fixtures"))
        .args(["path", name])
        .output()
        .context("run scripts/fixtures")?;
    if !out.status.success() {
        bail!(
            "the {name} fixture image is not built: run `sudo scripts/setup --deps-only` (or `sudo scripts/fixtures build {name}`)"
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A fresh sparse ext4 image for rcrun's storage in the guest.
fn make_scratch_disk(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)?.set_len(8 << 30)?;
    let mkfs = find_program("mkfs.ext4").context("mkfs.ext4 is missing: apt install e2fsprogs")?;
    let out = Command::new(mkfs)
        .args(["-q", "-F", "-L", "vm-scratch"])
        .arg(path)
        .output()
        .context("run mkfs.ext4")?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A program in PATH or in the sbin directories a user's PATH may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
