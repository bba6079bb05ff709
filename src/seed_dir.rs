//! A folder of one PNG per seed, `000123.png`, as pytorch-fid and clean-fid read them, with a
//! manifest (`ddim-manifest.json`) of what made them: the model and its weights' hash, the
//! sampler and its per-step table's hash, the RNG, the whole seed set and the shard count. Runs
//! with other settings refuse to write into the folder; runs with the same settings (a resumed
//! run, the other shards of a job array) fill in what is missing. [`pack`] turns a complete
//! folder into an npz.

use crate::image_io::{decode_sized, encode_png, grid};
use crate::npz::NpzWriter;
use crate::output::{write_atomic, write_atomic_with};
use crate::sampling::SeedSet;
use crate::Tensor;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "ddim-manifest.json";
const FORMAT: &str = "ddim-seeds/1";

/// What made the images of a seed folder; two runs mix in one folder only when theirs are equal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The model as the user named it (directory, architecture, or the bundled model).
    pub model: String,
    /// `Weights::sha256`: of the f32 values, whatever file they came from.
    pub weights_sha256: String,
    pub sampler: String,
    pub steps: usize,
    pub eta: f64,
    pub rng: String,
    /// SHA-256 of the run's per-step table (timesteps and coefficients): it changes with every
    /// scheduler or solver option that changes the images.
    pub schedule_sha256: String,
    /// The whole set, all shards together (canonical text).
    pub seeds: String,
    pub shards: u64,
    /// Channels, height, width of one image.
    pub image: [usize; 3],
}

impl Manifest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &str,
        weights_sha256: &str,
        sampler: &str,
        steps: usize,
        eta: f64,
        rng: &str,
        schedule: &str,
        seeds: &SeedSet,
        shards: u64,
        image: [usize; 3],
    ) -> Self {
        Self {
            format: FORMAT.into(),
            model: model.into(),
            weights_sha256: weights_sha256.into(),
            sampler: sampler.into(),
            steps,
            eta,
            rng: rng.into(),
            schedule_sha256: sha256_hex(schedule.as_bytes()),
            seeds: seeds.to_string(),
            shards,
            image,
        }
    }

    /// The manifest in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let m: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a ddim seed manifest", path.display()))?;
        ensure!(
            m.format == FORMAT,
            "{}: format {:?}, this ddim writes {FORMAT:?}",
            path.display(),
            m.format
        );
        Ok(Some(m))
    }

    /// Writes this manifest into `dir`, or checks that the one there is equal: the folder then
    /// belongs to this run (and to its other shards). Names every field that differs.
    pub fn claim(&self, dir: &Path) -> Result<()> {
        ensure!(
            dir.is_dir(),
            "--out-dir {} is not an existing directory",
            dir.display()
        );
        match Self::read(dir)? {
            None => {
                let text = serde_json::to_string_pretty(self)? + "\n";
                write_atomic(&dir.join(MANIFEST), text.as_bytes())
                    .with_context(|| format!("--out-dir {} is not writable", dir.display()))
            }
            Some(there) if there == *self => Ok(()),
            Some(there) => bail!(
                "{} holds images of other settings ({}); use another --out-dir, or the same \
                 settings to resume",
                dir.join(MANIFEST).display(),
                self.differences(&there).join("; ")
            ),
        }
    }

    fn differences(&self, there: &Self) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(self).unwrap_or_default(),
            serde_json::to_value(there).unwrap_or_default(),
        );
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec!["unreadable".into()];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| {
                let shown =
                    |x: Option<&serde_json::Value>| x.map_or("none".to_string(), |x| x.to_string());
                format!(
                    "{k}: this run {}, the folder {}",
                    shown(Some(v)),
                    shown(b.get(k))
                )
            })
            .collect()
    }
}

/// `000123.png`: six digits at least, so that names sort in seed order up to a million.
pub fn file_name(seed: u64) -> String {
    format!("{seed:06}.png")
}

/// The seeds of `set` whose PNG in `dir` is missing or does not decode as a `[c, h, w]` image;
/// a file that does not decode is removed so that it is made again.
pub fn missing(dir: &Path, set: &SeedSet, [c, h, w]: [usize; 3]) -> Result<Vec<u64>> {
    let mut todo = Vec::new();
    for seed in set.iter() {
        let path = dir.join(file_name(seed));
        match std::fs::read(&path) {
            Ok(bytes) => {
                if read_pixels(&bytes, &path, [c, h, w]).is_err() {
                    log::warn!("{} does not decode; making it again", path.display());
                    std::fs::remove_file(&path)
                        .with_context(|| format!("cannot remove {}", path.display()))?;
                    todo.push(seed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => todo.push(seed),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(todo)
}

/// Writes image `i` of `images` (NCHW in [-1, 1]) as `dir/<seed>.png`, atomically.
pub fn write_image(dir: &Path, seed: u64, images: &Tensor, i: usize) -> Result<PathBuf> {
    let (_, c, h, w) = images.nchw();
    let per = c * h * w;
    let one = Tensor::new(
        vec![1, c, h, w],
        images.data[i * per..(i + 1) * per].to_vec(),
    )?;
    let (pw, ph, pc, pixels) = grid(&one, 1, 0)?;
    let path = dir.join(file_name(seed));
    write_atomic(&path, &encode_png(pw, ph, pc, &pixels)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
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

/// Writes every image of the folder's manifest, in seed order, as `arr_0` (uint8, NHWC) of the
/// npz `out`, one image in memory at a time; fails, writing nothing, if any seed is missing or
/// does not decode.
pub fn pack(dir: &Path, out: &Path) -> Result<Packed> {
    let m = Manifest::read(dir)?.with_context(|| {
        format!(
            "{} has no {MANIFEST}: not a ddim seed folder",
            dir.display()
        )
    })?;
    let set = SeedSet::parse(&m.seeds).with_context(|| format!("{MANIFEST}: seeds"))?;
    let [c, h, w] = m.image;
    ensure!(
        matches!(c, 1 | 3 | 4),
        "packing needs 1, 3 or 4 channels per image, the folder has {c}"
    );
    let absent: Vec<u64> = set
        .iter()
        .filter(|&s| !dir.join(file_name(s)).is_file())
        .collect();
    if let Some(first) = absent.first() {
        bail!(
            "{} of {} seeds have no image in {} (the first: {}); finish the run (rerun it with the \
             same settings to make only those) before packing",
            absent.len(),
            set.len(),
            dir.display(),
            file_name(*first)
        );
    }
    let n = set.len() as usize;
    let shape = [n, h, w, c];
    write_atomic_with(out, |file| {
        let mut npz = NpzWriter::new(std::io::BufWriter::new(file), &shape)?;
        for seed in set.iter() {
            let path = dir.join(file_name(seed));
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            npz.write(&read_pixels(&bytes, &path, m.image)?)?;
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

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
