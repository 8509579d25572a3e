//! Nested JSON arrays of numbers, streamed into a row-major array.

use super::{Columns, InputArray, InputError};

pub(super) fn parse_json(bytes: &[u8], file: &str) -> Result<InputArray, InputError> {
    let mut nested = NestedNumbers::new(file, usize::MAX);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed =
        serde::de::DeserializeSeed::deserialize(nested.seed(), &mut de).and_then(|()| de.end());
    nested.finish(parsed)
}

/// Nesting deeper than this is refused (a sample is at most a few axes).
const MAX_JSON_DEPTH: usize = 16;

/// Streams nested JSON arrays of numbers (`[[…], …]`, or one flat array for a single
/// sample) into a row-major array as they are parsed: no JSON tree is built, so memory is
/// four bytes a number, and parsing stops at the first number beyond `max_values`. Every
/// array at one depth must have the length of the first (a rectangular array).
pub(crate) struct NestedNumbers {
    file: String,
    max_values: usize,
    /// Length of the arrays at each depth, once the first of them ended.
    shape: Vec<Option<usize>>,
    /// Depth of the numbers, once the first was seen.
    leaf_depth: Option<usize>,
    data: Vec<f32>,
    /// Index of the current element of the outermost array.
    row: usize,
    failure: Option<InputError>,
    /// Whether any value was read (something other than a top-level array is "no data").
    started: bool,
    /// Column names, when the rows are objects of named values (the first row's keys).
    names: Option<Vec<String>>,
    /// Which columns the current object row has given (reused from row to row).
    seen: Vec<bool>,
}

impl NestedNumbers {
    pub(crate) fn new(file: &str, max_values: usize) -> NestedNumbers {
        NestedNumbers {
            file: file.to_string(),
            max_values,
            shape: Vec::new(),
            leaf_depth: None,
            data: Vec::new(),
            row: 0,
            failure: None,
            started: false,
            names: None,
            seen: Vec::new(),
        }
    }

    /// The seed that reads one value (the outermost array) into `self`.
    pub(crate) fn seed(&mut self) -> NestedLevel<'_> {
        NestedLevel {
            state: self,
            depth: 0,
        }
    }

    /// The array read, or why not: the first [`InputError`] met, else the parser's error
    /// (`parsed`) as malformed JSON.
    pub(crate) fn finish(
        self,
        parsed: Result<(), serde_json::Error>,
    ) -> Result<InputArray, InputError> {
        self.finish_as(parsed, false)
    }

    /// As [`NestedNumbers::finish`], for one sample: the shape read gets a batch axis of 1.
    #[cfg(feature = "device")]
    pub(crate) fn finish_one(
        self,
        parsed: Result<(), serde_json::Error>,
    ) -> Result<InputArray, InputError> {
        self.finish_as(parsed, true)
    }

    fn finish_as(
        self,
        parsed: Result<(), serde_json::Error>,
        one_sample: bool,
    ) -> Result<InputArray, InputError> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        if let Err(e) = parsed {
            return Err(InputError::Malformed {
                file: self.file,
                reason: format!("invalid JSON: {e}"),
            });
        }
        let mut shape: Vec<usize> = match self.shape.iter().copied().collect::<Option<_>>() {
            Some(s) => s,
            None => return Err(InputError::Empty { file: self.file }),
        };
        if shape.is_empty() || shape.contains(&0) || self.data.is_empty() {
            return Err(InputError::Empty { file: self.file });
        }
        if shape.len() == 1 || one_sample {
            shape.insert(0, 1);
        }
        Ok(InputArray {
            shape,
            data: self.data,
            columns: self.names.map(|names| Columns {
                names,
                ordered: false,
            }),
        })
    }

    fn fail<E: serde::de::Error>(&mut self, e: InputError) -> E {
        let text = e.to_string();
        self.failure.get_or_insert(e);
        E::custom(text)
    }

    fn column(&self) -> usize {
        let width: usize = self
            .shape
            .iter()
            .skip(1)
            .map(|d| d.unwrap_or(usize::MAX))
            .fold(1usize, usize::saturating_mul);
        self.data.len() % width.max(1) + 1
    }

    fn number<E: serde::de::Error>(
        &mut self,
        depth: usize,
        value: f64,
        text: &str,
    ) -> Result<(), E> {
        if depth == 0 {
            return Err(self.fail(InputError::Empty {
                file: self.file.clone(),
            }));
        }
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(self.fail(InputError::Malformed {
                    file: self.file.clone(),
                    reason: format!(
                        "row {}: a number {text} where the first row has {}",
                        self.row + 1,
                        if d > depth { "an array" } else { "a number" }
                    ),
                }));
            }
            Some(_) => {}
        }
        let v = value as f32;
        if !v.is_finite() {
            let column = self.column();
            return Err(self.fail(InputError::NonFinite {
                file: self.file.clone(),
                row: self.row + 1,
                column,
                value: text.to_string(),
            }));
        }
        if self.data.len() >= self.max_values {
            return Err(self.fail(InputError::TooLarge {
                file: self.file.clone(),
                max_values: self.max_values,
            }));
        }
        self.data.push(v);
        Ok(())
    }
}

