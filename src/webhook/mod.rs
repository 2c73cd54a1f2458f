//! GitHub webhook deliveries: signature verification and event parsing.
//!
//! Architecture invariant: this module does no IO. It sees bytes and headers' values and
//! returns values or errors; the HTTP layer decides what to answer.

mod event;
mod signature;

pub use event::{BranchMoved, DeploymentEvent, Event, PayloadError, parse};
pub use signature::{SignatureError, sign, verify};
