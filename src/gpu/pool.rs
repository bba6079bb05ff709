//! The plan's activation buffers, assigned by liveness ahead of time.
//!
//! A plan is built twice. The first build is a dry run: every value it allocates gets an id
//! and one shared scratch buffer (its dispatches are never run), and the pool records when
//! each value is allocated and when its last handle ([`Act`]) is dropped. Those lifetimes are then
//! packed into buffers, largest value first, each into the smallest buffer that is free for its
//! whole lifetime (greedy by size). The second build replays the same allocations onto that
//! packing. Handing out buffers smallest-fit while building, as before, left early small
//! buffers unusable by the decoder's large concatenations: 2.3× the largest live set on the
//! bundled model instead of about 1×.

use std::sync::{Arc, Mutex};

use super::context::GpuContext;
use super::precision::Precision;
use super::tensor::GpuTensor;

/// One allocated value.
struct Slot {
    bytes: u64,
    /// Event clock at allocation and when the last handle was dropped.
    start: usize,
    end: Option<usize>,
}

/// Which buffer each value of a dry run takes, and the buffers' sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    buffer_of: Vec<usize>,
    sizes: Vec<u64>,
}

impl Layout {
    /// Bytes of all the buffers.
    pub fn bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }
}

struct State {
    slots: Vec<Slot>,
    clock: usize,
}

impl State {
    fn tick(&mut self) -> usize {
        self.clock += 1;
        self.clock
    }
}

/// A pooled value: a tensor whose buffer may be shared with values that do not overlap it in
/// time. Clones share one lifetime, which ends when the last clone is dropped, so a plan builder
/// that moves a value into the op that reads it last needs no release calls.
#[derive(Clone)]
pub struct Act {
    pub tensor: GpuTensor,
    _life: Arc<Life>,
}

struct Life {
    state: Arc<Mutex<State>>,
    id: usize,
}

impl Drop for Life {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let end = s.tick();
        s.slots[self.id].end = Some(end);
    }
}

impl std::ops::Deref for Act {
    type Target = GpuTensor;

    fn deref(&self) -> &GpuTensor {
        &self.tensor
    }
}

pub struct Pool {
    /// Some: a replay of this layout; None: a dry run.
    layout: Option<Layout>,
    buffers: Vec<wgpu::Buffer>,
    state: Arc<Mutex<State>>,
    /// How activations are stored (the plan's precision).
    precision: Precision,
}

impl Pool {
    /// A dry run: records lifetimes, every value on one shared buffer.
    pub fn dry_run(precision: Precision) -> Self {
        Self {
            layout: None,
            buffers: Vec::new(),
            state: Arc::new(Mutex::new(State {
                slots: Vec::new(),
                clock: 0,
            })),
            precision,
        }
    }

