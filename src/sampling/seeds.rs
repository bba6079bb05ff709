//! Seed sets and shards: which images a run makes when every image has its own seed.
//!
//! A set is written `A-B` (inclusive) or as a list of seeds and ranges, `3,17,40-49`, in
//! ascending order without overlaps, so the order of the set is the order of its images
//! everywhere (file names, the packed array). A shard `I/N` (I counted from 0) is the I-th of N
//! contiguous parts of that order, as even as possible; the parts of all N shards are the set.

use anyhow::{bail, ensure, Context, Result};
use std::fmt;

/// An ascending set of seeds, as inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedSet {
    ranges: Vec<(u64, u64)>,
}

impl SeedSet {
    /// The seeds `first..=last`.
    pub fn range(first: u64, last: u64) -> Result<Self> {
        ensure!(first <= last, "seed range {first}-{last} descends");
        Ok(Self {
            ranges: vec![(first, last)],
        })
    }

    /// Parses `A-B`, `A` and comma lists of both.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        ensure!(
            !text.is_empty(),
            "empty seed set (expected e.g. 0-49999 or 3,17,40-49)"
        );
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let seed = |s: &str| -> Result<u64> {
                s.trim()
                    .parse()
                    .with_context(|| format!("seed {s:?} in {text:?} is not a whole number ≥ 0"))
            };
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (seed(a)?, seed(b)?),
                None if part.is_empty() => bail!("empty item in seed set {text:?}"),
                None => {
                    let s = seed(part)?;
                    (s, s)
                }
            };
            ensure!(a <= b, "seed range {part} in {text:?} descends");
            if let Some(&(_, prev)) = ranges.last() {
                ensure!(
                    a > prev,
                    "seed set {text:?}: {part} overlaps or comes before the seeds listed before it \
                     (list seeds in ascending order, each once)"
                );
            }
            ranges.push((a, b));
        }
        Ok(Self { ranges })
    }

    /// Number of seeds.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|&(a, b)| b - a + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every seed in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| a..=b)
    }

    /// The seeds at positions `start..end` of the set's order.
    pub fn slice(&self, start: u64, end: u64) -> Self {
        let mut ranges = Vec::new();
        let mut pos = 0u64;
        for &(a, b) in &self.ranges {
            let n = b - a + 1;
            let (lo, hi) = (start.max(pos), end.min(pos + n));
            if lo < hi {
                ranges.push((a + (lo - pos), a + (hi - pos) - 1));
            }
            pos += n;
        }
        Self { ranges }
    }

    /// Shard `shard` of the set.
    pub fn shard(&self, shard: Shard) -> Self {
        let n = self.len();
        let cut = |i: u64| (n as u128 * i as u128 / shard.count as u128) as u64;
        self.slice(cut(shard.index), cut(shard.index + 1))
    }
}

impl fmt::Display for SeedSet {
    /// The canonical text (`parse` reads it back): ranges of one seed as that seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

/// Part `index` (from 0) of `count` parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u64, count: u64) -> Result<Self> {
        ensure!(count >= 1, "a shard count must be at least 1, got {count}");
        ensure!(
            index < count,
            "shard {index}/{count} does not exist: shards are counted from 0, so the last of {count} \
             is {}/{count}",
            count - 1
        );
        Ok(Self { index, count })
    }

    /// `I/N`.
    pub fn parse(text: &str) -> Result<Self> {
        let (i, n) = text
            .split_once('/')
            .with_context(|| format!("shard {text:?}: expected I/N, e.g. 0/4"))?;
        let num = |s: &str| -> Result<u64> {
            s.trim()
                .parse()
                .with_context(|| format!("shard {text:?}: {s:?} is not a whole number"))
        };
        Self::new(num(i)?, num(n)?)
    }

    /// The shard a job runner gives this process through its environment (`var` reads one
    /// variable): a Slurm job array (`SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`, or
    /// `SLURM_ARRAY_TASK_MIN`/`_MAX`), or a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, with
    /// the count from `count` or `DDIM_SHARDS`). None when neither is set.
    pub fn from_env(
        var: &dyn Fn(&str) -> Option<String>,
        count: Option<u64>,
    ) -> Result<Option<(Self, &'static str)>> {
        let num = |name: &str| -> Result<Option<u64>> {
            match var(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .with_context(|| format!("{name}={v:?} is not a whole number")),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let n = match (
                count,
                num("SLURM_ARRAY_TASK_COUNT")?,
                num("SLURM_ARRAY_TASK_MAX")?,
            ) {
                (Some(n), _, _) | (None, Some(n), _) => n,
                (None, None, Some(max)) => {
                    ensure!(
                        max >= min,
                        "SLURM_ARRAY_TASK_MAX {max} < SLURM_ARRAY_TASK_MIN {min}"
                    );
                    max - min + 1
                }
                (None, None, None) => bail!(
                    "SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor \
                     SLURM_ARRAY_TASK_MAX: the shard count is not known"
                ),
            };
            ensure!(
                id >= min,
                "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
            );
            return Ok(Some((Self::new(id - min, n)?, "Slurm job array")));
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let n = match (count, num("DDIM_SHARDS")?) {
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => bail!(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but not the number of \
                     shards: set DDIM_SHARDS (the Job's completions)"
                ),
            };
            return Ok(Some((Self::new(index, n)?, "Kubernetes Indexed Job")));
        }
        Ok(None)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn parses_ranges_and_lists() {
        let s = SeedSet::parse("3,17,40-49").unwrap();
        assert_eq!(s.len(), 12);
        assert_eq!(s.iter().take(4).collect::<Vec<_>>(), vec![3, 17, 40, 41]);
        assert_eq!(s.to_string(), "3,17,40-49");
        assert_eq!(
            SeedSet::parse(" 0 - 4 ").unwrap(),
            SeedSet::range(0, 4).unwrap()
        );
        for bad in ["", "5-3", "1,1", "3,2", "0-9,5-12", "a", "1,,2", "-3", "1-"] {
            assert!(SeedSet::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn shards_partition_the_set_in_order() {
        let s = SeedSet::parse("0-9,20,30-35").unwrap();
        for n in 1..=20 {
            let parts: Vec<u64> = (0..n)
                .flat_map(|i| {
                    s.shard(Shard::new(i, n).unwrap())
                        .iter()
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(parts, s.iter().collect::<Vec<_>>(), "{n} shards");
            let sizes: Vec<u64> = (0..n)
                .map(|i| s.shard(Shard::new(i, n).unwrap()).len())
                .collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{sizes:?}"
            );
        }
        assert!(Shard::parse("4/4").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert_eq!(Shard::parse("3/4").unwrap(), Shard::new(3, 4).unwrap());
    }

    #[test]
    fn shards_from_job_runners() {
        let env = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::from_env(&slurm, None).unwrap().unwrap().0,
            Shard::new(2, 4).unwrap()
        );
        // --array=1-4: ids 1..4.
        let slurm1 = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
        ]);
        assert_eq!(
            Shard::from_env(&slurm1, None).unwrap().unwrap().0,
            Shard::new(3, 4).unwrap()
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert!(Shard::from_env(&k8s, None).is_err());
        assert_eq!(
            Shard::from_env(&k8s, Some(3)).unwrap().unwrap().0,
            Shard::new(1, 3).unwrap()
        );
        let k8s_env = env(&[("JOB_COMPLETION_INDEX", "3"), ("DDIM_SHARDS", "3")]);
        assert!(Shard::from_env(&k8s_env, None).is_err());
        assert!(Shard::from_env(&env(&[]), None).unwrap().is_none());
    }
}
