//! The encryption context: UTF-8 pairs bound to the message, serialized canonically.

use std::collections::BTreeMap;

use super::codec::{put_vec16, Reader};
use super::FormatError;

/// Keys with this prefix are reserved for the library itself.
pub const RESERVED_PREFIX: &str = "aws-crypto-";

/// The context key that carries a signed message's verification key.
pub const PUBLIC_KEY_FIELD: &str = "aws-crypto-public-key";

/// Non-secret, authenticated name/value pairs bound to a message (for example
/// `{"purpose": "backup", "volume": "vol-0abc"}`). KMS also binds them to the wrapped key.
///
/// The pairs are kept sorted by the UTF-8 bytes of the key, which is the canonical order of the
/// wire format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a pair, returning `self` for chaining.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// Adds or replaces a pair.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Removes a pair, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// Whether the context has `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs in canonical (UTF-8 byte) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The canonical serialization: empty for an empty context, else a `u16` count and each
    /// pair as `u16 len ‖ key ‖ u16 len ‖ value`, sorted by key bytes.
    ///
    /// # Errors
    /// [`FormatError::ContextTooLarge`] when a field or the whole does not fit in 65,535 bytes.
    pub fn serialize(&self) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        if self.0.is_empty() {
            return Ok(out);
        }
        if self.0.len() > u16::MAX as usize {
            return Err(FormatError::ContextTooLarge);
        }
        out.extend_from_slice(&(self.0.len() as u16).to_be_bytes());
        for (k, v) in &self.0 {
            if k.len() > u16::MAX as usize || v.len() > u16::MAX as usize {
                return Err(FormatError::ContextTooLarge);
            }
            put_vec16(&mut out, k.as_bytes());
            put_vec16(&mut out, v.as_bytes());
        }
        if out.len() > u16::MAX as usize {
            return Err(FormatError::ContextTooLarge);
        }
        Ok(out)
    }

    /// Parses the header's context field (the bytes after its `u16` length). Accepts the
    /// legacy empty form `00 00` (count 0); refuses duplicate keys, invalid UTF-8 and bytes
    /// left over.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut map = BTreeMap::new();
        if bytes.is_empty() {
            return Ok(EncryptionContext(map));
        }
        let mut r = Reader::new(bytes);
        let count = r.u16().map_err(|_| FormatError::BadContext("truncated"))?;
        if count == 0 && r.remaining() == 0 {
            return Ok(EncryptionContext(map));
        }
        if count == 0 {
            return Err(FormatError::BadContext("zero pairs but bytes follow"));
        }
        for _ in 0..count {
            let k = r
                .vec16()
                .map_err(|_| FormatError::BadContext("truncated"))?;
            let v = r
                .vec16()
                .map_err(|_| FormatError::BadContext("truncated"))?;
            let k = std::str::from_utf8(k).map_err(|_| FormatError::BadContext("invalid UTF-8"))?;
            let v = std::str::from_utf8(v).map_err(|_| FormatError::BadContext("invalid UTF-8"))?;
            // Canonical order is strictly increasing key bytes; this also refuses duplicates.
            if map
                .keys()
                .next_back()
                .is_some_and(|last: &String| last.as_bytes() >= k.as_bytes())
            {
                return Err(FormatError::BadContext(
                    "keys duplicated or not in canonical order",
                ));
            }
            map.insert(k.to_owned(), v.to_owned());
        }
        if r.remaining() != 0 {
            return Err(FormatError::BadContext("bytes left after the last pair"));
        }
        Ok(EncryptionContext(map))
    }

    /// The first key that uses the reserved `aws-crypto-` prefix, if any.
    pub(crate) fn reserved_key(&self) -> Option<&str> {
        self.0
            .keys()
            .map(String::as_str)
            .find(|k| k.starts_with(RESERVED_PREFIX))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EncryptionContext {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        EncryptionContext(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<'a> IntoIterator for &'a EncryptionContext {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_utf8_bytes_and_round_trips() {
        let ec: EncryptionContext = [
            ("b", "2"),
            ("unicode_key_ловие", "x"),
            ("a", "1"),
            ("Z", "0"),
        ]
        .into_iter()
        .collect();
        let bytes = ec.serialize().unwrap();
        assert_eq!(&bytes[..2], &[0, 4]);
        assert_eq!(&bytes[2..5], &[0, 1, b'Z']);
        assert_eq!(EncryptionContext::parse(&bytes).unwrap(), ec);
        assert!(EncryptionContext::new().serialize().unwrap().is_empty());
    }

    #[test]
    fn legacy_empty_form_accepted_and_malformed_forms_refused() {
        assert!(EncryptionContext::parse(&[0, 0]).unwrap().is_empty());
        let dup = [0, 2, 0, 1, b'a', 0, 0, 0, 1, b'a', 0, 0];
        assert!(EncryptionContext::parse(&dup).is_err());
        let unsorted = [0, 2, 0, 1, b'b', 0, 0, 0, 1, b'a', 0, 0];
        assert!(
            EncryptionContext::parse(&unsorted).is_err(),
            "found by fuzzing the header"
        );
        let bad_utf8 = [0, 1, 0, 1, 0xFF, 0, 0];
        assert!(EncryptionContext::parse(&bad_utf8).is_err());
        let trailing = [0, 1, 0, 1, b'a', 0, 0, 9];
        assert!(EncryptionContext::parse(&trailing).is_err());
        assert!(EncryptionContext::parse(&[0, 1, 0, 5, b'a']).is_err());
    }

    #[test]
    fn oversized_context_is_refused() {
        let ec = EncryptionContext::new().with("k", "v".repeat(65_535));
        assert!(matches!(ec.serialize(), Err(FormatError::ContextTooLarge)));
    }
}
