//! `fxcast momento-local` as another language's official Momento SDK sees
//! it: runs momento-local/tests/python/test_momento_local.py, which starts this
//! binary on an ephemeral port and drives it with the Python `momento`
//! package (installed by scripts/test).

/// The Python SDK version scripts/test installs.
const PYTHON_SDK: &str = "momento==1.29.1";

#[test]
fn python_sdk_publishes_subscribes_and_caches_through_momento_local() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/momento-local/tests/python/test_momento_local.py"
    );
    let stdout = fxcast_testkit::run_python(
        &[script.as_ref()],
        &[("FXCAST_BIN", env!("CARGO_BIN_EXE_fxcast"))],
        "momento",
        &format!("run scripts/test, or `python3 -m pip install {PYTHON_SDK}`"),
    );
    assert!(
        stdout.contains("ok - server stopped cleanly on SIGTERM"),
        "{stdout}"
    );
}
