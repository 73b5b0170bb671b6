//! Helpers shared by the test binaries.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sched::{CloneFlags, unshare};
use nix::unistd::{getegid, geteuid};

const INNER: &str = "RCRUN_NETNS_TEST_INNER";

/// Runs `body` in a child process of this test binary, in a network namespace of its own:
/// the child runs the test `name` alone, and the test finds itself inside by `INNER`, which
/// names the namespace it must not be in. `env` is added to the child's environment.
pub fn isolated(name: &str, env: &[(&str, &str)], body: impl FnOnce()) {
    let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    if let Some(parent) = std::env::var_os(INNER) {
        // Never in the namespace of whoever ran the tests.
        assert_ne!(
            here.as_os_str(),
            parent,
            "{INNER} set, yet not in a namespace of its own"
        );
        body();
        return;
    }
    let root = geteuid().is_root();
    let uid_map = format!("0 {} 1", geteuid());
    let gid_map = format!("0 {} 1", getegid());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, &here)
        .envs(env.iter().copied());
    // SAFETY: between fork and exec only unshare, open, write and close, on data
    // prepared beforehand.
    unsafe {
        cmd.pre_exec(move || {
            if root {
                unshare(CloneFlags::CLONE_NEWNET)?;
            } else {
                unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)?;
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/uid_map", uid_map.as_bytes())?;
                write_file(c"/proc/self/gid_map", gid_map.as_bytes())?;
            }
            Ok(())
        })
    };
    let out = cmd.output().expect("running the test in a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in its own namespace: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// Writes `data` to `path` with plain system calls (safe after fork).
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path and a valid buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}
