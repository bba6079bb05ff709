//! The plan's activation buffers, assigned by liveness ahead of time.
//!
//! A plan is built twice. The first build is a dry run: every value it allocates gets an id
//! and one shared scratch buffer (its dispatches are never run), and the pool records when
//! each value is allocated and when its last reference is released. Those lifetimes are then
//! packed into buffers, largest value first, each into the smallest buffer that is free for its
//! whole lifetime (greedy by size). The second build replays the same allocations onto that
//! packing. Handing out buffers smallest-fit while building, as before, left early small
//! buffers unusable by the decoder's large concatenations: 2.3× the largest live set on the
//! bundled model instead of about 1×.

use super::context::GpuContext;

/// One allocated value.
struct Slot {
    /// Index into `Pool::buffers`.
    buffer: usize,
    refs: usize,
    /// Never released (the plan's input).
    pinned: bool,
    bytes: u64,
    /// Event clock at allocation and at the release of the last reference.
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

pub struct Pool {
    /// Some: a replay of this layout; None: a dry run.
    layout: Option<Layout>,
    slots: Vec<Slot>,
    buffers: Vec<wgpu::Buffer>,
    /// Keep every value alive (for per-layer read back): nothing is released or shared.
    keep_all: bool,
    /// Bytes per stored element (the plan's precision).
    elem: usize,
    clock: usize,
}

impl Pool {
    /// A dry run: records lifetimes, every value on one shared buffer.
    pub fn dry_run(elem: usize, keep_all: bool) -> Self {
        Self {
            layout: None,
            slots: Vec::new(),
            buffers: Vec::new(),
            keep_all,
            elem,
            clock: 0,
        }
    }

    /// The buffers of `layout`, handed out in the order the dry run allocated.
    pub fn replay(ctx: &GpuContext, layout: Layout, elem: usize, keep_all: bool) -> Self {
        let buffers = layout
            .sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| ctx.storage(&format!("activations {i}"), bytes))
            .collect();
        Self {
            layout: Some(layout),
            buffers,
            ..Self::dry_run(elem, keep_all)
        }
    }

    pub fn is_dry_run(&self) -> bool {
        self.layout.is_none()
    }

    fn tick(&mut self) -> usize {
        self.clock += 1;
        self.clock
    }

    /// A value of `elements` stored elements; returns its id.
    pub fn alloc(&mut self, ctx: &GpuContext, label: &str, elements: usize) -> usize {
        self.alloc_bytes(ctx, label, (elements * self.elem) as u64)
    }

    pub fn alloc_bytes(&mut self, ctx: &GpuContext, label: &str, bytes: u64) -> usize {
        let id = self.slots.len();
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
        let start = self.tick();
        self.slots.push(Slot {
            buffer,
            refs: 1,
            pinned: false,
            bytes,
            start,
            end: None,
        });
        id
    }

    /// Keeps value `id` alive until released once more.
    pub fn retain(&mut self, id: usize) {
        self.slots[id].refs += 1;
    }

    pub fn release(&mut self, id: usize) {
        let keep_all = self.keep_all;
        let s = &mut self.slots[id];
        debug_assert!(s.refs > 0, "released a free buffer");
        if keep_all && s.refs == 1 {
            return;
        }
        s.refs -= 1;
        if s.refs == 0 && !s.pinned {
            let end = self.tick();
            self.slots[id].end = Some(end);
        }
    }

    /// Value `id` is never released (its buffer is written from outside the plan).
    pub fn pin(&mut self, id: usize) {
        self.slots[id].pinned = true;
    }

    pub fn buf(&self, id: usize) -> &wgpu::Buffer {
        &self.buffers[self.slots[id].buffer]
    }

    /// Bytes of the buffers created (in a replay: the plan's activation memory).
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.size()).sum()
    }

    /// The packing of the recorded lifetimes: largest value first, each into the smallest
    /// buffer free for its whole lifetime, else a new buffer of its size.
    pub fn layout(&self) -> Layout {
        let lifetimes: Vec<(u64, usize, usize)> = self
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
