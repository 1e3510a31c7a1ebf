//! Job ids that the API can check without a database.
//!
//! A job id minted by the producer is a UUIDv8 (RFC 9562, "custom"), in
//! byte order:
//!
//! | bits | what |
//! | --- | --- |
//! | 32 | tag: HMAC-SHA256 over the 96 bits after it, keyed by the id secret |
//! | 16 | random |
//! | 4 | version 8 |
//! | 2 | the image format (so a status poll is one `HEAD` of a known key) |
//! | 10 | random |
//! | 2 | variant `10` |
//! | 14 | random |
//! | 48 | Unix time in milliseconds when the job was accepted |
//!
//! So the API tells an id it accepted (and when, and in which format) from
//! one it never did: a typo, a made-up id, or one minted with another
//! secret. With the default empty secret the tag is a keyed checksum that
//! catches those but can be computed by anyone; with `URL2PNG_ID_SECRET`
//! set (the same on every producer) an id cannot be forged either. The
//! alternative, a time-ordered UUIDv7 with the queue's retention, tells
//! when an id was made but not whether it was ever accepted, and its
//! timestamp first would make keys (`<prefix><id>.<ext>`) sequential,
//! which S3 serves from one partition; the tag first spreads them evenly.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::job::ImageFormat;

/// What a verified id says about its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minted {
    /// When the job was accepted (to the millisecond).
    pub at: SystemTime,
    pub format: ImageFormat,
}

const FORMATS: [ImageFormat; 4] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Webp,
    ImageFormat::Pdf,
];

fn tag(secret: &[u8], head: &[u8]) -> [u8; 4] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|e| unreachable!("HMAC takes a key of any length: {e}"));
    mac.update(b"url2png job id v1\0");
    mac.update(head);
    let out = mac.finalize().into_bytes();
    [out[0], out[1], out[2], out[3]]
}

/// A new id for a job accepted `at`, rendered to `format`.
pub fn mint(secret: &[u8], format: ImageFormat, at: SystemTime) -> Uuid {
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let ms = u64::try_from(ms).unwrap_or(u64::MAX) & 0xFFFF_FFFF_FFFF;
    let random = fastrand::u64(..).to_be_bytes();
    let code = FORMATS.iter().position(|f| *f == format).unwrap_or(0) as u8;
    let mut bytes = [0u8; 16];
    bytes[4..6].copy_from_slice(&random[..2]);
    bytes[6] = 0x80 | (code << 2) | (random[2] & 0x03);
    bytes[7] = random[3];
    bytes[8] = 0x80 | (random[4] & 0x3F);
    bytes[9] = random[5];
    bytes[10..].copy_from_slice(&ms.to_be_bytes()[2..]);
    let t = tag(secret, &bytes[4..]);
    bytes[..4].copy_from_slice(&t);
    Uuid::from_bytes(bytes)
}

/// What `id` says, if it was minted with `secret`.
pub fn verify(secret: &[u8], id: Uuid) -> Option<Minted> {
    let bytes = id.as_bytes();
    if bytes[6] >> 4 != 8 || bytes[8] >> 6 != 0b10 {
        return None;
    }
    if tag(secret, &bytes[4..]) != bytes[..4] {
        return None;
    }
    let format = *FORMATS.get(usize::from((bytes[6] >> 2) & 0x03))?;
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&bytes[10..]);
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(ms));
    Some(Minted { at, format })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_verify_and_say_when_and_what() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        for format in FORMATS {
            let id = mint(b"s3cret", format, at);
            assert_eq!(id.get_version_num(), 8, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(verify(b"s3cret", id), Some(Minted { at, format }));
        }
    }

    #[test]
    fn other_ids_do_not_verify() {
        let at = SystemTime::now();
        let id = mint(b"s3cret", ImageFormat::Png, at);
        assert_eq!(verify(b"another", id), None, "minted with another secret");
        assert_eq!(verify(b"s3cret", Uuid::new_v4()), None);
        assert_eq!(verify(b"s3cret", Uuid::nil()), None);
        // Any one bit changed breaks the tag (or the version or variant).
        for bit in 0..128 {
            let flipped = Uuid::from_u128(id.as_u128() ^ (1u128 << bit));
            assert_eq!(verify(b"s3cret", flipped), None, "bit {bit}");
        }
    }

    #[test]
    fn ids_of_one_millisecond_differ_and_spread_over_the_keyspace() {
        let at = SystemTime::now();
        let ids: std::collections::HashSet<Uuid> = (0..10_000)
            .map(|_| mint(b"", ImageFormat::Png, at))
            .collect();
        assert_eq!(ids.len(), 10_000);
        // Keys start with the id: its first character takes all 16 values
        // about equally, so S3 can split the keys on it.
        let mut first = [0usize; 16];
        for id in &ids {
            first[usize::from(id.as_bytes()[0] >> 4)] += 1;
        }
        assert!(first.iter().all(|n| (400..=850).contains(n)), "{first:?}");
    }
}
