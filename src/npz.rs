//! A NumPy `.npz` with one uint8 array `arr_0`: what OpenAI's guided-diffusion evaluator and
//! `numpy.load` read. An npz is a zip archive of `.npy` files; this writes one entry, stored
//! (not compressed): a header, the array's bytes and a directory, with ZIP64 records when the
//! array reaches 4 GiB (50,000 RGB images of 256×256).

use anyhow::{ensure, Result};
use std::io::{Seek, SeekFrom, Write};

/// The `.npy` bytes of a C-order uint8 array of `shape`: [`npy_header`], then the data.
pub fn npy_u8(shape: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let n: usize = shape.iter().product();
    ensure!(
        n == data.len(),
        "an array of shape {shape:?} holds {n} bytes, got {}",
        data.len()
    );
    let mut out = npy_header(shape)?;
    out.extend_from_slice(data);
    Ok(out)
}

/// The `.npy` header of a uint8 array: magic, version 1.0, and the header dict padded with
/// spaces to a multiple of 64 bytes, ending in a newline.
pub fn npy_header(shape: &[usize]) -> Result<Vec<u8>> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    ensure!(header.len() <= u16::MAX as usize, "npy header too long");
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

/// Writes an npz of one uint8 array `arr_0` to a seekable output, streaming: the array's bytes
/// go out as they come (one image at a time), and the CRC is patched into the local header at
/// the end, so memory holds no more than the caller's piece.
pub struct NpzWriter<W: Write + Seek> {
    out: W,
    crc: crc32fast::Hasher,
    /// Bytes of the entry (npy header and data) still expected.
    remaining: u64,
    entry_size: u64,
    zip64: bool,
}

const NAME: &str = "arr_0.npy";
/// Offset of the CRC field in the local file header.
const CRC_AT: u64 = 14;

impl<W: Write + Seek> NpzWriter<W> {
    /// Starts the archive at the output's current position 0 for an array of `shape`.
    pub fn new(out: W, shape: &[usize]) -> Result<Self> {
        Self::start(out, shape, false)
    }

    /// [`NpzWriter::new`], with ZIP64 records also for a small array when `force_zip64`
    /// (so that the large-file layout can be tested without writing 4 GiB).
    pub fn start(mut out: W, shape: &[usize], force_zip64: bool) -> Result<Self> {
        let header = npy_header(shape)?;
        let data: u64 = shape.iter().map(|&d| d as u64).product();
        let entry_size = header.len() as u64 + data;
        let zip64 = force_zip64 || entry_size >= u32::MAX as u64;
        let mut local = Vec::new();
        put32(&mut local, 0x0403_4b50);
        put16(&mut local, version(zip64));
        put16(&mut local, 0); // flags
        put16(&mut local, 0); // stored
        put16(&mut local, 0); // time
        put16(&mut local, DOS_DATE);
        put32(&mut local, 0); // CRC, patched by `finish`
        put32(&mut local, size32(entry_size, zip64));
        put32(&mut local, size32(entry_size, zip64));
        let extra = zip64_extra(entry_size, zip64, None);
        put16(&mut local, NAME.len() as u16);
        put16(&mut local, extra.len() as u16);
        local.extend_from_slice(NAME.as_bytes());
        local.extend_from_slice(&extra);
        out.write_all(&local)?;
        let mut w = Self {
            out,
            crc: crc32fast::Hasher::new(),
            remaining: entry_size,
            entry_size,
            zip64,
        };
        w.write(&header)?;
        Ok(w)
    }

