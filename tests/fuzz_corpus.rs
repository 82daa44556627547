//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and every regression input
//! (`fuzz/regressions/<target>/`) through the same functions the cargo-fuzz targets call,
//! so CI on stable Rust exercises them: the protocol's targets (`ferrotun_proto::fuzzing`)
//! and the virtio-net ones (`ferrotun_device::fuzzing`).

use std::path::{Path, PathBuf};

type Target = (&'static str, fn(&[u8]));

/// Each crate's targets, with the path its fuzz binaries call them by.
const CRATES: &[(&str, &[Target])] = &[
    (
        "ferrotun_proto::fuzzing::",
        ferrotun_proto::fuzzing::TARGETS,
    ),
    (
        "ferrotun_device::fuzzing::",
        ferrotun_device::fuzzing::TARGETS,
    ),
];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn corpus_and_regressions_replay_cleanly() {
    let root = fuzz_dir();
    let mut total = 0;
    for (name, run) in CRATES.iter().flat_map(|(_, targets)| targets.iter()) {
        let corpus = files(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "no corpus committed for fuzz target {name} in {}",
            root.display()
        );
        let regressions = files(&root.join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            run(&data);
            total += 1;
        }
    }
    eprintln!("replayed {total} fuzz inputs");
}

#[test]
fn every_target_has_a_fuzz_binary() {
    for (module, targets) in CRATES {
        for (name, _) in *targets {
            let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
            let src = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                src.contains(module),
                "{} does not call a shared body in {module}",
                path.display()
            );
        }
    }
}
