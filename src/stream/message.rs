//! Once per message: materials from the keyring, key derivation, header, header tag.

use std::sync::Arc;

use crate::crypto::kdf::derive;
use crate::crypto::signature::{Signer, Verifier};
use crate::crypto::AeadKey;
use crate::format::{ContentType, EncryptionContext, Header, HeaderBody, PUBLIC_KEY_FIELD};
use crate::materials::{DecryptionMaterials, EncryptionMaterials, HeaderCheck};
use crate::{Error, Limit};

use super::machine::{FrameCipher, MessageId, Opener, Sealer, HEADER_IV};
use super::options::{Decryptor, Encryptor};

/// Splits the full context into the stored part and the required-only part.
fn split_context(
    full: &EncryptionContext,
    required: &[String],
) -> (EncryptionContext, EncryptionContext) {
    let mut stored = full.clone();
    let mut required_only = EncryptionContext::new();
    for key in required {
        if let Some(v) = stored.remove(key) {
            required_only.insert(key.clone(), v);
        }
    }
    (stored, required_only)
}

/// Header tag AAD: the header body as written, then the required-only pairs.
fn header_aad(body_bytes: &[u8], required_only: &EncryptionContext) -> Result<Vec<u8>, Error> {
    let mut aad = body_bytes.to_vec();
    aad.extend_from_slice(&required_only.serialize()?);
    Ok(aad)
}

/// Runs the keyring and builds the header. Returns the serialized header and the sealer that
/// continues the message.
pub(crate) async fn begin_encrypt(opts: &Encryptor<'_>) -> Result<(Vec<u8>, Sealer), Error> {
    let suite = opts.suite;
    if opts.frame_length == 0 {
        return Err(Error::Misuse(
            "frame length must be between 1 and 4294967295 bytes".into(),
        ));
    }
    if !opts.policy.allows_encrypt(suite) {
        return Err(Error::SuiteNotAllowed {
            suite,
            policy: opts.policy,
            encrypting: true,
        });
    }
    if let Some(k) = opts.context.reserved_key() {
        return Err(Error::ReservedContextKey(k.to_owned()));
    }
    if let Some(k) = opts
        .required_keys
        .iter()
        .find(|k| !opts.context.contains_key(k))
    {
        return Err(Error::Misuse(format!(
            "required context key {k:?} is not in the encryption context: add the pair"
        )));
    }
    let mut full = opts.context.clone();
    let mut signer = None;
    if let Some(alg) = suite.signature() {
        let (s, public) =
            Signer::generate(alg).map_err(|_| Error::Crypto("ECDSA key generation failed"))?;
        full.insert(PUBLIC_KEY_FIELD, public);
        signer = Some(s);
    }
    // Fail on an oversized context before any keyring call.
    full.serialize()?;

    let mut materials = EncryptionMaterials::new(suite, full.clone());
    materials.plaintext_len = opts.plaintext_len;
    opts.keyring.on_encrypt(&mut materials).await?;
    let data_key = materials
        .data_key
        .take()
        .ok_or_else(|| Error::Keyring("the keyring produced no data key".into()))?;
    if data_key.len() != suite.key_len() {
        return Err(Error::Keyring(format!(
            "the keyring produced a {}-byte data key; suite {suite} needs {}",
            data_key.len(),
            suite.key_len()
        )));
    }
    let edks = materials.encrypted_data_keys;
    if edks.is_empty() {
        return Err(Error::Keyring("the keyring wrapped no data key".into()));
    }
    if edks.len() > opts.max_encrypted_data_keys as usize {
        return Err(Error::Limit {
            what: Limit::WrappedDataKeys,
            max: opts.max_encrypted_data_keys.into(),
        });
    }

    let message_id = MessageId::generate(suite)?;
    let derived = derive(suite, data_key.as_bytes(), message_id.as_bytes());
    let (stored, required_only) = split_context(&full, &opts.required_keys);
    let body = HeaderBody {
        suite,
        message_id: message_id.as_bytes().to_vec(),
        context: stored,
        encrypted_data_keys: edks,
        content_type: ContentType::Framed,
        frame_length: opts.frame_length,
        commitment: derived.commitment,
    };
    let key = AeadKey::new(opts.backend, &derived.content_key)
        .map_err(|_| Error::Crypto("bad content key length"))?;
    let mut sealer = Sealer::new(key, message_id, opts.frame_length, signer);
    let header = seal_header(&body, &required_only, &mut sealer)?;
    Ok((header, sealer))
}

/// A header whose data key was unwrapped and whose commitment and tag verified.
pub(crate) struct Unwrapped {
    pub(crate) key: AeadKey,
    pub(crate) verifier: Option<Verifier>,
}

