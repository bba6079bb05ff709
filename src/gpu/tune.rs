//! The tuner's memory: for each distinct (kernel, shape) the variant chosen on the adapter in
//! use, the times it was chosen by and the candidates rejected for a wrong output.
//!
//! Choices persist in a JSON cache file (the user's cache directory by default), keyed by the
//! adapter, its driver, the wgpu and crate versions, and the shape: a second run reads them and
//! times nothing. A cache file that cannot be read or parsed, or an entry that names a variant
//! which does not apply, is ignored with a warning and never trusted.
//!
//! The tuning pass ([`super::tuning`]) asks [`Tuner::choose`] once per (kernel, shape) before a
//! plan is built; while a [`Tuner::pause`] guard is alive (plans built only to measure their
//! memory), known choices are used but nothing new is timed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Whether plans tune their kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TuneMode {
    /// Use cached choices and time the shapes the cache does not have.
    Auto,
    /// The fixed rule per device type (no timing, no cache).
    #[default]
    Off,
    /// Time every shape again and overwrite the cache.
    Force,
}

impl FromStr for TuneMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            "force" => Ok(Self::Force),
            other => bail!("unknown tuning mode {other:?}; expected auto, off or force"),
        }
    }
}

impl fmt::Display for TuneMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Off => "off",
            Self::Force => "force",
        })
    }
}

/// One timed variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub variant: String,
    /// Best of the timed runs, in milliseconds.
    pub ms: f64,
}

/// A candidate whose output on the tuning input differed from the fixed variant's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub variant: String,
    pub reason: String,
}

/// What trying one candidate gave: its time, or why it may not be used.
#[derive(Clone, Debug, PartialEq)]
pub enum Trial {
    /// Milliseconds of one run.
    Time(f64),
    /// Its output was wrong (the reason names by how much).
    Rejected(String),
}

/// Where a choice came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Timed in this process.
    Measured,
    /// Read from the cache file.
    Cache,
    /// The fixed rule (tuning off, or only one variant applies).
    Fixed,
}

/// The variant a (kernel, shape) runs with, and the times it was chosen by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub kernel: String,
    pub shape: String,
    pub variant: String,
    /// Every timed variant (empty for a fixed choice).
    pub candidates: Vec<Candidate>,
    /// Candidates rejected by validation (never timed, never chosen).
    #[serde(default)]
    pub rejected: Vec<Rejection>,
    pub source: Source,
}

/// What a context's tuner did so far.
#[derive(Clone, Debug, Default)]
pub struct TuneReport {
    /// Every (kernel, shape) looked up, in first-use order.
    pub choices: Vec<Choice>,
    /// Seconds spent timing candidates.
    pub seconds: f64,
    /// Why the cache file was not used, when it was not.
    pub warning: Option<String>,
}

impl TuneReport {
    /// Every choice came from the cache (and there was at least one to make).
    pub fn from_cache(&self) -> bool {
        let tuned: Vec<_> = self
            .choices
            .iter()
            .filter(|c| c.source != Source::Fixed)
            .collect();
        !tuned.is_empty() && tuned.iter().all(|c| c.source == Source::Cache)
    }

    pub fn measured(&self) -> usize {
        self.choices
            .iter()
            .filter(|c| c.source == Source::Measured)
            .count()
    }
}

/// The cache file's format version; a file of another version is ignored.
const CACHE_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    entries: Vec<CacheEntry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct CacheEntry {
    adapter: String,
    kernel: String,
    shape: String,
    variant: String,
    candidates: Vec<Candidate>,
    #[serde(default)]
    rejected: Vec<Rejection>,
}

#[derive(Default)]
struct State {
    /// Cached choices of this adapter, by (kernel, shape).
    cached: HashMap<(String, String), CacheEntry>,
    /// Lookups made so far (the report), and their index by (kernel, shape).
    used: Vec<Choice>,
    index: HashMap<(String, String), usize>,
    seconds: f64,
    warning: Option<String>,
}

/// A context's tuning state (see the module docs). Shared by every plan built on the context.
pub struct Tuner {
    mode: TuneMode,
    /// None: choices live in memory only.
    cache: Option<PathBuf>,
    /// Adapter, driver, wgpu and crate version: what a cached time is valid for.
    adapter: String,
    state: Mutex<State>,
    paused: AtomicUsize,
    /// A cache write failed and was reported; later failures are not.
    save_failed: AtomicBool,
}

