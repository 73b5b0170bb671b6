//! runtime-spec features.md: what this build of rcrun can do, for `rcrun oci
//! features` (containerd and podman read it to decide what to ask for).

use serde_json::{Value, json};

/// The newest runtime-spec version rcrun implements.
pub const SPEC_VERSION: &str = "1.2.0";

/// Mount options rcrun understands in `mounts[].options` (besides filesystem data).
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "idmap",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "ridmap",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "tmpcopyup",
    "unbindable",
];

pub fn features() -> Value {
    let capabilities: Vec<String> = (0..=u8::MAX).map_while(crate::caps::name).collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": SPEC_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "mountExtensions": {"idmap": {"enabled": true}},
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": capabilities,
            "seccomp": crate::seccomp::seccomp_features(),
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
        },
        "annotations": {
            "io.github.rcrun.version": env!("CARGO_PKG_VERSION"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_mount_option_is_understood() {
        // An option rcrun does not know ends up as filesystem data.
        assert!(
            !crate::mounts::parse_options(&["mode=755".into()])
                .data
                .is_empty()
        );
        for option in MOUNT_OPTIONS {
            let parsed = crate::mounts::parse_options(&[option.to_string()]);
            assert!(
                parsed.data.is_empty(),
                "{option} is advertised but not understood"
            );
        }
    }
}
