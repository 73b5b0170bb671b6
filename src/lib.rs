//! rcrun's orchestration, shared by the CLI and its tests: images now; containers,
//! networks and services as their issues land.

pub mod images;