    /// The buffers of `layout`, handed out in the order the dry run allocated.
    pub fn replay(ctx: &GpuContext, layout: Layout, precision: Precision) -> Self {
        let buffers = layout
            .sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| ctx.storage(&format!("activations {i}"), bytes))
            .collect();
        Self {
            layout: Some(layout),
            buffers,
            ..Self::dry_run(precision)
        }
    }

    pub fn is_dry_run(&self) -> bool {
        self.layout.is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A value of `shape` stored in the pool's precision.
    pub fn alloc(&mut self, ctx: &GpuContext, label: &str, shape: &[usize]) -> Act {
        self.alloc_as(ctx, label, shape, self.precision)
    }

    /// A value of `shape` stored as `precision`.
    pub fn alloc_as(
        &mut self,
        ctx: &GpuContext,
        label: &str,
        shape: &[usize],
        precision: Precision,
    ) -> Act {
        let bytes = (shape.iter().product::<usize>() * precision.bytes()) as u64;
        let id = self.lock().slots.len();
        let planned = self.layout.as_ref().and_then(|l| {
            let b = *l.buffer_of.get(id)?;
            (l.sizes[b] >= bytes).then_some(b)
        });
        let buffer = match (planned, &self.layout) {
            (Some(b), _) => b,
            // The dry run's scratch, grown to the largest value so far.
            (None, None) => {
                if self.buffers.last().is_none_or(|b| b.size() < bytes) {
                    self.buffers.push(ctx.storage("plan dry run", bytes));
                }
                self.buffers.len() - 1
            }
            // A replay that does not follow its dry run (the builder is deterministic, so this
            // is a bug): a buffer of its own is always correct, only larger.
            (None, Some(_)) => {
                log::warn!("activation {label} ({bytes} bytes) was not in the dry run");
                self.buffers.push(ctx.storage(label, bytes));
                self.buffers.len() - 1
            }
        };
        let mut s = self.lock();
        let start = s.tick();
        s.slots.push(Slot {
            bytes,
            start,
            end: None,
        });
        drop(s);
        let tensor = GpuTensor::new(&self.buffers[buffer], shape, precision)
            .expect("pool buffers hold their values");
        Act {
            tensor,
            _life: Arc::new(Life {
                state: self.state.clone(),
                id,
            }),
        }
    }

    /// Bytes of the buffers created (in a replay: the plan's activation memory).
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.size()).sum()
    }

    /// The packing of the recorded lifetimes: largest value first, each into the smallest
    /// buffer free for its whole lifetime, else a new buffer of its size. Values still alive
    /// live forever.
    pub fn layout(&self) -> Layout {
        let lifetimes: Vec<(u64, usize, usize)> = self
            .lock()
            .slots
            .iter()
            .map(|s| (s.bytes, s.start, s.end.unwrap_or(usize::MAX)))
            .collect();
        pack(&lifetimes)
    }
}

/// Greedy-by-size packing of `(bytes, start, end)` lifetimes (half-open `[start, end)`).
fn pack(lifetimes: &[(u64, usize, usize)]) -> Layout {
    let mut order: Vec<usize> = (0..lifetimes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lifetimes[i].0), lifetimes[i].1));
    let mut sizes: Vec<u64> = Vec::new();
    let mut users: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut buffer_of = vec![0; lifetimes.len()];
    for i in order {
        let (bytes, start, end) = lifetimes[i];
        let free = |b: usize| users[b].iter().all(|&(s, e)| end <= s || e <= start);
        // Every buffer is at least as large as this value: larger values came first.
        let b = match (0..sizes.len())
            .filter(|&b| free(b))
            .min_by_key(|&b| sizes[b])
        {
            Some(b) => b,
            None => {
                sizes.push(bytes);
                users.push(Vec::new());
                sizes.len() - 1
            }
        };
        users[b].push((start, end));
        buffer_of[i] = b;
    }
    Layout { buffer_of, sizes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_disjoint_lifetimes_share_a_buffer() {
        // a [1,3) and c [4,6) can share; b [2,5) overlaps both.
        let l = pack(&[(100, 1, 3), (50, 2, 5), (80, 4, 6)]);
        assert_eq!(l.buffer_of[0], l.buffer_of[2]);
        assert_ne!(l.buffer_of[0], l.buffer_of[1]);
        assert_eq!(l.bytes(), 150);
    }

    #[test]
    fn a_release_frees_the_buffer_for_a_later_allocation_only() {
        // Released at 3, allocated at 3 is impossible (one clock); at 4 it may reuse.
        let l = pack(&[(10, 1, 3), (10, 4, usize::MAX)]);
        assert_eq!(l.sizes.len(), 1);
        let l = pack(&[(10, 1, 5), (10, 4, usize::MAX)]);
        assert_eq!(l.sizes.len(), 2);
    }

    #[test]
    fn large_late_values_reuse_the_room_of_small_early_ones() {
        // Smallest-fit while building would keep the two early 1-byte buffers and add a 2.
        let l = pack(&[(1, 1, 2), (1, 3, 4), (2, 5, 6)]);
        assert_eq!(l.bytes(), 2);
    }

    #[test]
    fn never_released_values_keep_their_own_buffer() {
        let l = pack(&[(10, 1, usize::MAX), (10, 2, 3), (10, 4, 5)]);
        assert_ne!(l.buffer_of[0], l.buffer_of[1]);
        assert_eq!(l.buffer_of[1], l.buffer_of[2]);
    }
}
