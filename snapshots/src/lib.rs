//! Content store, pull/import, safe layer unpack and overlay snapshots (issue 3).
