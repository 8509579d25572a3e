//! Named columns matched to the feature names a model records.

use super::{Columns, InputArray, InputError};
use crate::graph::Metadata;

/// The names a model gives its input columns: its feature names in input order and the
/// column it was trained to predict (which an input may still carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputNames {
    /// Feature names, one per value of a sample, in the model's input order.
    pub features: Vec<String>,
    /// The training target's column name, when recorded.
    pub target: Option<String>,
}

impl InputNames {
    /// The names `metadata` records for a model whose (first) input takes `sample_len`
    /// values; `None` when it records none, or a different number than the input takes.
    pub fn of(metadata: Option<&Metadata>, sample_len: usize) -> Option<InputNames> {
        let m = metadata?;
        let features = m.feature_names().filter(|f| f.len() == sample_len)?;
        Some(InputNames {
            features,
            target: m.target_name().map(str::to_string),
        })
    }
}

/// What [`arrange`] did besides reordering, for a one-line note to the user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Arranged {
    /// Columns dropped: the training target (recorded, or named by the caller).
    pub dropped: Vec<String>,
    /// Whether the columns were matched by name (else used in file order).
    pub by_name: bool,
}

impl Arranged {
    /// `dropped column "target" (the training target)`, or `None` when nothing was dropped.
    pub fn note(&self) -> Option<String> {
        let quoted: Vec<String> = self.dropped.iter().map(|d| format!("{d:?}")).collect();
        match quoted.len() {
            0 => None,
            1 => Some(format!(
                "dropped column {} (the training target)",
                quoted[0]
            )),
            _ => Some(format!(
                "dropped columns {} (the training target)",
                quoted.join(", ")
            )),
        }
    }
}

/// Names listed for a person: the first few, then how many more.
fn listed(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut text: Vec<String> = names.iter().take(SHOWN).map(|n| format!("{n:?}")).collect();
    if names.len() > SHOWN {
        text.push(format!("and {} more", names.len() - SHOWN));
    }
    text.join(", ")
}

/// Fits a 2-D input with named columns to a model: drops the target column (`names.target`,
/// or `target` when given), then, when the model records its feature names, reorders the
/// columns by name into the model's order. Without column names the array is used as it is
/// (positional); with a CSV header but no names in the model, in file order.
///
/// # Errors
/// [`InputError::Columns`] naming every missing feature and every column that is not one,
/// a column given twice, a `target` that is not a column, or JSON objects for a model that
/// records no feature names.
pub fn arrange(
    array: InputArray,
    names: Option<&InputNames>,
    target: Option<&str>,
    file: &str,
) -> Result<(InputArray, Arranged), InputError> {
    let error = |reason: String| InputError::Columns {
        file: file.into(),
        reason,
    };
    let Some(columns) = array.columns.as_ref() else {
        if let Some(t) = target {
            return Err(error(format!(
                "--target {t:?} names a column, but the input has no header; remove the column from the file"
            )));
        }
        return Ok((array, Arranged::default()));
    };
    let width = columns.names.len();
    if array.shape.len() != 2 || array.shape[1] != width {
        return Err(error(format!(
            "{width} column names for rows of shape {:?}",
            array.shape.get(1..).unwrap_or(&[])
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = columns.names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(error(format!("column {dup:?} appears twice")));
    }
    if let Some(t) = target
        && !columns.names.iter().any(|n| n == t)
    {
        return Err(error(format!(
            "--target {t:?} is not a column; the columns are {}",
            listed(&columns.names.iter().map(String::as_str).collect::<Vec<_>>())
        )));
    }
    let is_target =
        |n: &str| target == Some(n) || names.and_then(|m| m.target.as_deref()) == Some(n);
    let dropped: Vec<String> = columns
        .names
        .iter()
        .filter(|n| is_target(n))
        .cloned()
        .collect();
    // Source column of each output column.
    let order: Vec<usize> = match names {
        Some(model) => {
            let position: std::collections::HashMap<&str, usize> = columns
                .names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            let missing: Vec<&str> = model
                .features
                .iter()
                .map(String::as_str)
                .filter(|f| !position.contains_key(f))
                .collect();
            let extra: Vec<&str> = columns
                .names
                .iter()
                .map(String::as_str)
                .filter(|n| !is_target(n) && !model.features.iter().any(|f| f == n))
                .collect();
            if !missing.is_empty() || !extra.is_empty() {
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!(
                        "missing feature{} {}",
                        if missing.len() == 1 { "" } else { "s" },
                        listed(&missing)
                    ));
                }
                if !extra.is_empty() {
                    let hint = if model.target.is_none() && missing.is_empty() {
                        " (drop it, or name the training target with --target)"
                    } else {
                        ""
                    };
                    parts.push(format!(
                        "column{} {} {} not a feature of the model{hint}",
                        if extra.len() == 1 { "" } else { "s" },
                        listed(&extra),
                        if extra.len() == 1 { "is" } else { "are" }
                    ));
                }
                return Err(error(format!(
                    "{}; the model takes {}",
                    parts.join("; "),
                    listed(
                        &model
                            .features
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                    )
                )));
            }
            model
                .features
                .iter()
                .map(|f| position[f.as_str()])
                .collect()
        }
        None if !columns.ordered => {
            return Err(error(
                "the model does not record its feature names, so named values cannot be \
                 matched to its inputs; give each row as an array in the model's input order"
                    .into(),
            ));
        }
        None => (0..width)
            .filter(|&i| !is_target(&columns.names[i]))
            .collect(),
    };
    let rows = array.shape[0];
    let identity = order.len() == width && order.iter().enumerate().all(|(i, &j)| i == j);
    let arranged = Arranged {
        dropped,
        by_name: names.is_some(),
    };
    if identity {
        return Ok((array, arranged));
    }
    let mut data = Vec::with_capacity(rows * order.len());
    for row in array.data.chunks_exact(width) {
        data.extend(order.iter().map(|&j| row[j]));
    }
    let columns = Columns {
        names: order.iter().map(|&j| columns.names[j].clone()).collect(),
        ordered: true,
    };
    Ok((
        InputArray {
            shape: vec![rows, order.len()],
            data,
            columns: Some(columns),
        },
        arranged,
    ))
}
