//! Rules of the library's source that a reviewer would otherwise check by hand.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `unwrap()` / `expect(` calls of `text` outside `#[cfg(test)] mod … { }` blocks and
/// not marked `// ok: why` (on the line or the one above), as 1-based line numbers. Braces
/// are counted per line, which the crate's formatting (rustfmt) keeps honest enough here.
fn unmarked_unwraps(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let (mut depth, mut test_depth, mut cfg_test) = (0i64, None, false);
    for (i, line) in lines.iter().enumerate() {
        let s = line.trim();
        if s.starts_with("#[cfg(test)]") {
            cfg_test = true;
        } else if cfg_test && !s.starts_with("#[") {
            let is_mod = s.starts_with("mod ") || s.starts_with("pub(crate) mod ");
            if test_depth.is_none() && is_mod && s.ends_with('{') {
                test_depth = Some(depth);
            }
            cfg_test = false;
        }
        depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
        if let Some(d) = test_depth {
            if depth <= d {
                test_depth = None;
            }
            continue;
        }
        let call = s.contains(".unwrap()") || s.contains(".expect(");
        let marked = line.contains("// ok:") || (i > 0 && lines[i - 1].contains("// ok:"));
        if call && !s.starts_with("//") && !marked {
            found.push(i + 1);
        }
    }
    found
}

/// Library code returns errors: an `unwrap()` or `expect(` outside tests says why no input
/// reaches it (`// ok: …`). Test-only files (`tests.rs`, the kernel battery, the fixtures)
/// are skipped.
#[test]
fn library_code_has_no_unmarked_unwrap_or_expect() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let test_only = ["tests.rs", "battery.rs", "test_fixtures.rs"];
    let mut bad = Vec::new();
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if test_only.contains(&name) || file.starts_with(src.join("bin")) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for line in unmarked_unwraps(&text) {
            bad.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "unwrap()/expect( in library code without `// ok: why`:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_unwrap_rule_sees_calls_outside_tests_only() {
    let text = "fn a() { x.unwrap(); }\n\
                fn b() { y.expect(\"z\"); // ok: never empty\n}\n\
                #[cfg(test)]\nmod tests {\n    fn c() { w.unwrap(); }\n}\n\
                fn d() { v.unwrap(); }\n";
    assert_eq!(unmarked_unwraps(text), vec![1, 8]);
}
