//! Bad arguments end vm-tests with exit 125 and a message naming the problem, before
//! anything is built, fetched or booted.

use std::process::Command;

fn vm_tests(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vm-tests"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_filter_that_matches_nothing_lists_the_scenarios() {
    let (code, stderr) = vm_tests(&["--filter", "no-such-scenario", "--list"]);
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("--filter no-such-scenario matches no scenario"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dns-alias") && stderr.contains("service-up"),
        "{stderr}"
    );
}

#[test]
fn a_kernel_file_that_is_not_there_is_named() {
    for arg in ["/nonexistent/linux-image-9.9.deb", "./missing/vmlinuz-9.9"] {
        let (code, stderr) = vm_tests(&["--kernel", arg, "--list"]);
        assert_eq!(code, Some(125), "{stderr}");
        assert!(
            stderr.contains(&format!("--kernel {arg}: no such file")),
            "{stderr}"
        );
    }
}

#[test]
fn list_shows_every_scenario_with_its_time_limit() {
    let out = Command::new(env!("CARGO_BIN_EXE_vm-tests"))
        .arg("--list")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("registry-pull\t240 s\t")),
        "{text}"
    );
    assert!(
        !text.contains("broken-on-purpose"),
        "selftest scenarios only with --scenarios"
    );
}