/// One depth of [`NestedNumbers`].
pub(crate) struct NestedLevel<'a> {
    state: &'a mut NestedNumbers,
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for NestedLevel<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NestedLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number or an array of numbers")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.state.number(self.depth, v, &v.to_string())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.state.number(self.depth, v as f64, &v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.state.number(self.depth, v as f64, &v.to_string())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let state = self.state;
        state.started = true;
        let objects = state.names.is_some() && depth >= 1;
        if depth >= MAX_JSON_DEPTH || objects || state.leaf_depth.is_some_and(|l| depth >= l) {
            let reason = if depth >= MAX_JSON_DEPTH {
                format!("arrays nested deeper than {MAX_JSON_DEPTH}")
            } else if objects {
                format!(
                    "row {}: an array where the first row is an object of named values",
                    state.row + 1
                )
            } else {
                format!(
                    "row {}: an array where the first row has a number",
                    state.row + 1
                )
            };
            return Err(state.fail(InputError::Malformed {
                file: state.file.clone(),
                reason,
            }));
        }
        let mut n = 0usize;
        loop {
            if depth == 0 {
                state.row = n;
            }
            let level = NestedLevel {
                state: &mut *state,
                depth: depth + 1,
            };
            if seq.next_element_seed(level)?.is_none() {
                break;
            }
            n += 1;
        }
        if state.shape.len() <= depth {
            state.shape.resize(depth + 1, None);
        }
        match state.shape[depth] {
            None => state.shape[depth] = Some(n),
            Some(expected) if expected != n => {
                return Err(state.fail(InputError::Ragged {
                    file: state.file.clone(),
                    row: state.row + 1,
                    expected,
                    got: n,
                }));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// An object is one row of named values (`{"name": value, ...}`): the sample itself at
    /// depth 0, or a row of the outer array at depth 1. Every row has the first row's keys,
    /// in any order; each value is a finite number.
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let state = self.state;
        state.started = true;
        let rows_are_objects = state.names.is_some() || state.leaf_depth.is_none();
        if depth > 1 || !rows_are_objects || state.leaf_depth.is_some_and(|l| l != depth + 1) {
            let reason = format!(
                "row {}: an object of named values where the first row has {}",
                state.row + 1,
                if depth > 1 {
                    "numbers (objects are rows, not values)"
                } else {
                    "an array of numbers"
                }
            );
            return Err(state.fail(InputError::Malformed {
                file: state.file.clone(),
                reason,
            }));
        }
        state.leaf_depth = Some(depth + 1);
        let first = state.names.is_none();
        let mut names = state.names.take().unwrap_or_default();
        let start = state.data.len();
        if !first {
            if state.max_values - start.min(state.max_values) < names.len() {
                state.names = Some(names);
                return Err(state.fail(InputError::TooLarge {
                    file: state.file.clone(),
                    max_values: state.max_values,
                }));
            }
            state.data.resize(start + names.len(), 0.0);
            state.seen.clear();
            state.seen.resize(names.len(), false);
        }
        let row = state.row + 1;
        let result = (|| {
            while let Some(key) = map.next_key::<std::borrow::Cow<'_, str>>()? {
                let value: serde_json::Value = map.next_value()?;
                let column = if first {
                    if names.iter().any(|n| n == key.as_ref()) {
                        return Err(state.fail(InputError::Columns {
                            file: state.file.clone(),
                            reason: format!("row {row} names {key:?} twice"),
                        }));
                    }
                    names.push(key.into_owned());
                    names.len() - 1
                } else {
                    match names.iter().position(|n| n == key.as_ref()) {
                        Some(c) if !state.seen[c] => c,
                        Some(_) => {
                            return Err(state.fail(InputError::Columns {
                                file: state.file.clone(),
                                reason: format!("row {row} names {key:?} twice"),
                            }));
                        }
                        None => {
                            return Err(state.fail(InputError::Columns {
                                file: state.file.clone(),
                                reason: format!(
                                    "row {row} has {key:?}, which the first row has not"
                                ),
                            }));
                        }
                    }
                };
                let name = &names[column];
                let serde_json::Value::Number(n) = &value else {
                    return Err(state.fail(InputError::NotANumber {
                        file: state.file.clone(),
                        row,
                        column: column + 1,
                        value: format!("{name}: {value}"),
                    }));
                };
                let v = n.as_f64().unwrap_or(f64::NAN) as f32;
                if !v.is_finite() {
                    return Err(state.fail(InputError::NonFinite {
                        file: state.file.clone(),
                        row,
                        column: column + 1,
                        value: format!("{name}: {n}"),
                    }));
                }
                if first {
                    if state.data.len() >= state.max_values {
                        return Err(state.fail(InputError::TooLarge {
                            file: state.file.clone(),
                            max_values: state.max_values,
                        }));
                    }
                    state.data.push(v);
                } else {
                    state.data[start + column] = v;
                    state.seen[column] = true;
                }
            }
            if first && names.is_empty() {
                return Err(state.fail(InputError::Empty {
                    file: state.file.clone(),
                }));
            }
            if let Some(missing) = (!first)
                .then(|| state.seen.iter().position(|s| !s))
                .flatten()
            {
                return Err(state.fail(InputError::Columns {
                    file: state.file.clone(),
                    reason: format!("row {row} has no {:?}", names[missing]),
                }));
            }
            Ok(())
        })();
        if state.shape.len() <= depth {
            state.shape.resize(depth + 1, None);
        }
        state.shape[depth] = Some(names.len());
        state.names = Some(names);
        result
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        Err(self.not_a_number(&format!("{v:?}")))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        Err(self.not_a_number(&v.to_string()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(self.not_a_number("null"))
    }
}

impl NestedLevel<'_> {
    fn not_a_number<E: serde::de::Error>(self, what: &str) -> E {
        let state = self.state;
        if self.depth == 0 {
            return state.fail(InputError::Empty {
                file: state.file.clone(),
            });
        }
        let column = state.column();
        state.fail(InputError::NotANumber {
            file: state.file.clone(),
            row: state.row + 1,
            column,
            value: what.to_string(),
        })
    }
}
