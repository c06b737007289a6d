//! The stored entry format: a small binary header followed by the encoded payload.
//!
//! ```text
//! offset size field
//! 0      2    magic "CL"
//! 2      1    format version (2)
//! 3      1    flags: bits 0-1 codec (0 MessagePack, 1 JSON), bit 2 lz4-compressed payload,
//!             bit 7 tombstone (a deleted entry: no tags, no payload)
//! 4      8    created_ms      (unix ms, big endian; the moment the load that produced it started)
//! 12     8    fresh_until_ms
//! 20     8    stale_until_ms  (hard expiry; Redis TTL points here)
//! 28     4    delta_ms        (how long the load took, for early recomputation)
//! 32     8    write id        (random per write: a fill replaces only the value its load saw)
//! 40     2    tag count, then per tag: u16 length + UTF-8 bytes + u64 hard + u64 soft version
//!             (the tag's versions when the load started)
//! ..          payload (lz4 block with a u32 LE size prefix when compressed)
//! ```
//!
//! Anything that does not parse (foreign bytes, truncation, a newer format, a payload that does not
//! decode as the requested type) is a [`DecodeError`], which the engine treats as a miss.

use std::borrow::Cow;

use serde::{de::DeserializeOwned, Serialize};

use crate::{store::TagTimes, Error};

const MAGIC: &[u8; 2] = b"CL";
const FORMAT_VERSION: u8 = 2;
/// Bytes up to and including the write id (what a tombstone consists of).
const WRITE_ID_END: usize = 40;
const FIXED_HEADER_LEN: usize = 42;
const FLAG_CODEC_MASK: u8 = 0b0000_0011;
const FLAG_LZ4: u8 = 0b0000_0100;
const FLAG_TOMBSTONE: u8 = 0b1000_0000;
/// Payloads larger than this are lz4-compressed.
pub(crate) const COMPRESS_THRESHOLD: usize = 1024;
/// Largest decompressed payload accepted (Redis' own value limit).
const MAX_PAYLOAD: usize = 512 * 1024 * 1024;
/// The most an lz4 block can expand: one literal-length/match token of the format covers at most
/// 255 bytes per input byte (the format's limit is just under 255:1). A size prefix claiming more
/// than this times the compressed length is corrupt (or a decompression bomb) and rejected before
/// anything is allocated.
const LZ4_MAX_RATIO: usize = 255;

/// Payload serialization format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack via `rmp-serde` (compact, fast). The default.
    #[default]
    MessagePack,
    /// JSON via `serde_json` (readable with `redis-cli`).
    Json,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::MessagePack => 0,
            Codec::Json => 1,
        }
    }

    fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::MessagePack),
            1 => Some(Codec::Json),
            _ => None,
        }
    }

    pub(crate) fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, Error> {
        match self {
            // Named (map) encoding keeps structs readable across field reordering.
            Codec::MessagePack => {
                rmp_serde::to_vec_named(value).map_err(|e| Error::Encode(e.to_string()))
            }
            Codec::Json => serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string())),
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        match self {
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|_| DecodeError::Payload),
            Codec::Json => serde_json::from_slice(bytes).map_err(|_| DecodeError::Payload),
        }
    }
}

/// Why stored bytes could not be used. Always treated as a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not our format (no magic) or cut short.
    Foreign,
    /// Our magic, but a format version or codec this build does not know.
    UnknownFormat,
    /// The header lies about its own length or the compressed block is broken.
    Corrupt,
    /// The payload does not decode as the requested type.
    Payload,
    /// A tombstone left by `delete` (a miss, not corruption).
    Deleted,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecodeError::Foreign => "not a cache-layer entry (foreign or truncated bytes)",
            DecodeError::UnknownFormat => "entry written by an unknown format version or codec",
            DecodeError::Corrupt => "corrupt entry header or compressed payload",
            DecodeError::Payload => "payload does not decode as the requested type",
            DecodeError::Deleted => "a tombstone left by delete",
        })
    }
}

/// Timing metadata written into every entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) created_ms: u64,
    pub(crate) fresh_until_ms: u64,
    pub(crate) stale_until_ms: u64,
    pub(crate) delta_ms: u32,
}

