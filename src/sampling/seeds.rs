//! Seed sets and shards: which images a run makes when every image has its own seed.
//!
//! A set is written `A-B` (inclusive) or as a list of seeds and ranges, `3,17,40-49`, in
//! ascending order without overlaps, so the order of the set is the order of its images
//! everywhere (file names, the packed array). A shard `I/N` (I counted from 0) is the I-th of N
//! contiguous parts of that order, as even as possible; the parts of all N shards are the set.

use anyhow::{bail, ensure, Context, Result};
use std::fmt;

/// The most seeds a set may hold: far beyond any real job (a thousand images a second for 30
/// years), and small enough that counts and positions never overflow.
pub const MAX_SEEDS: u64 = 1_000_000_000_000;

/// An ascending set of seeds, as inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedSet {
    ranges: Vec<(u64, u64)>,
}

impl SeedSet {
    /// The seeds `first..=last`.
    pub fn range(first: u64, last: u64) -> Result<Self> {
        ensure!(first <= last, "seed range {first}-{last} descends");
        ensure!(
            last - first < MAX_SEEDS,
            "seed range {first}-{last} has more than {MAX_SEEDS} seeds"
        );
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
        let set = Self { ranges };
        let n = set.len_u128();
        ensure!(
            n <= MAX_SEEDS as u128,
            "seed set {text:?} has {n} seeds; at most {MAX_SEEDS} are accepted (a thousand \
             images a second would take 30 years); split the work into sets of that size"
        );
        Ok(set)
    }

    /// Number of seeds, counted without overflow (a parsed set has at most [`MAX_SEEDS`]).
    fn len_u128(&self) -> u128 {
        self.ranges.iter().map(|&(a, b)| (b - a) as u128 + 1).sum()
    }

