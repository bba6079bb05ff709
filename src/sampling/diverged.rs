//! The one error of a run whose sample overflowed, whatever the device.

/// A run whose sample became NaN or infinite, from the first step where it did. Both devices
/// return it (inside an `anyhow::Error`: `err.downcast_ref::<Diverged>()` finds it through any
/// context added on the way), so a caller can tell a diverging model or input from a failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Diverged {
    /// The first step (0-based, in loop order) whose new sample holds a NaN or infinity.
    pub step: usize,
    /// That step's model timestep (fractional for the consistency sampler), where the caller
    /// knows the run's timesteps.
    pub timestep: Option<f64>,
    /// NaN or infinite values among `numel`: in the sample after `step` on the CPU reference; in
    /// the final sample on the GPU, which flags the first step but does not count per step.
    pub bad: usize,
    pub numel: usize,
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the sample became non-finite at step {}", self.step)?;
        if let Some(t) = self.timestep {
            write!(f, " (t = {t})")?;
        }
        write!(
            f,
            ": {} of {} values are NaN or infinite; the model or its input diverges there",
            self.bad, self.numel
        )
    }
}

impl std::error::Error for Diverged {}