/// Encodes `value` into a complete entry.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    codec: Codec,
    timing: Timing,
    tags: &[(String, TagTimes)],
) -> Result<Vec<u8>, Error> {
    let payload = codec.encode(value)?;
    encode_payload(&payload, codec, timing, tags)
}

/// A tombstone: what `delete` leaves under an entry's key for a while, so a fill whose load
/// started before the delete (and saw the old value, or nothing) is refused.
pub(crate) fn tombstone() -> Vec<u8> {
    let mut out = Vec::with_capacity(WRITE_ID_END);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(FLAG_TOMBSTONE);
    out.extend_from_slice(&[0u8; 28]);
    out.extend_from_slice(&rand::random::<u64>().to_be_bytes());
    out
}

/// What a fill expects to find under its key when it writes: exactly what its load saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing.
    Absent,
    /// An entry or tombstone of this format with this write id.
    Write([u8; 8]),
    /// Bytes of another format (foreign, corrupt or older): a fill may replace them.
    Foreign,
}

impl Seen {
    /// What `bytes` (the value under an entry's key, if any) count as.
    pub(crate) fn of(bytes: Option<&[u8]>) -> Seen {
        match bytes {
            None => Seen::Absent,
            Some(b) if b.len() >= WRITE_ID_END && &b[..2] == MAGIC && b[2] == FORMAT_VERSION => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&b[32..WRITE_ID_END]);
                Seen::Write(id)
            }
            Some(_) => Seen::Foreign,
        }
    }

    /// What a failed read of the key says it holds: a value of another Redis type
    /// (`WRONGTYPE`) counts as foreign (a fill replaces it); `None` for any other failure.
    pub(crate) fn of_failed_read(err: &Error) -> Option<Seen> {
        match err {
            Error::Redis(e) if e.code() == Some("WRONGTYPE") => Some(Seen::Foreign),
            _ => None,
        }
    }

    /// The argument of the conditional-fill script: empty (absent), the 8-byte write id, or `x`.
    pub(crate) fn as_arg(&self) -> Vec<u8> {
        match self {
            Seen::Absent => Vec::new(),
            Seen::Write(id) => id.to_vec(),
            Seen::Foreign => b"x".to_vec(),
        }
    }
}

