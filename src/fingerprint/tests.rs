//! Fixtures whose fingerprint must change when what the build reads changes, and only then.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// A new empty folder for one fixture.
fn fixture(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtd-fingerprint-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn package(dir: &Path, dockerfile: &str) -> Package {
    fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    let mut config = crate::config::testing::config(&[], &["dev"]);
    config.dockerfile = dir.join("Dockerfile");
    config.context = dir.to_path_buf();
    Package::resolve(config, dockerfile).unwrap()
}

fn fingerprint(dir: &Path) -> Result<String, Unknowable> {
    sources(
        &package(dir, "FROM scratch\nCOPY . /\n"),
        &mut Contexts::default(),
    )
}

#[test]
fn changes_with_what_the_build_reads_and_only_with_that() {
    let dir = fixture("reads");
    write(&dir, "src/main.rs", "fn main() {}");
    write(&dir, "target/debug/app", "");
    write(&dir, ".dockerignore", "target\n");
    let p = package(&dir, "FROM scratch\nCOPY src /src\n");
    let first = sources(&p, &mut Contexts::default()).unwrap();
    assert_eq!(first.len(), 64);
    assert_eq!(
        sources(&p, &mut Contexts::default()).unwrap(),
        first,
        "stable"
    );

    // Ignored files do not count; sent ones, their modes and the ignore file do.
    write(&dir, "target/debug/app", "binary");
    assert_eq!(sources(&p, &mut Contexts::default()).unwrap(), first);
    write(&dir, "src/main.rs", "fn main() { }");
    let edited = sources(&p, &mut Contexts::default()).unwrap();
    assert_ne!(edited, first);
    fs::set_permissions(dir.join("src/main.rs"), fs::Permissions::from_mode(0o755)).unwrap();
    let chmod = sources(&p, &mut Contexts::default()).unwrap();
    assert_ne!(chmod, edited);
    write(&dir, "src/new.rs", "");
    let added = sources(&p, &mut Contexts::default()).unwrap();
    assert_ne!(added, chmod);
    write(&dir, ".dockerignore", "target\n*.tmp\n");
    let ignore_edited = sources(&p, &mut Contexts::default()).unwrap();
    assert_ne!(ignore_edited, added);

    // So does the Dockerfile (which `package` rewrites).
    let q = package(&dir, "FROM scratch\nCOPY src /srv\n");
    assert_ne!(
        sources(&q, &mut Contexts::default()).unwrap(),
        ignore_edited
    );

    // What cannot be known from here gives no fingerprint, naming the culprit.
    let tag = package(&dir, "FROM rust:1.82 AS build\nFROM scratch\n");
    let why = sources(&tag, &mut Contexts::default()).unwrap_err().0;
    assert!(
        why.contains("`rust:1.82`") && why.contains("`build`"),
        "{why}"
    );
    let url = package(&dir, "FROM scratch\nADD https://example.com/x /x\n");
    assert!(sources(&url, &mut Contexts::default())
        .unwrap_err()
        .0
        .contains("https://example.com/x"));
    // A context hashed once serves every package that shares it, until the run ends.
    let mut shared = Contexts::default();
    let before = sources(&p, &mut shared).unwrap();
    write(&dir, "src/main.rs", "fn main() { 2 }");
    assert_eq!(sources(&p, &mut shared).unwrap(), before);
    assert_ne!(sources(&p, &mut Contexts::default()).unwrap(), before);
    fs::remove_dir_all(&dir).unwrap();
}

/// A pin is `@sha256:` and the 64 lowercase hex digits Docker's reference grammar demands; a
/// shorter or uppercase digest is an error to Docker, and never a pin here.
#[test]
fn only_a_whole_digest_pins_an_image() {
    let dir = fixture("pins");
    let digest = "0123456789abcdef".repeat(4);
    for (image, pinned) in [
        ("rust@sha256:00ff".to_string(), false),
        (format!("rust@sha256:{}", &digest[..63]), false),
        (format!("rust@sha256:{digest}0"), false),
        (format!("rust@sha256:{}", digest.to_uppercase()), false),
        (format!("rust@sha512:{digest}"), false),
        (format!("rust@sha256:{digest}"), true),
        (format!("rust:1.82@sha256:{digest}"), true),
        (format!("127.0.0.1:5000/rust:1.82@sha256:{digest}"), true),
    ] {
        let p = package(&dir, &format!("FROM {image} AS build\nFROM scratch\n"));
        let got = sources(&p, &mut Contexts::default());
        assert_eq!(got.is_ok(), pinned, "{image}: {got:?}");
        if let Err(why) = got {
            assert!(why.0.contains(&format!("`{image}`")), "{}", why.0);
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// `.dockerignore` rules where the tool left out what a Docker client sends: each fixture's
/// fingerprint must change when that file changes (and not when a file no client sends does).
#[test]
fn files_a_docker_client_sends_count() {
    // (ignore file, files, a file some client sends, a file none sends)
    let cases = [
        // buildx 0.13: `**` then `!**.rs` is a suffix match and sends `build.rs`.
        (
            "**\n!**.rs\n",
            &["build.rs", "src/main.rs", "README.md"][..],
            "build.rs",
            Some("README.md"),
        ),
        // `/!keep.txt`: the `/` comes off after the `!` test, so it is the exception `!keep.txt`.
        (
            "*.txt\n/!keep.txt\n",
            &["keep.txt", "other.txt"],
            "keep.txt",
            Some("other.txt"),
        ),
        // buildx 0.13 carries each pattern's result down: the second `d` is skipped for `d`'s
        // entries once `!d/f` matched, so `d/f` is sent.
        ("d\n!d/f\nd\n", &["d/f", "d/g"], "d/f", Some("d/g")),
        // Docker 20.10 compares `!a` with the first folder of `a/b/c` and sends it.
        ("a/b\n!a\n", &["a/b/c", "a/x"], "a/b/c", None),
        // Docker 20.10 reads `**foo` as `^(.*/)?foo$` and sends `barfoo`; buildx does not.
        ("**foo\n", &["barfoo", "foo"], "barfoo", Some("foo")),
        // Docker 20.10 lets `x/y/foo` back in through `!x/y*` matching its parent.
        (
            "**/foo\n!x/y*\n",
            &["x/y/foo/z", "foo/q"],
            "x/y/foo/z",
            Some("foo/q"),
        ),
        // An exception with wildcards below a folder left out.
        (
            "*\n!src/**/*.rs\n",
            &["src/a.rs", "src/b/c.rs", "src/d.txt"],
            "src/b/c.rs",
            Some("src/d.txt"),
        ),
    ];
    for (i, (ignore, files, sent, unsent)) in cases.into_iter().enumerate() {
        let dir = fixture(&format!("holes-{i}"));
        write(&dir, ".dockerignore", ignore);
        for f in files {
            write(&dir, f, "1");
        }
        let before = fingerprint(&dir).unwrap();
        if let Some(unsent) = unsent {
            write(&dir, unsent, "2");
            assert_eq!(
                fingerprint(&dir).unwrap(),
                before,
                "{ignore:?}: `{unsent}` is sent by no client"
            );
        }
        write(&dir, sent, "2");
        assert_ne!(
            fingerprint(&dir).unwrap(),
            before,
            "{ignore:?}: `{sent}` is sent"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// Patterns Docker 20.10 reads as regular expressions, and an ignore file that is not UTF-8,
/// give no fingerprint rather than a guess.
#[test]
fn an_ignore_file_read_differently_by_each_client_refuses() {
    let dir = fixture("refused");
    write(&dir, "a", "");
    for (text, why) in [
        (&b"c++\n"[..], "Docker 20.10"),
        (b"x(1)\n", "Docker 20.10"),
        (b"data\xff\n", "not UTF-8"),
        (b"[\n", "unclosed"),
    ] {
        fs::write(dir.join(".dockerignore"), text).unwrap();
        let got = fingerprint(&dir).unwrap_err().0;
        assert!(got.contains(why) && got.contains(".dockerignore"), "{got}");
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// A name is its bytes: renaming `data\xff` to `data\xfe` is a change.
#[test]
fn names_that_are_not_utf8_are_hashed_as_bytes() {
    let dir = fixture("bytes");
    let name = |b: u8| dir.join(OsStr::from_bytes(&[b'd', b'a', b't', b'a', b]));
    fs::write(name(0xff), "x").unwrap();
    let before = fingerprint(&dir).unwrap();
    fs::rename(name(0xff), name(0xfe)).unwrap();
    assert_ne!(fingerprint(&dir).unwrap(), before);
    // And a pattern matches them as Go does: each byte that is not UTF-8 is one character.
    write(&dir, ".dockerignore", "data?\n");
    let ignored = fingerprint(&dir).unwrap();
    fs::write(name(0xfe), "y").unwrap();
    assert_eq!(fingerprint(&dir).unwrap(), ignored);
    fs::remove_dir_all(&dir).unwrap();
}

/// What else of an entry the client sends: symlink targets, extended attributes (through
/// `COPY`, a file's capabilities reach the image), and hard links between sent files.
#[test]
fn link_targets_xattrs_and_hard_links_count() {
    let dir = fixture("meta");
    write(&dir, "a", "same");
    write(&dir, "b", "same");
    std::os::unix::fs::symlink("a", dir.join("link")).unwrap();
    let copies = fingerprint(&dir).unwrap();

    fs::remove_file(dir.join("link")).unwrap();
    std::os::unix::fs::symlink("b", dir.join("link")).unwrap();
    let relinked = fingerprint(&dir).unwrap();
    assert_ne!(relinked, copies, "a symlink's target");

    fs::remove_file(dir.join("b")).unwrap();
    fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
    let hard = fingerprint(&dir).unwrap();
    assert_ne!(hard, relinked, "`b` a hard link of `a` instead of a copy");

    fs::create_dir(dir.join("sub")).unwrap();
    for (path, value) in [("a", &b"1"[..]), ("a", b"2"), ("sub", b"1")] {
        let before = fingerprint(&dir).unwrap();
        set_xattr(&dir.join(path), value);
        assert_ne!(fingerprint(&dir).unwrap(), before, "an xattr of `{path}`");
    }
    fs::remove_dir_all(&dir).unwrap();
}

fn set_xattr(path: &Path, value: &[u8]) {
    use std::ffi::CString;
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a buffer of `value.len()` bytes.
    let done = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"user.note".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(done, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// What the client does not send, or BuildKit's cache keys leave out, does not count: times,
/// and owners (the client sends 0 for both).
#[test]
fn times_and_owners_do_not_count() {
    let dir = fixture("times");
    write(&dir, "a", "x");
    let before = fingerprint(&dir).unwrap();
    let file = fs::File::options().write(true).open(dir.join("a")).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    std::os::unix::fs::chown(dir.join("a"), Some(4242), Some(4242)).unwrap();
    assert_eq!(fingerprint(&dir).unwrap(), before);
    fs::remove_dir_all(&dir).unwrap();
}

/// A folder left out that no exception can reach is not walked at all (BuildKit does not send
/// it, and a `target/` is most of a checkout); one an exception may reach is.
#[test]
fn folders_no_exception_reaches_are_not_walked() {
    let dir = fixture("prune");
    for i in 0..50 {
        write(&dir, &format!("target/debug/deps/f{i}"), "");
    }
    write(&dir, "README.md", "");
    write(&dir, "src/main.rs", "");
    let walked = |ignore: &str| {
        walk::walked(&dir, &Ignore::parse(ignore).unwrap())
            .unwrap()
            .1
    };
    // `target`, `README.md`, `src`, `src/main.rs`, and the ignore file is not written.
    assert_eq!(walked("target\n!README.md\n"), 4);
    assert_eq!(walked("target\n!src/**/*.rs\n"), 4);
    // `!target/debug/x` may let something back in below `target/debug`, but not in `deps`.
    assert_eq!(walked("target\n!target/debug/x\n"), 6);
    assert_eq!(walked("target\n!target/debug/deps/f1\n"), 56);
    fs::remove_dir_all(&dir).unwrap();
}

/// The threads hash what one thread hashes.
#[test]
fn threads_change_nothing() {
    let dir = fixture("threads");
    let mut jobs = Vec::new();
    for i in 0..20 {
        write(&dir, &format!("f{i}"), &"x".repeat(i * 1000));
        jobs.push(walk::Job {
            path: dir.join(format!("f{i}")),
            size: i as u64 * 1000,
        });
    }
    let one = walk::hash_files(&jobs, 0).unwrap();
    let many = walk::hash_files(&jobs, u64::MAX).unwrap();
    assert_eq!(one, many);
    assert_eq!(one.len(), 20);
    fs::remove_dir_all(&dir).unwrap();
}
