//! A folder of one PNG per seed, `000123.png`, as pytorch-fid and clean-fid read them, with a
//! manifest (`ddim-manifest.json`) of what made them: the run's [`Identity`], every setting that
//! determines the pixels. Runs with another identity are refused and leave the folder as it was;
//! runs with the same one (a resumed run, the other shards of a job array) fill in what is
//! missing, at the same time if they like. [`pack`] turns a complete folder into an npz.
//!
//! Concurrency: the manifest is created exclusively (written aside, then hard-linked into place,
//! which fails if another process got there first), and every writer holds a shared lock on it
//! (`flock` through `fs4`; std's own `File::lock` needs Rust 1.89, above our rust-version) while
//! it writes images. A process that gets the lock exclusively therefore knows that no
//! writer is alive, so temporary files it finds were left by a killed one: it removes them.
//! [`pack`] holds the lock exclusively while it reads, so it never packs a folder being written.

pub mod identity;

pub use identity::{Identity, RunSettings};

use crate::image_io::{decode_sized, encode_png, grid};
use crate::npz::NpzWriter;
use crate::output::{write_atomic, write_atomic_with};
use crate::sampling::SeedSet;
use crate::Tensor;
use anyhow::{bail, ensure, Context, Result};
use fs4::{FileExt, TryLockError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "ddim-manifest.json";
const FORMAT: &str = "ddim-seeds/2";
/// A manifest is a few KB; anything far larger is not one.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Foreign entries named in a refusal (the count says how many there are in all).
const SHOWN: usize = 5;

/// What made the images of a seed folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Everything that determines the pixels; two runs share the folder only when equal.
    pub identity: Identity,
    /// For people (where the model was read from, which ddim made the folder); not compared.
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
}

impl Manifest {
    pub fn new(identity: Identity, notes: BTreeMap<String, String>) -> Self {
        Self {
            format: FORMAT.into(),
            identity,
            notes,
        }
    }

    /// The image shape `[c, h, w]` the identity records.
    pub fn image(&self) -> Result<[usize; 3]> {
        let text = self.identity.get("image").unwrap_or_default();
        let dims: Vec<usize> = text.split('x').filter_map(|d| d.parse().ok()).collect();
        match dims[..] {
            [c, h, w] if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
            _ => bail!("{MANIFEST}: `image` is {text:?}, expected CxHxW"),
        }
    }

    /// The whole seed set the identity records.
    pub fn seeds(&self) -> Result<SeedSet> {
        SeedSet::parse(self.identity.get("run.seeds").unwrap_or_default())
            .with_context(|| format!("{MANIFEST}: `run.seeds`"))
    }

    fn to_text(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// Parses the manifest of `dir` read from `file`.
    fn read_from(file: &mut File, dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let mut text = String::new();
        file.rewind()
            .and_then(|()| {
                (&mut *file)
                    .take(MAX_MANIFEST_BYTES + 1)
                    .read_to_string(&mut text)
            })
            .with_context(|| format!("cannot read {}", path.display()))?;
        ensure!(
            text.len() as u64 <= MAX_MANIFEST_BYTES,
            "{} is over {MAX_MANIFEST_BYTES} bytes: not a ddim seed manifest",
            path.display()
        );
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a ddim seed manifest", path.display()))?;
        let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        ensure!(
            format == FORMAT,
            "{} is of format {format:?}, this ddim reads {FORMAT:?} (a folder made by another \
             version of ddim cannot be resumed or packed by this one: use another folder)",
            path.display()
        );
        serde_json::from_value(value)
            .with_context(|| format!("{} is not a ddim seed manifest", path.display()))
    }
}

/// `000123.png`: six digits at least, so that names sort in seed order up to a million.
pub fn file_name(seed: u64) -> String {
    format!("{seed:06}.png")
}

/// The seed a file name names, if it is exactly [`file_name`]'s spelling of one.
pub fn seed_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".png")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seed = digits.parse().ok()?;
    (file_name(seed) == name).then_some(seed)
}

/// Whether `name` is a temporary file of an atomic write ([`crate::output::write_atomic`]
/// writes `.<target>.tmp-<pid>-<n>` beside its target): one a killed process may have left.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp")
}

/// Opens `dir`'s manifest for locking: read-write where allowed (NFS emulates an exclusive
/// `flock` with a write lock, which needs write access), else read-only.
fn open_manifest(dir: &Path) -> std::io::Result<File> {
    let path = dir.join(MANIFEST);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .or_else(|_| File::open(&path))
}

