//! Small pieces every layer may use; they depend on nothing of the agent's.

pub(crate) mod clock;
pub(crate) mod internal_errors;
pub(crate) mod text;
pub(crate) mod throttle;