    /// Whether `seed` is in the set (a binary search over its ranges).
    pub fn contains(&self, seed: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, b)| b < seed);
        self.ranges.get(i).is_some_and(|&(a, _)| a <= seed)
    }

    /// Number of seeds.
    pub fn len(&self) -> u64 {
        u64::try_from(self.len_u128()).unwrap_or(u64::MAX)
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
    /// variable): a Slurm job array (see [`slurm_task_position`]), or a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX`, with the count from `count` or `DDIM_SHARDS`). `count` (the
    /// command line's) also overrides the Slurm array's task count. `slurm_tasks` returns what
    /// Slurm says about an array job's tasks (`scontrol -o show job ID`), None when it cannot
    /// tell. None when no job runner is found.
    pub fn from_env(
        var: &dyn Fn(&str) -> Option<String>,
        count: Option<u64>,
        slurm_tasks: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<(Self, &'static str)>> {
        let num = |name: &str| env_number(var, name);
        if num("SLURM_ARRAY_TASK_ID")?.is_some() {
            let (position, tasks) = slurm_task_position(var, slurm_tasks)?;
            return Ok(Some((
                Self::new(position, count.unwrap_or(tasks))?,
                "Slurm job array",
            )));
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

/// The whole number in environment variable `name`, None when unset or blank.
fn env_number(var: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<u64>> {
    match var(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={v:?} is not a whole number")),
    }
}

/// This Slurm array task's position among the array's tasks (from 0) and their number.
///
/// Slurm gives each task `SLURM_ARRAY_TASK_ID`, `_MIN`, `_MAX`, `_STEP` and `_COUNT`. For a
/// range `A-B` or `A-B:S` they describe the tasks exactly, and the position is
/// `(ID - MIN) / STEP`. For a list (`1,3,5`, `0-4:2,5`) they do not: Slurm reports step 1 or
/// the step of one member, so MIN..MAX by STEP does not hold COUNT tasks. The members are then
/// taken from Slurm itself (`slurm_tasks`, given `SLURM_ARRAY_JOB_ID`), and the run is refused
/// when it cannot list all of them: a guessed position would leave seeds unmade. A stepped
/// range is also checked against Slurm's list when there is one, as a list such as
/// `0-1,6-9:3` reports the same variables as `0-9:3`.
pub fn slurm_task_position(
    var: &dyn Fn(&str) -> Option<String>,
    slurm_tasks: &dyn Fn(&str) -> Option<String>,
) -> Result<(u64, u64)> {
    let num = |name: &str| env_number(var, name);
    let id = num("SLURM_ARRAY_TASK_ID")?.context("SLURM_ARRAY_TASK_ID is not set")?;
    let (Some(min), Some(max)) = (num("SLURM_ARRAY_TASK_MIN")?, num("SLURM_ARRAY_TASK_MAX")?)
    else {
        bail!(
            "SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_MAX \
             (every Slurm since 14.03 sets all three), so this task's place in the array is \
             unknown; give the shard explicitly"
        );
    };
    let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
    ensure!(step >= 1, "SLURM_ARRAY_TASK_STEP is 0");
    ensure!(
        min <= id && id <= max,
        "SLURM_ARRAY_TASK_ID {id} is outside SLURM_ARRAY_TASK_MIN..MAX ({min}..{max})"
    );
    let range_tasks = (max - min) / step + 1;
    // Without a count (never so under Slurm itself) the variables can only mean a range.
    let count = num("SLURM_ARRAY_TASK_COUNT")?.unwrap_or(range_tasks);
    ensure!(count >= 1, "SLURM_ARRAY_TASK_COUNT is 0");
    let a_range = (max - min) % step == 0 && (id - min) % step == 0 && count == range_tasks;
    // With step 1 the count proves it: COUNT distinct tasks in MIN..=MAX are all of them.
    if a_range && step == 1 {
        return Ok((id - min, count));
    }
    let job = var("SLURM_ARRAY_JOB_ID").filter(|j| !j.trim().is_empty());
    let listed = job
        .as_deref()
        .and_then(|j| slurm_tasks(j.trim()))
        .and_then(|text| parse_slurm_task_ids(&text, count));
    if a_range {
        let off_grid = listed.as_ref().is_some_and(|ids| {
            ids.iter()
                .any(|&t| t < min || t > max || (t - min) % step != 0)
        });
        if !off_grid {
            return Ok(((id - min) / step, count));
        }
    }
    match listed {
        Some(ids) if ids.len() as u64 == count && ids.contains(&id) => {
            let position = ids.range(..id).count() as u64;
            Ok((position, count))
        }
        _ => bail!(
            "this Slurm job array's tasks are a list, not a range (SLURM_ARRAY_TASK_MIN {min}, \
             MAX {max}, STEP {step} and COUNT {count} do not describe one), and Slurm did not \
             list all {count} of them ({}), so this task's place among them is unknown. Submit \
             the array as a range (--array=0-{} or A-B:S), or give each task its shard explicitly",
            match &job {
                Some(j) => format!("scontrol show job {}", j.trim()),
                None => "SLURM_ARRAY_JOB_ID is not set".to_string(),
            },
            count - 1
        ),
    }
}

/// The task ids in `scontrol -o show job` output: every `ArrayTaskId=` value (`7`, `4-5`,
/// `1,3,5`, `0-6:2`, with an optional `%N` throttle). None when a value does not parse or the
/// list would exceed `limit` ids (more than the array has: not its list).
pub fn parse_slurm_task_ids(text: &str, limit: u64) -> Option<std::collections::BTreeSet<u64>> {
    let mut ids = std::collections::BTreeSet::new();
    for token in text.split_whitespace() {
        let Some(value) = token.strip_prefix("ArrayTaskId=") else {
            continue;
        };
        let value = value.split('%').next().unwrap_or_default();
        for item in value.split(',') {
            let (range, step) = match item.split_once(':') {
                Some((r, s)) => (r, s.parse::<u64>().ok().filter(|&s| s > 0)?),
                None => (item, 1),
            };
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
                None => {
                    let a = range.parse::<u64>().ok()?;
                    (a, a)
                }
            };
            if a > b || (b - a) / step >= limit {
                return None;
            }
            let mut t = a;
            while t <= b {
                ids.insert(t);
                if ids.len() as u64 > limit {
                    return None;
                }
                if b - t < step {
                    break;
                }
                t += step;
            }
        }
    }
    (!ids.is_empty()).then_some(ids)
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

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn no_scontrol(_: &str) -> Option<String> {
        None
    }

    /// Slurm's variables for task `id` of an array whose tasks are `ids`, as Slurm 22.05 set
    /// them for `--array=SPEC` (checked against a real cluster: `0-6:2` gives STEP 2; a list
    /// gives the step of the member that has one, else 1).
    fn slurm_env(id: u64, ids: &[u64], step: u64) -> impl Fn(&str) -> Option<String> {
        let (id, min, max, count) = (
            id.to_string(),
            ids[0].to_string(),
            ids[ids.len() - 1].to_string(),
            ids.len().to_string(),
        );
        let step = step.to_string();
        env(&[
            ("SLURM_ARRAY_JOB_ID", "41"),
            ("SLURM_ARRAY_TASK_ID", &id),
            ("SLURM_ARRAY_TASK_MIN", &min),
            ("SLURM_ARRAY_TASK_MAX", &max),
            ("SLURM_ARRAY_TASK_STEP", &step),
            ("SLURM_ARRAY_TASK_COUNT", &count),
        ])
    }

    /// `scontrol -o show job 41` listing `ids` (one record per task, as once all have started).
    fn scontrol(ids: &[u64]) -> impl Fn(&str) -> Option<String> {
        let text: String = ids
            .iter()
            .map(|t| {
                format!(
                    "JobId={} ArrayJobId=41 ArrayTaskId={t} JobState=RUNNING\n",
                    100 + t
                )
            })
            .collect();
        move |job: &str| (job == "41").then(|| text.clone())
    }

    #[test]
    fn slurm_ranges_and_steps_map_positions_to_shards() {
        for (ids, step) in [
            (vec![0, 1, 2, 3], 1),
            (vec![1, 2, 3, 4], 1),
            (vec![0, 2, 4, 6], 2),
            (vec![3, 8, 13], 5),
            (vec![7], 1),
        ] {
            let mut seen = Vec::new();
            for (position, &id) in ids.iter().enumerate() {
                let var = slurm_env(id, &ids, step);
                let (shard, _) = Shard::from_env(&var, None, &no_scontrol).unwrap().unwrap();
                assert_eq!(
                    shard,
                    Shard::new(position as u64, ids.len() as u64).unwrap(),
                    "task {id} of {ids:?}"
                );
                seen.push(shard.index);
            }
            assert_eq!(seen, (0..ids.len() as u64).collect::<Vec<_>>());
        }
        // --shards overrides the count, not the position.
        let var = slurm_env(4, &[0, 2, 4, 6], 2);
        assert_eq!(
            Shard::from_env(&var, Some(8), &no_scontrol)
                .unwrap()
                .unwrap()
                .0,
            Shard::new(2, 8).unwrap()
        );
    }

    #[test]
    fn slurm_lists_are_found_or_refused_never_guessed() {
        // --array=1,3,5 (Slurm: STEP 1, COUNT 3), 0-4:2,5 (STEP 2, COUNT 4), 1-3,7.
        for (ids, step) in [
            (vec![1, 3, 5], 1),
            (vec![0, 2, 4, 5], 2),
            (vec![1, 2, 3, 7], 1),
            (vec![0, 1, 6, 9], 3),
        ] {
            for (position, &id) in ids.iter().enumerate() {
                let var = slurm_env(id, &ids, step);
                let (shard, _) = Shard::from_env(&var, None, &scontrol(&ids))
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    shard,
                    Shard::new(position as u64, ids.len() as u64).unwrap()
                );
                // Slurm cannot list them (or lists only some): refused, naming the way out.
                for partial in [&[][..], &ids[1..]] {
                    let listed = scontrol(partial);
                    let lookup = |j: &str| (!partial.is_empty()).then(|| listed(j)).flatten();
                    match Shard::from_env(&var, None, &lookup) {
                        Ok(got) if ids == [0, 1, 6, 9] && step == 3 && id != 1 => {
                            // 0-1,6-9:3 reports exactly what 0-9:3 does; only a listing that
                            // shows task 1 tells them apart (the partial one above does).
                            assert!(partial.is_empty() || !partial.contains(&1), "{got:?}");
                        }
                        Ok(got) => panic!("task {id} of {ids:?} guessed {got:?}"),
                        Err(e) => {
                            let e = format!("{e:#}");
                            assert!(e.contains("explicitly") && e.contains("range"), "{e}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn scontrol_task_lists_parse() {
        let text = "JobId=5 ArrayJobId=5 ArrayTaskId=5,9%2 X=1\nJobId=7 ArrayTaskId=0-6:3 \
                    JobId=8 ArrayTaskId=1";
        let ids = parse_slurm_task_ids(text, 100).unwrap();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![0, 1, 3, 5, 6, 9]);
        assert!(parse_slurm_task_ids("ArrayTaskId=0-99999999999", 10).is_none());
        assert!(parse_slurm_task_ids("ArrayTaskId=x", 10).is_none());
        assert!(parse_slurm_task_ids("JobId=1", 10).is_none());
    }

    #[test]
    fn huge_sets_are_counted_and_refused_without_overflow() {
        let s = SeedSet::parse("0-99999999999").unwrap();
        assert_eq!(s.len(), 100_000_000_000);
        assert!(s.contains(99_999_999_999) && !s.contains(100_000_000_000));
        let shard = s.shard(Shard::new(3, 4).unwrap());
        assert_eq!(shard.iter().next(), Some(75_000_000_000));
        for bad in ["0-18446744073709551615", "0-999999999999999"] {
            let e = format!("{:#}", SeedSet::parse(bad).unwrap_err());
            assert!(e.contains("at most"), "{e}");
        }
        let l = SeedSet::parse("3,17,40-49").unwrap();
        assert!([3, 17, 40, 49].iter().all(|&x| l.contains(x)));
        assert!([0, 4, 18, 39, 50].iter().all(|&x| !l.contains(x)));
    }

    #[test]
    fn shards_from_job_runners() {
        // Hand-set variables without MIN/MAX do not say where the task stands: refused.
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert!(Shard::from_env(&slurm, None, &no_scontrol).is_err());
        // --array=1-4: ids 1..4.
        let slurm1 = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "4"),
        ]);
        assert_eq!(
            Shard::from_env(&slurm1, None, &no_scontrol)
                .unwrap()
                .unwrap()
                .0,
            Shard::new(3, 4).unwrap()
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert!(Shard::from_env(&k8s, None, &no_scontrol).is_err());
        assert_eq!(
            Shard::from_env(&k8s, Some(3), &no_scontrol)
                .unwrap()
                .unwrap()
                .0,
            Shard::new(1, 3).unwrap()
        );
        let k8s_env = env(&[("JOB_COMPLETION_INDEX", "3"), ("DDIM_SHARDS", "3")]);
        assert!(Shard::from_env(&k8s_env, None, &no_scontrol).is_err());
        assert!(Shard::from_env(&env(&[]), None, &no_scontrol)
            .unwrap()
            .is_none());
    }
}
