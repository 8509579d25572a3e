//! README's "Put perch on a Raspberry Pi" block, run as it is on loopback by
//! `tests/pi_path.sh` (which says what its shims stand in for, and which binary the simulated
//! Pi runs: the aarch64 one under qemu when it is built and current, else this build's).
use std::path::Path;
use std::process::Command;

#[test]
fn readme_pi_path_runs_on_loopback() {
    let host_bin = Path::new(env!("CARGO_BIN_EXE_perch-host"))
        .parent()
        .expect("the binaries' directory");
    assert!(
        host_bin.join("perch").is_file(),
        "perch is built beside perch-host"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pi_path.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--host-bin")
        .arg(host_bin)
        .output()
        .expect("run tests/pi_path.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "tests/pi_path.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("ok: README's Pi path works"),
        "{stdout}\n{stderr}"
    );
}