/// Checks a parsed header against the options, unwraps its data key with the keyring, checks
/// the commitment and the header tag.
pub(crate) async fn unwrap_header(
    header: &Header,
    opts: &Decryptor<'_>,
) -> Result<Unwrapped, Error> {
    let body = &header.body;
    let suite = body.suite;
    if !opts.policy.allows_decrypt(suite) {
        return Err(Error::SuiteNotAllowed {
            suite,
            policy: opts.policy,
            encrypting: false,
        });
    }
    if body.content_type == ContentType::Framed && body.frame_length > opts.max_frame_length {
        return Err(Error::Limit {
            what: Limit::FrameLength,
            max: opts.max_frame_length.into(),
        });
    }
    let mut full = body.context.clone();
    let mut required_only = EncryptionContext::new();
    for (k, v) in opts.expected_context.iter() {
        match body.context.get(k) {
            Some(stored) if stored == v => {}
            Some(_) => return Err(Error::ContextMismatch { key: k.to_owned() }),
            None => {
                required_only.insert(k, v);
                full.insert(k, v);
            }
        }
    }
    let verifier = match (suite.signature(), body.context.get(PUBLIC_KEY_FIELD)) {
        (Some(alg), Some(public)) => {
            Some(Verifier::new(alg, public).map_err(|_| Error::BadPublicKeyField)?)
        }
        (None, None) => None,
        _ => return Err(Error::BadPublicKeyField),
    };

    let aad = header_aad(&header.body_bytes, &required_only)?;
    let check = Arc::new(HeaderCheck::new(header, aad, opts.backend));
    let mut materials = DecryptionMaterials::checked(suite, full.clone(), check.clone());
    let outcome = opts
        .keyring
        .on_decrypt(&mut materials, &body.encrypted_data_keys)
        .await;
    // However a refused key failed (bad padding, wrong length, wrong key, altered header), and
    // whatever else the keyrings said (an error, or success with no key), the answer is the
    // same: no unwrapping oracle.
    if materials.rejected_a_key() && (outcome.is_err() || materials.data_key().is_none()) {
        return Err(Error::DecryptionFailed);
    }
    outcome?;
    let data_key = materials
        .take_data_key()
        .ok_or_else(|| Error::NoUsableDataKey(Vec::new()))?;
    // The key passed the header check when it was offered; opening again derives the content
    // key.
    let key = check.open(data_key.as_bytes())?;
    let mut verifier = verifier;
    if let Some(v) = &mut verifier {
        v.update(&header.to_bytes());
    }
    Ok(Unwrapped { key, verifier })
}

/// [`unwrap_header`], then the opener for the body.
pub(crate) async fn begin_decrypt(header: &Header, opts: &Decryptor<'_>) -> Result<Opener, Error> {
    let u = unwrap_header(header, opts).await?;
    let body = &header.body;
    let max_body = opts.max_buffered_len as u64;
    let cipher = FrameCipher::new(u.key, body.message_id.clone(), body.frame_length);
    Ok(Opener::new(cipher, body.content_type, u.verifier, max_body))
}

/// Encodes a new message's header and has its sealer seal the tag.
fn seal_header(
    body: &HeaderBody,
    required_only: &EncryptionContext,
    sealer: &mut Sealer,
) -> Result<Vec<u8>, Error> {
    let mut header = Vec::new();
    body.encode(&mut header)?;
    let aad = header_aad(&header, required_only)?;
    if body.version() == 1 {
        header.extend_from_slice(&HEADER_IV);
    }
    sealer.seal_header(&mut header, &aad)?;
    Ok(header)
}

#[cfg(all(test, unix, feature = "nonce-guard"))]
mod tests {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    use super::*;
    use crate::crypto::guard_child::{assert_aborted, assert_passed, case, run};
    use crate::crypto::random_bytes;
    use crate::RawAesKeyring;

    /// What re-wrapping in place did (issue 11, finding 1): read a header written elsewhere,
    /// then seal a new tag under its content key and the header IV. The guard stops it.
    #[test]
    fn the_guard_stops_a_new_tag_for_a_header_that_was_read() {
        const NAME: &str = "the_guard_stops_a_new_tag_for_a_header_that_was_read";
        let Some(case) = case() else {
            // Written here, read in a child that has only ever opened it.
            let mut wrapping = [0u8; 32];
            random_bytes(&mut wrapping).unwrap();
            let keyring = RawAesKeyring::new("guard", "key", &wrapping).unwrap();
            let message = Encryptor::new(&keyring).encrypt(b"data").unwrap();
            let input = format!("{} {}", B64.encode(wrapping), B64.encode(message));
            assert_aborted(
                &run(module_path!(), NAME, &format!("seal {input}")),
                "opened",
            );
            assert_passed(&run(module_path!(), NAME, &format!("read {input}")));
            return;
        };
        let [what, wrapping, message] =
            <[&str; 3]>::try_from(case.split(' ').collect::<Vec<_>>()).unwrap();
        let keyring = RawAesKeyring::new("guard", "key", &B64.decode(wrapping).unwrap()).unwrap();
        let message = B64.decode(message).unwrap();
        let decryptor = Decryptor::new(&keyring);
        let (header, _) = Header::parse(&message, &decryptor.header_limits())
            .unwrap()
            .unwrap();
        let read = pollster::block_on(unwrap_header(&header, &decryptor)).unwrap();
        assert_eq!(decryptor.decrypt(&message).unwrap(), b"data");
        // Encrypting in this process seals under a fresh message ID: no abort.
        let again = Encryptor::new(&keyring).encrypt(b"data").unwrap();
        assert_eq!(decryptor.decrypt(&again).unwrap(), b"data");
        if what == "seal" {
            // The message has no required-only pairs: the AAD is the header body alone.
            let aad = header_aad(&header.body_bytes, &EncryptionContext::new()).unwrap();
            let _ = read.key.seal_in_place(&HEADER_IV, &aad, &mut []);
        }
    }
}
