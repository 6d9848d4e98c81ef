//! `fxcast momento-local` as another language's official Momento SDK sees
//! it: runs momento-local/tests/python/test_momento_local.py, which starts this
//! binary on an ephemeral port and drives it with the Python `momento`
//! package (installed by scripts/test).

use std::process::Command;

/// The Python SDK version scripts/test installs.
const PYTHON_SDK: &str = "momento==1.29.1";

#[test]
fn python_sdk_publishes_subscribes_and_caches_through_momento_local() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/momento-local/tests/python/test_momento_local.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .env("FXCAST_BIN", env!("CARGO_BIN_EXE_fxcast"))
        .output()
        .expect("python3 is required: scripts/test installs what the tests need");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'momento'"),
        "the Python Momento SDK is missing: run scripts/test, or `python3 -m pip install {PYTHON_SDK}`"
    );
    assert!(
        output.status.success(),
        "the Python SDK test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("ok - server stopped cleanly on SIGTERM"),
        "{stdout}"
    );
}
