//! Whole-number options (counts, sizes, indices, seeds): each takes [`at_least`], so that a
//! negative, fractional or too large value is refused with the option's name (clap adds it) and
//! its range.

/// An unsigned type an option can hold, with its largest value.
pub trait Whole: TryFrom<u64> {
    const MAX: u64;
}

impl Whole for u64 {
    const MAX: u64 = u64::MAX;
}

impl Whole for usize {
    const MAX: u64 = usize::MAX as u64;
}

impl Whole for u32 {
    const MAX: u64 = u32::MAX as u64;
}

/// Parses a whole number from `MIN` to the type's largest value, for
/// `#[arg(value_parser = at_least::<usize, 1>)]`.
pub fn at_least<T: Whole, const MIN: u64>(text: &str) -> Result<T, String> {
    let range = || format!("a whole number, at least {MIN} and at most {}", T::MAX);
    let t = text.trim();
    match t.parse::<u64>() {
        Ok(v) if (MIN..=T::MAX).contains(&v) => T::try_from(v).map_err(|_| range()),
        Ok(v) => Err(format!("{v} is out of range: expected {}", range())),
        Err(_) if t.starts_with('-') && t[1..].parse::<f64>().is_ok() => {
            Err(format!("it is negative: expected {}", range()))
        }
        Err(_) => Err(format!("expected {}", range())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_named() {
        assert_eq!(at_least::<usize, 1>("3"), Ok(3));
        assert_eq!(at_least::<u64, 0>(" 0 "), Ok(0));
        let e = at_least::<usize, 1>("-1").unwrap_err();
        assert!(e.contains("negative") && e.contains("at least 1"), "{e}");
        let e = at_least::<usize, 1>("0").unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = at_least::<u32, 0>("4294967296").unwrap_err();
        assert!(e.contains("at most 4294967295"), "{e}");
        let e = at_least::<u64, 0>("2.5").unwrap_err();
        assert!(e.contains("whole number"), "{e}");
    }
}
