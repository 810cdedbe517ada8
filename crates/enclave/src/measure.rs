//! The sim enclave's measurement: SHA-384 (`archipelago_attest::measure_files`)
//! over the enclave binary itself, the shared libraries it runs with, and
//! the model files of the workloads it offers, so a policy can pin it
//! exactly as it pins a hardware measurement. `archipelago-enclave measure`
//! prints the same value without starting.
//!
//! Why the libraries: the binary links `libgomp` (llama.cpp's threads),
//! `libstdc++`, `libm` and `libc` dynamically, and their code runs with
//! the enclave's keys and plaintext as much as the binary's own. A hardware
//! TEE's launch measurement covers the image they come from; the sim one
//! must name them too, or swapping a library would go unnoticed.

use std::path::{Path, PathBuf};

use crate::workload::Workloads;

/// The files measured, in order: this executable, the shared objects
/// mapped executable into this process (sorted by path), then the model
/// files.
pub fn measured_files(workloads: &Workloads) -> std::io::Result<Vec<PathBuf>> {
    let exe = std::env::current_exe()?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let libs = mapped_objects(&maps, &exe);
    Ok(std::iter::once(exe)
        .chain(libs)
        .chain(workloads.measured_files())
        .collect())
}

/// Paths of the file-backed executable mappings in a `/proc/<pid>/maps`
/// text, without `exe`, sorted and deduplicated. Anonymous and special
/// mappings (`[vdso]`, `[stack]`) and deleted files are skipped.
fn mapped_objects(maps: &str, exe: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| {
            // address perms offset dev inode path (the path may hold spaces)
            let mut f = line.splitn(6, ' ');
            let perms = f.nth(1)?;
            let path = f.nth(3)?.trim_start();
            (perms.contains('x') && path.starts_with('/') && !path.ends_with(" (deleted)"))
                .then(|| PathBuf::from(path))
        })
        .filter(|p| p != exe)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The measurement, lowercase hex (96 characters).
pub fn measurement_hex(workloads: &Workloads) -> std::io::Result<String> {
    let files = measured_files(workloads)?;
    let m = archipelago_attest::measure_files(&files)?;
    Ok(hex::encode(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_objects_are_the_executable_file_mappings_sorted() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:01 100 /opt/bin/archipelago-enclave
55d0c0100000-55d0c0200000 r-xp 00100000 fd:01 100 /opt/bin/archipelago-enclave
7f0000000000-7f0000100000 r-xp 00028000 fd:01 200                        /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000100000-7f0000200000 r--p 00000000 fd:01 200                        /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 r-xp 00010000 fd:01 300                        /usr/lib/x86_64-linux-gnu/libgomp.so.1
7f0000300000-7f0000400000 r-xp 00010000 fd:01 300                        /usr/lib/x86_64-linux-gnu/libgomp.so.1
7f0000400000-7f0000500000 rw-p 00000000 00:00 0 
7f0000500000-7f0000600000 r-xp 00000000 fd:01 400                        /tmp/my lib.so
7f0000600000-7f0000700000 r-xp 00000000 fd:01 500                        /tmp/gone.so (deleted)
7ffc00000000-7ffc00001000 r-xp 00000000 00:00 0                          [vdso]
";
        let got = mapped_objects(maps, Path::new("/opt/bin/archipelago-enclave"));
        assert_eq!(
            got,
            [
                "/tmp/my lib.so",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libgomp.so.1",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn this_process_measures_its_libraries_after_the_executable() {
        let files = measured_files(&Workloads::new(None)).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(files[0], exe);
        assert!(
            files[1..]
                .iter()
                .any(|p| p.to_string_lossy().contains("libc.so")),
            "libc is not among {files:?}"
        );
        assert!(!files[1..].contains(&exe));
    }
}
