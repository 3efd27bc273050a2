//! Once per message: materials from the keyring, key derivation, header, header tag.

use std::sync::Arc;

use crate::crypto::kdf::derive;
use crate::crypto::signature::{Signer, Verifier};
use crate::crypto::{random_bytes, AeadKey};
use crate::format::{
    ContentType, EncryptionContext, FormatError, Header, HeaderBody, IV_LEN, PUBLIC_KEY_FIELD,
};
use crate::materials::{DataKey, DecryptionMaterials, EncryptionMaterials, HeaderCheck};
use crate::Error;

use super::machine::{FrameCipher, Opener, Sealer};
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
        return Err(Error::InvalidArgument(
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
        return Err(Error::InvalidArgument(format!(
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
        return Err(FormatError::TooManyDataKeys {
            max: opts.max_encrypted_data_keys,
        }
        .into());
    }

    let mut message_id = vec![0u8; suite.message_id_len()];
    random_bytes(&mut message_id)?;
    let derived = derive(suite, data_key.as_bytes(), &message_id);
    let (stored, required_only) = split_context(&full, &opts.required_keys);
    let body = HeaderBody {
        suite,
        message_id: message_id.clone(),
        context: stored,
        encrypted_data_keys: edks,
        content_type: ContentType::Framed,
        frame_length: opts.frame_length,
        commitment: derived.commitment,
    };
    let key = AeadKey::new(opts.backend, &derived.content_key)
        .map_err(|_| Error::Crypto("bad content key length"))?;
    let header = seal_header(&body, &required_only, &key)?;
    if let Some(s) = &mut signer {
        s.update(&header);
    }
    let cipher = FrameCipher::new(key, message_id, opts.frame_length);
    Ok((header, Sealer::new(cipher, signer)))
}

/// A header whose data key was unwrapped and whose commitment and tag verified.
pub(crate) struct Unwrapped {
    pub(crate) data_key: DataKey,
    pub(crate) key: AeadKey,
    /// The full context the keyrings saw (stored and required-only pairs).
    pub(crate) context: EncryptionContext,
    pub(crate) required_only: EncryptionContext,
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
        return Err(FormatError::FrameTooLarge {
            len: body.frame_length.into(),
            max: opts.max_frame_length.into(),
        }
        .into());
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
    Ok(Unwrapped {
        data_key,
        key,
        context: full,
        required_only,
        verifier,
    })
}

/// [`unwrap_header`], then the opener for the body.
pub(crate) async fn begin_decrypt(header: &Header, opts: &Decryptor<'_>) -> Result<Opener, Error> {
    let u = unwrap_header(header, opts).await?;
    let body = &header.body;
    let max_body = opts.max_buffered_len as u64;
    let cipher = FrameCipher::new(u.key, body.message_id.clone(), body.frame_length);
    Ok(Opener::new(cipher, body.content_type, u.verifier, max_body))
}

/// Seals a header body's tag with `key`, as encryption does.
pub(crate) fn seal_header(
    body: &HeaderBody,
    required_only: &EncryptionContext,
    key: &AeadKey,
) -> Result<Vec<u8>, Error> {
    let mut header = Vec::new();
    body.encode(&mut header)?;
    let aad = header_aad(&header, required_only)?;
    let tag = key
        .seal_in_place(&[0; IV_LEN], &aad, &mut [])
        .map_err(|_| Error::Crypto("AES-GCM seal failed"))?;
    if body.version() == 1 {
        header.extend_from_slice(&[0; IV_LEN]);
    }
    header.extend_from_slice(&tag);
    Ok(header)
}
