//! The storage benchmark's in-container workload (statically linked; tests/bench/storage.py
//! copies it into the bundles). Prints one JSON object with what it measured.
//!
//! - `husk-io-bench seq DIR MIB`: writes MIB MiB in 1 MiB blocks and fsyncs, drops the
//!   page cache when it may (`/proc/sys/vm/drop_caches`, in a privileged container: in a
//!   husk guest that is the guest's cache, so the read goes to the host), reads it back.
//! - `husk-io-bench meta DIR FILES`: an unpack-like job (FILES small files of 100 to 4000
//!   bytes in directories of 100, modes and times set), then a `find` + `stat` of all.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

fn drop_caches() -> bool {
    // SAFETY: sync has no arguments.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn seq(dir: &Path, mib: usize) {
    let path = dir.join("seq.bin");
    let block: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let started = Instant::now();
    let mut f = File::create(&path).unwrap();
    for _ in 0..mib {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let write_ms = started.elapsed().as_secs_f64() * 1000.0;
    let dropped = drop_caches();
    let started = Instant::now();
    let mut f = File::open(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(total, mib << 20);
    fs::remove_file(&path).unwrap();
    println!(
        "{{\"write_ms\": {write_ms:.1}, \"read_ms\": {read_ms:.1}, \"mib\": {mib}, \"cache_dropped\": {dropped}}}"
    );
}

fn meta(dir: &Path, files: usize) {
    let root = dir.join("tree");
    let started = Instant::now();
    for i in 0..files {
        let d = root.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&d).unwrap();
        }
        let p = d.join(format!("f{i:05}.txt"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        let len = 100 + (i * 37) % 3900;
        f.write_all(&vec![b'x'; len]).unwrap();
        drop(f);
        if i % 3 == 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    // SAFETY: sync has no arguments.
    unsafe { libc::sync() };
    let unpack_ms = started.elapsed().as_secs_f64() * 1000.0;
    drop_caches();
    let started = Instant::now();
    let mut seen = 0usize;
    let mut bytes = 0u64;
    let mut todo = vec![root.clone()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            seen += 1;
            bytes += m.len();
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    let walk_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(seen, files + files.div_ceil(100));
    fs::remove_dir_all(&root).unwrap();
    println!(
        "{{\"unpack_ms\": {unpack_ms:.1}, \"find_stat_ms\": {walk_ms:.1}, \"files\": {files}, \"bytes\": {bytes}}}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("seq"), Some(dir), Some(n)) => seq(Path::new(dir), n.parse().unwrap()),
        (Some("meta"), Some(dir), Some(n)) => meta(Path::new(dir), n.parse().unwrap()),
        _ => {
            eprintln!("usage: husk-io-bench seq DIR MIB | meta DIR FILES");
            std::process::exit(2);
        }
    }
}