/// Wraps an already-encoded payload in an entry header.
pub(crate) fn encode_payload(
    payload: &[u8],
    codec: Codec,
    timing: Timing,
    tags: &[(String, TagTimes)],
) -> Result<Vec<u8>, Error> {
    let tags_len: usize = tags.iter().map(|(t, _)| 2 + t.len() + 16).sum();
    if tags.len() > u16::MAX as usize || tags.iter().any(|(t, _)| t.len() > u16::MAX as usize) {
        return Err(Error::Encode(
            "too many tags or a tag longer than 65535 bytes".into(),
        ));
    }
    let compress = payload.len() > COMPRESS_THRESHOLD;
    let mut out = Vec::with_capacity(FIXED_HEADER_LEN + tags_len + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(codec.id() | if compress { FLAG_LZ4 } else { 0 });
    out.extend_from_slice(&timing.created_ms.to_be_bytes());
    out.extend_from_slice(&timing.fresh_until_ms.to_be_bytes());
    out.extend_from_slice(&timing.stale_until_ms.to_be_bytes());
    out.extend_from_slice(&timing.delta_ms.to_be_bytes());
    out.extend_from_slice(&rand::random::<u64>().to_be_bytes());
    out.extend_from_slice(&(tags.len() as u16).to_be_bytes());
    for (tag, versions) in tags {
        out.extend_from_slice(&(tag.len() as u16).to_be_bytes());
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(&versions.hard_ms.to_be_bytes());
        out.extend_from_slice(&versions.soft_ms.to_be_bytes());
    }
    if compress {
        out.extend_from_slice(&lz4_flex::compress_prepend_size(payload));
    } else {
        out.extend_from_slice(payload);
    }
    Ok(out)
}

/// The decompressed payload size of an encoded entry (its length when it does not parse).
pub(crate) fn payload_len(bytes: &[u8]) -> usize {
    Envelope::parse(bytes).map_or(bytes.len(), |e| e.payload_len())
}

/// A parsed entry borrowing the stored bytes. Parsing checks the header only; the payload is
/// decoded on demand by [`Envelope::decode`].
#[derive(Debug, Clone)]
pub(crate) struct Envelope<'a> {
    pub(crate) codec: Codec,
    pub(crate) timing: Timing,
    tags: &'a [u8],
    tag_count: u16,
    compressed: bool,
    payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parses the header of a stored entry.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() >= WRITE_ID_END
            && &bytes[..2] == MAGIC
            && bytes[2] == FORMAT_VERSION
            && bytes[3] == FLAG_TOMBSTONE
        {
            return Err(DecodeError::Deleted);
        }
        if bytes.len() < FIXED_HEADER_LEN || &bytes[..2] != MAGIC {
            return Err(DecodeError::Foreign);
        }
        if bytes[2] != FORMAT_VERSION {
            return Err(DecodeError::UnknownFormat);
        }
        let flags = bytes[3];
        if flags & !(FLAG_CODEC_MASK | FLAG_LZ4) != 0 {
            return Err(DecodeError::UnknownFormat);
        }
        let codec = Codec::from_id(flags & FLAG_CODEC_MASK).ok_or(DecodeError::UnknownFormat)?;
        let u64_at = |at: usize| {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(buf)
        };
        let timing = Timing {
            created_ms: u64_at(4),
            fresh_until_ms: u64_at(12),
            stale_until_ms: u64_at(20),
            delta_ms: u32::from_be_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]),
        };
        if timing.fresh_until_ms > timing.stale_until_ms {
            return Err(DecodeError::Corrupt);
        }
        let tag_count = u16::from_be_bytes([bytes[40], bytes[41]]);
        let mut at = FIXED_HEADER_LEN;
        for _ in 0..tag_count {
            let len_bytes = bytes.get(at..at + 2).ok_or(DecodeError::Corrupt)?;
            let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
            let tag = bytes
                .get(at + 2..at + 2 + len + 16)
                .ok_or(DecodeError::Corrupt)?;
            std::str::from_utf8(&tag[..len]).map_err(|_| DecodeError::Corrupt)?;
            at += 2 + len + 16;
        }
        Ok(Envelope {
            codec,
            timing,
            tags: &bytes[FIXED_HEADER_LEN..at],
            tag_count,
            compressed: flags & FLAG_LZ4 != 0,
            payload: &bytes[at..],
        })
    }

    /// The entry's tags, without allocating.
    pub(crate) fn tags(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.tag_versions().map(|(tag, _)| tag)
    }

    /// The entry's tags with the versions they had when its load started.
    pub(crate) fn tag_versions(&self) -> impl Iterator<Item = (&'a str, TagTimes)> + 'a {
        let mut rest = self.tags;
        (0..self.tag_count).filter_map(move |_| {
            let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
            let tag = rest.get(2..2 + len)?;
            let versions = rest.get(2 + len..2 + len + 16)?;
            let u64_at = |at: usize| {
                let mut buf = [0u8; 8];
                buf.copy_from_slice(&versions[at..at + 8]);
                u64::from_be_bytes(buf)
            };
            let times = TagTimes {
                hard_ms: u64_at(0),
                soft_ms: u64_at(8),
            };
            rest = &rest[2 + len + 16..];
            // Validated as UTF-8 in `parse`.
            Some((std::str::from_utf8(tag).ok()?, times))
        })
    }

    /// The payload's size once decompressed (from the size prefix; nothing is decompressed):
    /// what a decoded value is weighed by in L1.
    pub(crate) fn payload_len(&self) -> usize {
        match (self.compressed, self.payload.get(..4)) {
            (true, Some(prefix)) => {
                u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize
            }
            _ => self.payload.len(),
        }
    }

    /// The (decompressed) payload bytes.
    pub(crate) fn payload(&self) -> Result<Cow<'a, [u8]>, DecodeError> {
        if !self.compressed {
            return Ok(Cow::Borrowed(self.payload));
        }
        let size_prefix = self.payload.get(..4).ok_or(DecodeError::Corrupt)?;
        let size = u32::from_le_bytes([
            size_prefix[0],
            size_prefix[1],
            size_prefix[2],
            size_prefix[3],
        ]) as usize;
        let block = &self.payload[4..];
        if size > MAX_PAYLOAD || size > block.len().saturating_mul(LZ4_MAX_RATIO) {
            return Err(DecodeError::Corrupt);
        }
        match lz4_flex::decompress(block, size) {
            // The prefix is the exact size: anything else is a corrupt entry.
            Ok(payload) if payload.len() == size => Ok(Cow::Owned(payload)),
            _ => Err(DecodeError::Corrupt),
        }
    }

    /// Decodes the payload as `T`.
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let payload = self.payload()?;
        self.codec.decode(&payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Product {
        id: u64,
        name: String,
        price_cents: u32,
    }

    fn timing() -> Timing {
        Timing {
            created_ms: 1_000,
            fresh_until_ms: 2_000,
            stale_until_ms: 3_000,
            delta_ms: 42,
        }
    }

    fn product() -> Product {
        Product {
            id: 42,
            name: "espresso machine".into(),
            price_cents: 19_900,
        }
    }

    #[test]
    fn round_trips_header_tags_and_payload_in_both_codecs() {
        for codec in [Codec::MessagePack, Codec::Json] {
            let v = |hard_ms, soft_ms| TagTimes { hard_ms, soft_ms };
            let tags = vec![
                ("product:42".to_string(), v(7, 0)),
                ("catalog".to_string(), v(u64::MAX, 3)),
                (String::new(), v(0, 0)),
            ];
            let bytes = encode(&product(), codec, timing(), &tags).unwrap();
            let env = Envelope::parse(&bytes).unwrap();
            assert_eq!(env.codec, codec);
            assert_eq!(env.timing, timing());
            assert_eq!(
                env.tags().collect::<Vec<_>>(),
                vec!["product:42", "catalog", ""]
            );
            assert_eq!(
                env.tag_versions().map(|(_, v)| v).collect::<Vec<_>>(),
                vec![v(7, 0), v(u64::MAX, 3), v(0, 0)]
            );
            assert_eq!(env.decode::<Product>().unwrap(), product());
        }
    }

    #[test]
    fn json_payload_is_readable() {
        let bytes = encode(&product(), Codec::Json, timing(), &[]).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("\"name\":\"espresso machine\""), "{text}");
    }

    #[test]
    fn large_payloads_are_compressed_and_round_trip() {
        let big = "x".repeat(64 * 1024);
        let bytes = encode(&big, Codec::MessagePack, timing(), &[]).unwrap();
        assert!(
            bytes.len() < 4 * 1024,
            "compressed to {} bytes",
            bytes.len()
        );
        assert_eq!(
            Envelope::parse(&bytes).unwrap().decode::<String>().unwrap(),
            big
        );
        let small = "y".repeat(100);
        let bytes = encode(&small, Codec::MessagePack, timing(), &[]).unwrap();
        assert_eq!(bytes[3] & FLAG_LZ4, 0);
    }

    #[test]
    fn foreign_bytes_are_rejected() {
        for raw in [&b""[..], b"hello", b"{\"id\":1}", &[0u8; 64][..], b"CL"] {
            assert_eq!(
                Envelope::parse(raw).unwrap_err(),
                DecodeError::Foreign,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let tags = vec![("a-tag".to_string(), TagTimes::default())];
        for value in ["short".to_string(), "z".repeat(5000)] {
            let bytes = encode(&value, Codec::MessagePack, timing(), &tags).unwrap();
            for cut in 0..bytes.len() {
                let result = Envelope::parse(&bytes[..cut]).and_then(|e| e.decode::<String>());
                assert!(result.is_err(), "truncated at {cut} decoded");
            }
        }
    }

    #[test]
    fn unknown_versions_and_flags_are_rejected() {
        let mut bytes = encode(&product(), Codec::MessagePack, timing(), &[]).unwrap();
        bytes[2] = 99;
        assert_eq!(
            Envelope::parse(&bytes).unwrap_err(),
            DecodeError::UnknownFormat
        );
        bytes[2] = FORMAT_VERSION;
        bytes[3] = 0b0100_0000;
        assert_eq!(
            Envelope::parse(&bytes).unwrap_err(),
            DecodeError::UnknownFormat
        );
        bytes[3] = 3; // codec id 3 does not exist
        assert_eq!(
            Envelope::parse(&bytes).unwrap_err(),
            DecodeError::UnknownFormat
        );
    }

    #[test]
    fn corrupt_payloads_and_size_prefixes_are_errors() {
        let mut bytes = encode(&"q".repeat(4096), Codec::MessagePack, timing(), &[]).unwrap();
        // Claim a 4 GiB decompressed size.
        bytes[FIXED_HEADER_LEN..FIXED_HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Envelope::parse(&bytes).unwrap().payload().unwrap_err(),
            DecodeError::Corrupt
        );
        // A size prefix larger than the block can expand to (a decompression bomb) is rejected
        // before allocating; one that is merely wrong is rejected after decompressing.
        let original = encode(&"q".repeat(4096), Codec::MessagePack, timing(), &[]).unwrap();
        let block_len = original.len() - FIXED_HEADER_LEN - 4;
        for claimed in [(block_len * LZ4_MAX_RATIO + 1) as u32, 4100, 4098] {
            let mut bytes = original.clone();
            bytes[FIXED_HEADER_LEN..FIXED_HEADER_LEN + 4].copy_from_slice(&claimed.to_le_bytes());
            assert_eq!(
                Envelope::parse(&bytes).unwrap().payload().unwrap_err(),
                DecodeError::Corrupt,
                "claimed {claimed}"
            );
        }
        let mut bytes = encode(&product(), Codec::MessagePack, timing(), &[]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bytes[FIXED_HEADER_LEN] = 0xc1; // reserved, never valid MessagePack
        assert!(Envelope::parse(&bytes)
            .unwrap()
            .decode::<Product>()
            .is_err());
    }

    #[test]
    fn type_mismatch_is_a_payload_error() {
        let bytes = encode(&product(), Codec::MessagePack, timing(), &[]).unwrap();
        let env = Envelope::parse(&bytes).unwrap();
        assert_eq!(env.decode::<Vec<u64>>().unwrap_err(), DecodeError::Payload);
        assert_eq!(env.decode::<String>().unwrap_err(), DecodeError::Payload);
    }

    #[test]
    fn inconsistent_timing_is_corrupt() {
        let bad = Timing {
            fresh_until_ms: 5_000,
            stale_until_ms: 1_000,
            ..timing()
        };
        let bytes = encode(&1u8, Codec::MessagePack, bad, &[]).unwrap();
        assert_eq!(Envelope::parse(&bytes).unwrap_err(), DecodeError::Corrupt);
    }

    #[test]
    fn invalid_utf8_tag_is_corrupt() {
        let mut bytes = encode(
            &1u8,
            Codec::MessagePack,
            timing(),
            &[("ab".to_string(), TagTimes::default())],
        )
        .unwrap();
        bytes[FIXED_HEADER_LEN + 2] = 0xff;
        assert_eq!(Envelope::parse(&bytes).unwrap_err(), DecodeError::Corrupt);
    }

    #[test]
    fn tombstones_and_write_ids() {
        let tomb = tombstone();
        assert_eq!(Envelope::parse(&tomb).unwrap_err(), DecodeError::Deleted);
        let a = encode(&1u8, Codec::MessagePack, timing(), &[]).unwrap();
        let b = encode(&1u8, Codec::MessagePack, timing(), &[]).unwrap();
        assert!(matches!(Seen::of(Some(&a)), Seen::Write(_)));
        assert_ne!(
            Seen::of(Some(&a)),
            Seen::of(Some(&b)),
            "every write has its own id"
        );
        assert_ne!(Seen::of(Some(&tomb)), Seen::of(Some(&tombstone())));
        assert_eq!(Seen::of(None), Seen::Absent);
        assert_eq!(Seen::of(Some(b"foreign")), Seen::Foreign);
        assert_eq!(Seen::of(None).as_arg(), b"");
        assert_eq!(Seen::of(Some(&a)).as_arg(), a[32..40].to_vec());
    }
}
