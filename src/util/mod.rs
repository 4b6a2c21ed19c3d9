//! Small pieces every layer may use; they depend on nothing of the agent's.

pub mod clock;
pub mod internal_errors;
pub mod throttle;