/// Removes the temporary files in `dir`. Only call it while holding the manifest's exclusive
/// lock: then no writer is alive, and every temporary file is a dead one's.
fn remove_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_temporary(name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the leftover {}", path.display()))?;
            log::info!(
                "removed {}, left by a process that was killed",
                path.display()
            );
            removed += 1;
        }
    }
    Ok(removed)
}

/// The regular, non-hidden `*.png` files of `dir` (the first few names, and how many).
fn pngs_in(dir: &Path) -> Result<(Vec<String>, usize)> {
    let mut shown = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && name.to_ascii_lowercase().ends_with(".png") {
            count += 1;
            if shown.len() < SHOWN {
                shown.push(name);
            }
        }
    }
    Ok((shown, count))
}

/// A seed folder this process writes into: it holds a shared lock on the manifest until dropped
/// (when the process ends, however it ends, the system releases it).
pub struct SeedFolder {
    dir: PathBuf,
    manifest: Manifest,
    image: [usize; 3],
    _lock: File,
}

impl SeedFolder {
    /// Makes `dir` the folder of `manifest`'s run, or joins it when it already is; refuses,
    /// naming every setting that differs, when the folder belongs to another run, and refuses
    /// to start a manifest in a folder that already holds PNGs.
    pub fn claim(dir: &Path, manifest: &Manifest) -> Result<Self> {
        ensure!(
            dir.is_dir(),
            "{} is not an existing directory",
            dir.display()
        );
        let image = manifest.image()?;
        let path = dir.join(MANIFEST);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, manifest)?,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let mut file =
            open_manifest(dir).with_context(|| format!("cannot open {}", path.display()))?;
        FileExt::lock_shared(&file).with_context(|| format!("cannot lock {}", path.display()))?;
        let there = Manifest::read_from(&mut file, dir)?;
        if there.identity != manifest.identity {
            bail!(
                "{} holds images made with other settings; use another folder, or the same \
                 settings to resume. Differences: {}",
                path.display(),
                manifest.identity.differences(&there.identity).join("; ")
            );
        }
        // With no other writer alive (the lock is ours alone), leftovers of killed ones go.
        FileExt::unlock(&file).with_context(|| format!("cannot unlock {}", path.display()))?;
        match FileExt::try_lock(&file) {
            Ok(()) => {
                let cleaned = remove_temporaries(dir);
                FileExt::lock_shared(&file)
                    .with_context(|| format!("cannot lock {}", path.display()))?;
                cleaned?;
            }
            Err(TryLockError::WouldBlock) => FileExt::lock_shared(&file)
                .with_context(|| format!("cannot lock {}", path.display()))?,
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: there,
            image,
            _lock: file,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest the folder holds (equal to the claiming run's in everything compared).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether seed `seed` already has an image that decodes at the run's shape. A file that
    /// does not is removed, so that it is made again.
    pub fn has(&self, seed: u64) -> Result<bool> {
        let path = self.dir.join(file_name(seed));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if let Err(e) = read_pixels(&bytes, &path, self.image) {
            log::warn!("{e:#}; making it again");
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Writes image `i` of `images` (NCHW in [-1, 1]) as `<seed>.png`, atomically.
    pub fn write_image(&self, seed: u64, images: &Tensor, i: usize) -> Result<PathBuf> {
        let (_, c, h, w) = images.nchw();
        ensure!(
            [c, h, w] == self.image,
            "images of {c}x{h}x{w} for a folder of {:?}",
            self.image
        );
        let per = c * h * w;
        let one = Tensor::new(
            vec![1, c, h, w],
            images.data[i * per..(i + 1) * per].to_vec(),
        )?;
        let (pw, ph, pc, pixels) = grid(&one, 1, 0)?;
        let path = self.dir.join(file_name(seed));
        write_atomic(&path, &encode_png(pw, ph, pc, &pixels)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// Creates `dir`'s manifest unless another process does so first (then that one stands and the
/// caller compares with it). A folder with PNGs but no manifest is refused: nothing says how
/// those images were made.
fn create(dir: &Path, manifest: &Manifest) -> Result<()> {
    let (shown, count) = pngs_in(dir)?;
    // Writers write images only once the manifest is in place: images with a manifest that
    // appeared since the caller looked are another writer's, and the caller compares with it.
    if count > 0 && dir.join(MANIFEST).exists() {
        return Ok(());
    }
    ensure!(
        count == 0,
        "{} holds {count} PNG file(s) ({}{}) but no {MANIFEST}, so nothing says how they were \
         made; use an empty folder (or move them out)",
        dir.display(),
        shown.join(", "),
        if count > shown.len() { ", …" } else { "" }
    );
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!(
        ".{MANIFEST}.tmp-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(
            manifest
                .to_text()
                .map_err(std::io::Error::other)?
                .as_bytes(),
        )?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        // Another writer's manifest got there first (its claim may even have removed our
        // temporary file as a leftover): the caller compares with that one.
        Err(_) if path.exists() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{} is not writable", dir.display())),
    }
}

/// The PNG's pixels as HWC bytes, checked against the manifest's image shape (the channel
/// counts a PNG holds as they are: 1, 3 or 4).
fn read_pixels(bytes: &[u8], path: &Path, [c, h, w]: [usize; 3]) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let img = decode_sized(bytes, &name, w, h)?;
    let found = img.color().channel_count() as usize;
    ensure!(
        found == c && img.color().bytes_per_pixel() as usize == c,
        "{name} has {found} channel(s) of {} byte(s), expected {c} of 1",
        img.color().bytes_per_pixel() as usize / found.max(1)
    );
    Ok(img.into_bytes())
}

/// What [`pack`] wrote.
pub struct Packed {
    pub images: u64,
    pub shape: [usize; 4],
}

/// Writes every image of the folder's run, in seed order, as `arr_0` (uint8, NHWC) of the npz
/// `out`, one image in memory at a time. Refuses, writing nothing, while another process writes
/// into the folder, when a seed has no image, when any file in it is not an image of its run
/// (another name, a seed outside the set, not a regular file), or when an image does not decode
/// at the run's shape. Temporary files of killed writers are removed first, never packed;
/// hidden files and npz files (packs written into the folder) are left alone.
pub fn pack(dir: &Path, out: &Path) -> Result<Packed> {
    let path = dir.join(MANIFEST);
    let mut file = match open_manifest(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} has no {MANIFEST}: not a ddim seed folder",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    match FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "another ddim process is still writing into {}; pack it when that run has finished",
            dir.display()
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    let m = Manifest::read_from(&mut file, dir)?;
    let set = m.seeds()?;
    let [c, h, w] = m.image()?;
    ensure!(
        matches!(c, 1 | 3 | 4),
        "packing needs 1, 3 or 4 channels per image, the folder has {c}"
    );
    remove_temporaries(dir)?;
    check_members(dir, &set)?;
    let n = usize::try_from(set.len()).context("too many images for this machine")?;
    let shape = [n, h, w, c];
    write_atomic_with(out, |file| {
        let mut npz = NpzWriter::new(std::io::BufWriter::new(file), &shape)?;
        for seed in set.iter() {
            let path = dir.join(file_name(seed));
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            npz.write(&read_pixels(&bytes, &path, [c, h, w])?)?;
        }
        npz.finish()?
            .into_inner()
            .map_err(|e| anyhow::anyhow!("flushing the npz: {}", e.error()))?;
        Ok(())
    })?;
    Ok(Packed {
        images: n as u64,
        shape,
    })
}

/// Checks that `dir` holds exactly one image per seed of `set` and nothing else but the
/// manifest and hidden files, in one pass over the folder (not one look-up per seed).
fn check_members(dir: &Path, set: &SeedSet) -> Result<()> {
    let mut foreign = Vec::new();
    let mut foreign_count = 0usize;
    let mut present = 0u64;
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // The manifest, hidden files, and npz files (what `pack` writes, often beside).
        if name == MANIFEST || name.starts_with('.') || name.ends_with(".npz") {
            continue;
        }
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        match seed_of(&name) {
            Some(seed) if regular && set.contains(seed) => present += 1,
            seed => {
                foreign_count += 1;
                if foreign.len() < SHOWN {
                    foreign.push(match seed {
                        _ if !regular => format!("{name} (not a regular file)"),
                        Some(_) => format!("{name} (a seed outside {set})"),
                        None => name,
                    });
                }
            }
        }
    }
    ensure!(
        foreign_count == 0,
        "{} holds {foreign_count} file(s) that are not images of its run: {}{}; move them out \
         before packing",
        dir.display(),
        foreign.join(", "),
        if foreign_count > foreign.len() {
            ", …"
        } else {
            ""
        }
    );
    if present < set.len() {
        let first = set
            .iter()
            .find(|&s| !dir.join(file_name(s)).is_file())
            .map_or_else(String::new, |s| format!(" (the first: {})", file_name(s)));
        bail!(
            "{} of {} seeds have no image in {}{first}; finish the run (rerun it with the same \
             settings to make only those) before packing",
            set.len() - present,
            set.len(),
            dir.display(),
        );
    }
    Ok(())
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Precision;
    use crate::model::UNet2DConfig;
    use crate::rng::RngKind;
    use crate::sampling::{SampleSettings, SamplerKind};
    use crate::schedule::{PredictionType, SchedulerConfig, TimestepSpacing};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ddim-seed-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn identity(scheduler: &SchedulerConfig, settings: &SampleSettings) -> Identity {
        Identity::of(&RunSettings {
            model_config: &UNet2DConfig::default(),
            weights_sha256: "ab",
            scheduler,
            settings,
            rng: RngKind::Torch,
            precision: Precision::F32,
            image: [3, 16, 16],
            seeds: &SeedSet::parse("0-9").unwrap(),
            shards: 1,
            class: None,
            guidance: None,
        })
    }

    fn manifest() -> Manifest {
        Manifest::new(
            identity(&SchedulerConfig::default(), &SampleSettings::default()),
            BTreeMap::new(),
        )
    }

    #[test]
    fn every_scheduler_and_sampler_setting_is_part_of_the_identity() {
        let base_cfg = SchedulerConfig::default();
        let base_set = SampleSettings::default();
        let base = identity(&base_cfg, &base_set);
        let mut cfgs: Vec<(&str, SchedulerConfig)> = Vec::new();
        let mut edit = |key: &'static str, f: &dyn Fn(&mut SchedulerConfig)| {
            let mut c = base_cfg.clone();
            f(&mut c);
            cfgs.push((key, c));
        };
        edit("scheduler.prediction_type", &|c| {
            c.prediction_type = PredictionType::Sample
        });
        edit("scheduler.clip_sample", &|c| c.clip_sample = false);
        edit("scheduler.clip_sample_range", &|c| {
            c.clip_sample_range = 2.0
        });
        edit("scheduler.thresholding", &|c| c.thresholding = true);
        edit("scheduler.dynamic_thresholding_ratio", &|c| {
            c.dynamic_thresholding_ratio = 0.9
        });
        edit("scheduler.sample_max_value", &|c| c.sample_max_value = 2.0);
        edit("scheduler.timestep_spacing", &|c| {
            c.timestep_spacing = TimestepSpacing::Trailing
        });
        edit("scheduler.beta_end", &|c| c.beta_end = 0.021);
        edit("scheduler.beta_start", &|c| c.beta_start = 0.00011);
        edit("scheduler.trained_betas", &|c| {
            c.trained_betas = Some(vec![0.01; 1000])
        });
        edit("scheduler.rescale_betas_zero_snr", &|c| {
            c.rescale_betas_zero_snr = true
        });
        edit("scheduler.steps_offset", &|c| c.steps_offset = 1);
        edit("scheduler.set_alpha_to_one", &|c| {
            c.set_alpha_to_one = false
        });
        edit("scheduler.num_train_timesteps", &|c| {
            c.num_train_timesteps = 999
        });
        edit("scheduler.variance_type", &|c| {
            c.variance_type = Some("fixed_large".into())
        });
        edit("scheduler.solver.lambda_min_clipped", &|c| {
            c.solver_keys.lambda_min_clipped = Some(f64::NEG_INFINITY)
        });
        for (key, cfg) in &cfgs {
            let other = identity(cfg, &base_set);
            let diff = other.differences(&base);
            assert_eq!(diff.len(), 1, "{key}: {diff:?}");
            assert!(diff[0].starts_with(&format!("{key}:")), "{key}: {diff:?}");
        }
        let mut s = base_set.clone();
        s.sampler = SamplerKind::DpmSolverPlusPlus;
        s.solver.solver_order = Some(3);
        s.eta = 0.5;
        s.use_clipped_model_output = true;
        let diff = identity(&base_cfg, &s).differences(&base);
        assert_eq!(diff.len(), 4, "{diff:?}");
        assert!(diff
            .iter()
            .any(|d| d.starts_with("sampler: the folder has \"ddim\", this run \"dpm-solver++\"")));
        // The model's config counts, key by key.
        let cfg = UNet2DConfig {
            norm_eps: 1e-6,
            ..UNet2DConfig::default()
        };
        let other = Identity::of(&RunSettings {
            model_config: &cfg,
            weights_sha256: "ab",
            scheduler: &base_cfg,
            settings: &base_set,
            rng: RngKind::Philox,
            precision: Precision::F16,
            image: [3, 16, 16],
            seeds: &SeedSet::parse("0-9").unwrap(),
            shards: 1,
            class: Some(&crate::model::ClassLabels::Indices(vec![3, 1])),
            guidance: Some(&crate::sampling::Guided {
                scale: 2.5,
                rescale: 0.7,
                null: 10,
            }),
        });
        let keys: Vec<String> = other
            .differences(&base)
            .iter()
            .map(|d| d.split(':').next().unwrap().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "model.config.norm_eps",
                "precision",
                "rng",
                "run.class",
                "run.guidance_rescale",
                "run.guidance_scale",
                "run.null_class"
            ]
        );
        assert_eq!(other.get("run.class"), Some("3,1"));
        assert_eq!(other.get("run.guidance_scale"), Some("2.5"));
        assert_eq!(other.get("run.null_class"), Some("10"));
        // A model's declared null label is part of its config only where it declares one.
        assert!(base.get("model.config._null_class_label").is_none());
    }

    #[test]
    fn the_identity_is_stable_text_with_sorted_keys() {
        let m = manifest();
        let text = m.to_text().unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_text().unwrap(), text, "not a fixed point");
        let keys: Vec<&str> = m.identity.iter().map(|(k, _)| k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // Floats as shortest round-trip text, fixed spellings, never Debug output.
        assert_eq!(m.identity.get("scheduler.beta_start"), Some("0.0001"));
        assert_eq!(m.identity.get("scheduler.prediction_type"), Some("epsilon"));
        assert_eq!(m.identity.get("rng"), Some("torch"));
        assert_eq!(m.identity.get("image"), Some("3x16x16"));
        assert!(
            !text.contains("Some(") && !text.contains("Epsilon"),
            "{text}"
        );
    }

    #[test]
    fn seed_file_names_round_trip_and_nothing_else_parses() {
        for seed in [0, 7, 123456, 1234567, u64::MAX] {
            assert_eq!(seed_of(&file_name(seed)), Some(seed));
        }
        for name in [
            "1.png",
            "0000001.png",
            "00000a.png",
            ".000001.png",
            "000001.PNG",
            "000001.png.tmp",
        ] {
            assert_eq!(seed_of(name), None, "{name}");
        }
    }

    #[test]
    fn temporary_files_of_atomic_writes_are_recognised() {
        let dir = temp("tmpnames");
        let target = dir.join(file_name(3));
        let mut seen = Vec::new();
        write_atomic_with(&target, |_| {
            for e in std::fs::read_dir(&dir)? {
                seen.push(e?.file_name().to_string_lossy().into_owned());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(is_temporary(&seen[0]), "{} is not recognised", seen[0]);
        assert!(!is_temporary(&file_name(3)) && !is_temporary(MANIFEST));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn claims_lock_out_pack_and_clean_up_only_when_alone() {
        let dir = temp("claims");
        let m = manifest();
        let first = SeedFolder::claim(&dir, &m).unwrap();
        // A second writer of the same run joins; one of another run is refused, naming it.
        let second = SeedFolder::claim(&dir, &m).unwrap();
        let mut other = m.clone();
        other.identity = identity(
            &SchedulerConfig {
                prediction_type: PredictionType::Sample,
                ..SchedulerConfig::default()
            },
            &SampleSettings::default(),
        );
        let e = format!("{:#}", SeedFolder::claim(&dir, &other).err().unwrap());
        assert!(
            e.contains(
                "scheduler.prediction_type: the folder has \"epsilon\", this run \"sample\""
            ),
            "{e}"
        );
        // A leftover is kept while a writer is alive (it may be that writer's).
        std::fs::write(dir.join(".000004.png.tmp-1-1"), b"x").unwrap();
        let third = SeedFolder::claim(&dir, &m).unwrap();
        assert!(dir.join(".000004.png.tmp-1-1").exists());
        let out = dir.join("x.npz");
        let e = format!("{:#}", pack(&dir, &out).err().unwrap());
        assert!(e.contains("still writing"), "{e}");
        drop((first, second, third));
        // Alone, a claim removes it.
        let alone = SeedFolder::claim(&dir, &m).unwrap();
        assert!(!dir.join(".000004.png.tmp-1-1").exists());
        drop(alone);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_manifest_is_not_started_beside_images_of_unknown_origin() {
        let dir = temp("adopt");
        std::fs::write(dir.join(file_name(1)), b"whatever").unwrap();
        let e = format!("{:#}", SeedFolder::claim(&dir, &manifest()).err().unwrap());
        assert!(e.contains("no ddim-manifest.json"), "{e}");
        assert!(!dir.join(MANIFEST).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
