//! Where an object lives in the bucket: `{prefix}{hh}/{id:016x}.sso`, where
//! `hh` is a hash of the id, so that keys spread across S3's key-range
//! partitions instead of piling onto the newest one, and a local directory
//! gets at most 256 subdirectories.
//!
//! Pure code, used on any shard and by the inspection tools.

/// Suffix of stream-set objects.
pub const STREAM_SET_SUFFIX: &str = ".sso";

/// A fixed mix of the id (SplitMix64's finaliser): stable across versions,
/// since keys already written must still be found.
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of stream-set object `id` under `prefix` (empty, or ending in `/`).
pub fn object_key(prefix: &str, id: u64) -> String {
    format!(
        "{prefix}{:02x}/{id:016x}{STREAM_SET_SUFFIX}",
        mix(id) & 0xff
    )
}

/// The object id a key names, if it is one of ours (hash prefix included).
pub fn parse_object_key(prefix: &str, key: &str) -> Option<u64> {
    let rest = key.strip_prefix(prefix)?;
    let (dir, file) = rest.split_once('/')?;
    let hex = file.strip_suffix(STREAM_SET_SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    let id = u64::from_str_radix(hex, 16).ok()?;
    (dir == format!("{:02x}", mix(id) & 0xff)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_spread() {
        let mut dirs = std::collections::HashSet::new();
        for id in 0..2000u64 {
            let k = object_key("objects/", id);
            assert_eq!(parse_object_key("objects/", &k), Some(id));
            dirs.insert(k[8..10].to_string());
        }
        assert!(dirs.len() > 200, "consecutive ids spread: {}", dirs.len());
        assert_eq!(parse_object_key("", "00/0000000000000001.sso"), None);
        assert_eq!(parse_object_key("", "zz/nothex.sso"), None);
        assert_eq!(parse_object_key("x/", &object_key("", 5)), None);
    }
}
