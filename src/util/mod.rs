//! Small pieces every layer may use; they depend on nothing of the agent's.

pub(crate) mod clock;
pub(crate) mod internal_errors;
pub(crate) mod live;
pub(crate) mod text;
pub(crate) mod throttle;

/// Helpers for the crate's own async tests.
#[cfg(test)]
pub(crate) mod test {
    /// Polls `f` (yielding to the runtime between tries) until it holds;
    /// panics after 5 s.
    pub(crate) async fn eventually(mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "condition not met within 5 s");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
