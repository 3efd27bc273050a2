//! The heap a tree run holds per directory, measured with a counting allocator (this binary's
//! own, so the figure is not disturbed by other tests' allocators).
#![cfg(feature = "tree")]

#[path = "support/alloc.rs"]
mod alloc;
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

use std::path::Path;

use kms_envelope::tree::{encrypt_tree, TreeOptions};
use kms_envelope::{Encryptor, RawAesKeyring};
use rustix::fs::{mkdirat, openat, Mode, OFlags};

/// `depth` nested directories named `name`, and `siblings` empty directories (names of the same
/// length) at the bottom. Made relative to descriptors: the full path is longer than PATH_MAX.
fn deep_tree(root: &Path, depth: usize, name: &str, siblings: usize) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let mode = Mode::from_raw_mode(0o700);
    let mut dir = rustix::fs::open(root, flags, Mode::empty()).unwrap();
    for _ in 0..depth {
        mkdirat(&dir, name, mode).unwrap();
        dir = openat(&dir, name, flags, Mode::empty()).unwrap();
    }
    for i in 0..siblings {
        let sibling = format!("{i:06}{}", &name[6..]);
        mkdirat(&dir, sibling.as_str(), mode).unwrap();
    }
}

/// The peak heap growth of encrypting a tree of `siblings` directories at `depth`.
fn peak(depth: usize, name_len: usize, siblings: usize) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let name = "d".repeat(name_len);
    deep_tree(&src, depth, &name, siblings);
    let keyring = RawAesKeyring::new("tree-memory", "key", &[7; 32]).unwrap();
    let encryptor = Encryptor::new(&keyring);
    let dst = tmp.path().join("dst");
    let options = TreeOptions::new().jobs(1);
    let (summary, grown) = alloc::measure(|| {
        encrypt_tree(&encryptor, &src, &dst, &options, &|r| {
            panic!("unexpected report {r:?}")
        })
        .unwrap()
    });
    assert_eq!(summary.failed, 0);
    grown
}

/// Review N1: the directories a run makes are kept (for their modes and times at the end) as
/// a parent index and a name, not a full path: thousands of directories 200 levels deep with
/// 200-byte names cost a bounded number of bytes each, not their whole path (45 KB each
/// before). The figure per directory is printed for docs/TREES.md.
#[test]
fn the_memory_per_directory_does_not_grow_with_depth() {
    const FEW: usize = 100;
    const MANY: usize = 2100;
    for (depth, name_len, bound) in [(200, 200, 2048), (1, 8, 1024)] {
        let per_dir = (peak(depth, name_len, MANY) - peak(depth, name_len, FEW)) / (MANY - FEW);
        eprintln!("depth {depth}, names of {name_len} bytes: {per_dir} bytes per directory");
        assert!(
            per_dir <= bound,
            "depth {depth}, names of {name_len} bytes: {per_dir} bytes per directory"
        );
    }
}
