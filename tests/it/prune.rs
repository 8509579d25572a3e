//! Pruning the trained digits MLP (models/digits-mlp-trained): 80% magnitude pruning with
//! gradual fine-tuning on the corpus training split keeps test accuracy within 2 points
//! of the dense model; structured pruning shrinks it and it still runs. Prints the
//! accuracies (`cargo test --all-features --test it prune:: -- --nocapture`); with
//! `PERCH_WRITE_PRUNED=FILE` it also writes the fine-tuned 80% model there.
use perch::engine::Engine;
use perch::graph::Model;
use perch::optimize::finetune::{FinetuneOptions, finetune};
use perch::optimize::prune::{PruneOptions, PruneScope, prune};
use perch::train::data::{Dataset, Task};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn digits(split: &str) -> Dataset {
    let corpus = std::env::var_os("PERCH_CORPUS")
        .map_or_else(|| root().join("tests/data/corpus"), PathBuf::from);
    let path = corpus.join(format!("datasets/digits/digits_{split}.csv"));
    Dataset::load(&path, "target", Task::Classification).expect("digits split (corpus)")
}

fn dense_model() -> Model {
    perch::artifact::read(&root().join("models/digits-mlp-trained/model.perch"))
        .expect("trained digits model")
        .model
}

/// Test accuracy of `model` run by the engine; labels compared through the schema.
fn accuracy(model: &Model, test: &Dataset) -> f64 {
    let x = test.features_f32();
    let n = x.nrows();
    let mut engine = Engine::new(&model.graph, n).expect("plans");
    engine
        .run(&[x.as_slice().expect("contiguous")], n)
        .expect("runs");
    let labels = engine.output_i64(1).expect("label output");
    let classes = test.target.classes().expect("classes");
    let numeric = match &test.schema.target_encoding {
        perch::train::data::TargetEncoding::Classes { numeric, .. } => {
            numeric.clone().expect("numeric labels")
        }
        perch::train::data::TargetEncoding::Values => unreachable!(),
    };
    let right = labels
        .iter()
        .zip(classes)
        .filter(|(l, c)| **l == numeric[**c])
        .count();
    right as f64 / n as f64
}

fn size(model: &Model) -> usize {
    perch::artifact::encode(model).expect("encodes").len()
}

#[test]
fn eighty_percent_with_finetuning_stays_within_two_points() {
    let (train, test) = (digits("train"), digits("test"));
    let dense = dense_model();
    let dense_acc = accuracy(&dense, &test);
    let (oneshot, oneshot_report) = prune(
        &dense,
        &PruneOptions {
            sparsity: 0.8,
            scope: PruneScope::Global,
            structured: false,
        },
    )
    .expect("prunes");
    let oneshot_acc = accuracy(&oneshot, &test);
    let options = FinetuneOptions {
        epochs: 30,
        sparsity: 0.8,
        ..FinetuneOptions::default()
    };
    let (tuned, report) = finetune(&dense, &train, &options).expect("fine-tunes");
    let tuned_acc = accuracy(&tuned, &test);
    println!(
        "digits MLP test accuracy: dense {dense_acc:.4} ({} B), 80% one-shot {oneshot_acc:.4} \
         (sparsity {:.3}), 80% gradual + {} epochs fine-tuning {tuned_acc:.4} ({} B, sparsity {:.3})",
        size(&dense),
        oneshot_report.sparsity,
        options.epochs,
        size(&tuned),
        report.sparsity,
    );
    for l in &report.layers {
        println!(
            "  {}: {:?} {} → {} nonzeros, {}",
            l.node,
            l.shape_after,
            l.nonzeros_before,
            l.nonzeros_after,
            if l.sparse { "CSR" } else { "dense" }
        );
    }
    assert!((report.sparsity - 0.8).abs() < 1e-3, "{report:?}");
    assert!(
        tuned_acc >= dense_acc - 0.02,
        "fine-tuned {tuned_acc} vs dense {dense_acc}"
    );
    assert!(size(&tuned) < size(&dense));
    if let Some(path) = std::env::var_os("PERCH_WRITE_PRUNED") {
        perch::artifact::write(std::path::Path::new(&path), &tuned).expect("writes");
    }
    let bytes = perch::artifact::encode(&tuned).expect("encodes");
    let back = perch::artifact::decode(&bytes).expect("decodes").model;
    assert_eq!(accuracy(&back, &test), tuned_acc);
}

#[test]
fn structured_pruning_shrinks_the_digits_mlp() {
    let (train, test) = (digits("train"), digits("test"));
    let dense = dense_model();
    let options = FinetuneOptions {
        epochs: 20,
        sparsity: 0.5,
        structured: true,
        ..FinetuneOptions::default()
    };
    let (tuned, report) = finetune(&dense, &train, &options).expect("fine-tunes");
    assert_eq!(report.layers[0].shape_after, vec![32, 64]);
    assert_eq!(report.layers[1].shape_after, vec![10, 32]);
    let acc = accuracy(&tuned, &test);
    println!(
        "digits MLP, half the hidden neurons removed + {} epochs: test accuracy {acc:.4}, {} B",
        options.epochs,
        size(&tuned)
    );
    assert!(acc > 0.9, "{acc}");
}
