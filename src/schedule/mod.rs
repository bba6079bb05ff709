//! Noise schedules and sampler coefficients, computed in f64 on the host.
