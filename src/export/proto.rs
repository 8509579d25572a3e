//! Protobuf pieces of an ONNX model: nodes, attributes, metadata entries, value infos.

use crate::graph::DType;
use tract_onnx::pb::{
    self, AttributeProto, NodeProto, StringStringEntryProto, TensorShapeProto, TypeProto,
    ValueInfoProto, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension,
};

pub(super) fn op(kind: &str, name: &str, input: Vec<String>, output: Vec<String>) -> NodeProto {
    NodeProto {
        op_type: kind.into(),
        name: name.into(),
        input,
        output,
        ..NodeProto::default()
    }
}

pub(super) fn attr(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: kind as i32,
        ..AttributeProto::default()
    }
}

pub(super) fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: v,
        ..attr(name, AttributeType::Int)
    }
}

pub(super) fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: v,
        ..attr(name, AttributeType::Float)
    }
}

pub(super) fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, AttributeType::String)
    }
}

pub(super) fn attr_ints(name: &str, v: &[u32]) -> AttributeProto {
    attr_i64s(name, &v.iter().map(|&d| i64::from(d)).collect::<Vec<_>>())
}

pub(super) fn attr_i64s(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

pub(super) fn attr_floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        floats: v.to_vec(),
        ..attr(name, AttributeType::Floats)
    }
}

pub(super) fn attr_strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attr(name, AttributeType::Strings)
    }
}

pub(super) fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    }
}

pub(super) fn value_info(name: &str, dtype: DType, shape: &[usize]) -> ValueInfoProto {
    let elem_type = match dtype {
        DType::F32 => DataType::Float,
        DType::I64 => DataType::Int64,
        DType::U8 => DataType::Uint8,
        DType::I8 => DataType::Int8,
    } as i32;
    let dim = std::iter::once(dimension::Value::DimParam("N".into()))
        .chain(shape.iter().map(|&d| dimension::Value::DimValue(d as i64)))
        .map(|v| pb::tensor_shape_proto::Dimension {
            value: Some(v),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

/// A graph name ONNX tools accept: letters, digits and `_`.
pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
