//! Shared by the integration tests: locate the fetched models or fail
//! loudly with what to run.

use archipelago_inference::{ModelStore, Runtime};

pub fn store() -> ModelStore {
    let store = ModelStore::from_env().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = store.check() {
        panic!("these tests need the pinned model files: {e}");
    }
    store
}

#[allow(dead_code)]
pub fn runtime() -> Runtime {
    Runtime::new(store().dir())
}
