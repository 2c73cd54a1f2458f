//! The whole service, with real sshd servers, real SQLite and a fake GitHub over real HTTP.

// Test support is shared between modules of this one test binary.
#![allow(unreachable_pub)]

mod bounded;
mod cli;
mod conformance;
mod containers;
mod deploy;
mod injection;
mod intake;
mod lanes;
mod live;
mod people;
mod proxy;
mod restart;
mod secrets;
mod soak;
mod stops;
mod support;
mod switches;
mod web_security;