/// While alive, the tuner times nothing new (see [`Tuner::pause`]).
pub struct PauseGuard<'a>(&'a Tuner);

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        self.0.paused.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cache file used when none is given: `ddim/tuning.json` in the user's cache directory
/// (`$XDG_CACHE_HOME`, else `~/.cache` on Linux; `~/Library/Caches` on macOS; `%LOCALAPPDATA%` on
/// Windows). None when no such directory is known.
pub fn default_cache_file() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = if cfg!(windows) {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library/Caches"))
    } else {
        var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))
    }?;
    Some(dir.join("ddim").join("tuning.json"))
}

/// The wgpu version this binary was built with, from the committed Cargo.lock.
fn wgpu_version() -> &'static str {
    const LOCK: &str = include_str!("../../Cargo.lock");
    LOCK.split("[[package]]")
        .find(|p| p.contains("\nname = \"wgpu\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"'))
        .unwrap_or("unknown")
}

/// What cached times are valid for: the same adapter and driver, wgpu and crate version.
pub fn adapter_key(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} | {:?} {:04x}:{:04x} | driver {} {} | wgpu {} | ddim {}",
        info.name,
        info.backend,
        info.vendor,
        info.device,
        info.driver,
        info.driver_info,
        wgpu_version(),
        env!("CARGO_PKG_VERSION")
    )
}

impl Tuner {
    /// A tuner that always takes the fixed rule.
    pub fn off() -> Self {
        Self::new(TuneMode::Off, None, String::new())
    }

    /// A tuner in `mode` for the adapter `adapter` (see [`adapter_key`]), reading and writing
    /// `cache` when given. A cache that cannot be used is reported by [`Tuner::report`] and in
    /// the log, and ignored.
    pub fn new(mode: TuneMode, cache: Option<PathBuf>, adapter: String) -> Self {
        let mut state = State::default();
        if mode == TuneMode::Auto {
            if let Some(path) = &cache {
                match read_cache(path) {
                    Ok(entries) => {
                        for e in entries.into_iter().filter(|e| e.adapter == adapter) {
                            state.cached.insert((e.kernel.clone(), e.shape.clone()), e);
                        }
                    }
                    Err(e) => {
                        let what = format!("ignoring the tuning cache: {e:#}");
                        log::warn!("{what}");
                        state.warning = Some(what);
                    }
                }
            }
        }
        Self {
            mode,
            cache,
            adapter,
            state: Mutex::new(state),
            paused: AtomicUsize::new(0),
            save_failed: AtomicBool::new(false),
        }
    }

    pub fn mode(&self) -> TuneMode {
        self.mode
    }

    pub fn cache_file(&self) -> Option<&Path> {
        self.cache.as_deref()
    }

