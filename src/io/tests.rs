use super::*;
use crate::graph::Metadata;

fn csv(text: &str) -> Result<InputArray, InputError> {
    parse_input(text.as_bytes(), InputFormat::Csv, "t.csv")
}

#[test]
fn csv_with_and_without_header() {
    let a = csv("a,b\n1,2\n3,4.5\n").expect("parses");
    assert_eq!(
        a,
        InputArray {
            shape: vec![2, 2],
            data: vec![1.0, 2.0, 3.0, 4.5],
            columns: Some(Columns {
                names: vec!["a".into(), "b".into()],
                ordered: true
            }),
        }
    );
    assert_eq!(csv(" 1 , 2 \n\n3,4\n").expect("parses").shape, vec![2, 2]);
    assert_eq!(
        csv("x\n").unwrap_err(),
        InputError::Empty {
            file: "t.csv".into()
        }
    );
    assert!(matches!(
        csv("1,2\n3,inf\n"),
        Err(InputError::NonFinite {
            row: 2,
            column: 2,
            ..
        })
    ));
    assert!(matches!(
        csv("1,2\n3\n"),
        Err(InputError::Ragged {
            row: 2,
            expected: 2,
            got: 1,
            ..
        })
    ));
    assert!(matches!(
        csv("1,2\n3,\"x\"\n"),
        Err(InputError::NotANumber {
            row: 2,
            column: 2,
            ..
        })
    ));
}

#[test]
fn json_nesting_and_errors() {
    let j = |t: &str| parse_input(t.as_bytes(), InputFormat::Json, "t.json");
    assert_eq!(j("[[1, 2], [3, 4]]").expect("parses").shape, vec![2, 2]);
    assert_eq!(j("[1, 2, 3]").expect("parses").shape, vec![1, 3]);
    assert_eq!(
        j("[[[1], [2]], [[3], [4]]]").expect("parses").shape,
        vec![2, 2, 1]
    );
    assert!(matches!(
        j("[[1, 2], [3]]"),
        Err(InputError::Ragged { row: 2, .. })
    ));
    assert!(matches!(
        j("[[1, \"a\"]]"),
        Err(InputError::NotANumber { .. })
    ));
    assert!(matches!(j("[]"), Err(InputError::Empty { .. })));
    assert!(matches!(j("{}"), Err(InputError::Empty { .. })));
    assert!(matches!(
        j("[[1e999]]"),
        Err(InputError::NonFinite { .. }) | Err(InputError::Malformed { .. })
    ));
}

fn names(features: &[&str], target: Option<&str>) -> InputNames {
    InputNames {
        features: features.iter().map(|f| f.to_string()).collect(),
        target: target.map(str::to_string),
    }
}

fn arranged(
    array: &Result<InputArray, InputError>,
    names: Option<&InputNames>,
    target: Option<&str>,
) -> Result<(InputArray, Arranged), String> {
    arrange(array.as_ref().expect("parses").clone(), names, target, "f").map_err(|e| e.to_string())
}

