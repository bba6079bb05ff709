//! The predicted x0 after chosen steps of a run (`ddim sample --save-trajectory`).

use crate::Tensor;
use anyhow::{ensure, Result};
use std::ops::Range;

/// The predicted x0 after chosen steps of a run (`ddim sample --save-trajectory`), filled by
/// the CPU and GPU samplers.
#[derive(Clone, Debug, Default)]
pub struct Trajectory {
    /// Step indices (ascending, in loop order) whose predicted x0 is kept.
    pub steps: Vec<usize>,
    /// One NCHW tensor of all images per entry of `steps`.
    pub frames: Vec<Tensor>,
}

impl Trajectory {
    /// Every `every`-th step of a `len`-step run (steps every-1, 2·every-1, ...) and always the
    /// last, whose prediction is the final image.
    pub fn every(len: usize, every: usize) -> Result<Self> {
        ensure!(len > 0, "a trajectory needs at least one step");
        ensure!(every > 0, "the trajectory interval must be at least 1 step");
        let mut steps: Vec<usize> = (every - 1..len).step_by(every).collect();
        if steps.last() != Some(&(len - 1)) {
            steps.push(len - 1);
        }
        Ok(Self {
            steps,
            frames: Vec::new(),
        })
    }

    /// Zeroed frames for `num` images of shape (c, h, w), after checking the steps against
    /// a `len`-step table.
    pub(crate) fn start(
        &mut self,
        len: usize,
        num: usize,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        ensure!(
            self.steps.windows(2).all(|p| p[0] < p[1]) && self.steps.iter().all(|&s| s < len),
            "trajectory steps must ascend and lie below {len}, got {:?}",
            self.steps
        );
        self.frames = vec![Tensor::zeros(&[num, c, h, w]); self.steps.len()];
        Ok(())
    }

    /// Stores frame `k` of the images `range` (their NCHW values, `per_image` each).
    pub(crate) fn store(&mut self, k: usize, range: Range<usize>, per_image: usize, x0: &[f32]) {
        self.frames[k].data[range.start * per_image..range.end * per_image].copy_from_slice(x0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trajectory_keeps_every_kth_step_and_the_last() {
        assert_eq!(Trajectory::every(10, 3).unwrap().steps, [2, 5, 8, 9]);
        assert_eq!(Trajectory::every(10, 5).unwrap().steps, [4, 9]);
        assert_eq!(
            Trajectory::every(10, 1).unwrap().steps,
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(Trajectory::every(3, 50).unwrap().steps, [2]);
        assert!(Trajectory::every(10, 0).is_err());
        assert!(Trajectory::every(0, 1).is_err());
        let mut bad = Trajectory {
            steps: vec![3, 1],
            frames: vec![],
        };
        assert!(bad.start(10, 1, 1, 2, 2).is_err());
    }
}
