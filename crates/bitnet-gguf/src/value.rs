//! GGUF metadata values: the thirteen value types (ids 0..=12), typed arrays, and the lossless
//! accessors the rest of the engine uses to read hyper-parameters and tokenizer tables.

use std::fmt;

/// Arrays may nest (an array of arrays), but never deeper than this: a bound keeps a hostile file
/// from driving unbounded recursion. llama.cpp itself rejects nested arrays entirely.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// The on-disk type id of a metadata value, as numbered by the GGUF specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// id 0
    U8,
    /// id 1
    I8,
    /// id 2
    U16,
    /// id 3
    I16,
    /// id 4
    U32,
    /// id 5
    I32,
    /// id 6
    F32,
    /// id 7 (one byte, 0 or 1)
    Bool,
    /// id 8 (u64 length + UTF-8 bytes)
    String,
    /// id 9 (u32 element type + u64 count + elements)
    Array,
    /// id 10
    U64,
    /// id 11
    I64,
    /// id 12
    F64,
}

impl ValueType {
    /// Maps an on-disk id to a type; `None` for ids the specification does not define.
    pub fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// The on-disk id written for this type.
    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// Lower-case name used in error messages ("u32", "string", ...).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type can occupy on disk; used to reject element counts
    /// that the remaining bytes could not possibly hold before anything is allocated.
    pub(crate) fn min_encoded_size(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value. Integers keep their exact on-disk width so a file round-trips bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Type id 0.
    U8(u8),
    /// Type id 1.
    I8(i8),
    /// Type id 2.
    U16(u16),
    /// Type id 3.
    I16(i16),
    /// Type id 4.
    U32(u32),
    /// Type id 5.
    I32(i32),
    /// Type id 6.
    F32(f32),
    /// Type id 7.
    Bool(bool),
    /// Type id 8.
    String(String),
    /// Type id 9.
    Array(Array),
    /// Type id 10.
    U64(u64),
    /// Type id 11.
    I64(i64),
    /// Type id 12.
    F64(f64),
}

/// A homogeneous metadata array, stored as a typed vector so large tables (128k tokens, 280k
/// merges) cost one allocation and no per-element tags.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// Elements of type id 0.
    U8(Vec<u8>),
    /// Elements of type id 1.
    I8(Vec<i8>),
    /// Elements of type id 2.
    U16(Vec<u16>),
    /// Elements of type id 3.
    I16(Vec<i16>),
    /// Elements of type id 4.
    U32(Vec<u32>),
    /// Elements of type id 5.
    I32(Vec<i32>),
    /// Elements of type id 6.
    F32(Vec<f32>),
    /// Elements of type id 7.
    Bool(Vec<bool>),
    /// Elements of type id 8.
    String(Vec<String>),
    /// Elements of type id 9: each inner array carries its own element type.
    Array(Vec<Array>),
    /// Elements of type id 10.
    U64(Vec<u64>),
    /// Elements of type id 11.
    I64(Vec<i64>),
    /// Elements of type id 12.
    F64(Vec<f64>),
}

impl Array {
    /// The element type, as written in the array header.
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nesting depth: 1 for an array of scalars or strings, 1 + the deepest child otherwise.
    pub fn depth(&self) -> usize {
        match self {
            Array::Array(children) => 1 + children.iter().map(Array::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// A short description for error messages, e.g. "array of string (128256 items)".
    pub fn describe(&self) -> String {
        format!(
            "array of {} ({} items)",
            self.element_type().name(),
            self.len()
        )
    }
}

impl Value {
    /// The on-disk type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type holding a non-negative value, widened losslessly. Converters disagree on
    /// whether a count is u32 or u64 (or even i32), so counts should be read through this.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(i64::from(v)),
            Value::U16(v) => Some(i64::from(v)),
            Value::U32(v) => Some(i64::from(v)),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(i64::from(v)),
            Value::I16(v) => Some(i64::from(v)),
            Value::I32(v) => Some(i64::from(v)),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// A float (f32 widened exactly, or f64), or an integer that f64 represents exactly.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(f64::from(v)),
            Value::F64(v) => Some(v),
            _ => {
                let i = match *self {
                    Value::U64(v) => v as f64,
                    _ => self.as_i64()? as f64,
                };
                // Only exact conversions: 2^53 and beyond may round.
                (i.abs() <= 9_007_199_254_740_992.0).then_some(i)
            }
        }
    }

    /// An f32 value; an f64 is narrowed only when the narrowing is exact, an integer only when f32
    /// represents it exactly. Hyper-parameters such as `rope.freq_base` must not change silently.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            _ => {
                let v = self.as_f64()?;
                let n = v as f32;
                (f64::from(n) == v || v.is_nan()).then_some(n)
            }
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array of any element type.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An array of strings (token lists, merges).
    pub fn as_string_array(&self) -> Option<&[String]> {
        match self {
            Value::Array(Array::String(v)) => Some(v),
            _ => None,
        }
    }

