//! Warnings (what rcrun will not do for a spec, limits it could not apply) go to one
//! sink, which the CLI may point at its `--log` file: under containerd and conmon,
//! `create`'s stderr is the container's own output.

use std::sync::OnceLock;

static SINK: OnceLock<fn(&str)> = OnceLock::new();

/// Sends warnings to `sink` instead of stderr; the first call wins.
pub fn set_warning_sink(sink: fn(&str)) {
    let _ = SINK.set(sink);
}

pub(crate) fn warn(message: &str) {
    match SINK.get() {
        Some(sink) => sink(message),
        None => eprintln!("rcrun: warning: {message}"),
    }
}