    /// Until the guard drops, known choices are used and nothing new is timed (for plans built
    /// only to measure memory, at batches that will never run).
    pub fn pause(&self) -> PauseGuard<'_> {
        self.paused.fetch_add(1, Ordering::Relaxed);
        PauseGuard(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What was looked up and timed so far.
    pub fn report(&self) -> TuneReport {
        let s = self.lock();
        TuneReport {
            choices: s.used.clone(),
            seconds: s.seconds,
            warning: s.warning.clone(),
        }
    }

    /// The variant of `kernel` for `shape` among `candidates` (name, value; every one applies
    /// to the shape): the fixed rule `fixed` when tuning is off, else a known choice, else the
    /// fastest by `trial(variant, best_so_far_ms)`, which validates a candidate against the
    /// fixed variant and times it ([`Trial`]). The fixed rule's variant is tried first (it is
    /// the reference), so the others can stop early when far slower. A rejected candidate is
    /// never chosen; the rejection is logged, reported and cached with the choice.
    pub fn choose<V: Copy + PartialEq>(
        &self,
        kernel: &str,
        shape: &str,
        candidates: &[(&'static str, V)],
        fixed: V,
        mut trial: impl FnMut(V, f64) -> Result<Trial>,
    ) -> Result<V> {
        let key = (kernel.to_string(), shape.to_string());
        let name_of = |v: &V| candidates.iter().find(|(_, c)| c == v).map(|(n, _)| *n);
        let by_name = |n: &str| candidates.iter().find(|(c, _)| *c == n).map(|(_, v)| *v);
        let paused = self.paused.load(Ordering::Relaxed) > 0;
        let fixed_choice = |source| Choice {
            kernel: kernel.to_string(),
            shape: shape.to_string(),
            variant: name_of(&fixed).unwrap_or("fixed").to_string(),
            candidates: Vec::new(),
            rejected: Vec::new(),
            source,
        };
        if self.mode == TuneMode::Off || candidates.len() < 2 {
            if !paused {
                self.record(fixed_choice(Source::Fixed));
            }
            return Ok(fixed);
        }
        {
            let mut s = self.lock();
            if let Some(&i) = s.index.get(&key) {
                if let Some(v) = by_name(&s.used[i].variant) {
                    return Ok(v);
                }
            }
            if let Some(entry) = s.cached.get(&key).cloned() {
                match by_name(&entry.variant) {
                    Some(v) => {
                        if !paused {
                            let choice = Choice {
                                kernel: entry.kernel,
                                shape: entry.shape,
                                variant: entry.variant,
                                candidates: entry.candidates,
                                rejected: entry.rejected,
                                source: Source::Cache,
                            };
                            push(&mut s, choice);
                        }
                        return Ok(v);
                    }
                    None => {
                        log::warn!(
                            "tuning cache: {kernel} {shape} names variant {:?}, which does not \
                             apply (candidates: {}); timing it again",
                            entry.variant,
                            candidates
                                .iter()
                                .map(|c| c.0)
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                        s.cached.remove(&key);
                    }
                }
            }
        }
        if paused {
            return Ok(fixed);
        }
        let start = Instant::now();
        let mut order: Vec<&(&str, V)> = candidates.iter().collect();
        order.sort_by_key(|(_, v)| *v != fixed);
        let mut timed = Vec::with_capacity(candidates.len());
        let mut rejected = Vec::new();
        let mut best = f64::INFINITY;
        for (name, v) in order {
            match trial(*v, best)
                .with_context(|| format!("tuning {kernel} {shape}: variant {name}"))?
            {
                Trial::Time(ms) => {
                    best = best.min(ms);
                    timed.push(Candidate {
                        variant: name.to_string(),
                        ms,
                    });
                }
                Trial::Rejected(reason) => {
                    log::warn!(
                        "tuning {kernel} {shape}: variant {name} rejected, its output differs \
                         from the {} variant's: {reason}",
                        name_of(&fixed).unwrap_or("fixed")
                    );
                    rejected.push(Rejection {
                        variant: name.to_string(),
                        reason,
                    });
                }
            }
        }
        let variant = timed
            .iter()
            .min_by(|a, b| a.ms.total_cmp(&b.ms))
            .map(|c| c.variant.clone())
            .unwrap_or_else(|| name_of(&fixed).unwrap_or("fixed").to_string());
        let chosen = by_name(&variant).unwrap_or(fixed);
        let choice = Choice {
            kernel: kernel.to_string(),
            shape: shape.to_string(),
            variant,
            candidates: timed,
            rejected,
            source: Source::Measured,
        };
        {
            let mut s = self.lock();
            s.seconds += start.elapsed().as_secs_f64();
            push(&mut s, choice.clone());
        }
        self.save(&choice);
        Ok(chosen)
    }

    fn record(&self, choice: Choice) {
        push(&mut self.lock(), choice);
    }

    /// Adds `choice` to the cache file (merged with what other processes wrote meanwhile;
    /// written to a temporary file and renamed, so a reader never sees half a file). A failure
    /// only costs the next run a re-tune, so it is a warning.
    fn save(&self, choice: &Choice) {
        let Some(path) = &self.cache else { return };
        let entry = CacheEntry {
            adapter: self.adapter.clone(),
            kernel: choice.kernel.clone(),
            shape: choice.shape.clone(),
            variant: choice.variant.clone(),
            candidates: choice.candidates.clone(),
            rejected: choice.rejected.clone(),
        };
        if let Err(e) = write_entry(path, entry) {
            // Warned once: every later shape would fail the same way.
            if !self.save_failed.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "could not update the tuning cache {}: {e:#}",
                    path.display()
                );
            }
        }
    }
}

fn push(s: &mut State, choice: Choice) {
    let key = (choice.kernel.clone(), choice.shape.clone());
    match s.index.get(&key) {
        Some(&i) => s.used[i] = choice,
        None => {
            s.index.insert(key, s.used.len());
            s.used.push(choice);
        }
    }
}

/// The choices `path` holds for the adapter `adapter` ([`adapter_key`]), e.g. to show them.
pub fn cached_choices(path: &Path, adapter: &str) -> Result<Vec<Choice>> {
    Ok(read_cache(path)?
        .into_iter()
        .filter(|e| e.adapter == adapter)
        .map(|e| Choice {
            kernel: e.kernel,
            shape: e.shape,
            variant: e.variant,
            candidates: e.candidates,
            rejected: e.rejected,
            source: Source::Cache,
        })
        .collect())
}

fn read_cache(path: &Path) -> Result<Vec<CacheEntry>> {
    let text = match crate::path_kind::kind_of(path) {
        crate::path_kind::PathKind::Missing => return Ok(Vec::new()),
        _ => crate::path_kind::read_text_bounded(path, "tuning cache", 64 << 20)?,
    };
    let file: CacheFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if file.format != CACHE_FORMAT {
        bail!(
            "{} has format {}, this build reads format {CACHE_FORMAT}",
            path.display(),
            file.format
        );
    }
    Ok(file.entries)
}

#[cfg(not(target_arch = "wasm32"))]
fn write_entry(path: &Path, entry: CacheEntry) -> Result<()> {
    // A file that cannot be read is replaced: it was already ignored.
    let mut entries = read_cache(path).unwrap_or_default();
    entries.retain(|e| {
        !(e.adapter == entry.adapter && e.kernel == entry.kernel && e.shape == entry.shape)
    });
    entries.push(entry);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&CacheFile {
        format: CACHE_FORMAT,
        entries,
    })?;
    crate::output::write_atomic(path, text.as_bytes())
}

/// A browser has no file system to keep the cache in (contexts there do not tune; see
/// `GpuContext::new`).
#[cfg(target_arch = "wasm32")]
fn write_entry(path: &Path, _: CacheEntry) -> Result<()> {
    bail!("cannot write {}: no file system on wasm32", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum V {
        A,
        B,
        C,
    }
    const CANDIDATES: [(&str, V); 3] = [("a", V::A), ("b", V::B), ("c", V::C)];

    fn temp_file(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ddim-tune-{}-{name}.json", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn times(v: V) -> Result<Trial> {
        Ok(Trial::Time(match v {
            V::A => 3.0,
            V::B => 1.0,
            V::C => 2.0,
        }))
    }

    #[test]
    fn chooses_the_fastest_and_remembers_it() {
        let t = Tuner::new(TuneMode::Auto, None, "gpu".into());
        let mut calls = 0;
        let v = t
            .choose("k", "s", &CANDIDATES, V::A, |v, _| {
                calls += 1;
                times(v)
            })
            .unwrap();
        assert_eq!((v, calls), (V::B, 3));
        let again = t
            .choose("k", "s", &CANDIDATES, V::A, |_, _| panic!("timed twice"))
            .unwrap();
        assert_eq!(again, V::B);
        let r = t.report();
        assert_eq!(r.choices.len(), 1);
        assert_eq!(r.measured(), 1);
        assert_eq!(r.choices[0].candidates.len(), 3);
    }

    #[test]
    fn off_paused_and_single_candidates_time_nothing() {
        let off = Tuner::off();
        let v = off
            .choose("k", "s", &CANDIDATES, V::C, |_, _| {
                panic!("timed while off")
            })
            .unwrap();
        assert_eq!(v, V::C);
        assert_eq!(off.report().choices[0].source, Source::Fixed);

        let t = Tuner::new(TuneMode::Auto, None, "gpu".into());
        {
            let _g = t.pause();
            let v = t
                .choose("k", "s", &CANDIDATES, V::C, |_, _| {
                    panic!("timed while paused")
                })
                .unwrap();
            assert_eq!(v, V::C);
        }
        assert!(
            t.report().choices.is_empty(),
            "paused lookups are not reported"
        );
        let one = t
            .choose("k", "t", &CANDIDATES[..1], V::A, |_, _| {
                panic!("timed one candidate")
            })
            .unwrap();
        assert_eq!(one, V::A);
    }

    #[test]
    fn the_cache_serves_the_same_adapter_only_and_force_ignores_it() {
        let path = temp_file("roundtrip");
        let first = Tuner::new(TuneMode::Auto, Some(path.clone()), "gpu one".into());
        first
            .choose("k", "s", &CANDIDATES, V::A, |v, _| times(v))
            .unwrap();
        first
            .choose("k", "s2", &CANDIDATES, V::A, |v, _| {
                times(v).map(|t| match t {
                    Trial::Time(ms) => Trial::Time(10.0 - ms),
                    other => other,
                })
            })
            .unwrap();

        let second = Tuner::new(TuneMode::Auto, Some(path.clone()), "gpu one".into());
        let v = second
            .choose("k", "s", &CANDIDATES, V::A, |_, _| {
                panic!("re-timed a cached shape")
            })
            .unwrap();
        assert_eq!(v, V::B);
        assert_eq!(
            second
                .choose("k", "s2", &CANDIDATES, V::A, |_, _| panic!("re-timed"))
                .unwrap(),
            V::A
        );
        assert!(second.report().from_cache());

        let other = Tuner::new(TuneMode::Auto, Some(path.clone()), "gpu two".into());
        let mut timed = false;
        other
            .choose("k", "s", &CANDIDATES, V::A, |v, _| {
                timed = true;
                times(v)
            })
            .unwrap();
        assert!(timed, "another adapter's entry was used");

        let force = Tuner::new(TuneMode::Force, Some(path.clone()), "gpu one".into());
        let mut timed = 0;
        force
            .choose("k", "s", &CANDIDATES, V::A, |v, _| {
                timed += 1;
                times(v)
            })
            .unwrap();
        assert_eq!(timed, 3);
        // Both adapters' entries survive the merges.
        let entries = read_cache(&path).unwrap();
        assert_eq!(
            entries.len(),
            3,
            "{}",
            std::fs::read_to_string(&path).unwrap()
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_corrupt_or_foreign_cache_is_ignored_with_a_warning() {
        for (name, text) in [
            ("garbage", "not json at all".to_string()),
            (
                "format",
                format!("{{\"format\": {}, \"entries\": []}}", CACHE_FORMAT + 1),
            ),
        ] {
            let path = temp_file(name);
            std::fs::write(&path, text).unwrap();
            let t = Tuner::new(TuneMode::Auto, Some(path.clone()), "gpu".into());
            let warning = t.report().warning.expect("a warning");
            assert!(warning.contains("ignoring the tuning cache"), "{warning}");
            let v = t
                .choose("k", "s", &CANDIDATES, V::A, |v, _| times(v))
                .unwrap();
            assert_eq!(v, V::B);
            // Rewritten as a valid file.
            assert_eq!(read_cache(&path).unwrap().len(), 1);
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn a_cached_variant_outside_the_candidates_is_timed_again() {
        let path = temp_file("stale");
        let t = Tuner::new(TuneMode::Auto, Some(path.clone()), "gpu".into());
        t.choose("k", "s", &CANDIDATES, V::A, |v, _| times(v))
            .unwrap();
        // A later build no longer offers b for this shape.
        let fewer = [("a", V::A), ("c", V::C)];
        let t2 = Tuner::new(TuneMode::Auto, Some(path.clone()), "gpu".into());
        let mut timed = 0;
        let v = t2
            .choose("k", "s", &fewer, V::A, |v, _| {
                timed += 1;
                times(v)
            })
            .unwrap();
        assert_eq!((v, timed), (V::C, 2));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_rejected_candidate_is_never_chosen_and_its_rejection_is_cached() {
        let path = temp_file("rejected");
        let t = Tuner::new(TuneMode::Auto, Some(path.clone()), "gpu".into());
        // b would be fastest, but its output is wrong.
        let v = t
            .choose("k", "s", &CANDIDATES, V::A, |v, _| match v {
                V::B => Ok(Trial::Rejected("rel. L2 0.5".into())),
                v => times(v),
            })
            .unwrap();
        assert_eq!(v, V::C);
        let choice = &t.report().choices[0];
        assert_eq!(choice.rejected[0].variant, "b");
        assert_eq!(choice.candidates.len(), 2);
        let again = Tuner::new(TuneMode::Auto, Some(path.clone()), "gpu".into());
        let v = again
            .choose("k", "s", &CANDIDATES, V::A, |_, _| panic!("tried again"))
            .unwrap();
        assert_eq!(v, V::C);
        assert_eq!(again.report().choices[0].rejected[0].variant, "b");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [TuneMode::Auto, TuneMode::Off, TuneMode::Force] {
            assert_eq!(m.to_string().parse::<TuneMode>().unwrap(), m);
        }
        assert!("sometimes".parse::<TuneMode>().is_err());
        assert_ne!(wgpu_version(), "unknown");
    }
}
