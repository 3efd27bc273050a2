//! Streaming encryption and decryption: the framing state machine and its adaptors.
//!
//! The pipeline (frame slots, batches, the worker pool, the read/write overlap, the buffer
//! limits, where the signature is fed, and which module holds what) is mapped in
//! `docs/PIPELINE.md`.

#[cfg(feature = "tokio")]
mod async_io;
mod decoder;
mod encoder;
mod header_io;
mod layout;
pub(crate) mod machine;
mod message;
mod options;
mod rewrap;
mod seek;
mod sync;
pub(crate) mod workers;

#[cfg(feature = "tokio")]
pub use async_io::{AsyncDecryptingReader, AsyncEncryptingWriter};
pub use layout::{scan_layout, FrameSpan, MessageLayout};
pub use options::{
    Decryptor, Encryptor, DEFAULT_FRAME_LENGTH, DEFAULT_MAX_BUFFERED_LEN,
    DEFAULT_MAX_ENCRYPTED_DATA_KEYS, DEFAULT_MAX_FRAME_LENGTH, DEFAULT_MAX_HEADER_LEN,
    STREAM_BUFFER_LIMIT,
};
pub use rewrap::{Rewrap, Rewrapped, WrappingKey};
#[cfg(feature = "tokio")]
pub use seek::AsyncSeekableReader;
pub use seek::{ReadAt, SeekableReader};
pub use sync::{DecryptingReader, EncryptingWriter};
