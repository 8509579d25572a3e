//! Outputs as JSON.

/// One output's values as nested JSON arrays of its shape.
fn nested(shape: &[usize], values: &crate::runtime::OutputValues) -> serde_json::Value {
    use crate::runtime::OutputValues;
    use serde_json::{Value, json};
    fn build<T: Copy>(shape: &[usize], data: &[T], f: &dyn Fn(T) -> Value) -> Value {
        match shape.split_first() {
            None => data.first().map_or(Value::Null, |&v| f(v)),
            Some((&n, rest)) => {
                let stride: usize = rest.iter().product();
                Value::Array(
                    (0..n)
                        .map(|i| build(rest, &data[i * stride..(i + 1) * stride], f))
                        .collect(),
                )
            }
        }
    }
    match values {
        // Through f32's shortest decimal form, so JSON shows 0.1 rather than 0.10000000149011612.
        OutputValues::F32(v) => build(shape, v, &|x: f32| {
            json!(x.to_string().parse::<f64>().unwrap_or(f64::NAN))
        }),
        OutputValues::I64(v) => build(shape, v, &|x: i64| json!(x)),
    }
}

/// Outputs as JSON, by name: nested arrays of the outputs' shapes (what `perch run
/// --format json` prints under `outputs`, and the agent's `POST /predict` answers).
pub fn outputs_json(
    outputs: &[crate::runtime::Output],
) -> serde_json::Map<String, serde_json::Value> {
    outputs
        .iter()
        .map(|o| (o.name.clone(), nested(&o.shape, &o.values)))
        .collect()
}
