//! `mitosis resume -` reads only the handle's line from stdin: the rest is the child's
//! input. Checked without the module: a malformed handle fails after the read, and the
//! shell's next command reads what the launcher left.

use std::io::Write;
use std::process::{Command, Stdio};

fn resume_then_cat(input: &[u8]) -> (String, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} resume -; echo \"rc=$?\"; cat",
            env!("CARGO_BIN_EXE_mitosis")
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_rest_of_stdin_stays_for_the_child() {
    let (out, err) = resume_then_cat(b"not-a-handle\n{\"request\": 1}\nmore\n");
    assert_eq!(out, "rc=2\n{\"request\": 1}\nmore\n", "stderr: {err}");
    assert!(err.contains("\"not-a-handle\""), "{err}");
}

#[test]
fn an_endless_line_is_refused() {
    let (out, err) = resume_then_cat(&[b'x'; 5000]);
    assert!(out.starts_with("rc=2\n"), "{out}");
    assert!(err.contains("no handle in the first 1024 bytes"), "{err}");
}