#[test]
fn json_objects_are_rows_of_named_values() {
    let j = |t: &str| parse_input(t.as_bytes(), InputFormat::Json, "t.json");
    let a = j(r#"[{"b": 2, "a": 1}, {"a": 3, "b": 4}]"#).expect("parses");
    let cols = a.columns.as_ref().expect("named");
    assert!(!cols.ordered);
    // Each row's values are in the order of `names`, whatever order its keys came in.
    let rows: Vec<Vec<(String, f32)>> = a
        .data
        .chunks(2)
        .map(|row| {
            let mut r: Vec<_> = cols.names.iter().cloned().zip(row.to_vec()).collect();
            r.sort_by(|x, y| x.0.cmp(&y.0));
            r
        })
        .collect();
    assert_eq!(rows[0], [("a".into(), 1.0), ("b".into(), 2.0)]);
    assert_eq!(rows[1], [("a".into(), 3.0), ("b".into(), 4.0)]);
    assert_eq!(j(r#"{"a": 1, "b": 2}"#).expect("one row").shape, vec![1, 2]);
    let e = j(r#"[{"a": 1, "b": 2}, {"a": 3}]"#)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "t.json: row 2 has no \"b\"");
    let e = j(r#"[{"a": 1}, {"a": 3, "c": 1}]"#)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "t.json: row 2 has \"c\", which the first row has not");
    assert!(matches!(
        j(r#"[{"a": "x"}]"#),
        Err(InputError::NotANumber {
            row: 1,
            column: 1,
            ..
        })
    ));
    assert!(matches!(
        j(r#"[{"a": 1}, [2]]"#),
        Err(InputError::Malformed { .. })
    ));
}

#[test]
fn named_columns_are_matched_to_the_model_in_any_order() {
    let model = names(&["x", "y", "z"], Some("label"));
    let reversed = csv("label,z,y,x\n0,3,2,1\n1,6,5,4\n");
    let (a, how) = arranged(&reversed, Some(&model), None).unwrap();
    assert_eq!(
        (a.shape.clone(), a.data.clone()),
        (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    );
    assert_eq!(
        how.note().as_deref(),
        Some("dropped column \"label\" (the training target)")
    );
    assert!(how.by_name);
    let json = parse_input(br#"[{"z": 3, "x": 1, "y": 2}]"#, InputFormat::Json, "f");
    assert_eq!(
        arranged(&json, Some(&model), None).unwrap().0.data,
        [1.0, 2.0, 3.0]
    );

    assert_eq!(
        arranged(&csv("x,z\n1,3\n"), Some(&model), None).unwrap_err(),
        "f: missing feature \"y\"; the model takes \"x\", \"y\", \"z\""
    );
    assert_eq!(
        arranged(&csv("x,y,z,w\n1,2,3,4\n"), Some(&model), None).unwrap_err(),
        "f: column \"w\" is not a feature of the model; the model takes \"x\", \"y\", \"z\""
    );
    let no_target = names(&["x", "y", "z"], None);
    let e = arranged(&csv("x,y,z,label\n1,2,3,4\n"), Some(&no_target), None).unwrap_err();
    assert!(
        e.contains("\"label\" is not a feature") && e.contains("--target"),
        "{e}"
    );
    let (a, how) = arranged(
        &csv("x,y,z,label\n1,2,3,4\n"),
        Some(&no_target),
        Some("label"),
    )
    .unwrap();
    assert_eq!(
        (a.data, how.dropped),
        (vec![1.0, 2.0, 3.0], vec!["label".to_string()])
    );
    assert!(
        arranged(&csv("x,x,z\n1,2,3\n"), Some(&model), None)
            .unwrap_err()
            .contains("\"x\" appears twice")
    );
}

#[test]
fn without_names_columns_stay_in_file_order() {
    // No header: positional, whatever the model records.
    let model = names(&["x", "y"], None);
    let (a, how) = arranged(&csv("2,1\n"), Some(&model), None).unwrap();
    assert_eq!((a.data, how), (vec![2.0, 1.0], Arranged::default()));
    // A header but a model without names: file order, the target dropped if named.
    let (a, _) = arranged(&csv("b,a,t\n2,1,0\n"), None, Some("t")).unwrap();
    assert_eq!(a.data, [2.0, 1.0]);
    assert!(
        arranged(&csv("2,1\n"), None, Some("t"))
            .unwrap_err()
            .contains("no header")
    );
    // Keys have no order: they need the model's names.
    let json = parse_input(br#"[{"a": 1}]"#, InputFormat::Json, "f");
    assert!(
        arranged(&json, None, None)
            .unwrap_err()
            .contains("does not record its feature names")
    );
}

#[test]
fn feature_names_survive_commas_and_quotes() {
    let mut m = Metadata::default();
    let features: Vec<String> = ["plain", "with,comma", "with \"quote\""]
        .iter()
        .map(|f| f.to_string())
        .collect();
    m.set_feature_names(&features, "target");
    assert_eq!(m.feature_names(), Some(features.clone()));
    assert_eq!(m.target_name(), Some("target"));
    let names = InputNames::of(Some(&m), 3).expect("three names for three values");
    assert_eq!(names.features, features);
    assert_eq!(InputNames::of(Some(&m), 4), None);
    // Artifacts written before the target was recorded: names, no target.
    let mut old = Metadata::default();
    old.properties.insert("train.features".into(), "a,b".into());
    assert_eq!(InputNames::of(Some(&old), 2), Some(names_of(&["a", "b"])));
}

fn names_of(f: &[&str]) -> InputNames {
    names(f, None)
}

fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(body);
    b
}

#[test]
fn npy_types_and_errors() {
    let p = |b: &[u8]| parse_input(b, InputFormat::Npy, "t.npy");
    let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(
        p(&npy("<f4", "(2, 2)", &f32s)).expect("parses"),
        InputArray::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
    );
    let i64s: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(
        p(&npy("<i8", "(2,)", &i64s)).expect("parses").data,
        vec![7.0, -1.0]
    );
    assert!(matches!(
        p(&npy("<f4", "(3, 2)", &f32s)),
        Err(InputError::Malformed { .. })
    ));
    assert!(matches!(
        p(&npy(">f4", "(1,)", &f32s)),
        Err(InputError::Malformed { .. })
    ));
    assert!(matches!(p(b"\x93NUMPY"), Err(InputError::Malformed { .. })));
    let nan: Vec<u8> = [1.0f32, f32::NAN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert!(matches!(
        p(&npy("<f4", "(1, 2)", &nan)),
        Err(InputError::NonFinite {
            row: 1,
            column: 2,
            ..
        })
    ));
    assert!(matches!(
        p(&npy("<f4", "(99999999999, 99999999999)", &f32s)),
        Err(InputError::Malformed { .. })
    ));
}

proptest::proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        for format in [InputFormat::Csv, InputFormat::Json, InputFormat::Npy] {
            let _ = parse_input(&bytes, format, "p");
        }
        let mut b = npy("<f4", "(2, 3)", &[]);
        b.extend_from_slice(&bytes);
        let _ = parse_input(&b, InputFormat::Npy, "p");
    }
}