    /// The next bytes of the array, in C order.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        ensure!(
            bytes.len() as u64 <= self.remaining,
            "more array bytes than its shape holds"
        );
        self.crc.update(bytes);
        self.out.write_all(bytes)?;
        self.remaining -= bytes.len() as u64;
        Ok(())
    }

    /// Writes the directory and the CRC; fails if the array is incomplete.
    pub fn finish(mut self) -> Result<W> {
        ensure!(
            self.remaining == 0,
            "the array is {} bytes short of its shape",
            self.remaining
        );
        let crc = self.crc.clone().finalize();
        let local_len = 30 + NAME.len() as u64 + zip64_extra(0, self.zip64, None).len() as u64;
        let dir_start = local_len + self.entry_size;
        let (zip64, size) = (self.zip64, self.entry_size);
        let mut tail = Vec::new();
        put32(&mut tail, 0x0201_4b50);
        put16(&mut tail, version(zip64)); // made by
        put16(&mut tail, version(zip64)); // needed
        put16(&mut tail, 0);
        put16(&mut tail, 0);
        put16(&mut tail, 0);
        put16(&mut tail, DOS_DATE);
        put32(&mut tail, crc);
        put32(&mut tail, size32(size, zip64));
        put32(&mut tail, size32(size, zip64));
        let extra = zip64_extra(size, zip64, Some(0));
        put16(&mut tail, NAME.len() as u16);
        put16(&mut tail, extra.len() as u16);
        put16(&mut tail, 0); // comment
        put16(&mut tail, 0); // disk
        put16(&mut tail, 0); // internal attributes
        put32(&mut tail, 0); // external attributes
        put32(&mut tail, if zip64 { u32::MAX } else { 0 }); // local header offset
        tail.extend_from_slice(NAME.as_bytes());
        tail.extend_from_slice(&extra);
        let dir_size = tail.len() as u64;
        if zip64 {
            let record = dir_start + dir_size;
            put32(&mut tail, 0x0606_4b50);
            tail.extend_from_slice(&44u64.to_le_bytes());
            put16(&mut tail, 45);
            put16(&mut tail, 45);
            put32(&mut tail, 0);
            put32(&mut tail, 0);
            tail.extend_from_slice(&1u64.to_le_bytes());
            tail.extend_from_slice(&1u64.to_le_bytes());
            tail.extend_from_slice(&dir_size.to_le_bytes());
            tail.extend_from_slice(&dir_start.to_le_bytes());
            put32(&mut tail, 0x0706_4b50);
            put32(&mut tail, 0);
            tail.extend_from_slice(&record.to_le_bytes());
            put32(&mut tail, 1);
        }
        put32(&mut tail, 0x0605_4b50);
        put16(&mut tail, 0);
        put16(&mut tail, 0);
        put16(&mut tail, if zip64 { u16::MAX } else { 1 });
        put16(&mut tail, if zip64 { u16::MAX } else { 1 });
        put32(&mut tail, size32(dir_size, zip64));
        put32(&mut tail, size32(dir_start, zip64));
        put16(&mut tail, 0);
        self.out.write_all(&tail)?;
        self.out.seek(SeekFrom::Start(CRC_AT))?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// 1980-01-01, the earliest DOS date: no timestamp, so equal arrays give equal files.
const DOS_DATE: u16 = 0x21;

fn version(zip64: bool) -> u16 {
    if zip64 {
        45
    } else {
        20
    }
}

fn size32(v: u64, zip64: bool) -> u32 {
    if zip64 {
        u32::MAX
    } else {
        v as u32
    }
}

/// The ZIP64 extended-information field: sizes and, in the directory, the header offset.
fn zip64_extra(size: u64, zip64: bool, offset: Option<u64>) -> Vec<u8> {
    if !zip64 {
        return Vec::new();
    }
    let mut e = Vec::new();
    put16(&mut e, 1);
    put16(&mut e, if offset.is_some() { 24 } else { 16 });
    e.extend_from_slice(&size.to_le_bytes());
    e.extend_from_slice(&size.to_le_bytes());
    if let Some(o) = offset {
        e.extend_from_slice(&o.to_le_bytes());
    }
    e
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_padded_to_64() {
        let b = npy_u8(&[2, 3, 1], &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(
            header.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 1), }")
        );
        assert!(header.ends_with('\n'));
        assert_eq!(&b[10 + hl..], &[1, 2, 3, 4, 5, 6]);
        assert!(npy_u8(&[2, 2], &[0; 3]).is_err());
    }

    #[test]
    fn zip_has_one_stored_entry_with_its_crc() {
        let shape = [2, 2, 2, 1];
        let mut w = NpzWriter::new(std::io::Cursor::new(Vec::new()), &shape).unwrap();
        w.write(&[1, 2, 3, 4]).unwrap();
        w.write(&[5, 6, 7, 8]).unwrap();
        assert!(w.write(&[9]).is_err());
        let z = w.finish().unwrap().into_inner();
        let npy = npy_u8(&shape, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(&z[..4], &[0x50, 0x4b, 0x03, 0x04]);
        assert_eq!(
            u32::from_le_bytes(z[14..18].try_into().unwrap()),
            crc32fast::hash(&npy)
        );
        assert_eq!(&z[30..39], b"arr_0.npy");
        assert_eq!(&z[39..39 + npy.len()], &npy[..]);
        // End of central directory: one entry, directory right after the data.
        let eocd = &z[z.len() - 22..];
        assert_eq!(&eocd[..4], &[0x50, 0x4b, 0x05, 0x06]);
        assert_eq!(u16::from_le_bytes([eocd[10], eocd[11]]), 1);
        let dir = u32::from_le_bytes(eocd[16..20].try_into().unwrap()) as usize;
        assert_eq!(dir, 39 + npy.len());
        assert_eq!(&z[dir..dir + 4], &[0x50, 0x4b, 0x01, 0x02]);
        let short = NpzWriter::new(std::io::Cursor::new(Vec::new()), &shape).unwrap();
        assert!(short.finish().is_err());
    }

    #[test]
    fn zip64_layout_when_forced() {
        let shape = [3, 2, 2, 1];
        let mut w = NpzWriter::start(std::io::Cursor::new(Vec::new()), &shape, true).unwrap();
        w.write(&[7; 12]).unwrap();
        let z = w.finish().unwrap().into_inner();
        // Written for a manual check with numpy.load (the large-file path of real runs).
        let _ = std::fs::write(std::env::temp_dir().join("ddim-npz-zip64-test.npz"), &z);
        let eocd = &z[z.len() - 22..];
        assert_eq!(&eocd[..4], &[0x50, 0x4b, 0x05, 0x06]);
        assert_eq!(u16::from_le_bytes([eocd[10], eocd[11]]), u16::MAX);
        let locator = &z[z.len() - 42..z.len() - 22];
        assert_eq!(&locator[..4], &[0x50, 0x4b, 0x06, 0x07]);
        let record = u64::from_le_bytes(locator[8..16].try_into().unwrap()) as usize;
        assert_eq!(&z[record..record + 4], &[0x50, 0x4b, 0x06, 0x06]);
    }
}