    /// An array of i32 (token types).
    pub fn as_i32_array(&self) -> Option<&[i32]> {
        match self {
            Value::Array(Array::I32(v)) => Some(v),
            _ => None,
        }
    }

    /// An array of u32.
    pub fn as_u32_array(&self) -> Option<&[u32]> {
        match self {
            Value::Array(Array::U32(v)) => Some(v),
            _ => None,
        }
    }

    /// An array of f32 (token scores).
    pub fn as_f32_array(&self) -> Option<&[f32]> {
        match self {
            Value::Array(Array::F32(v)) => Some(v),
            _ => None,
        }
    }

    /// A short description for error messages: the type and, for scalars, the value.
    pub fn describe(&self) -> String {
        match self {
            Value::Array(a) => a.describe(),
            Value::String(s) if s.len() > 40 => format!("string of {} bytes", s.len()),
            other => format!("{} {}", other.value_type().name(), other),
        }
    }
}

/// Display shows scalars as-is, strings quoted, and arrays abbreviated to their first items, so
/// an `inspect` listing of a 128k-token vocabulary stays one line.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
            Value::Array(a) => write!(f, "{a}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

/// Shows at most the first eight elements followed by the total count.
impl fmt::Display for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        fn list<T>(
            f: &mut fmt::Formatter<'_>,
            items: &[T],
            show: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
        ) -> fmt::Result {
            f.write_str("[")?;
            for (i, item) in items.iter().take(SHOWN).enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                show(f, item)?;
            }
            if items.len() > SHOWN {
                write!(f, ", ... ({} items)", items.len())?;
            }
            f.write_str("]")
        }
        match self {
            Array::U8(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::I8(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::U16(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::I16(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::U32(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::I32(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::F32(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::Bool(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::String(v) => list(f, v, |f, x| write!(f, "{x:?}")),
            Array::Array(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::U64(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::I64(v) => list(f, v, |f, x| write!(f, "{x}")),
            Array::F64(v) => list(f, v, |f, x| write!(f, "{x}")),
        }
    }
}

macro_rules! impl_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(
            impl From<$t> for Value {
                fn from(v: $t) -> Value {
                    Value::$variant(v)
                }
            }
            impl From<Vec<$t>> for Array {
                fn from(v: Vec<$t>) -> Array {
                    Array::$variant(v)
                }
            }
        )*
    };
}

impl_from!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64,
);

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}

impl From<Array> for Value {
    fn from(v: Array) -> Value {
        Value::Array(v)
    }
}

impl From<Vec<Array>> for Array {
    fn from(v: Vec<Array>) -> Array {
        Array::Array(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_round_trip_and_unknown_ids_are_none() {
        for id in 0..=12 {
            let t = ValueType::from_id(id).unwrap();
            assert_eq!(t.id(), id);
        }
        assert_eq!(ValueType::from_id(13), None);
        assert_eq!(ValueType::from_id(u32::MAX), None);
    }

    #[test]
    fn integer_accessors_widen_losslessly_and_refuse_out_of_range() {
        assert_eq!(Value::U32(7).as_u64(), Some(7));
        assert_eq!(Value::I32(7).as_u64(), Some(7));
        assert_eq!(Value::I32(-1).as_u64(), None);
        assert_eq!(Value::U64(u64::MAX).as_i64(), None);
        assert_eq!(Value::I8(-3).as_i64(), Some(-3));
        assert_eq!(Value::F32(1.0).as_u64(), None);
        assert_eq!(Value::Bool(true).as_u64(), None);
    }

    #[test]
    fn float_accessors_only_convert_exactly() {
        assert_eq!(Value::F32(0.1).as_f32(), Some(0.1));
        assert_eq!(Value::F64(0.5).as_f32(), Some(0.5));
        assert_eq!(Value::F64(0.1).as_f32(), None);
        assert_eq!(Value::U32(500_000).as_f32(), Some(500_000.0));
        assert_eq!(Value::U32(16_777_217).as_f32(), None);
        assert_eq!(Value::U64(u64::MAX).as_f64(), None);
        assert_eq!(Value::F32(0.1).as_f64(), Some(f64::from(0.1f32)));
    }

    #[test]
    fn array_depth_and_display() {
        let nested = Array::Array(vec![
            Array::Array(vec![Array::U8(vec![1])]),
            Array::I32(vec![]),
        ]);
        assert_eq!(nested.depth(), 3);
        let long = Value::Array(Array::U32((0..20).collect()));
        assert_eq!(long.to_string(), "[0, 1, 2, 3, 4, 5, 6, 7, ... (20 items)]");
        assert_eq!(Value::from("a\"b").to_string(), "\"a\\\"b\"");
        assert_eq!(Value::I32(-1).describe(), "i32 -1");
    }
}
